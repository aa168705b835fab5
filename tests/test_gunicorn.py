"""wsgi_fcgi.gunicorn.FastCGIWorker under a real gunicorn, alone and behind real nginx.

Each test starts ``python -m gunicorn -k wsgi_fcgi.gunicorn.FastCGIWorker``
on a unix socket (``tests/apps/bridge_app.py``, two workers) as a process in
its own session, stopped by PID at teardown (TERM, bounded wait, KILL of the
group), and talks to it with ``wsgi_fcgi.client`` or through nginx with the
``examples/nginx/`` templates.

Skipped when gunicorn is not installed (it is in the ``test`` extra, so CI
has it; in CI a missing gunicorn fails instead: ``support.ci.missing``),
except the check of the error a missing gunicorn gives, which hides it on
purpose.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from support import REPO_ROOT
from support.httpclient import HTTPClient, sha256_of
from support.processes import ManagedProcess, can_connect, server_env, short_socket_dir
from support.ci import missing
from support.waiting import wait_for
from support.webservers import Nginx

from wsgi_fcgi.client import Client, FastCGIError

APPS_DIR = Path(__file__).resolve().parent / "apps"
WORKER_CLASS = "wsgi_fcgi.gunicorn.FastCGIWorker"
HAVE_GUNICORN = importlib.util.find_spec("gunicorn") is not None

pytestmark = pytest.mark.timeout(90)

def _control_socket_args() -> List[str]:
    # gunicorn 24+ opens a control socket in ~/.gunicorn by default; parallel
    # test runs (and other engineers' gunicorns) must not share it.
    try:
        from gunicorn.config import Config as GunicornConfig
    except ImportError:
        return []
    return ["--no-control-socket"] if "control_socket_disable" in GunicornConfig().settings else []


class Gunicorn(ManagedProcess):
    """``python -m gunicorn -k FastCGIWorker ... bridge_app:app`` on a unix socket."""

    def __init__(self, workdir: Path, socket_dir: Path, args: List[str]) -> None:
        self.socket_path = socket_dir / "gunicorn.sock"
        self.address = f"unix:{self.socket_path}"
        argv = [
            sys.executable, "-m", "gunicorn", "-k", WORKER_CLASS, "-w", "2", "-b", self.address,
            "--chdir", str(APPS_DIR), "--graceful-timeout", "20", *_control_socket_args(), *args,
            "bridge_app:app",
        ]  # fmt: skip
        super().__init__(argv, name="gunicorn", log_path=workdir / "gunicorn.log", cwd=workdir,
                         env=server_env())

    def start(self) -> None:  # type: ignore[override]
        super().start()
        self.wait_until(lambda: can_connect(self.address), timeout=30, what=f"listening on {self.address}")

    def worker_pids(self) -> List[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return sorted(int(pid) for pid in f.read().split())
        except OSError:
            return []

    def wait_for_workers(self, count: int = 2, timeout: float = 30) -> List[int]:
        self.wait_until(lambda: len(self.worker_pids()) == count, timeout=timeout, what=f"running {count} workers")
        return self.worker_pids()


@pytest.fixture
def gunicorn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    if not HAVE_GUNICORN:
        missing("gunicorn is not installed (pip install 'wsgi_fcgi[gunicorn]')")
    started: List[Gunicorn] = []
    cleanup: List[Path] = []

    def start(*args: str) -> Gunicorn:
        workdir = tmp_path / f"gunicorn-{len(started)}"
        workdir.mkdir()
        socket_dir = short_socket_dir(workdir)
        if socket_dir != workdir:
            cleanup.append(socket_dir)
        server = Gunicorn(workdir, socket_dir, list(args))
        started.append(server)
        server.start()
        return server

    yield start

    failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))
    for server in reversed(started):
        server.stop(signal.SIGTERM, 25)
        if failed:
            request.node.add_report_section("teardown", f"gunicorn pid {server.pid} output", server.output_text())
    for path in cleanup:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nginx_keepalive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Nginx]]:
    """nginx with app-keepalive.conf + upstream-keepalive.conf (the conftest
    ``nginx`` fixture has no http-level template)."""
    servers: List[Nginx] = []

    def start(backend: str) -> Nginx:
        server = Nginx(tmp_path / "nginx-keepalive", "app-keepalive.conf", {"backend": backend},
                       http_site="upstream-keepalive.conf")
        servers.append(server)
        server.start()
        return server

    yield start

    failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))
    for server in servers:
        server.stop()
        if failed:
            request.node.add_report_section("teardown", "nginx (keepalive) logs", server.error_log_text())


# --- through nginx ---------------------------------------------------------------


@pytest.mark.webserver
def test_hello_and_environ_through_nginx(gunicorn: Any, nginx: Any) -> None:
    server = gunicorn()
    web = nginx("app-root.conf", socket=server.socket_path)
    http = HTTPClient(web.url, timeout=20)

    hello = http.get("/hello")
    assert (hello.status, hello.body) == (200, b"Hello, World!")
    assert hello.header("Content-Type") == "text/plain; charset=utf-8"

    env = http.get("/environ?a=1&b=%20").json()
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["HTTP_HOST"] == f"127.0.0.1:{web.port}"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.multiprocess"] is True  # -w 2
    assert env["wsgi.multithread"] is False
    assert env["FCGI_ROLE"] == "RESPONDER"
    assert "gunicorn.socket" not in env  # our environ, not gunicorn's HTTP one


@pytest.mark.webserver
def test_post_body_through_nginx(gunicorn: Any, nginx: Any) -> None:
    server = gunicorn()
    web = nginx("app-root.conf", socket=server.socket_path)
    http = HTTPClient(web.url, timeout=30)
    body = os.urandom(300_000)  # several STDIN records
    size, digest = sha256_of([body])
    result = http.post("/sha256", body, {"Content-Type": "application/octet-stream"})
    assert result.status == 200
    assert result.text == f"{size} {digest} {size}"

    chunked = http.post("/sha256", iter([body[:1000], body[1000:]]))  # nginx buffers it, sends CONTENT_LENGTH
    assert chunked.status == 200 and chunked.text.startswith(f"{size} {digest}")


@pytest.mark.webserver
def test_app_error_is_a_plain_500_through_nginx(gunicorn: Any, nginx: Any) -> None:
    server = gunicorn()
    web = nginx("app-root.conf", socket=server.socket_path)
    result = HTTPClient(web.url, timeout=20).get("/error-before")
    assert result.status == 500
    assert result.body == b"Internal Server Error"
    assert b"Traceback" not in result.body and b"secret" not in result.body
    # The traceback goes to FCGI_STDERR, which nginx logs, and to gunicorn's error log.
    wait_for(lambda: "deliberate failure" in web.error_log_text(), 10, "the traceback in nginx's error log")
    assert "RuntimeError: deliberate failure" in server.output_text()


@pytest.mark.webserver
def test_max_requests_recycles_workers_under_nginx_keepalive(gunicorn: Any, nginx_keepalive: Any) -> None:
    server = gunicorn("--max-requests", "4", "--keep-alive", "65")
    first = set(server.wait_for_workers())
    web = nginx_keepalive(server.address)
    conn = HTTPClient(web.url, timeout=20).connection()  # one HTTP connection: nginx reuses its upstream ones
    try:
        pids = set()
        for i in range(24):
            result = HTTPClient(web.url).request("GET", f"/pid?i={i}", conn=conn)
            assert result.status == 200, (i, result.status, result.body)
            pids.add(int(result.body))
    finally:
        conn.close()
    # 24 requests, 4 per worker: at least 6 workers served, and first workers were replaced
    # (which ones nginx's kept connections reach is its choice: not necessarily both).
    assert len(pids) >= 6, pids
    assert first - set(server.wait_for_workers())
    assert "upstream prematurely closed" not in web.error_log_text()


HOOKS_CONFIG = """
def pre_request(worker, req):
    worker.log.info("hook pre_request %s %s", req.method, req.path)

