"""Several backend hosts behind one nginx: what docs/multi-host.md shows.

Linux routes all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2
and 127.0.0.3 stand in for two backend machines: each runs its own
``python -m wsgi_fcgi --bind HOST:PORT --allow-remote --allowed-addr
127.0.0.1`` with its own copy of the app code, and nginx (listening on
127.0.0.1, with examples/nginx/multi-host.conf and
upstream-multi-host.conf) connects to them from 127.0.0.1, the one address
each backend lets in. A socket bound to 127.0.0.4 plays a machine that is
neither. No network namespace is needed: the kernel picks 127.0.0.1 as the
source of a connection to any 127/8 address, exactly as nginx's host picks
its own address on a private network.

Checked here, with real nginx and real backends, every process stopped by
PID (the fixtures' teardown):
- only nginx's address may connect, others are closed unanswered (and
  logged), including the backend's own address;
- ``python -m wsgi_fcgi.client HOST:PORT /health`` exits 0 for a live
  backend, 2 for a stopped one;
- a rolling deploy (new code, HUP one backend, wait until it serves only the
  new version, then the next) under a steady request loop through nginx:
  every response 200, both versions answer halfway, only the new one at the
  end;
- one backend stopped (SIGTERM) under the same loop: every response 200,
  during and after the stop, and afterwards all from the other backend;
  nginx's error log shows the refused connect it retried elsewhere; started
  again on its address, nginx sends it requests again;
- a POST that nginx could not connect for is sent to the other backend.
No test sleeps in place of waiting (support.waiting.wait_for) or asserts
on elapsed time; the request loops are sequential and bounded.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Set

import pytest

from support import REPO_ROOT
from support.fastcgi import children_of, connect_from, is_end, read_events, request_bytes, server_closed
from support.httpclient import HTTPClient
from support.net import free_port, port_of
from support.processes import WsgiFcgiServer, server_env
from support.requestloop import RequestLoop, http_get, write_module
from support.waiting import wait_for
from support.webservers import Nginx
from wsgi_fcgi import protocol as p
from wsgi_fcgi.client import Client

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(120)]

HOSTS = ("127.0.0.2", "127.0.0.3")  # the backend machines
NGINX_ADDR = "127.0.0.1"  # where nginx's connections to them come from
OUTSIDER = "127.0.0.4"  # any other machine
WORKERS = 2
HEALTH = "/health"
# About 20 requests a second through nginx: a stop or a reload takes a few
# seconds (kept connections get up to 3 s to go quiet), and the loops stay
# at a few hundred requests.
PAUSE = 0.05
MODULE = "deployapp"


@dataclass
class Backend:
    host: str
    code: Path  # this machine's copy of the app module
    server: WsgiFcgiServer

    @property
    def address(self) -> str:
        return self.server.address

    def workers(self) -> Set[int]:
        return set(children_of(self.server.pid))

    def version(self) -> str:
        """The version one of its workers answers with, straight over FastCGI."""
        response = Client(self.address, timeout=10).request("/")
        assert response.status == 200, response
        return response.body.decode().split()[0]


def require_loopback_hosts() -> None:
    for host in (*HOSTS, OUTSIDER):
        with socket.socket() as sock:
            try:
                sock.bind((host, 0))
            except OSError as exc:  # not Linux's 127/8-on-lo: not a missing package, a skip
                pytest.skip(f"cannot bind {host} ({exc}): these tests need 127.0.0.0/8 routed to lo")


def start_backend(wsgi_server: Callable[..., WsgiFcgiServer], host: str, port: int, code_dir: Path) -> Backend:
    """One machine's ``python -m wsgi_fcgi``, as the guide runs it, once its workers are up."""
    server = wsgi_server(
        f"{MODULE}:app", "--bind", f"{host}:{port}", "--allow-remote", "--allowed-addr", NGINX_ADDR,
        "--workers", str(WORKERS), "--ping-path", HEALTH,
        pythonpath=[code_dir], env={"PYTHONDONTWRITEBYTECODE": "1"},  # the deploy rewrites the module
    )  # fmt: skip
    backend = Backend(host, code_dir / f"{MODULE}.py", server)
    wait_for(lambda: len(backend.workers()) == WORKERS, timeout=20, what=f"{host}'s workers")
    return backend


