"""The prefork master (wsgi_fcgi/manager.py) with real processes.

Each test starts ``python -m wsgi_fcgi`` in its own session (the
``wsgi_server`` fixture of conftest.py: stopped by PID, then its process
group is killed), talks to it over a unix socket in the test's temp dir with
the project's FastCGI client, and finds the workers as the children of the
master in /proc. Every wait polls against a deadline; request loops are small
and bounded in count and time.

The fixture app is tests/apps/manager_app.py; tests that change the app while
the server runs generate a module into tmp_path instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest

from support import REPO_ROOT
from support.processes import WsgiFcgiServer, server_env
from support.requestloop import RequestLoop, fastcgi_get, write_module
from support.waiting import wait_for
from wsgi_fcgi.client import Client, FastCGIError, Response

APPS_DIR = Path(__file__).resolve().parent / "apps"
APP = "manager_app:app"

pytestmark = pytest.mark.timeout(60)


# --- helpers ------------------------------------------------------------------------


def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode().split()


def children(pid: int, *, zombies: bool = False) -> List[int]:
    """Live children of ``pid`` (or only its zombie children)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    result = []
    for child in found:
        fields = _stat(child)
        if fields is not None and (fields[0] == "Z") == zombies:
            result.append(child)
    return sorted(result)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def wait_workers(server: WsgiFcgiServer, count: int, *, timeout: float = 20, what: str = "") -> List[int]:
    def probe() -> Optional[List[List[int]]]:
        assert server.is_running(), f"the master exited:\n{server.stderr_text()}"
        pids = children(server.pid)
        return [pids] if len(pids) == count else None  # wrapped: no workers is an answer too
    return wait_for(probe, timeout=timeout, what=what or f"{count} workers")[0]  # type: ignore[index]


def wait_log(server: WsgiFcgiServer, text: str, *, timeout: float = 20) -> str:
    """Wait until the server's output contains ``text``; fail at once if the master exits."""
    def probe() -> Optional[str]:
        output = server.stderr_text()
        if text in output:
            return output
        assert server.is_running(), f"the master exited before logging {text!r}:\n{output}"
        return None
    return wait_for(probe, timeout=timeout, what=repr(text))  # type: ignore[return-value]


def assert_no_zombies(server: WsgiFcgiServer) -> None:
    # A child that just exited is a zombie until the master's next reap (it
    # wakes on SIGCHLD): allow that moment, not a zombie that stays.
    wait_for(lambda: not children(server.pid, zombies=True), timeout=5, what="no zombie children")


def get(server: WsgiFcgiServer, path: str = "/", timeout: float = 10) -> Response:
    return Client(server.address, timeout=timeout).request(path)


def body(server: WsgiFcgiServer, path: str = "/", timeout: float = 10) -> str:
    response = get(server, path, timeout)
    assert response.status == 200, response
    return response.body.decode()


def served_by(server: WsgiFcgiServer) -> int:
    return int(body(server, "/").rsplit(" ", 1)[1])


def uses_setproctitle() -> bool:
    try:
        import setproctitle  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def server(wsgi_server: Callable[..., WsgiFcgiServer]) -> Callable[..., WsgiFcgiServer]:
    """``server(*args, app=APP, pythonpath=(), env=None)``: the fixture app on a unix socket."""
    def start(*args: str, app: str = APP, pythonpath: Sequence[Path] = (),
              env: Optional[Dict[str, str]] = None) -> WsgiFcgiServer:
        return wsgi_server(app, "--allow-root", *args, pythonpath=[*pythonpath, APPS_DIR], env=env)
    return start


