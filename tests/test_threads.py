"""``--threads N``: several requests at once in one worker process, with every
guarantee of the prefork pool kept per request.

Concurrency is proven by synchronisation, never by a clock: requests that
must be in progress together wait on one ``threading.Barrier`` in the app, or
leave a marker file when they start and wait for a release file the test
creates (tests/apps/threads_app.py). Each test starts its own server through
the ``wsgi_server`` fixture (stopped by PID at teardown) and talks to it with
the project's FastCGI client, raw FastCGI records, or real nginx.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List

import pytest

from support import REPO_ROOT
from support.fastcgi import is_end, raw_connect, read_events, request_bytes, wait_for
from support.httpclient import HTTPClient
from support.load import KeepaliveNginx
from support.processes import ManagedProcess, can_connect
from wsgi_fcgi import protocol as p
from wsgi_fcgi.client import Client, FastCGIError, Response, parse_cgi_response

from support.held import APP, APPS_DIR, Background, in_parallel

pytestmark = pytest.mark.timeout(90)


# --- helpers ------------------------------------------------------------------------


def statuses(results: List[Any]) -> List[Any]:
    return [r.status if isinstance(r, Response) else repr(r) for r in results]


# --- concurrency ----------------------------------------------------------------------


@pytest.mark.parametrize("threads", [4, 8])
def test_one_worker_serves_n_requests_at_once(threads_server, threads: int) -> None:
    """N requests that can only finish together (one Barrier(N)) all finish."""
    srv = threads_server("--workers", "1", "--threads", str(threads), barrier=threads)
    results = in_parallel([lambda: srv.get("/barrier") for _ in range(threads)])
    assert statuses(results) == [200] * threads
    assert len({r.body for r in results}) == 1  # one process passed them all


def test_with_fewer_threads_the_barrier_cannot_be_passed(threads_server) -> None:
    """The same barrier with one thread fewer than it needs breaks (its own
    timeout), so the test above really needs every thread."""
    srv = threads_server("--workers", "1", "--threads", "2", barrier=3, barrier_timeout=2)
    results = in_parallel([lambda: srv.get("/barrier") for _ in range(3)])
    assert statuses(results) == [500, 500, 500]
    assert "BrokenBarrierError" in srv.server.stderr_text()


def test_a_worker_with_every_thread_busy_leaves_new_connections_to_another(threads_server) -> None:
    """2 workers x 2 threads: four requests in progress at once are two per
    worker, because a full worker takes no new connection."""
    srv = threads_server("--workers", "2", "--threads", "2")
    held = Background([lambda n=n: srv.get(f"/hold?id={n}") for n in range(4)])
    srv.arrived("0", "1", "2", "3")
    srv.release()
    results = held.results()
    assert statuses(results) == [200] * 4
    pids = [r.body.split()[0] for r in results]
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]


def test_environ_and_get_values_report_the_threads(threads_server) -> None:
    srv = threads_server("--workers", "2", "--threads", "3")
    assert srv.get("/pid").body.split()[1] == b"True"  # wsgi.multithread
    values = Client(srv.address, timeout=10).get_values()
    assert values == {"FCGI_MAX_CONNS": str(2 * (3 + 32)), "FCGI_MAX_REQS": "6", "FCGI_MPXS_CONNS": "0"}


def test_without_threads_the_environ_says_single_threaded(threads_server) -> None:
    srv = threads_server("--workers", "1")
    assert srv.get("/pid").body.split()[1] == b"False"
    assert Client(srv.address, timeout=10).get_values()["FCGI_MAX_REQS"] == "1"


def test_behind_nginx_with_kept_connections(threads_server, tmp_path: Path) -> None:
    """Real nginx, ``keepalive`` + ``fastcgi_keep_conn on``: two rounds of a
    barrier that needs all four threads of the one worker."""
    srv = threads_server("--workers", "1", "--threads", "4", barrier=4)
    assert srv.server.socket_path is not None
    with ExitStack() as stack:
        web = KeepaliveNginx(tmp_path / "nginx", srv.server.socket_path, keepalive=8)
        stack.callback(web.stop)
        web.start()
        http = HTTPClient(web.url, timeout=30)
        for _ in range(2):
            results = in_parallel([lambda: http.get("/barrier") for _ in range(4)])
            assert [r.status for r in results] == [200] * 4, results
            assert all(r.body.endswith(b"passed") for r in results)


def test_a_kept_connection_with_a_request_waits_for_a_free_thread(threads_server) -> None:
    """A request sent on an idle kept connection while every thread is busy is
    served as soon as one is free (only this worker can serve it)."""
    srv = threads_server("--workers", "1", "--threads", "2")
    sock = raw_connect(srv.address)
    sock.sendall(request_bytes(1, "/pid", keep_conn=True))
    assert any(isinstance(e, p.EndRequest) for e in read_events(sock, is_end))  # now idle, kept
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    sock.sendall(request_bytes(2, "/pid", keep_conn=True))  # sent while no thread is free
    srv.release()
    assert statuses(held.results()) == [200, 200]
    events = read_events(sock, is_end)
    assert is_end(events[-1])
    status, _, _, body = parse_cgi_response(b"".join(e.data for e in events if isinstance(e, p.Stdout)))
    assert status == 200 and body.endswith(b"1")
    sock.close()


# --- the status page ------------------------------------------------------------------


def test_status_page_has_one_entry_per_thread(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "3", "--status-path", "/status")
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    report = json.loads(srv.get("/status?json&full").body)
    assert (report["total_workers"], report["active_workers"], report["idle_workers"]) == (3, 3, 0)
    assert (report["processes"], report["threads_per_process"], report["max_workers"]) == (1, 3, 3)
    entries = report["workers"]
    assert sorted(e["thread"] for e in entries) == [0, 1, 2]
    assert {e["state"] for e in entries} == {"busy"}
    assert sorted(e["request_uri"] for e in entries) == ["/hold?id=a", "/hold?id=b", "/status?json&full"]
    srv.release()
    assert statuses(held.results()) == [200, 200]
    # A thread marks its slot idle just after the response went out: look until it has.
    reports: List[Dict[str, Any]] = []
    wait_for(lambda: reports.append(json.loads(srv.get("/status?json&full").body)) or
             reports[-1]["active_workers"] == 1, timeout=10, what="the hold threads to go idle")
    after = reports[-1]
    assert after["idle_workers"] == 2
    busy = [e["request_uri"] for e in after["workers"] if e["state"] == "busy"]
    idle = [e["request_uri"] for e in after["workers"] if e["state"] == "idle"]
    assert busy == ["/status?json&full"]
    assert set(idle) <= {"/hold?id=a", "/hold?id=b", "/status?json&full"}  # each thread's last request
    assert after["accepted_requests"] == 2 + len(reports)


def test_openmetrics_labels_each_thread(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2", "--status-path", "/status")
    text = srv.get("/status?openmetrics&full").body.decode()
    series = re.findall(r'^wsgi_fcgi_worker_requests\{pid="\d+",thread="(\d)",state="\w+"\} \d+$', text, re.M)
    assert sorted(series) == ["0", "1"]


# --- timeouts and slow requests -------------------------------------------------------------


def test_a_thread_past_the_timeout_retires_its_worker_and_spares_the_others(threads_server, tmp_path) -> None:
    """The stuck request's own stack is logged, the other threads' requests
    finish, a new worker takes over, and only the stuck request is lost.
    The other requests start once the slow log has reported the stuck one
    (2 s), so they are at least 2 s younger and under --timeout (5 s) when it fires."""
    slow_log = tmp_path / "slow.log"
    srv = threads_server("--workers", "1", "--threads", "3", "--timeout", "5", "--graceful-timeout", "30",
                         "--slow-request-timeout", "2", "--slow-log", str(slow_log))
    wait_for(lambda: len(srv.workers()) == 1, timeout=30, what="the worker")
    old = srv.workers()
    stuck = Background([lambda: srv.get("/stuck", timeout=80)])
    srv.arrived("stuck")
    wait_for(lambda: slow_log.exists() and "GET /stuck" in slow_log.read_text(), timeout=30,
             what="the slow log to report the stuck request")
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    wait_for(lambda: bool(srv.log_matches(r"thread \d timed out after [\d.]+s handling GET /stuck; it is here:"
                                          r".*in stuck_forever")), timeout=30, what="the stuck thread's stack")
    assert not srv.log_matches(r"timed out after [\d.]+s handling GET /hold")
    stack = srv.log_matches(r"thread \d timed out.*?(?=\n\S|\Z)")
    assert stack is not None and "_wait_for_release" not in stack.group(0)  # that thread's stack only
    # A new worker takes the new connections while the old one finishes the others.
    wait_for(lambda: len(srv.workers()) == 2, timeout=30, what="a replacement worker")
    new_pid = srv.get("/pid").body.split()[0]
    assert int(new_pid) not in old
    srv.release()
    results = held.results()
    assert statuses(results) == [200, 200]
    assert {int(r.body.split()[0]) for r in results} == set(old)
    wait_for(lambda: srv.workers() == [int(new_pid)], timeout=40, what="the retired worker to exit")
    assert isinstance(stuck.results()[0], FastCGIError)  # only the stuck request is lost
    assert srv.get("/pid").status == 200


def test_slow_log_has_the_slow_thread_stack(threads_server, tmp_path: Path) -> None:
    slow_log = tmp_path / "slow.log"
    srv = threads_server("--workers", "1", "--threads", "2", "--slow-request-timeout", "1",
                         "--slow-log", str(slow_log))
    held = Background([lambda: srv.get("/hold?id=slow")])
    srv.arrived("slow")
    wait_for(lambda: slow_log.exists() and "_wait_for_release" in slow_log.read_text(), timeout=30,
             what="the slow request's stack")
    entry = slow_log.read_text()
    assert re.search(r"\[SLOW\] GET /hold\?id=slow \(thread \d\) running for", entry)
    assert "_thread_main" in entry and "epoll" not in entry  # the request thread, not the loop
    assert srv.get("/pid").status == 200  # the other thread serves meanwhile
    srv.release()
    assert statuses(held.results()) == [200]


# --- signals: reload, stop, recycling ---------------------------------------------------------


def test_hup_while_every_thread_is_busy(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2", version="1")
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    (srv.dir / "version").write_text("2")
    os.kill(srv.server.pid, signal.SIGHUP)
    wait_for(lambda: srv.get("/pid").body.split()[2] == b"2", timeout=30, what="new workers serving new code")
    srv.release()
    results = held.results()
    assert statuses(results) == [200, 200]
    assert all(r.body.endswith(b" 1") for r in results)  # finished by the old generation


def test_term_while_every_thread_is_busy_lets_them_finish(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2")
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    os.kill(srv.server.pid, signal.SIGTERM)
    wait_for(lambda: not srv.server.socket_path or not srv.server.socket_path.exists(), timeout=10,
             what="the master to stop listening")
    srv.release()
    assert statuses(held.results()) == [200, 200]
    assert srv.server.wait(30) == 0


def test_quit_cuts_the_requests_in_progress(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2")
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    os.kill(srv.server.pid, signal.SIGQUIT)
    assert srv.server.wait(30) == 0
    assert all(isinstance(r, FastCGIError) for r in held.results())


def test_max_requests_recycles_threaded_workers_without_failing_a_request(threads_server) -> None:
    srv = threads_server("--workers", "2", "--threads", "4", "--max-requests", "10",
                         "--max-requests-jitter", "3")

    def client() -> List[Any]:
        return [srv.get("/pid") for _ in range(25)]

    batches = in_parallel([client for _ in range(8)], timeout=80)
    responses = [r for batch in batches for r in (batch if isinstance(batch, list) else [batch])]
    assert statuses(responses) == [200] * 200
    pids = {r.body.split()[0] for r in responses}
    assert len(pids) >= 5  # a worker serves 10-13 requests, plus those its other threads had begun
    assert "recycling" in srv.server.stderr_text()


# --- one request's trouble stays its own -----------------------------------------------------


def test_an_app_error_in_one_thread_fails_only_that_request(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "3", barrier=3)
    results = in_parallel([lambda: srv.get("/stream?id=s1"), lambda: srv.get("/raise"),
                           lambda: srv.get("/stream?id=s2")])
    assert statuses(results) == [200, 500, 200]
    assert results[0].body == b"s1 first\ns1 chunk 0\ns1 chunk 1\ns1 chunk 2\n"
    assert results[2].body == b"s2 first\ns2 chunk 0\ns2 chunk 1\ns2 chunk 2\n"


def test_system_exit_in_the_app_fails_that_request_not_the_worker(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2")
    before = srv.get("/pid").body.split()[0]
    assert srv.get("/exit").status == 500
    results = in_parallel([lambda: srv.get("/pid") for _ in range(4)])
    assert statuses(results) == [200] * 4
    assert {r.body.split()[0] for r in results} == {before}


def test_a_vanished_web_server_closes_only_its_own_iterable(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2")
    held = Background([lambda: srv.get("/hold?id=h")])
    srv.arrived("h")
    sock = raw_connect(srv.address)
    sock.sendall(request_bytes(1, "/endless?id=e"))
    assert sock.recv(65536)  # the response is streaming
    sock.close()
    wait_for((srv.dir / "closed-e").exists, timeout=30, what="close() of the abandoned response")
    assert not (srv.dir / "closed-h").exists()
    srv.release()
    assert statuses(held.results()) == [200]


def test_a_stuck_request_body_does_not_block_the_other_threads(threads_server) -> None:
    srv = threads_server("--workers", "1", "--threads", "2")
    sock = raw_connect(srv.address)
    whole = request_bytes(1, "/post", body=b"x" * 100)
    sock.sendall(whole[:-40])  # the head and part of the body, then nothing
    for _ in range(3):
        assert srv.get("/pid").status == 200  # served by the other thread
    sock.close()  # the stuck read ends; that thread is free again
    results = in_parallel([lambda: srv.get("/barrier") for _ in range(2)])
    assert statuses(results) == [200, 200]


def test_an_abort_ends_only_its_own_request(threads_server) -> None:
    """FCGI_ABORT_REQUEST while the app waits for the body: that request ends
    (END_REQUEST, the connection stays usable); the other thread's goes on."""
    srv = threads_server("--workers", "1", "--threads", "2")
    held = Background([lambda: srv.get("/hold?id=h")])
    srv.arrived("h")
    sock = raw_connect(srv.address)
    whole = request_bytes(1, "/post", body=b"x" * 100, keep_conn=True)
    body_records = len(b"".join(p.encode_stream(p.FCGI_STDIN, 1, b"x" * 100))) + len(p.encode_record(p.FCGI_STDIN, 1))
    head = whole[:-body_records]  # BEGIN_REQUEST and PARAMS (CONTENT_LENGTH 100)
    sock.sendall(head + p.encode_record(p.FCGI_STDIN, 1, b"x" * 10) + p.encode_record(p.FCGI_ABORT_REQUEST, 1))
    assert is_end(read_events(sock, is_end)[-1])
    sock.sendall(request_bytes(2, "/pid", keep_conn=True))  # the same connection serves on
    assert is_end(read_events(sock, is_end)[-1])
    sock.close()
    srv.release()
    assert statuses(held.results()) == [200]