def post_request(worker, req, environ, resp):
    worker.log.info("hook post_request %s %s -> %s sent=%s", req.method, req.uri, resp.status, resp.sent)
"""


@pytest.mark.webserver
def test_access_log_and_request_hooks_through_nginx(gunicorn: Any, nginx: Any, tmp_path: Path) -> None:
    config = tmp_path / "hooks.conf.py"
    config.write_text(HOOKS_CONFIG)
    server = gunicorn("-w", "1", "-c", str(config), "--access-logfile", "-",
                      "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s "%(a)s" %({x-test}i)s')
    web = nginx("app-root.conf", socket=server.socket_path)
    http = HTTPClient(web.url, timeout=20)
    assert http.get("/hello?x=1", headers={"User-Agent": "probe/1", "X-Test": "t1"}).status == 200
    assert http.get("/error-before", headers={"User-Agent": "probe/2"}).status == 500
    assert http.head("/hello").status == 200

    def logged() -> bool:
        return server.output_text().count("hook post_request") == 3
    wait_for(logged, 10, "three post_request lines")
    output = server.output_text()
    assert '127.0.0.1 "GET /hello?x=1 HTTP/1.1" 200 13 "probe/1" t1' in output
    assert '127.0.0.1 "GET /error-before HTTP/1.1" 500 - "probe/2" -' in output
    assert '127.0.0.1 "HEAD /hello HTTP/1.1" 200 0 ' in output
    assert "client went away" not in output  # the HEAD response went out whole, in one write
    assert "hook pre_request GET /hello" in output
    assert "hook post_request GET /hello?x=1 -> 200 OK sent=13" in output
    assert "hook post_request GET /error-before -> 500 Internal Server Error sent=None" in output


def test_statsd_gets_request_metrics(gunicorn: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        server = gunicorn("--statsd-host", f"127.0.0.1:{statsd.getsockname()[1]}", "--statsd-prefix", "app")
        assert Client(server.address, timeout=10).request("/hello").status == 200
        seen: List[str] = []

        def counted_200() -> bool:
            try:
                while True:
                    seen.extend(statsd.recv(4096, socket.MSG_DONTWAIT).decode().splitlines())
            except BlockingIOError:
                pass
            return any(m.startswith("app.gunicorn.request.status.200:1|c") for m in seen)
        wait_for(counted_200, 10, "the 200 counted in statsd")
    assert any(m.startswith("app.gunicorn.requests:1|c") for m in seen), seen
    assert any(m.startswith("app.gunicorn.request.duration:") for m in seen), seen


# --- with our client -------------------------------------------------------------


def test_keep_conn_connection_serves_many_requests(gunicorn: Any) -> None:
    server = gunicorn()
    with Client(server.address, timeout=10, keep_conn=True) as client:
        responses = [client.request("/pid") for _ in range(10)]
        post = client.request("/sha256", method="POST", body=b"abc" * 30_000)
        assert client.connections == 1
    assert {r.status for r in responses} == {200}
    assert len({r.body for r in responses}) == 1  # one connection: one worker served them all
    size, digest = sha256_of([b"abc" * 30_000])
    assert post.body.decode() == f"{size} {digest} {size}"
    values = Client(server.address, timeout=10).get_values()
    assert values == {"FCGI_MAX_CONNS": "66", "FCGI_MAX_REQS": "2", "FCGI_MPXS_CONNS": "0"}


def test_app_error_is_a_fastcgi_500_with_traceback_on_stderr(gunicorn: Any) -> None:
    server = gunicorn()
    response = Client(server.address, timeout=10).request("/error-before")
    assert (response.protocol_status, response.app_status) == (0, 1)  # REQUEST_COMPLETE, app failed
    assert response.stdout.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"HTTP/1." not in response.stdout  # CGI headers, never an HTTP status line
    assert response.body == b"Internal Server Error"
    assert b"Traceback" in response.stderr and b"deliberate failure" in response.stderr


def test_max_requests_counts_requests_on_kept_connections(gunicorn: Any) -> None:
    server = gunicorn("--max-requests", "3")
    first = set(server.wait_for_workers())
    pids: List[int] = []
    with Client(server.address, timeout=10, keep_conn=True) as client:
        for i in range(12):
            if i and i % 3 == 0:
                # The worker closes the kept connection after its 3rd response and
                # exits; wait for that rather than race our next request against
                # the close (nginx retries such a request: see the nginx test).
                wait_for(lambda: pids[-1] not in server.worker_pids(), 10, "the recycled worker to exit")
            response = client.request("/pid")
            assert response.status == 200
            pids.append(int(response.body))
        assert client.connections == 4  # three requests per kept connection, then a fresh worker
    assert [pids[i] for i in range(0, 12, 3)] == [pids[i] for i in range(2, 12, 3)], pids
    assert len(set(pids)) == 4, pids
    assert not first & set(server.wait_for_workers())
    assert "served 3 requests, recycling" in server.output_text()


def test_graceful_stop_finishes_the_request_in_flight(gunicorn: Any, tmp_path: Path) -> None:
    server = gunicorn()
    marker = tmp_path / "started"
    outcome: Dict[str, Any] = {}

    def slow_request() -> None:
        try:
            outcome["response"] = Client(server.address, timeout=20).request(f"/sleep?s=2&started={marker}")
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(marker.exists, 10, "the request to start")
    server.send_signal(signal.SIGTERM)
    thread.join(20)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert (outcome["response"].status, outcome["response"].body) == (200, b"slept")
    assert server.wait(20) == 0
    assert not server.socket_path.exists()  # gunicorn unlinks its unix socket on a clean stop


def test_quick_stop_does_not_wait_for_the_request_in_flight(gunicorn: Any, tmp_path: Path) -> None:
    server = gunicorn()
    marker = tmp_path / "started"
    errors: List[BaseException] = []

    def slow_request() -> None:
        try:
            Client(server.address, timeout=30).request(f"/sleep?s=20&started={marker}")
        except FastCGIError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(marker.exists, 10, "the request to start")
    server.send_signal(signal.SIGINT)  # gunicorn's quick shutdown: workers get QUIT and exit at once
    assert server.wait(10) == 0
    thread.join(10)
    assert not thread.is_alive()
    # Cut off, not answered: the app was 20 s from its answer when the worker went.
    assert len(errors) == 1 and "connection closed before END_REQUEST" in str(errors[0])


def test_script_name_from_the_environment_is_the_mount_point(gunicorn: Any) -> None:
    server = gunicorn("-e", "SCRIPT_NAME=/app/")
    env = json.loads(Client(server.address, timeout=10).request("/app/environ?q=1").body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/app", "/environ", "q=1")
    assert env["RAW_URI"] == "/app/environ?q=1"  # gunicorn's key, as its own workers set it


def test_idle_workers_heartbeat_and_a_hung_request_is_killed_and_named(gunicorn: Any) -> None:
    server = gunicorn("--timeout", "2")
    before = server.wait_for_workers()
    # Idle, each worker goes on stamping its heartbeat file (gunicorn's notify(),
    # once a second here). Wait until every worker's heartbeat has moved 4 times
    # (twice --timeout), long past the point where the arbiter kills a silent worker.
    beats: Dict[int, set] = {}

    def heartbeats_moved() -> bool:
        for inode, mtime in heartbeat_files(server.pid).items():
            beats.setdefault(inode, set()).add(mtime)
        return len(beats) >= len(before) and all(len(stamps) > 4 for stamps in beats.values())
    wait_for(heartbeats_moved, 20, "4 heartbeats from each idle worker")
    assert server.worker_pids() == before  # none killed (a replaced one would be an extra file)
    with pytest.raises(FastCGIError):
        Client(server.address, timeout=20).request("/sleep?s=8")
    output = server.output_text()
    assert "WORKER TIMEOUT" in output
    assert "timed out while handling GET /sleep?s=8" in output
    # The arbiter replaced the killed worker, and it serves.
    assert Client(server.address, timeout=10).request("/hello").status == 200


def heartbeat_files(arbiter: int) -> Dict[int, float]:
    """inode -> mtime of gunicorn's heartbeat files, one per worker, as the
    arbiter holds them open: unlinked ``wgunicorn-*`` temp files that each
    worker stamps with ``os.utime`` on every notify(), and that the arbiter
    compares with --timeout."""
    found: Dict[int, float] = {}
    fd_dir = f"/proc/{arbiter}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if "wgunicorn-" in os.readlink(f"{fd_dir}/{fd}"):
                stat = os.stat(f"{fd_dir}/{fd}")
                found[stat.st_ino] = stat.st_mtime
        except OSError:
            continue
    return found


# --- without gunicorn ------------------------------------------------------------


def _run_python(code: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env=server_env())


def test_missing_gunicorn_gives_a_clear_error() -> None:
    hide = "import sys; sys.modules['gunicorn'] = None; "
    result = _run_python(hide + "import wsgi_fcgi.gunicorn")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == ("ModuleNotFoundError: wsgi_fcgi.gunicorn.FastCGIWorker needs gunicorn, "
                         "which is not installed: pip install 'wsgi_fcgi[gunicorn]'"), result.stderr
    # The rest of the package never needs it.
    core = _run_python(hide + "import wsgi_fcgi, wsgi_fcgi.worker, wsgi_fcgi.cli, wsgi_fcgi.manager; print('ok')")
    assert (core.returncode, core.stdout.strip()) == (0, "ok"), core.stderr
