"""CGI mode (wsgi_fcgi/cgi.py): one request per process, started the way a
web server starts a CGI script -- a CGI environment, the body on stdin, the
response expected on stdout.

The functional tests run ``python -m wsgi_fcgi`` (and scripts that call
``serve(app)``, and the example ``dispatch.fcgi`` as www-data) as a
subprocess with a bare CGI environment. Stdin is a file the test keeps open,
so its offset afterwards says exactly how much of the body the script read.
The end-to-end tests through Apache mod_cgid are in test_apache_cgi.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import pytest

from support import FLASK_APP_DIR
from support.sites import install_dispatch
from support.webservers import UNPRIVILEGED_USER
from wsgi_fcgi.cgi import HOW_TO_RUN, ModeError, choose_mode, environ_pairs, is_cgi_environment
from wsgi_fcgi.client import parse_cgi_response, request as fcgi_request

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 30  # for any one script run

CGI_APP = '''
import hashlib, json, os, subprocess, sys, urllib.request

KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH", "CONTENT_TYPE",
        "HTTP_PROXY", "HTTP_TRANSFER_ENCODING", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "wsgi.run_once",
        "wsgi.multiprocess", "wsgi.multithread", "wsgi.url_scheme", "wsgi.input_terminated")


def json_response(start_response, data, status="200 OK"):
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        info = {key: environ.get(key) for key in KEYS}
        info.update(size=len(body), sha256=hashlib.sha256(body).hexdigest(), body=body[:100].decode("latin-1"))
        return json_response(start_response, info)
    if path == "/read-write-read":
        # a response under way before the body is read: Apache has written the
        # whole body first, so the script must not leave it on stdin
        first = environ["wsgi.input"].read(10)
        start_response("200 OK", [("Content-Type", "text/plain")])

        def generate():
            yield b"x" * 200000
            rest = environ["wsgi.input"].read()
            yield ("\\n" + json.dumps({"first": len(first), "rest": len(rest),
                                       "sha256": hashlib.sha256(first + rest).hexdigest()})).encode()
        return generate()
    if path == "/ignore-body":
        size = int(environ.get("QUERY_STRING") or 1048576)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return [b"y" * size]
    if path == "/print":
        print("stray print from the app")
        sys.stdout.flush()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    if path == "/child-stdin":
        # a process the app starts inherits fd 0: not the request body, not a terminal
        out = subprocess.run(["cat"], capture_output=True, timeout=10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"child read %d bytes" % len(out.stdout)]
    if path == "/proxy":
        child = subprocess.run(["env"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        return json_response(start_response, {
            "environ": environ.get("HTTP_PROXY"),
            "os_environ": os.environ.get("HTTP_PROXY"),
            "os_environ_lower": os.environ.get("http_proxy"),
            "child": [line for line in child if line.lower().startswith("http_proxy=")],
            "urllib": urllib.request.getproxies().get("http"),
        })
    if path == "/raise":
        raise RuntimeError("boom before the headers")
    if path == "/raise-late":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def late():
            yield b"partial"
            raise RuntimeError("boom after the headers")
        return late()
    if path == "/bad-header":
        start_response("200 OK", [("X-Bad", "a\\r\\nInjected: 1")])
        return [b"never sent"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
'''

SERVE_SCRIPT = '''
import sys
from wsgi_fcgi import serve
from cgi_app import app

print("printed before serve()")  # still in sys.stdout's buffer (a pipe) when serve() starts
serve(app, allow_root=True)
print("after serve() returned")  # fd 1 is stderr now: never part of the response
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cgi-app")
    (path / "cgi_app.py").write_text(CGI_APP)
    (path / "serve_script.py").write_text(SERVE_SCRIPT)
    return path


def cgi_environ(path: str = "/", *, method: str = "GET", query: str = "", script_name: str = "",
                body: Optional[bytes] = None, **extra: str) -> Dict[str, str]:
    """What Apache sets for a CGI script (the request part), plus PATH."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": script_name + path + (f"?{query}" if query else ""),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "REMOTE_ADDR": "127.0.0.1",
    }
    if body is not None:
        env["CONTENT_LENGTH"] = str(len(body))
        env["CONTENT_TYPE"] = "application/octet-stream"
    env.update(extra)
    return env


