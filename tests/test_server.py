"""Functional tests: ``python -m wsgi_fcgi`` as a subprocess, spoken to with our
own FastCGI client (and raw records where the point is malformed input).

Each test checks one point of the FastCGI spec or PEP 3333 the way a web
server or a user would see it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from wsgi_fcgi import protocol as p
from wsgi_fcgi.client import Client, FastCGIError

from support.fastcgi import children_of, is_end, raw_connect, read_events, request_bytes, server_closed
from support.net import free_port
from support.waiting import wait_for

APPS_DIR = Path(__file__).resolve().parent / "apps"
APP = "bridge_app:app"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(wsgi_server: Callable[..., Any]) -> Callable[..., Any]:
    def start(*args: str, app: str = APP) -> Any:
        return wsgi_server(app, *args, pythonpath=[APPS_DIR])
    return start


# --- raw records -------------------------------------------------------------------

# --- serving -------------------------------------------------------------------------

def test_hello_over_a_unix_socket(server: Any) -> None:
    srv = server()
    response = Client(srv.address, timeout=10).request("/hello")
    assert (response.status, response.body) == (200, b"Hello, World!")
    assert response.header("content-type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_hello_over_tcp(server: Any, host: str) -> None:
    if host.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    srv = server("--bind", f"{host}:{free_port(host)}")
    assert Client(srv.address, timeout=10).request("/hello").body == b"Hello, World!"


def test_environ_seen_by_the_app(server: Any) -> None:
    srv = server()
    response = Client(srv.address, timeout=10).request(
        "/environ?x=1&y=%20z", headers={"X-Custom": "yes", "Proxy": "http://evil"})
    env = json.loads(response.body)
    assert env["PATH_INFO"] == "/environ" and env["SCRIPT_NAME"] == ""
    assert env["QUERY_STRING"] == "x=1&y=%20z"
    assert env["HTTP_X_CUSTOM"] == "yes"
    assert "HTTP_PROXY" not in env
    assert env["wsgi.version"] == [1, 0] and env["wsgi.multiprocess"] is True
    assert env["wsgi.multithread"] is False and env["wsgi.run_once"] is False


def test_script_name_override(server: Any) -> None:
    srv = server("--script-name", "/app")
    env = json.loads(Client(srv.address, timeout=10).request("/app/environ").body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/environ")


def test_get_values_reports_the_real_pool_size(server: Any) -> None:
    # Requests at once: one per worker. Connections held: per worker, the one it
    # serves and up to --max-idle-connections kept-alive ones.
    srv = server("--workers", "3", "--max-idle-connections", "4")
    values = Client(srv.address, timeout=10).get_values()
    assert values == {"FCGI_MAX_CONNS": "15", "FCGI_MAX_REQS": "3", "FCGI_MPXS_CONNS": "0"}


def test_keep_conn_serves_several_requests_on_one_connection(server: Any) -> None:
    srv = server("--workers", "1")
    with raw_connect(srv.address) as sock:
        for _ in range(3):
            sock.sendall(request_bytes(keep_conn=True))
            events = read_events(sock, is_end)
            assert is_end(events[-1])
            assert b"Hello, World!" in b"".join(e.data for e in events if isinstance(e, p.Stdout))


def test_without_keep_conn_the_server_closes_after_end_request(server: Any) -> None:
    srv = server()
    with raw_connect(srv.address) as sock:
        sock.sendall(request_bytes(keep_conn=False))
        assert is_end(read_events(sock, is_end)[-1])
        assert server_closed(sock)


def test_peer_closing_a_kept_connection_is_normal(server: Any) -> None:
    srv = server("--workers", "1")
    with raw_connect(srv.address) as sock:
        sock.sendall(request_bytes(keep_conn=True))
        read_events(sock, is_end)
    assert Client(srv.address, timeout=10).request("/hello").status == 200
    assert "Traceback" not in srv.stderr_text() and "ERROR" not in srv.stderr_text()


def test_unknown_management_record_gets_unknown_type_and_the_connection_stays(server: Any) -> None:
    srv = server()
    with raw_connect(srv.address) as sock:
        sock.sendall(p.encode_record(42, 0, b"whatever"))
        events = read_events(sock, lambda e: isinstance(e, p.UnknownType))
        assert events[-1] == p.UnknownType(42)
        sock.sendall(request_bytes())
        assert is_end(read_events(sock, is_end)[-1])


def test_second_request_id_on_a_busy_connection_gets_cant_mpx_conn(server: Any) -> None:
    srv = server()
    with raw_connect(srv.address) as sock:
        first = request_bytes(1, "/sha256", body=b"abc")  # the app reads STDIN to its end
        sock.sendall(first[:-8] + request_bytes(2))  # request 2 arrives before request 1's STDIN ends
        sock.sendall(p.encode_record(p.FCGI_STDIN, 1))
        events = read_events(sock, lambda e: is_end(e) and e.request_id == 1)
    ends = {e.request_id: e.protocol_status for e in events if is_end(e)}
    assert ends == {2: p.FCGI_CANT_MPX_CONN, 1: p.FCGI_REQUEST_COMPLETE}


def test_unknown_role_gets_unknown_role(server: Any) -> None:
    srv = server()
    with raw_connect(srv.address) as sock:
        sock.sendall(p.encode_record(p.FCGI_BEGIN_REQUEST, 1, p.BEGIN_REQUEST_BODY.pack(99, 0)))
        events = read_events(sock, is_end)
    assert events[-1] == p.EndRequest(1, 0, p.FCGI_UNKNOWN_ROLE)


def test_malformed_record_closes_that_connection_only(server: Any) -> None:
    srv = server("--workers", "1")
    with raw_connect(srv.address) as sock:
        sock.sendall(b"\x02" + request_bytes()[1:])  # FastCGI version 2
        assert server_closed(sock)
    assert Client(srv.address, timeout=10).request("/hello").status == 200
    wait_for(lambda: "unsupported FastCGI version 2" in srv.stderr_text(), what="the protocol error log line")


# --- request bodies ---------------------------------------------------------------------

def test_upload_is_streamed_and_the_app_starts_before_it_ends(server: Any, tmp_path: Path) -> None:
    srv = server()
    started = tmp_path / "started"
    block = os.urandom(65536)
    total = 64 * len(block)

    def body() -> Iterator[bytes]:
        for i in range(64):
            if i == 32:  # half the body is out: the app must already be running
                wait_for(started.exists, what="the app to start before the whole body was sent")
            yield block

    response = Client(srv.address, timeout=30).request(
        f"/sha256?started={started}", method="POST", body=body(), headers={"Content-Length": str(total)})
    assert response.body.decode().split()[:2] == [str(total), hashlib.sha256(block * 64).hexdigest()]


def test_body_without_content_length_arrives_with_content_length_set(server: Any) -> None:
    srv = server()
    chunks = [b"a" * 7000, b"b" * 11000]
    response = Client(srv.address, timeout=10).request(
        "/sha256", method="POST", body=iter(chunks), headers={"Transfer-Encoding": "chunked"})
    size, digest, content_length = response.body.decode().split()
    assert (size, content_length) == ("18000", "18000")
    assert digest == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_peer_disappearing_mid_upload_closes_the_app_iterable(server: Any, tmp_path: Path) -> None:
    srv = server("--workers", "1")
    started, closed = tmp_path / "started", tmp_path / "closed"
    with raw_connect(srv.address) as sock:
        whole = request_bytes(path=f"/read-then-close?started={started}&closed={closed}", body=b"x" * 100000)
        sock.sendall(whole[:len(whole) // 2])
        wait_for(started.exists, what="the app to start")
    wait_for(closed.exists, what="close() on the app's iterable")
    assert Client(srv.address, timeout=10).request("/hello").status == 200


def test_abort_request_closes_the_iterable_and_ends_the_request(server: Any, tmp_path: Path) -> None:
    srv = server("--workers", "1")
    started, closed = tmp_path / "started", tmp_path / "closed"
    with raw_connect(srv.address) as sock:
        head = request_bytes(path=f"/read-then-close?started={started}&closed={closed}", body=b"x" * 100000,
                             keep_conn=True)
        head = head[:head.index(p.encode_record(p.FCGI_PARAMS, 1)) + 8]  # BEGIN_REQUEST and PARAMS
        sock.sendall(head + p.encode_record(p.FCGI_STDIN, 1, b"x" * 1000))
        wait_for(started.exists, what="the app to start")
        sock.sendall(p.encode_record(p.FCGI_ABORT_REQUEST, 1))
        events = read_events(sock, is_end)
        assert is_end(events[-1])
        wait_for(closed.exists, what="close() on the app's iterable")
        # The connection is still good for the next request.
        sock.sendall(request_bytes(request_id=1, keep_conn=True))
        assert is_end(read_events(sock, is_end)[-1])


# --- responses ---------------------------------------------------------------------------

def test_large_download_arrives_intact(server: Any) -> None:
    srv = server()
    size = 5 * 1024 * 1024 + 3
    response = Client(srv.address, timeout=30).request(f"/download?size={size}")
    expected = (bytes(range(256)) * 256 * 81)[:size]
    assert len(response.body) == size and response.body == expected


FILE_DATA = bytes(range(251)) * 12_600  # 3,162,600 bytes: not a multiple of the record size


@pytest.mark.parametrize(("offset", "length"), [
    (0, None), (1, None), (0, 0), (0, 1), (0, 65528), (0, 65529), (7, 3 * 65528 + 5), (0, len(FILE_DATA) + 100),
    (len(FILE_DATA), None),
])
def test_file_wrapper_sends_the_file_from_its_position(server: Any, tmp_path: Path, offset: int,
                                                       length: Any) -> None:
    # Sent with os.sendfile in records the peer reassembles: the body must be exact,
    # from the file's position, and cut at a declared Content-Length.
    path = tmp_path / "data.bin"
    path.write_bytes(FILE_DATA)
    srv = server()
    query = f"/file?path={path}&offset={offset}" + ("" if length is None else f"&length={length}")
    with Client(srv.address, timeout=30, keep_conn=True) as client:
        response = client.request(query)
        expected = FILE_DATA[offset:] if length is None else FILE_DATA[offset:offset + length]
        assert response.status == 200 and len(response.body) == len(expected) and response.body == expected
        # the framing ended cleanly: the kept connection serves the next request
        assert client.request("/hello").body == b"Hello, World!"


def test_file_wrapper_answers_head_without_the_file(server: Any, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(FILE_DATA)
    srv = server()
    response = Client(srv.address, timeout=10).request(f"/file?path={path}&length=100", method="HEAD")
    assert response.status == 200 and response.body == b"" and response.header("Content-Length") == "100"


def test_write_callable(server: Any) -> None:
    srv = server()
    assert Client(srv.address, timeout=10).request("/write").body == b"written returned"


def test_head_has_no_body(server: Any) -> None:
    srv = server()
    response = Client(srv.address, timeout=10).request("/hello", method="HEAD")
    assert response.status == 200 and response.body == b""
    assert response.header("Content-Length") == "13"


def test_app_exception_is_a_generic_500_and_the_traceback_goes_to_stderr_and_log(server: Any) -> None:
    srv = server()
    response = Client(srv.address, timeout=10).request("/error-before")
    assert response.status == 500
    assert b"secret" not in response.body and b"Traceback" not in response.body
    assert b"RuntimeError: deliberate failure" in response.stderr
    wait_for(lambda: "deliberate failure" in srv.stderr_text(), what="the traceback in the error log")


def test_app_exception_after_headers_cuts_the_response(server: Any) -> None:
    srv = server()
    with pytest.raises(FastCGIError, match="closed"):
        Client(srv.address, timeout=10).request("/error-after")
    assert Client(srv.address, timeout=10).request("/hello").status == 200


def test_header_injection_is_refused_with_500(server: Any) -> None:
    srv = server()
    response = Client(srv.address, timeout=10).request("/inject")
    assert response.status == 500
    assert response.header("Set-Cookie") is None and response.header("X-Evil") is None


# --- roles -------------------------------------------------------------------------------

def test_authorizer_role(server: Any) -> None:
    srv = server()
    client = Client(srv.address, timeout=10)
    allowed = client.request("/authorize", role=p.FCGI_AUTHORIZER, headers={"Authorization": "Bearer good"})
    denied = client.request("/authorize", role=p.FCGI_AUTHORIZER, headers={"Authorization": "Bearer bad"})
    assert (allowed.status, allowed.header("Variable-AUTH_USER"), allowed.body) == (200, "alice", b"")
    assert (denied.status, denied.body) == (403, b"go away")


def test_filter_role(server: Any) -> None:
    srv = server()
    response = Client(srv.address, timeout=10).request(
        "/filter", role=p.FCGI_FILTER, data=b"file contents", params={"FCGI_DATA_LENGTH": "13"})
    assert response.body == b"FILE CONTENTS"


# --- start-up -------------------------------------------------------------------------

ROOT_FLAG = ["--allow-root"] if os.geteuid() == 0 else []


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_unimportable_app_is_one_clear_line_and_exit_4(tmp_path: Path) -> None:
    result = run_cli("--bind", f"unix:{tmp_path}/s.sock", "no_such_module:app")
    assert result.returncode == 4
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert any("no_such_module" in line for line in errors), result.stderr
    assert "Traceback" not in result.stderr


def test_app_with_an_error_inside_names_the_module_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import os\n\nvalue = undefined_name\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, "--bind", f"unix:{tmp_path}/s.sock",
                             "broken_app:app"], capture_output=True, text=True, timeout=30, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 4
    assert "NameError" in result.stderr and "broken_app.py, line 3" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--workers", "zero"], "--workers"),
    (["--bind", "nonsense"], "--bind"),
    (["--socket-mode", "999"], "--socket-mode"),
])
def test_bad_flag_is_a_usage_error(args: List[str], message: str) -> None:
    result = run_cli(*args, APP)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_address_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("--bind", f"127.0.0.1:{port}", APP)
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("spec, body", [
    ("bridge_app", b"Hello, World!"),           # finds `application`
    ("bridge_app:application", b"Hello, World!"),
    ("bridge_app:create_app()", b"factory"),
    ("bridge_app:create_app('made')", b"made"),
])
def test_app_spec_forms(server: Any, spec: str, body: bytes) -> None:
    srv = server(app=spec)
    assert Client(srv.address, timeout=10).request("/hello").body == body


# --- spawned by a web server: the listening socket on fd 0 ---------------------------------

def spawn_on_fd0(tmp_path: Path, argv: List[str]) -> tuple[subprocess.Popen[bytes], str]:
    path = str(tmp_path / "fd0.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(5)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(Path.cwd())])}
    proc = subprocess.Popen(argv, stdin=listener.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=str(tmp_path))
    listener.close()
    return proc, f"unix:{path}"


@pytest.mark.parametrize("how", ["cli", "serve"])
def test_spawned_with_fd0_serves_in_one_process_and_stops_on_term(tmp_path: Path, how: str) -> None:
    if how == "cli":
        argv = [sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, APP]
    else:
        script = tmp_path / "dispatch.fcgi"
        script.write_text("from wsgi_fcgi import serve\nfrom bridge_app import app\n"
                          f"serve(app, allow_root={bool(ROOT_FLAG)})\n")
        argv = [sys.executable, str(script)]
    proc, address = spawn_on_fd0(tmp_path, argv)
    try:
        for _ in range(3):
            assert Client(address, timeout=10).request("/hello").body == b"Hello, World!"
        pid = int(Client(address, timeout=10).request("/pid").body)
        assert pid == proc.pid and children_of(proc.pid) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        stdout = proc.stdout.read() if proc.stdout else b""
        assert stdout == b""  # under mod_fcgid stdout is Apache's error log: nothing but logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_fd0_term_during_a_request_finishes_it_first(tmp_path: Path) -> None:
    proc, address = spawn_on_fd0(tmp_path, [sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, APP])
    started = tmp_path / "started"
    result: dict[str, Any] = {}
    try:
        Client(address, timeout=10).request("/hello")  # ready

        def slow() -> None:
            result["response"] = Client(address, timeout=10).request(f"/sleep?s=1&started={started}")
        thread = threading.Thread(target=slow)
        thread.start()
        wait_for(started.exists, what="the request to start")
        proc.send_signal(signal.SIGTERM)
        thread.join(10)
        assert result["response"].body == b"slept"
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_running_the_app_as_root_needs_a_flag(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(APPS_DIR)}
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--bind", f"unix:{tmp_path}/s.sock", APP],
                            capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "refusing to run the app as root" in result.stderr and "--user" in result.stderr
    assert not (tmp_path / "s.sock").exists()