@pytest.fixture
def backends(wsgi_server: Callable[..., WsgiFcgiServer], tmp_path: Path) -> List[Backend]:
    """Two backends serving version v1, each with its code in its own directory."""
    require_loopback_hosts()
    started = []
    for host in HOSTS:
        code_dir = tmp_path / host
        code_dir.mkdir()
        write_module(code_dir / f"{MODULE}.py", "v1")
        started.append(start_backend(wsgi_server, host, free_port(host), code_dir))
    return started


def start_nginx(nginx: Callable[..., Nginx], backends: List[Backend]) -> Nginx:
    one, two = backends
    return nginx("multi-host.conf", http_site="upstream-multi-host.conf", backend1=one.address, backend2=two.address)


def health_check(address: str) -> subprocess.CompletedProcess[str]:
    """The guide's health check, run as a command."""
    argv = [sys.executable, "-m", "wsgi_fcgi.client", address, HEALTH, "--timeout", "5"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=server_env(),
                          stdin=subprocess.DEVNULL)  # fmt: skip


def answers(sock: socket.socket) -> bool:
    """Send one request on ``sock``: True if it is answered, False if the server closes it unanswered."""
    sock.sendall(request_bytes(path="/"))
    return isinstance(read_events(sock, is_end)[-1], p.EndRequest)


# --- who may connect ----------------------------------------------------------------


def test_a_backend_serves_nginx_and_refuses_every_other_address(backends: List[Backend]) -> None:
    backend = backends[0]
    port = port_of(backend.address)
    with connect_from(NGINX_ADDR, port, backend.host) as sock:
        assert answers(sock)
    for source in (OUTSIDER, backend.host):  # another machine; the backend itself
        with connect_from(source, port, backend.host) as sock:
            sock.sendall(request_bytes(path="/"))
            assert server_closed(sock), f"a connection from {source} was served"
        wait_for(lambda s=source: f"refused a connection from {s}" in backend.server.stderr_text(),  # type: ignore[misc]
                 timeout=10, what=f"the refusal of {source} logged")  # fmt: skip


# --- health check -------------------------------------------------------------------


def test_health_check_of_a_live_and_a_stopped_backend(backends: List[Backend]) -> None:
    backend = backends[0]
    live = health_check(backend.address)
    assert (live.returncode, live.stdout.splitlines()[0]) == (0, "HTTP/1.1 200 OK"), live
    assert live.stdout.endswith("pong"), live
    assert backend.server.stop() == 0, backend.server.stderr_text()  # SIGTERM; returns once it has exited
    stopped = health_check(backend.address)
    assert (stopped.returncode, stopped.stdout) == (2, ""), stopped
    assert stopped.stderr.startswith(f"wsgi_fcgi.client: error: cannot connect to {backend.address}: "), stopped


# --- rolling deploy -----------------------------------------------------------------


def deploy(backend: Backend, version: str) -> None:
    """New code on one machine, HUP its master, and wait until it serves only that version."""
    old = backend.workers()
    write_module(backend.code, version)
    backend.server.send_signal(signal.SIGHUP)

    def switched() -> bool:
        workers = backend.workers()
        return len(workers) == WORKERS and not workers & old and backend.version() == version

    wait_for(switched, timeout=30, what=f"{backend.host} serving {version} with new workers only")


def versions(loop: RequestLoop, start: int, end: int) -> Set[str]:
    return {text.split()[0] for _, text in loop.results[start:end]}