def run_to_exit(tmp_path: Path, args: Sequence[str], *, pythonpath: Sequence[Path] = (),
                timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to exit by itself; its process group is killed afterwards."""
    socket_path = tmp_path / "s.sock"
    argv = [sys.executable, "-m", "wsgi_fcgi", "--bind", f"unix:{socket_path}", "--allow-root", *args]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=server_env([*pythonpath, APPS_DIR]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# --- pool size and titles --------------------------------------------------------------


def test_static_pool_has_the_requested_worker_count(server):
    srv = server("--workers", "3")
    pids = wait_workers(srv, 3)
    assert body(srv).startswith("hello from ")
    assert Client(srv.address, timeout=10).get_values()["FCGI_MAX_REQS"] == "3"
    if uses_setproctitle():
        assert cmdline(srv.pid) == f"wsgi_fcgi: master [{APP}]"
        assert all(cmdline(pid) == f"wsgi_fcgi: worker [{APP}]" for pid in pids)
    assert children(srv.pid) == pids  # stable: nobody is being respawned


def test_ttin_adds_and_ttou_removes_workers_but_never_the_last(server):
    srv = server("--workers", "2")
    wait_workers(srv, 2)
    srv.send_signal(signal.SIGTTIN)
    wait_workers(srv, 3, what="3 workers after TTIN")
    # One at a time: the kernel merges a signal sent again before the first was handled.
    srv.send_signal(signal.SIGTTOU)
    wait_workers(srv, 2, what="2 workers after TTOU")
    srv.send_signal(signal.SIGTTOU)
    wait_workers(srv, 1, what="1 worker after 2 TTOU")
    srv.send_signal(signal.SIGTTOU)
    wait_log(srv, "already down to 1 worker")
    assert len(children(srv.pid)) == 1
    assert body(srv).startswith("hello from ")
    assert_no_zombies(srv)


def test_a_worker_told_to_stop_while_it_is_being_forked_stops(server, tmp_path):
    # Between fork() and the child's own signal handlers a TERM used to be lost (the
    # new worker then served until --graceful-timeout). A preloaded app's at-fork
    # hook holds every new child in that window until the file "go" exists.
    go = tmp_path / "go"
    go.touch()
    (tmp_path / "slowfork_app.py").write_text(
        "import os, time\n"
        f"GO = {str(go)!r}\n"
        "def hold():\n"
        "    while not os.path.exists(GO):\n"
        "        time.sleep(0.01)\n"
        "os.register_at_fork(after_in_child=hold)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    srv = server("--workers", "1", "--preload", app="slowfork_app:app", pythonpath=[tmp_path])
    first = wait_workers(srv, 1)
    assert body(srv) == "ok"  # the first worker has booted: TTOU will pick the one booting
    go.unlink()
    srv.send_signal(signal.SIGTTIN)
    new = [pid for pid in wait_workers(srv, 2, what="2 workers after TTIN") if pid not in first]
    srv.send_signal(signal.SIGTTOU)
    wait_log(srv, f"retiring worker {new[0]}")
    # The TERM reaches the child while it is still held in the window: pending, blocked.
    wait_for(lambda: term_pending(new[0]), timeout=10, what="the TERM pending in the worker being forked")
    go.touch()
    wait_for(lambda: new[0] not in children(srv.pid), timeout=5, what="the retired worker to exit")
    assert children(srv.pid) == first
    assert_no_zombies(srv)


def term_pending(pid: int) -> bool:
    """Whether SIGTERM is pending (blocked, not yet handled) in ``pid``: /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return False
    pending = 0
    for field in ("SigPnd", "ShdPnd"):
        match = re.search(rf"^{field}:\s*([0-9a-f]+)$", status, re.M)
        if match:
            pending |= int(match.group(1), 16)
    return bool(pending & (1 << (signal.SIGTERM - 1)))


# --- replacing workers -------------------------------------------------------------------


def test_killed_worker_is_replaced_and_only_its_request_fails(server, tmp_path):
    mark = tmp_path / "request-started"
    srv = server("--workers", "2")
    before = wait_workers(srv, 2)
    slow_errors: List[FastCGIError] = []

    def slow_request() -> None:
        try:
            get(srv, f"/sleep?s=30&mark={mark}", timeout=20)
        except FastCGIError as exc:
            slow_errors.append(exc)

    loop = RequestLoop(fastcgi_get(srv.address))
    loop.start()
    slow = threading.Thread(target=slow_request, daemon=True)
    try:
        loop.wait_ok(10)
        slow.start()
        wait_for(lambda: mark.exists() and mark.read_text(), timeout=10, what="the slow request to start")
        victim = int(mark.read_text())  # the worker inside the slow request
        loop.wait_ok(10)  # the other worker serves meanwhile
        os.kill(victim, signal.SIGKILL)
        slow.join(15)
        wait_for(lambda: victim not in children(srv.pid) and len(children(srv.pid)) == 2, timeout=10,
                 what="the killed worker replaced")
        after = children(srv.pid)
        assert set(before) - {victim} < set(after)
        loop.wait_ok(20)
    finally:
        loop.finish()
    assert len(slow_errors) == 1  # the request inside the killed worker
    assert loop.errors == []  # and no other
    assert_no_zombies(srv)


def test_timeout_kills_a_hung_worker_and_names_the_request(server):
    srv = server("--workers", "1", "--timeout", "1")
    [hung_pid] = wait_workers(srv, 1)
    # The connection closes under the request (the worker was killed), long
    # before the client's own 20 s timeout would have ended it.
    with pytest.raises(FastCGIError, match="connection closed before END_REQUEST"):
        get(srv, "/hang", timeout=20)
    log = wait_log(srv, "killed by the timeout")  # the worker's own log line, on SIGABRT
    assert re.search(rf"worker {hung_pid} timed out after 1s handling GET /hang", log), log  # master
    assert "while handling GET /hang" in log  # the worker logs its stack on SIGABRT
    new_pid = served_by(srv)
    assert new_pid != hung_pid
    assert_no_zombies(srv)


def test_max_requests_counts_requests_on_kept_alive_connections(server):
    srv = server("--workers", "1", "--max-requests", "3")
    wait_workers(srv, 1)
    client = Client(srv.address, timeout=10, keep_conn=True)
    pids = []
    try:
        for i in range(9):
            if i and i % 3 == 0:
                # The worker exits after its 3rd response; wait for that rather
                # than race our next request against its close.
                wait_for(lambda: pids[-1] not in children(srv.pid), timeout=10, what="the recycled worker gone")
            response = client.request("/")
            assert response.status == 200
            pids.append(int(response.body.decode().rsplit(" ", 1)[1]))
    finally:
        client.close()
    assert len(set(pids)) == 3, pids
    assert pids == [pids[0]] * 3 + [pids[3]] * 3 + [pids[6]] * 3
    assert client.connections == 3  # three requests per kept-alive connection, then a new worker
    assert_no_zombies(srv)


# --- reload and stop ----------------------------------------------------------------------


def test_hup_reloads_new_code_with_no_failed_request(server, tmp_path):
    module = tmp_path / "hupapp.py"
    write_module(module, "v1")
    srv = server("--workers", "2", app="hupapp:app", pythonpath=[tmp_path], env={"PYTHONDONTWRITEBYTECODE": "1"})
    old = wait_workers(srv, 2)
    loop = RequestLoop(fastcgi_get(srv.address))
    loop.start()
    try:
        loop.wait_ok(20)
        assert all(b.startswith("v1 ") for b in loop.bodies)
        write_module(module, "v2-reloaded")
        srv.send_signal(signal.SIGHUP)
        wait_for(lambda: loop.bodies[-1].startswith("v2-reloaded "), timeout=20, what="the new code served")
        wait_for(lambda: not set(old) & set(children(srv.pid)), timeout=20, what="the old workers gone")
        # Both generations serve while the new one boots; once the old one has
        # exited, only the new code answers.
        after_switch = len(loop.bodies)
        loop.wait_ok(20)
    finally:
        loop.finish()
    assert loop.errors == []
    new = wait_workers(srv, 2)
    assert not set(new) & set(old)
    assert body(srv).startswith("v2-reloaded ")
    assert all(b.startswith("v2-reloaded ") for b in loop.bodies[after_switch + 1:])
    assert_no_zombies(srv)


def test_touching_the_reload_file_reloads_new_code_with_no_failed_request(server, tmp_path):
    """--reload-on-touch (uWSGI's touch-reload): the file need not exist at start;
    creating it, then touching it again, reloads as HUP does."""
    module = tmp_path / "touchapp.py"
    restart = tmp_path / "restart.txt"
    write_module(module, "v1")
    srv = server("--workers", "2", "--reload-on-touch", str(restart), app="touchapp:app", pythonpath=[tmp_path],
                 env={"PYTHONDONTWRITEBYTECODE": "1"})
    first = wait_workers(srv, 2)
    loop = RequestLoop(fastcgi_get(srv.address), seconds=60, limit=3000)
    loop.start()
    try:
        loop.wait_ok(20)
        for version in ("v2-touched", "v3-touched-again"):
            write_module(module, version)
            restart.touch()
            wait_for(lambda v=version: loop.bodies[-1].startswith(v + " "), timeout=20, what=f"{version} served")
    finally:
        loop.finish()
    assert loop.errors == []
    assert wait_log(srv, "restart.txt was touched: reloading (--reload-on-touch)")
    assert not set(first) & set(wait_workers(srv, 2))
    assert_no_zombies(srv)


def test_hup_with_broken_code_keeps_the_old_workers_serving(server, tmp_path):
    module = tmp_path / "brokenapp.py"
    write_module(module, "v1")
    srv = server("--workers", "2", app="brokenapp:app", pythonpath=[tmp_path],
                 env={"PYTHONDONTWRITEBYTECODE": "1"})
    old = wait_workers(srv, 2)
    loop = RequestLoop(fastcgi_get(srv.address))
    loop.start()
    try:
        loop.wait_ok(10)
        write_module(module, "v2", extra="raise RuntimeError('broken deploy')")
        srv.send_signal(signal.SIGHUP)
        wait_log(srv, "reload failed")
        loop.wait_ok(10)
        assert children(srv.pid) == old
        write_module(module, "v3-fixed")
        srv.send_signal(signal.SIGHUP)
        wait_for(lambda: loop.bodies[-1].startswith("v3-fixed "), timeout=20, what="the fixed code served")
        loop.wait_ok(5)
    finally:
        loop.finish()
    assert loop.errors == []
    assert srv.is_running()
    assert "broken deploy" in srv.stderr_text()


def test_term_lets_the_request_in_flight_finish(server, tmp_path):
    pidfile = tmp_path / "server.pid"
    mark = tmp_path / "request-started"
    srv = server("--workers", "2", "--graceful-timeout", "10", "--pid", str(pidfile))
    wait_workers(srv, 2)
    assert pidfile.read_text().strip() == str(srv.pid)
    result: Dict[str, object] = {}

    def slow_request() -> None:
        try:
            result["response"] = get(srv, f"/sleep?s=3&mark={mark}", timeout=20)
        except FastCGIError as exc:
            result["error"] = exc

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    wait_for(mark.exists, timeout=10, what="the slow request to start")
    srv.send_signal(signal.SIGTERM)
    # Stop accepting at once: the socket file goes first ...
    wait_for(lambda: not srv.socket_path.exists(), timeout=5, what="the socket file removed")
    # ... while the request in flight runs to its end.
    assert srv.wait(20) == 0, srv.stderr_text()
    thread.join(10)
    response = result.get("response")
    assert isinstance(response, Response), result
    assert response.status == 200 and response.body.startswith(b"slept 3")
    assert not pidfile.exists()
    srv.stop()
    assert srv.leftover_pids == []


def test_ctrl_c_stops_everything_quietly(server, tmp_path):
    mark = tmp_path / "request-started"
    srv = server("--workers", "2")
    wait_workers(srv, 2)
    errors: List[FastCGIError] = []

    def long_request() -> None:
        try:
            get(srv, f"/sleep?s=30&mark={mark}", timeout=20)
        except FastCGIError as exc:
            errors.append(exc)

    thread = threading.Thread(target=long_request, daemon=True)
    thread.start()
    wait_for(mark.exists, timeout=10, what="the long request to start")
    os.killpg(srv.pid, signal.SIGINT)  # what a terminal does: the whole process group
    assert srv.wait(10) == 0
    thread.join(10)
    assert len(errors) == 1  # a quick stop does not wait for requests
    output = srv.stderr_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert not srv.socket_path.exists()
    srv.stop()
    assert srv.leftover_pids == []


def test_usr1_reopens_logs_without_harming_anyone(server):
    srv = server("--workers", "2")
    pids = wait_workers(srv, 2)
    srv.send_signal(signal.SIGUSR1)
    wait_log(srv, "reopened log files")
    assert body(srv).startswith("hello from ")
    assert children(srv.pid) == pids


def test_preload_imports_once_and_hup_replaces_workers(server):
    srv = server("--workers", "2", "--preload")
    old = wait_workers(srv, 2)
    assert body(srv).startswith("hello from ")
    srv.send_signal(signal.SIGHUP)
    wait_for(lambda: not set(old) & set(children(srv.pid)) and len(children(srv.pid)) == 2, timeout=20,
             what="a new generation of workers")
    assert body(srv).startswith("hello from ")
    assert "restart the server to load changed code" in srv.stderr_text()


# --- dynamic and ondemand pools ------------------------------------------------------------


def _concurrent_sleeps(srv: WsgiFcgiServer, count: int, seconds: float) -> List[threading.Thread]:
    results: List[object] = []

    def one() -> None:
        results.append(get(srv, f"/sleep?s={seconds}", timeout=30).status)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    threads[0].results = results  # type: ignore[attr-defined]
    return threads


def _join(threads: List[threading.Thread]) -> List[object]:
    for thread in threads:
        thread.join(30)
    return threads[0].results  # type: ignore[attr-defined,no-any-return]


def test_dynamic_pool_grows_under_load_and_shrinks_when_idle(server):
    srv = server("--pool", "dynamic", "--workers", "4", "--min-spare", "1", "--max-spare", "1",
                 "--idle-timeout", "1")
    wait_workers(srv, 1, what="one spare worker at rest")
    threads = _concurrent_sleeps(srv, 3, 2)
    wait_for(lambda: len(children(srv.pid)) >= 3, timeout=15, what="the pool to grow")
    assert len(children(srv.pid)) <= 4
    assert _join(threads) == [200, 200, 200]
    wait_workers(srv, 1, timeout=20, what="the pool to shrink back to one idle worker")
    assert Client(srv.address, timeout=10).get_values()["FCGI_MAX_REQS"] == "4"
    assert_no_zombies(srv)


def test_ondemand_pool_starts_at_zero_and_returns_to_zero(server):
    srv = server("--pool", "ondemand", "--workers", "3", "--idle-timeout", "1")
    wait_log(srv, "loads; workers start when connections arrive")  # the start-up app check
    wait_workers(srv, 0, what="no worker at rest")
    assert body(srv).startswith("hello from ")  # a connection waits -> a worker starts
    assert 1 <= len(children(srv.pid)) <= 3
    threads = _concurrent_sleeps(srv, 3, 1)
    assert _join(threads) == [200, 200, 200]
    assert len(children(srv.pid)) <= 3
    wait_workers(srv, 0, timeout=20, what="idle workers to stop")
    assert Client(srv.address, timeout=10).get_values()["FCGI_MAX_REQS"] == "3"
    wait_workers(srv, 0, timeout=20, what="idle workers to stop again")
    assert_no_zombies(srv)


# --- boot failures ----------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["static", "dynamic", "ondemand"])
def test_unimportable_app_exits_4_with_one_clear_line(tmp_path, pool):
    result = run_to_exit(tmp_path, ["--workers", "3", "--pool", pool, "no_such_module_xyz:app"])
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert "no module named 'no_such_module_xyz'" in errors[0]
    assert errors[0].startswith("wsgi_fcgi: error: cannot load the app:")
    assert "Traceback" not in result.stderr
    assert result.stderr.count("started ") <= 3  # no respawn loop
    assert result.stdout == ""
    assert not (tmp_path / "s.sock").exists()


def test_boot_errors_halt_with_exit_3(tmp_path):
    (tmp_path / "exit3app.py").write_text("import os\nos._exit(3)\n")
    result = run_to_exit(tmp_path, ["--workers", "2", "exit3app:app"], pythonpath=[tmp_path])
    assert result.returncode == 3, result.stderr
    halts = [line for line in result.stderr.splitlines() if line.startswith("wsgi_fcgi: error:")]
    assert len(halts) == 1 and "workers cannot boot" in halts[0], result.stderr
    assert result.stderr.count("started worker") <= 4


def test_crash_storm_backs_off_instead_of_respawning_hot(server, tmp_path):
    (tmp_path / "crashapp.py").write_text("import os\nos._exit(1)\n")
    srv = server("--workers", "2", app="crashapp:app", pythonpath=[tmp_path])
    log = wait_log(srv, "6 in a row", timeout=30)
    # The master backs off: no wait after the first failure, then a wait that
    # doubles from 0.1 s, announced with each failure (0.1 + 0.2 + 0.4 + 0.8 s
    # before the 6th: the wall-clock side is a measurement, not asserted here).
    announced = {int(n): float(s) for n, s in re.findall(r"(\d+) in a row, next start in ([\d.]+)s", log)}
    assert [announced.get(n) for n in range(1, 7)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6], log
    assert srv.stderr_text().count("started worker") <= 8
    assert srv.is_running()  # exit 1 at boot is not a configuration error: keep trying, slowly
    assert srv.stop() == 0


# --- privileges ------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_user_runs_workers_unprivileged(wsgi_server):
    import pwd

    nobody = pwd.getpwnam("nobody")
    srv = wsgi_server(APP, "--workers", "1", "--user", "nobody", pythonpath=[APPS_DIR])
    [worker] = wait_workers(srv, 1)
    assert body(srv, "/whoami") == f"{nobody.pw_uid} {nobody.pw_gid}"
    assert os.stat(srv.socket_path).st_uid == nobody.pw_uid
    with open(f"/proc/{srv.pid}/status") as f:
        assert re.search(r"^Uid:\s+0\s", f.read(), re.M)  # the master keeps root (to clean up)
    assert "running the app as root" not in srv.stderr_text()


def test_umask_reaches_the_workers(server):
    srv = server("--workers", "1", "--umask", "027")
    [worker] = wait_workers(srv, 1)
    with open(f"/proc/{worker}/status") as f:
        assert re.search(r"^Umask:\s+0027$", f.read(), re.M)


def test_unknown_user_is_a_usage_error(tmp_path):
    result = run_to_exit(tmp_path, ["--user", "no_such_user_xyz", APP])
    assert result.returncode == 2
    assert "--user: no user named 'no_such_user_xyz'" in result.stderr
    assert "Traceback" not in result.stderr