@dataclass
class CGIRun:
    returncode: int
    stdout: bytes
    stderr: str
    stdin_read: int  # how many bytes of its stdin the script consumed

    @property
    def parsed(self) -> Tuple[int, str, List[Tuple[str, str]], bytes]:
        return parse_cgi_response(self.stdout)

    @property
    def status(self) -> int:
        return self.parsed[0]

    @property
    def body(self) -> bytes:
        return self.parsed[3]

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.parsed[2] if k.lower() == name.lower()), None)

    def json(self) -> Dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


EnvArg = Union[Mapping[str, str], Mapping[bytes, bytes]]


def run_script(argv: Sequence[str], env: EnvArg, *, stdin: bytes = b"", cwd: Optional[Path] = None,
               user: Optional[str] = None) -> CGIRun:
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin)
        stdin_file.seek(0)
        proc = subprocess.run(list(argv), stdin=stdin_file, capture_output=True, env=env, cwd=cwd,
                              timeout=TIMEOUT, user=user)
        # the child shared the file offset with us
        read = os.lseek(stdin_file.fileno(), 0, os.SEEK_CUR)
    return CGIRun(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"), read)


def run_cgi(app_dir: Path, env: EnvArg, *, stdin: bytes = b"", args: Sequence[str] = (),
            app: str = "cgi_app:app") -> CGIRun:
    """``python -m wsgi_fcgi ARGS APP`` as a CGI script (as root, so --allow-root)."""
    return run_script([sys.executable, "-m", "wsgi_fcgi", "--allow-root", *args, app], env, stdin=stdin, cwd=app_dir)


# --- which mode -------------------------------------------------------------------------

CGI_ENV = {"REQUEST_METHOD": "GET", "GATEWAY_INTERFACE": "CGI/1.1"}


@pytest.mark.parametrize("mode, bind, env, fd0_listening, on_terminal, expected", [
    # auto: a bind or a listening socket on fd 0 is FastCGI, even with CGI variables around
    ("auto", ["unix:/tmp/x.sock"], CGI_ENV, False, False, "fastcgi"),
    ("auto", None, CGI_ENV, True, False, "fastcgi"),
    # mod_cgid: stdin is a *connected* socket, so "not a listening socket" is the test
    ("auto", None, CGI_ENV, False, False, "cgi"),
    ("auto", None, {"REQUEST_METHOD": "POST"}, False, True, "cgi"),  # by hand from a terminal
    ("auto", None, {"GATEWAY_INTERFACE": "CGI/1.1"}, False, False, "cgi"),
    # neither: a service (stdin /dev/null) keeps the 127.0.0.1:9000 default ...
    ("auto", None, {}, False, False, "fastcgi"),
    # forced
    ("fastcgi", None, CGI_ENV, False, True, "fastcgi"),
    ("fastcgi", None, {}, False, True, "fastcgi"),
    ("cgi", None, CGI_ENV, True, False, "cgi"),
])
def test_choose_mode(mode: str, bind: Optional[List[str]], env: Dict[str, str], fd0_listening: bool,
                     on_terminal: bool, expected: str) -> None:
    assert choose_mode(mode, bind, env, fd0_listening=fd0_listening, on_terminal=on_terminal) == expected


@pytest.mark.parametrize("mode, bind, env, on_terminal, message", [
    # ... but a person at a terminal gets told how to run it
    ("auto", None, {}, True, "--bind ADDRESS"),
    ("cgi", None, {}, False, "REQUEST_METHOD is not set"),
    ("cgi", ["unix:/tmp/x.sock"], CGI_ENV, False, "takes no --bind"),
])
def test_choose_mode_refuses(mode: str, bind: Optional[List[str]], env: Dict[str, str], on_terminal: bool,
                             message: str) -> None:
    with pytest.raises(ModeError, match=message.replace("(", r"\(")):
        choose_mode(mode, bind, env, fd0_listening=False, on_terminal=on_terminal)


def test_cgi_environment_signs() -> None:
    assert is_cgi_environment({"REQUEST_METHOD": "GET"})
    assert is_cgi_environment({"GATEWAY_INTERFACE": "CGI/1.1"})
    assert not is_cgi_environment({"GATEWAY_INTERFACE": "", "PATH": "/bin"})


def test_environ_pairs_give_back_the_bytes_the_server_set() -> None:
    # os.environ decodes with the file system encoding and surrogateescape
    raw = b"/caf\xc3\xa9/\xff"
    value = raw.decode(sys.getfilesystemencoding(), "surrogateescape")
    assert environ_pairs({"PATH_INFO": value}) == [("PATH_INFO", raw.decode("latin-1"))]


# --- start-up ------------------------------------------------------------------------

def test_a_dispatch_script_run_from_a_terminal_says_how_to_run_it(app_dir: Path) -> None:
    # (python -m wsgi_fcgi from a terminal serves on 127.0.0.1:9000, as documented.)
    script = app_dir / "dispatch_terminal.fcgi"
    script.write_text("from wsgi_fcgi import serve\nfrom cgi_app import app\nserve(app, allow_root=True)\n")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, str(script)],
                              stdin=secondary, capture_output=True, cwd=app_dir, timeout=TIMEOUT,
                              env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode() == f"wsgi_fcgi: error: {HOW_TO_RUN}\n"