def test_limits_and_logs_apply_per_request(threads_server, tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    srv = threads_server("--workers", "1", "--threads", "3", "--limit-request-body", "10",
                         "--access-logfile", str(access_log), "--access-logformat", "%(r)s %(s)s")
    results = in_parallel([lambda: Client(srv.address, timeout=30).request("/post", method="POST", body=b"y" * 11),
                           lambda: Client(srv.address, timeout=30).request("/post", method="POST", body=b"y" * 10),
                           lambda: srv.get("/pid")])
    assert statuses(results) == [413, 200, 200]
    assert results[1].body == b"10"
    wait_for(lambda: access_log.exists() and len(access_log.read_text().splitlines()) == 3, timeout=10,
             what="three access log lines")
    assert sorted(access_log.read_text().splitlines()) == ["GET /pid HTTP/1.1 200", "POST /post HTTP/1.1 200",
                                                           "POST /post HTTP/1.1 413"]


# --- pool sizing and fd 0 ---------------------------------------------------------------------


def test_ondemand_pool_grows_when_every_thread_is_busy(threads_server) -> None:
    srv = threads_server("--pool", "ondemand", "--workers", "2", "--threads", "2")
    held = Background([lambda: srv.get("/hold?id=a"), lambda: srv.get("/hold?id=b")])
    srv.arrived("a", "b")
    third = srv.get("/pid")  # no thread free: the master starts a second worker for it
    srv.release()
    results = held.results()
    assert statuses(results) == [200, 200]
    held_pids = {r.body.split()[0] for r in results}
    assert len(held_pids) == 1  # both fitted in the first worker
    assert third.body.split()[0] not in held_pids


def test_spawned_on_fd0_with_threads(tmp_path: Path) -> None:
    """lighttpd and spawn-fcgi can send several requests to a spawned process;
    mod_fcgid cannot, and the log says so."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    path = str(tmp_path / "fd0.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(REPO_ROOT)]),
           "THREADS_APP_DIR": str(app_dir), "THREADS_BARRIER": "2"}
    root = ["--allow-root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sys.executable, "-m", "wsgi_fcgi", *root, "--threads", "2", APP],
                            stdin=listener.fileno(), stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
    listener.close()
    try:
        results = in_parallel([lambda: Client(f"unix:{path}", timeout=30).request("/barrier") for _ in range(2)])
        assert statuses(results) == [200, 200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "--threads 2 on the socket a web server left on fd 0" in stderr and "mod_fcgid" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_bad_threads_value_is_refused() -> None:
    for value, reason in (("0", "0 is less than 1"), ("many", "'many' is not a whole number"),
                          ("5000", "5000 is more than 1024")):
        result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--threads", value, APP],
                                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert result.returncode == 2
        assert f"--threads: {reason}" in result.stderr
        assert "Traceback" not in result.stderr


def test_gunicorn_worker_class_says_it_ignores_threads(tmp_path: Path) -> None:
    """gunicorn's --threads is not honoured by FastCGIWorker: it says so at
    start-up and serves, one request at a time per process."""
    pytest.importorskip("gunicorn")
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    address = f"unix:{tmp_path / 'g.sock'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(REPO_ROOT)]),
           "THREADS_APP_DIR": str(app_dir)}
    gunicorn = ManagedProcess([sys.executable, "-m", "gunicorn", "-k", "wsgi_fcgi.gunicorn.FastCGIWorker",
                               "-w", "1", "--threads", "4", "-b", address, APP],
                              name="gunicorn", log_path=tmp_path / "gunicorn.log", cwd=tmp_path, env=env)
    gunicorn.start()
    try:
        wait_for(lambda: can_connect(address), timeout=30, what="gunicorn to listen")
        response = Client(address, timeout=30).request("/pid")
        assert response.status == 200 and response.body.split()[1] == b"False"  # wsgi.multithread
        assert "--threads 4 is ignored" in gunicorn.output_text()
    finally:
        gunicorn.stop()
