"""Kept-alive FastCGI connections (FCGI_KEEP_CONN) under load (issue 8).

A worker serves one request at a time but keeps its idle kept connections
in the same epoll set as the listening socket, so a connection kept by the
web server never blocks a worker (see wsgi_fcgi/worker.py). What is checked
here, through real web servers with the documented configs
(examples/nginx/app-keepalive.conf + upstream-keepalive.conf,
examples/apache/proxypass-mounted-reuse.conf), in front of 2 workers:

- nginx, ``keepalive 32`` + ``fastcgi_keep_conn on``, 64 concurrent clients
  (wrk): no failed request; the same run without keep-conn for comparison
  (latencies are reported in the test's "measurements" section, not
  asserted: the machine is shared, failures do not depend on its load,
  latencies do);
- Apache mod_proxy_fcgi ``enablereuse=on`` with several children (event:
  4 x 8 threads; prefork: 8 processes), each with its own kept connections,
  more of them than workers: sequential and concurrent requests all succeed
  and none waits for another connection's idle time (it would time out);
- a worker leaving (``--max-requests 20``, HUP, TTOU) while nginx keeps
  sending: no failed request. nginx retries a GET that fails on a cached
  connection the worker just closed (``$upstream_status`` "502, 200"); the
  report counts those retries;
- ``--max-idle-connections 2`` behind ``keepalive 32`` with 16 clients: no
  failed request, and a worker never holds more than 1 busy + 2 idle
  connections (counted from its descriptors while it is SIGSTOPped);
- FCGI_GET_VALUES answers what docs/keepalive.md says.

Two behaviours these tests pin (both were bugs, found here):
- a kept connection on which a request is already waiting, or which the web
  server has just used, is never closed by the idle cap, the idle timeout or
  a leaving worker: the worker serves it, and closes connections only once
  they have been quiet for a moment (nginx retries a GET that fails on a
  closed cached connection, but answers 502 to a POST; Apache retries
  nothing);
- connections opened while all workers are idle spread over the workers
  (a worker goes to the back of the kernel's queue after keeping one).

Every process is stopped by PID at the end of its test (ExitStack), load
runs are bounded (wrk -d), and each load test first waits (briefly) for the
shared machine not to be pegged and records its load.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from wsgi_fcgi import protocol as p

from support import REPO_ROOT
from support.fastcgi import children_of, is_end, raw_connect, read_events, request_bytes
from support.httpclient import HTTPClient
from support.load import (
    KeepaliveNginx,
    ReuseApache,
    Wrk,
    WrkResult,
    connections_of,
    cpu_seconds,
    describe_load,
    machine_load,
    run_wrk,
    stopped,
    wait_until_not_pegged,
)
from support.processes import WsgiFcgiServer, server_env
from support.procfs import asleep_in_epoll_wait, epoll_watched, listening_unix_inode
from support.sites import start_app_server, unix_connections
from support.waiting import wait_for
from support.webservers import WebServer

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(60)]

APPS_DIR = REPO_ROOT / "tests" / "apps"
CHEAP = "/hello/x"  # the example Flask app's cheapest page
WORKERS = 2

# What nginx logs when a request fails on a cached connection that the app
# had closed (or closes while nginx sends on it); it then retries the
# request on another connection, unless it is a POST.
CACHED_CONNECTION_FAILURE = re.compile(
    r"recv\(\) failed \(104: Connection reset by peer\) while reading response header from upstream"
    r"|writev?\(\) failed \(32: Broken pipe\) while sending request to upstream"
    r"|upstream prematurely closed (FastCGI stdout|connection) while reading response header from upstream"
)


# -- helpers -----------------------------------------------------------------------------


def report(request: pytest.FixtureRequest, text: str) -> None:
    """Measurements for the reader (pytest -rA shows them), never asserted."""
    request.node.add_report_section("call", "measurements", text)
    print(text)


def started(stack: ExitStack, web: WebServer) -> WebServer:
    stack.callback(web.stop)
    web.start()
    return web


def nginx_in_front(stack: ExitStack, base: Path, server: WsgiFcgiServer, keepalive: Optional[int],
                   name: str = "nginx") -> KeepaliveNginx:  # fmt: skip
    assert server.socket_path is not None
    return started(stack, KeepaliveNginx(base / name, server.socket_path, keepalive))  # type: ignore[return-value]


def check_nginx_logs(web: KeepaliveNginx, connections: int) -> Dict[str, int]:
    """Every request nginx logged ended 200, except those wrk cut off when its
    time was up (499, at most one per connection); every upstream error in the
    error log is a failed attempt on a cached connection that nginx then
    retried. Returns counts for the report."""
    entries = web.upstream_log()
    assert entries, "nginx logged no request"
    failed = [e for e in entries if e.status not in (200, 499)]
    assert not failed, f"{len(failed)} requests failed at nginx, e.g. {failed[:5]}"
    cut_off = sum(1 for e in entries if e.status == 499)
    assert cut_off <= connections, f"{cut_off} requests abandoned by the client (499), more than its connections"
    retried = [e for e in entries if e.attempts > 1]
    failed_attempts = sum(e.attempts - 1 for e in entries)
    errors = web.error_lines()
    unexplained = [line for line in errors if not CACHED_CONNECTION_FAILURE.search(line)]
    assert not unexplained, "nginx error log:\n" + "\n".join(unexplained[:20])
    assert len(errors) <= failed_attempts + cut_off, (
        f"{len(errors)} upstream errors but only {failed_attempts} retried attempts:\n" + "\n".join(errors[:10])
    )
    return {"logged": len(entries), "retried": len(retried), "failed_attempts": failed_attempts,
            "max_attempts": max(e.attempts for e in entries), "upstream_errors": len(errors)}  # fmt: skip


def get_timed(http: HTTPClient, path: str) -> Tuple[int, float, bytes]:
    """(status, seconds, body); status 0 when the request did not complete."""
    start = time.monotonic()
    try:
        r = http.get(path)
    except (OSError, socket.timeout) as exc:
        return 0, time.monotonic() - start, repr(exc).encode()
    return r.status, time.monotonic() - start, r.body


def concurrent(clients: int, job: Callable[[int], None]) -> None:
    errors: List[BaseException] = []

    def run(n: int) -> None:
        try:
            job(n)
        except BaseException as exc:  # noqa: B036 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client thread is still running"
    assert not errors, errors


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def answer(sock: socket.socket) -> Optional[bytes]:
    """The stdout of the response on a raw FastCGI connection, or None if
    the server closed the connection without answering."""
    try:
        events = read_events(sock, is_end)
    except ConnectionResetError:
        return None
    if not events or not is_end(events[-1]):
        return None
    return b"".join(e.data for e in events if isinstance(e, p.Stdout))


# -- 1. nginx keepalive 32, 64 clients ---------------------------------------------------------


def test_nginx_keepalive_with_64_clients_fails_no_request(shared_dirs, request) -> None:
    """wrk -t2 -c64 -d5s through nginx to 2 workers, once with one connection
    per request (app-root.conf), once over kept connections (keepalive 32 +
    fastcgi_keep_conn on): no failed request either way."""
    base = shared_dirs("wfcgi-ka-64-")
    with ExitStack() as stack:
        server = start_app_server(stack, base, "--workers", str(WORKERS))
        plain = nginx_in_front(stack, base, server, None, "nginx-plain")
        kept = nginx_in_front(stack, base, server, 32, "nginx-kept")
        load = wait_until_not_pegged(timeout=10)
        run_wrk(plain.url + CHEAP, base / "wrk-warmup.log", connections=4, duration=1)  # both workers warm
        workers = children_of(server.pid)
        results: Dict[str, WrkResult] = {}
        cpu: Dict[str, str] = {}
        for name, web in (("without keep-conn", plain), ("keep-conn, keepalive 32", kept)):
            before = {pid: cpu_seconds(pid) for pid in workers}
            results[name] = run_wrk(web.url + CHEAP, base / f"wrk-{web.root.name}.log", connections=64,
                                    duration=5, threads=2, timeout=5)  # fmt: skip
            cpu[name] = ", ".join(f"{cpu_seconds(pid) - before[pid]:.2f}" for pid in workers)
        kept_per_worker = connections_of(workers, server.socket_path)
        after = machine_load()
        # (wrk's client connections: the 499s it can leave behind when its time is up)
        counts = {"without keep-conn": check_nginx_logs(plain, 4 + 64),
                  "keep-conn, keepalive 32": check_nginx_logs(kept, 64)}  # fmt: skip
        base_p99 = results["without keep-conn"].p99_ms
        report(request, "\n".join(
            [f"machine before: {describe_load(load)}; after: {describe_load(after)}",
             "command: wrk -t2 -c64 -d5s --latency --timeout 5s http://127.0.0.1:PORT/hello/x (2 workers)"]
            + [f"{name}: {r.summary()}; nginx: {counts[name]}; CPU s per worker: {cpu[name]}"
               for name, r in results.items()]
            + [f"p99 keep-conn / without: {results['keep-conn, keepalive 32'].p99_ms / base_p99:.2f}x",
               f"kept connections per worker after the run: {kept_per_worker}"]))
        for name, r in results.items():
            assert r.failed == 0, f"{name}: {r.summary()}"
            assert r.requests > 0
        assert counts["without keep-conn"]["upstream_errors"] == 0
        # Kept, and within the cap: at most 1 busy + 32 idle per worker.
        assert 1 <= sum(kept_per_worker.values()) and all(n <= 33 for n in kept_per_worker.values())


# -- 2. Apache enablereuse=on, several children --------------------------------------------------


def start_apache(stack: ExitStack, base: Path, mpm: str, *server_args: str) -> Tuple[WsgiFcgiServer, ReuseApache]:
    server = start_app_server(stack, base, "--workers", str(WORKERS), "--script-name", "/app", *server_args)
    web = ReuseApache(base / "apache", "proxypass-mounted-reuse.conf", {"socket": server.socket_path}, mpm=mpm)
    started(stack, web)
    return server, web


@pytest.mark.parametrize("mpm", ["event", "prefork"])
def test_apache_enablereuse_with_several_children(shared_dirs, request, mpm: str) -> None:
    """More Apache children than workers, each keeping its own connections
    (the setup in which a FastCGI server that blocks on one kept connection
    hangs): 200 sequential and 4 x 50 concurrent requests all answer 200
    within the client's timeout, while more connections than workers are kept
    (request times are reported, not asserted)."""
    base = shared_dirs(f"wfcgi-ka-apache-{mpm}-")
    with ExitStack() as stack:
        server, web = start_apache(stack, base, mpm)
        load = wait_until_not_pegged(timeout=10)
        http = HTTPClient(web.url, timeout=10)
        sequential = [get_timed(http, f"/app/hello/s{n}") for n in range(200)]
        kept_after_sequential = unix_connections(server.socket_path)
        parallel: List[Tuple[int, float, bytes]] = []

        def client(n: int) -> None:
            for i in range(50):
                parallel.append(get_timed(http, f"/app/hello/c{n}-{i}"))

        concurrent(4, client)
        kept = unix_connections(server.socket_path)
        per_worker = connections_of(children_of(server.pid), server.socket_path)
        children = Counter(pid for pid, *_ in web.children_log())
        times = [t for _, t, _ in sequential + parallel]
        report(request, (
            f"machine: {describe_load(load)}\n"
            f"Apache {mpm}: {len(children)} children served {dict(children)}; kept connections to wsgi_fcgi "
            f"after the sequential requests {kept_after_sequential}, at the end {kept} (per worker {per_worker}); "
            f"request time p50 {percentile(times, 0.5) * 1000:.1f} ms, p99 {percentile(times, 0.99) * 1000:.1f} ms, "
            f"max {max(times) * 1000:.1f} ms"))
        for phase, results in (("sequential", sequential), ("concurrent", parallel)):
            # A request stuck behind another connection's idle time would wait for
            # wsgi_fcgi's --read-timeout (30 s): past the client's 10 s, a failure here.
            failed = [(status, round(t, 3), body[:100]) for status, t, body in results if status != 200]
            assert not failed, f"{phase}: {len(failed)} failed: {failed[:5]}"
        assert len(parallel) == 200
        assert len(children) >= 2, "the requests did not spread over several Apache children"
        assert kept > WORKERS, f"only {kept} kept connections: not more than the {WORKERS} workers"
        errors = [line for line in web.error_log_text().splitlines() if "proxy" in line and ":error]" in line]
        assert not errors, "\n".join(errors[:10])


def test_connections_opened_at_low_traffic_spread_over_the_workers(wsgi_server) -> None:
    """What an Apache child does, 8 times: connect, one request (kept), while
    both workers are idle (each asleep in epoll_wait, watching the listener).
    Each worker should own a fair part of the 8 connections (at least 2),
    since each keeps serving its own."""
    srv = wsgi_server("bridge_app:app", "--workers", str(WORKERS), pythonpath=[APPS_DIR])
    listener = listening_unix_inode(srv.socket_path)
    assert listener is not None

    def both_idle() -> bool:
        workers = children_of(srv.pid)
        return len(workers) == WORKERS and all(
            asleep_in_epoll_wait(pid) and listener in epoll_watched(pid) for pid in workers)

    owners: List[int] = []
    with ExitStack() as stack:
        for _ in range(8):
            # The worker that answered the last one has kept it and is back in epoll_wait.
            wait_for(both_idle, what="both workers asleep in epoll_wait, watching the listener")
            sock = stack.enter_context(raw_connect(srv.address))
            sock.sendall(request_bytes(path="/pid", keep_conn=True))
            out = answer(sock)
            assert out is not None, "no answer"
            owners.append(int(out.rpartition(b"\r\n\r\n")[2]))
    owned = Counter(owners)
    assert len(owned) == WORKERS and min(owned.values()) >= 2, f"connections per worker: {dict(owned)}"


# -- 3. a worker leaving under kept-alive load ------------------------------------------------------

LEAVING = {
    # name -> (extra server arguments, signal sent once the load is under way)
    "max-requests": (("--max-requests", "20", "--preload"), None),
    "hup": ((), signal.SIGHUP),
    "ttou": ((), signal.SIGTTOU),
}


@pytest.mark.parametrize("how", sorted(LEAVING))
def test_worker_leaving_under_keepalive_load_fails_no_request(shared_dirs, request, how: str) -> None:
    """wrk -c16 -d3s GETs through nginx keepalive 32 while workers leave
    (recycled every 20 requests, a HUP reload, a TTOU): no failed request.
    A leaving worker closes its idle kept connections; a GET nginx had just
    sent on one of them is retried on a new connection."""
    args, sig = LEAVING[how]
    base = shared_dirs(f"wfcgi-ka-leave-{how}-")
    with ExitStack() as stack:
        server = start_app_server(stack, base, "--workers", str(WORKERS), *args)
        web = nginx_in_front(stack, base, server, 32)
        wait_for(lambda: len(children_of(server.pid)) == WORKERS, what="the workers")
        before = set(children_of(server.pid))
        load = wait_until_not_pegged(timeout=10)
        wrk = Wrk(web.url + CHEAP, base / "wrk.log", connections=16, duration=3)
        stack.callback(wrk.stop)
        wrk.start()
        if sig is not None:
            # Into the load: nginx has answered some requests, and wrk goes on for seconds.
            wait_for(lambda: len(web.upstream_log()) >= 50 or not wrk.is_running(), timeout=10,
                     what="50 requests through nginx")
            assert wrk.is_running(), "the load was over before the signal"
            server.send_signal(sig)
        result = wrk.result()
        counts = check_nginx_logs(web, 16)
        log = server.stderr_text()
        report(request, f"machine: {describe_load(load)}\n{how}: {result.summary()}\n"
                        f"nginx: {counts} (retried = GETs nginx re-sent after a kept connection failed; "
                        f"each ended 200)\nworkers started: {log.count('started worker')}")
        assert result.failed == 0, result.summary()
        if how == "max-requests":
            # Each recycle is logged once (a leaving worker that drains its kept
            # connections no longer logs again for every request it serves then).
            assert log.count("recycling") >= 2, "the workers did not recycle under the load"
        elif how == "hup":
            wait_for(lambda: len(children_of(server.pid)) == WORKERS and not before & set(children_of(server.pid)),
                     what="the old workers to be replaced")  # fmt: skip
        else:
            assert "retiring worker" in log
            wait_for(lambda: len(children_of(server.pid)) == WORKERS - 1, what="one worker fewer")


# -- 4. more kept connections than workers x cap ------------------------------------------------------


def test_idle_cap_holds_with_more_kept_connections_than_fit(shared_dirs, request) -> None:
    """--max-idle-connections 2 behind nginx keepalive 32 and 16 clients:
    nginx would keep up to 16 connections, the workers hold at most 1 busy +
    2 idle each (counted while the worker is stopped, several times during
    the load), 2 idle each once it is over; no failed request."""
    cap = 2
    base = shared_dirs("wfcgi-ka-cap-")
    with ExitStack() as stack:
        server = start_app_server(stack, base, "--workers", str(WORKERS), "--max-idle-connections", str(cap))
        web = nginx_in_front(stack, base, server, 32)
        assert server.socket_path is not None
        wait_for(lambda: len(children_of(server.pid)) == WORKERS, what="the workers")
        workers = children_of(server.pid)
        load = wait_until_not_pegged(timeout=10)
        wrk = Wrk(web.url + CHEAP, base / "wrk.log", connections=16, duration=4)
        stack.callback(wrk.stop)
        wrk.start()
        during: List[Dict[int, int]] = []
        for _ in range(5):  # each sample once 50 more requests went through (while the load lasts)
            target = len(web.upstream_log()) + 50
            wait_for(lambda target=target: len(web.upstream_log()) >= target or not wrk.is_running(),
                     timeout=10, what=f"{target} requests through nginx")
            with stopped(workers):
                during.append(connections_of(workers, server.socket_path))
        result = wrk.result()
        after: Dict[int, int] = {}

        def back_under_the_cap() -> bool:
            with stopped(workers):
                after.update(connections_of(workers, server.socket_path))
            return all(n <= cap for n in after.values())
        # Under load the cap is soft: a connection with a request waiting, or one the
        # web server has just used, is not closed. Once the load stops, it holds.
        wait_for(back_under_the_cap, timeout=5, what=f"at most {cap} idle connections per worker")
        counts = check_nginx_logs(web, 16)
        report(request, f"machine: {describe_load(load)}\n{result.summary()}\nnginx: {counts}\n"
                        f"connections per worker during the load {during}, after {after}")
        assert result.failed == 0, result.summary()
        assert children_of(server.pid) == workers


# -- the request waiting on a kept connection ------------------------------------------------------------



def test_idle_cap_never_drops_a_request_already_sent(wsgi_server, tmp_path) -> None:
    """--max-idle-connections 1, one worker: A is kept, B keeps the worker
    busy, a request arrives on A meanwhile; when B is done and parked, the
    cap must not close A with its request unanswered."""
    srv = wsgi_server("bridge_app:app", "--workers", "1", "--max-idle-connections", "1", pythonpath=[APPS_DIR])
    assert_waiting_request_answered(srv, tmp_path / "started")


def test_leaving_worker_never_drops_a_request_already_sent(wsgi_server, tmp_path) -> None:
    """--max-requests 2, one worker: A is kept (request 1), B is request 2,
    a request arrives on A meanwhile; the worker recycles after B, and must
    not close A with its request unanswered."""
    srv = wsgi_server("bridge_app:app", "--workers", "1", "--max-requests", "2", pythonpath=[APPS_DIR])
    assert_waiting_request_answered(srv, tmp_path / "started")


def assert_waiting_request_answered(srv: WsgiFcgiServer, marker: Path) -> None:
    with raw_connect(srv.address) as a:
        a.sendall(request_bytes(path="/hello", keep_conn=True))
        assert b"Hello, World!" in (answer(a) or b"")  # A is kept by the worker now
        with raw_connect(srv.address) as b:
            b.sendall(request_bytes(path=f"/sleep?s=1&started={marker}", keep_conn=True))
            wait_for(marker.exists, what="the worker to be busy with B")
            a.sendall(request_bytes(path="/hello", keep_conn=True))  # waits on the idle connection A
            assert b"slept" in (answer(b) or b"")
        assert b"Hello, World!" in (answer(a) or b""), "the request waiting on A was closed unanswered"


@pytest.mark.parametrize("args", [("--max-idle-connections", "2")], ids=["max-idle-2"])
def test_posts_over_kept_connections_under_load_fail_none(shared_dirs, request, args: Tuple[str, ...]) -> None:
    """The user-visible side of the bug above: POSTs (which nginx does not
    retry) through nginx keepalive 32, 16 clients, 3 s."""
    base = shared_dirs("wfcgi-ka-post-")
    with ExitStack() as stack:
        server = start_app_server(stack, base, "--workers", str(WORKERS), *args)
        web = nginx_in_front(stack, base, server, 32)
        load = wait_until_not_pegged(timeout=10)
        result = run_wrk(web.url + "/echo-sha256", base / "wrk.log", connections=16, duration=3, body_bytes=100)
        report(request, f"machine: {describe_load(load)}\n{' '.join(args)}, POST: {result.summary()}")
        assert result.failed == 0, result.summary()


def test_apache_requests_beyond_the_idle_cap_fail_none(shared_dirs, request) -> None:
    """The same through Apache, which retries nothing: --max-idle-connections
    2, fewer than the connections Apache's 4 children keep; 8 concurrent
    clients x 25 GETs."""
    base = shared_dirs("wfcgi-ka-apache-cap-")
    with ExitStack() as stack:
        server, web = start_apache(stack, base, "event", "--max-idle-connections", "2")
        http = HTTPClient(web.url, timeout=10)
        results: List[Tuple[int, float, bytes]] = []

        def client(n: int) -> None:
            for i in range(25):
                results.append(get_timed(http, f"/app/hello/c{n}-{i}"))

        concurrent(8, client)
        failed = Counter(status for status, _, _ in results if status != 200)
        report(request, f"{len(results)} GETs, failed by status: {dict(failed)}")
        assert not failed, f"failed by status: {dict(failed)}"


# -- 5. FCGI_GET_VALUES ----------------------------------------------------------------------------------


def test_get_values_answer_is_the_one_documented(wsgi_server) -> None:
    """``python -m wsgi_fcgi.client ADDR / --get-values`` against 2 workers:
    FCGI_MAX_REQS is the number of workers (requests at once), FCGI_MAX_CONNS
    the connections the pool holds (2 x (1 + 5)); docs/keepalive.md shows this
    very output."""
    srv = wsgi_server("app:app", "--workers", "2", "--max-idle-connections", "5")
    out = subprocess.run([sys.executable, "-m", "wsgi_fcgi.client", srv.address, "/", "--get-values"],
                         capture_output=True, text=True, timeout=30, env=server_env())  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "FCGI_MAX_CONNS=12\nFCGI_MAX_REQS=2\nFCGI_MPXS_CONNS=0\n"
    assert out.stdout in (REPO_ROOT / "docs" / "keepalive.md").read_text(), "docs/keepalive.md shows another answer"