def test_forced_cgi_without_a_cgi_environment_does_not_read_stdin(app_dir: Path) -> None:
    read_end, write_end = os.pipe()  # never written to nor closed: a read would hang
    try:
        proc = subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "--mode", "cgi", "cgi_app:app"],
                              stdin=read_end, capture_output=True, cwd=app_dir, timeout=TIMEOUT,
                              env={"PATH": os.environ["PATH"]})
    finally:
        os.close(read_end)
        os.close(write_end)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert len(proc.stderr.decode().splitlines()) == 1
    assert "REQUEST_METHOD is not set" in proc.stderr.decode()


def test_forced_cgi_with_bind_is_a_usage_error(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/echo"), args=["--mode", "cgi", "--bind", "unix:/tmp/never.sock"])
    assert (run.returncode, run.stdout) == (2, b"")
    assert "takes no --bind" in run.stderr


def test_unknown_mode_is_a_usage_error(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/echo"), args=["--mode", "scgi"])
    assert run.returncode == 2
    assert "--mode" in run.stderr


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wfcgi-cgi-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_listening_socket_on_fd0_wins_over_cgi_variables(app_dir: Path, short_dir: Path) -> None:
    """mod_fcgid and lighttpd may leave CGI-looking variables in the spawned
    app's environment: a listening socket on fd 0 still means FastCGI."""
    path = short_dir / "app.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    proc = subprocess.Popen([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "cgi_app:app"],
                            stdin=listener.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=app_dir, env=cgi_environ("/echo"), start_new_session=True)
    listener.close()
    try:
        for n in range(2):  # a second request: a FastCGI process, not a one-shot CGI
            response = fcgi_request(f"unix:{path}", f"/echo?n={n}", timeout=TIMEOUT)
            assert response.status == 200, response
            assert json.loads(response.body)["QUERY_STRING"] == f"n={n}"
        assert proc.poll() is None
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err


def test_forced_fastcgi_ignores_a_cgi_environment(wsgi_server) -> None:  # type: ignore[no-untyped-def]
    server = wsgi_server("app:app", "--mode", "fastcgi", env=cgi_environ("/hello/cgi"))
    response = fcgi_request(server.address, "/hello/fastcgi", timeout=TIMEOUT)
    assert (response.status, response.body) == (200, b"Hello, fastcgi!")


def test_app_that_cannot_be_loaded_is_a_clean_500(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/", method="POST", body=b"abc"), stdin=b"abc", app="no_such_module:app")
    assert run.returncode == 4
    assert run.status == 500
    assert run.body == b"Internal Server Error"
    assert run.stderr.count("\n") == 1 and "no_such_module" in run.stderr
    assert run.stdin_read == 3  # the body is consumed before answering (mod_cgid resets otherwise)


# --- the request --------------------------------------------------------------------------

def test_get(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/echo", query="a=1&b=%20", script_name="/cgi-bin/app"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(b"Status: 200 OK\r\n")  # the CGI response, no FastCGI records
    env = run.json()
    assert env["REQUEST_METHOD"] == "GET"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/cgi-bin/app", "/echo", "a=1&b=%20")
    assert env["CONTENT_LENGTH"] is None and env["size"] == 0
    assert env["wsgi.run_once"] is True  # PEP 3333 under CGI
    assert (env["wsgi.multiprocess"], env["wsgi.multithread"]) == (True, False)
    assert env["wsgi.url_scheme"] == "http"
    assert run.stderr == ""  # nothing logged for a good request


def test_https_and_script_name_option(app_dir: Path) -> None:
    env = cgi_environ("/app/echo", HTTPS="on", SERVER_PORT="443")
    env["SCRIPT_NAME"], env["PATH_INFO"] = "", "/app/echo"
    run = run_cgi(app_dir, env, args=["--script-name", "/app"])
    data = run.json()
    assert data["wsgi.url_scheme"] == "https"
    assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == ("/app", "/echo")


def test_non_ascii_path_reaches_the_app_as_its_bytes(app_dir: Path) -> None:
    env: Dict[bytes, bytes] = {k.encode(): v.encode() for k, v in cgi_environ("/echo").items()}
    env[b"PATH_INFO"] = b"/echo"
    env[b"QUERY_STRING"] = b"caf\xc3\xa9"
    env[b"HTTP_X_RAW"] = b"\xff\xfe"
    run = run_script([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "cgi_app:app"], env, cwd=app_dir)
    assert run.json()["QUERY_STRING"] == "caf\xc3\xa9"  # PEP 3333: the bytes as latin-1


def test_post_reads_exactly_content_length(app_dir: Path) -> None:
    body = bytes(range(256)) * 1000
    run = run_cgi(app_dir, cgi_environ("/echo", method="POST", body=body), stdin=body + b"NOT PART OF IT")
    assert run.returncode == 0, run.stderr
    data = run.json()
    assert (data["size"], data["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert data["CONTENT_LENGTH"] == str(len(body))
    assert run.stdin_read == len(body)  # RFC 3875 4.2: never past CONTENT_LENGTH


def test_no_content_length_means_no_body(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/echo", method="POST"), stdin=b"stray bytes")
    assert run.json()["size"] == 0
    assert run.stdin_read == 0


def test_unusable_content_length_means_no_body(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/echo", method="POST", CONTENT_LENGTH="12abc"), stdin=b"stray bytes")
    data = run.json()
    assert (data["size"], data["CONTENT_LENGTH"]) == (0, None)
    assert run.stdin_read == 0


def test_chunked_body_without_length_is_read_to_its_end(app_dir: Path) -> None:
    # Apache passes a chunked request body this way: no CONTENT_LENGTH, the
    # Transfer-Encoding header, the body on stdin and then end of stream.
    body = b"z" * 150000
    run = run_cgi(app_dir, cgi_environ("/echo", method="POST", HTTP_TRANSFER_ENCODING="chunked"), stdin=body)
    data = run.json()
    assert (data["size"], data["CONTENT_LENGTH"], data["HTTP_TRANSFER_ENCODING"]) == (len(body), str(len(body)), None)


def test_body_shorter_than_content_length(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/echo", method="POST", CONTENT_LENGTH="100"), stdin=b"only 13 bytes")
    assert run.returncode == 1
    assert run.stdout == b""  # the client is gone: nobody to answer
    assert "ended after 13 of 100 bytes" in run.stderr


def test_limit_request_body_answers_413_and_drains_the_body(app_dir: Path) -> None:
    body = b"q" * 300000
    run = run_cgi(app_dir, cgi_environ("/echo", method="POST", body=body), stdin=body,
                  args=["--limit-request-body", "1000"])
    assert run.status == 413
    assert run.stdin_read == len(body)


def test_response_before_the_body_is_read_keeps_the_body(app_dir: Path) -> None:
    body = os.urandom(300000)
    run = run_cgi(app_dir, cgi_environ("/read-write-read", method="POST", body=body), stdin=body)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.body.rsplit(b"\n", 1)[1])
    assert summary == {"first": 10, "rest": len(body) - 10, "sha256": hashlib.sha256(body).hexdigest()}


def test_unread_body_and_large_response_do_not_deadlock(app_dir: Path) -> None:
    """Apache (mod_cgi and mod_cgid) writes the whole request body to the
    script before it reads any of the response. An app that ignores a large
    body and answers with a large response must not block on a full stdout
    while the server blocks on a full stdin."""
    body = b"b" * (2 << 20)
    env = cgi_environ("/ignore-body", method="POST", query=str(2 << 20), body=body)
    proc = subprocess.Popen([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "cgi_app:app"], cwd=app_dir,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    watchdog = threading.Timer(TIMEOUT, os.kill, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(body)  # first the whole body, as Apache does
        proc.stdin.close()
        out = proc.stdout.read()  # then the response
        err = proc.stderr.read()
        proc.wait()
    finally:
        watchdog.cancel()
    assert proc.returncode == 0, err
    status, _, _, response_body = parse_cgi_response(out)
    assert (status, len(response_body)) == (200, 2 << 20)


def test_head_sends_headers_only(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/ignore-body", method="HEAD", query="1000"))
    assert run.status == 200
    assert run.header("Content-Length") == "1000"
    assert run.body == b""


# --- errors --------------------------------------------------------------------------------

def test_app_error_is_a_clean_500_with_the_traceback_on_stderr(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/raise"))
    assert run.returncode == 1
    assert run.stdout == (b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
                          b"Content-Length: 21\r\n\r\nInternal Server Error")
    assert "RuntimeError: boom before the headers" in run.stderr
    assert run.stderr.count("Traceback") == 1  # not twice (the FastCGI STDERR copy is dropped)


def test_app_error_after_the_headers_ends_the_response(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/raise-late"))
    assert run.returncode == 1
    assert run.status == 200 and run.body == b"partial"
    assert "RuntimeError: boom after the headers" in run.stderr


def test_header_injection_is_a_500(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/bad-header"))
    assert run.status == 500
    assert b"Injected" not in run.stdout
    assert "invalid value for header X-Bad" in run.stderr


def test_client_gone_while_writing(app_dir: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads the response
    try:
        proc = subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "cgi_app:app"],
                              stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, cwd=app_dir,
                              env=cgi_environ("/ignore-body", query="100"), timeout=TIMEOUT)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr


# --- the process ---------------------------------------------------------------------------

def test_print_in_the_app_goes_to_stderr_not_into_the_response(app_dir: Path) -> None:
    run = run_cgi(app_dir, cgi_environ("/print"))
    assert run.stdout.startswith(b"Status: 200 OK\r\n")
    assert run.body == b"ok"
    assert "stray print from the app" in run.stderr


def test_processes_the_app_starts_get_neither_the_body_nor_the_response(app_dir: Path) -> None:
    body = b"secret body"
    run = run_cgi(app_dir, cgi_environ("/child-stdin", method="POST", body=body), stdin=body)
    assert run.body == b"child read 0 bytes"


def test_httpoxy_proxy_header_reaches_no_http_client(app_dir: Path) -> None:
    """Under CGI a client's "Proxy:" header is HTTP_PROXY in the process
    environment: not in the environ, not in os.environ, not in a child's
    environment, not a proxy for urllib. A lowercase http_proxy cannot come
    from a header: it is the host's setting and stays."""
    env = cgi_environ("/proxy", HTTP_PROXY="http://evil.example:3128", http_proxy="http://proxy.local:8080")
    data = run_cgi(app_dir, env).json()
    assert data == {"environ": None, "os_environ": None, "os_environ_lower": "http://proxy.local:8080",
                    "child": ["http_proxy=http://proxy.local:8080"], "urllib": "http://proxy.local:8080"}


def test_serve_in_a_script_serves_one_request_and_returns(app_dir: Path) -> None:
    body = b"via serve()"
    run = run_script([sys.executable, "serve_script.py"], cgi_environ("/echo", method="PUT", body=body),
                     stdin=body, cwd=app_dir)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(b"Status: 200 OK\r\n")
    assert run.json()["body"] == "via serve()"
    assert "printed before serve()" in run.stderr
    assert "after serve() returned" in run.stderr


def test_serve_in_a_script_exits_1_after_an_app_error(app_dir: Path) -> None:
    run = run_script([sys.executable, "serve_script.py"], cgi_environ("/raise"), cwd=app_dir)
    assert (run.returncode, run.status) == (1, 500)
    assert "after serve() returned" not in run.stderr


def test_refuses_root_like_fastcgi(app_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run = run_script([sys.executable, "-m", "wsgi_fcgi", "cgi_app:app"], cgi_environ("/echo"), cwd=app_dir)
    assert run.returncode == 2
    assert "refusing to run the app as root" in run.stderr


# --- the example dispatch.fcgi, as Apache would run it -----------------------------------------

@pytest.fixture(scope="module")
def dispatch(shared_dirs, hosting_venv) -> Path:  # type: ignore[no-untyped-def]
    """examples/flask_app/dispatch.fcgi set up as the docs say, readable by www-data."""
    base = shared_dirs("wfcgi-cgi-dispatch-")
    app_dir = base / "flask_app"
    shutil.copytree(FLASK_APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.fcgi", "*.md"))
    return install_dispatch(FLASK_APP_DIR / "dispatch.fcgi", base / "public_html" / "dispatch.fcgi",
                            virtualenv=hosting_venv, app_dir=app_dir)


def run_dispatch(dispatch: Path, env: Dict[str, str], stdin: bytes = b"") -> CGIRun:
    env = {**env, "PATH": "/usr/local/bin:/usr/bin:/bin"}  # what Apache passes (no venv on it)
    return run_script([str(dispatch)], env, stdin=stdin, cwd=dispatch.parent, user=UNPRIVILEGED_USER)


def test_dispatch_fcgi_as_cgi_routing_and_url_for(dispatch: Path) -> None:
    env = cgi_environ("/env/x", query="q=1", script_name="/dispatch.fcgi", REQUEST_URI="/env/x?q=1",
                      SCRIPT_FILENAME=str(dispatch), HTTP_HOST="example.org:8080", SERVER_PORT="8080")
    run = run_dispatch(dispatch, env)
    assert run.returncode == 0, run.stderr
    data = run.json()
    # through a RewriteRule to dispatch.fcgi/$1: the app is at the site root
    assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == ("", "/env/x")
    assert data["url_for_external"] == "http://example.org:8080/"
    assert run.header("Content-Type") == "application/json"


def test_dispatch_fcgi_as_cgi_post_form(dispatch: Path) -> None:
    body = b"name=caf%C3%A9&comment=a%26b"
    env = cgi_environ("/form", method="POST", body=body, CONTENT_TYPE="application/x-www-form-urlencoded")
    run = run_dispatch(dispatch, env, body)
    assert run.json() == {"name": ["café"], "comment": ["a&b"]}
    assert run.stdin_read == len(body)


def test_dispatch_fcgi_as_cgi_error(dispatch: Path) -> None:
    run = run_dispatch(dispatch, cgi_environ("/error"))
    assert run.status == 500
    assert b"example error" not in run.stdout
    assert "RuntimeError: example error from /error" in run.stderr


def test_dispatch_fcgi_by_hand_from_a_terminal(dispatch: Path) -> None:
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([str(dispatch)], stdin=secondary, capture_output=True, timeout=TIMEOUT,
                              env={"PATH": "/usr/bin:/bin"}, user=UNPRIVILEGED_USER, cwd=dispatch.parent)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 2
    assert proc.stderr.decode() == f"wsgi_fcgi: error: {HOW_TO_RUN}\n"