def test_rolling_deploy_hup_one_backend_at_a_time(backends: List[Backend], nginx: Callable[..., Nginx]) -> None:
    web = start_nginx(nginx, backends)
    loop = RequestLoop(http_get(HTTPClient(web.url, timeout=30)), limit=400, seconds=90, pause=PAUSE)
    loop.start()
    done_at: List[int] = []  # len(loop.results) when each backend had switched
    try:
        loop.wait_ok(20)
        for backend in backends:
            deploy(backend, "v2")
            done_at.append(len(loop.results))
            loop.wait_ok(20)  # traffic through nginx at this stage before the next
    finally:
        loop.finish()
    assert loop.errors == []
    assert versions(loop, 0, 20) == {"v1"}
    # Halfway (the first machine on v2, the second still on v1) clients get
    # both versions: the app must accept that during a rolling deploy.
    assert versions(loop, done_at[0] + 1, done_at[1]) == {"v1", "v2"}
    # The one request possibly in flight at the switch aside, only v2 after.
    assert versions(loop, done_at[1] + 1, len(loop.results)) == {"v2"}
    assert len(loop.results) - done_at[1] >= 20


# --- one backend stopped ------------------------------------------------------------


def served_by(loop: RequestLoop, start: int, end: int) -> Set[int]:
    return {int(text.split()[1]) for _, text in loop.results[start:end]}


def test_one_backend_stopped_nginx_serves_through_the_other(
    backends: List[Backend], nginx: Callable[..., Nginx], wsgi_server: Callable[..., WsgiFcgiServer]
) -> None:
    web = start_nginx(nginx, backends)
    stopping, staying = backends
    stopping_workers, staying_workers = stopping.workers(), staying.workers()
    loop = RequestLoop(http_get(HTTPClient(web.url, timeout=30)), limit=500, seconds=90, pause=PAUSE)
    loop.start()
    try:
        loop.wait_ok(20)
        before = len(loop.results)
        assert stopping.server.stop() == 0, stopping.server.stderr_text()  # SIGTERM, then it exits
        after = len(loop.results)
        loop.wait_ok(40)
        restarted_at = len(loop.results)
        # Back on the same address: nginx tries it again after fail_timeout (10 s).
        back = start_backend(wsgi_server, stopping.host, port_of(stopping.address), stopping.code.parent)
        wait_for(lambda: served_by(loop, restarted_at, len(loop.results)) & back.workers(), timeout=30,
                 what="nginx sending requests to the restarted backend")  # fmt: skip
    finally:
        loop.finish()
    # During the stop and after it, nginx answered every request: the ones it
    # could not deliver to the stopping machine it sent to the other.
    assert loop.errors == [], loop.errors
    assert served_by(loop, 0, before) & stopping_workers, "the stopped backend had served nothing"
    assert served_by(loop, after + 1, restarted_at) <= staying_workers
    # What nginx saw: a refused connect, which it retried on the other backend.
    log = web.error_log_text()
    assert "connect() failed (111: Connection refused) while connecting to upstream" in log, log
    assert "upstream server temporarily disabled" in log, log


def test_a_post_nginx_could_not_connect_for_goes_to_the_other_backend(backends: List[Backend],
                                                                      nginx: Callable[..., Nginx]) -> None:  # fmt: skip
    """Non-idempotent requests are not retried once sent, but one that was
    never sent (connection refused) is: nothing can have run twice."""
    web = start_nginx(nginx, backends)
    stopped, staying = backends
    assert stopped.server.stop() == 0, stopped.server.stderr_text()
    http = HTTPClient(web.url, timeout=30)
    # Round robin: one of the first two tries the stopped backend (then it is
    # left alone for fail_timeout).
    pids = set()
    for n in range(4):
        response = http.post(f"/form?n={n}", b"x=1", {"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status == 200, (response.status, response.body)
        pids.add(int(response.text.split()[1]))
    assert pids <= staying.workers()
    log = web.error_log_text()
    assert re.search(r"connect\(\) failed \(111: Connection refused\).*request: \"POST /form", log), log
