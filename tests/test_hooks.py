"""Server hooks (wsgi_fcgi/hooks.py), with real masters and workers.

Each server is started with a config file whose hooks append one JSON line
per call to a file in tmp_path (``RECORDING_HOOKS``), so a test reads which
hook ran, in which process, with what, and in which order. The two uses the
docs show run from examples/hooks/ as it is: post_fork giving each worker
its own database connection under --preload, and worker_abort flushing
telemetry when --timeout kills a request. Processes are started and stopped
by PID through the fixtures and helpers of conftest.py and test_manager.py;
every wait polls an observable state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import pytest

from support import EXAMPLES_DIR, REPO_ROOT
from support.processes import WsgiFcgiServer
from support.waiting import wait_for
from test_cgi import cgi_environ, run_script
from test_config import check_config
from test_manager import APPS_DIR, get, run_to_exit, wait_log, wait_workers
from wsgi_fcgi import serve
from wsgi_fcgi.client import Client, FastCGIError
from wsgi_fcgi.config import HOOKS, Config, ConfigError
from wsgi_fcgi.handler import RequestHandler
from wsgi_fcgi.hooks import HookedHandler
from wsgi_fcgi.worker import Worker

pytestmark = pytest.mark.timeout(60)

HOOKS_DIR = EXAMPLES_DIR / "hooks"
EXAMPLE_CONFIG = HOOKS_DIR / "wsgi_fcgi.conf.py"
APP = "manager_app:app"

# Every hook, recording its call. ``_``-names are helpers to the config loader.
RECORDING_HOOKS = '''
import json, os
_LOG = {log!r}

def _note(event, **fields):
    with open(_LOG, "a") as f:
        f.write(json.dumps(dict(event=event, pid=os.getpid(), **fields)) + "\\n")

def on_starting(server):
    _note("on_starting", master=server.pid, workers=server.num_workers)

def when_ready(server):
    _note("when_ready", addresses=[str(a) for a in server.addresses])

def pre_fork(server, worker):
    _note("pre_fork", worker_pid=worker.pid, index=worker.index, age=worker.age)

def post_fork(server, worker):
    _note("post_fork", worker_pid=worker.pid, master=server.pid, age=worker.age)

def post_worker_init(worker):
    _note("post_worker_init", worker_pid=worker.pid, age=worker.age)

def pre_request(worker, req):
    _note("pre_request", method=req.method, path=req.path, query=req.query, served=worker.requests)

def post_request(worker, req, environ, resp):
    _note("post_request", method=req.method, path=req.path, status=resp.status, code=resp.status_code,
          sent=resp.sent, same_environ=environ is req.environ)

def worker_abort(worker):
    _note("worker_abort", worker_pid=worker.pid)

def worker_exit(server, worker):
    _note("worker_exit", worker_pid=worker.pid, exit_code=worker.exit_code, age=worker.age)

def on_reload(server):
    _note("on_reload", workers=server.worker_pids)

def on_exit(server):
    _note("on_exit", workers=server.worker_pids)
'''


# --- helpers ------------------------------------------------------------------------


def recording_config(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    """(config file, its log): RECORDING_HOOKS, then ``extra`` (which may redefine some)."""
    log = tmp_path / "hooks.jsonl"
    config = tmp_path / "hooks.conf.py"
    config.write_text(RECORDING_HOOKS.format(log=str(log)) + extra)
    return config, log


def calls(log: Path) -> List[Dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def wait_calls(log: Path, predicate: Callable[[List[Dict[str, Any]]], bool], what: str) -> List[Dict[str, Any]]:
    return wait_for(lambda: (lambda found: found if predicate(found) else None)(calls(log)),
                    timeout=20, what=what)  # type: ignore[no-any-return]


def named(found: List[Dict[str, Any]], event: str) -> List[Dict[str, Any]]:
    return [call for call in found if call["event"] == event]


def count(event: str, n: int) -> Callable[[List[Dict[str, Any]]], bool]:
    return lambda found: len(named(found, event)) >= n


@pytest.fixture
def server(wsgi_server: Callable[..., WsgiFcgiServer]) -> Callable[..., WsgiFcgiServer]:
    """``server(*args, app=APP, pythonpath=(), env=None)``: apps from tests/apps and examples/hooks importable."""
    def start(*args: str, app: str = APP, pythonpath: Sequence[Path] = (),
              env: Dict[str, str] | None = None) -> WsgiFcgiServer:
        return wsgi_server(app, "--allow-root", *args, pythonpath=[*pythonpath, APPS_DIR, HOOKS_DIR], env=env)
    return start


# --- order and arguments ---------------------------------------------------------------


def test_hooks_run_in_order_with_their_arguments(server, tmp_path):
    config, log = recording_config(tmp_path)
    srv = server("-c", str(config), "--workers", "2")
    first = wait_workers(srv, 2)
    wait_calls(log, count("post_worker_init", 2), "both workers initialised")
    assert get(srv, "/").status == 200
    assert get(srv, "/version?x=1").status == 200
    wait_calls(log, count("post_request", 2), "two post_request calls")
    srv.send_signal(signal.SIGHUP)
    wait_calls(log, lambda found: len(named(found, "worker_exit")) == 2 and count("post_worker_init", 4)(found),
               "the reload: two new workers up, the old two reaped")
    second = wait_workers(srv, 2)
    assert srv.stop() == 0
    found = calls(log)
    events = [call["event"] for call in found]
    master = srv.pid

    assert events[:2] == ["on_starting", "when_ready"]
    assert found[0] == {"event": "on_starting", "pid": master, "master": master, "workers": 2}
    assert found[1]["addresses"] == [srv.address] and found[1]["pid"] == master
    assert events[-1] == "on_exit" and found[-1] == {"event": "on_exit", "pid": master, "workers": []}

    # Per worker: pre_fork in the master (not forked yet), post_fork and post_worker_init in the worker.
    forks = named(found, "pre_fork")
    assert [(c["pid"], c["worker_pid"], c["age"]) for c in forks] == [(master, None, age) for age in (1, 2, 3, 4)]
    for pid in first + second:
        mine = [i for i, c in enumerate(found) if c.get("worker_pid") == pid or (c["pid"] == pid)]
        mine_events = [found[i]["event"] for i in mine]
        assert mine_events[:2] == ["post_fork", "post_worker_init"], mine_events
        assert mine_events[-1] == "worker_exit" and found[mine[-1]] == {
            "event": "worker_exit", "pid": master, "worker_pid": pid, "exit_code": 0,
            "age": found[mine[0]]["age"]}
        assert found[mine[0]]["master"] == master
        assert events.index("pre_fork") < mine[0]
    assert sorted(c["age"] for c in named(found, "post_fork")) == [1, 2, 3, 4]

    # Per request: pre_request then post_request in the worker that served it.
    requests = [c for c in found if c["event"] in ("pre_request", "post_request")]
    assert [(c["event"], c["method"], c["path"]) for c in requests] == [
        ("pre_request", "GET", "/"), ("post_request", "GET", "/"),
        ("pre_request", "GET", "/version"), ("post_request", "GET", "/version")]
    assert requests[2]["query"] == "x=1"
    assert all(c["pid"] in first for c in requests)
    assert [(c["status"], c["code"], c["same_environ"]) for c in named(found, "post_request")] == [
        ("200 OK", 200, True), ("200 OK", 200, True)]
    assert named(found, "post_request")[1]["sent"] == len("fixture")

    # HUP: on_reload in the master while the first generation serves, before the second is forked.
    reload_at = events.index("on_reload")
    assert sorted(found[reload_at]["workers"]) == sorted(first)
    assert [c["age"] for c in found[reload_at:] if c["event"] == "pre_fork"] == [3, 4]
    assert "worker_abort" not in events


# --- the two documented uses, as examples/hooks/ has them -----------------------------------


def test_post_fork_gives_each_preloaded_worker_its_own_database_connection(server, tmp_path):
    # Two requests that each wait until the other has started are in two different workers (the
    # app polls for the other's file, bounded: the test itself only waits on the answers).
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    (tmp_path / "dbcheck_app.py").write_text(
        "import os, time\n"
        "import hooks_app\n"
        f"HERE = {str(rendezvous)!r}\n"
        "def app(environ, start_response):\n"
        "    open(os.path.join(HERE, str(os.getpid())), 'w').close()\n"
        "    deadline = time.monotonic() + 15\n"
        "    while len(os.listdir(HERE)) < 2 and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    return hooks_app.app(environ, start_response)\n")
    env = {"HOOKS_DB": str(tmp_path / "app.sqlite3"), "HOOKS_TELEMETRY": str(tmp_path / "telemetry.jsonl")}
    srv = server("-c", str(EXAMPLE_CONFIG), "--workers", "2", app="dbcheck_app:app", pythonpath=[tmp_path],
                 env=env)
    workers = wait_workers(srv, 2)
    answers: List[Dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: answers.append(json.loads(get(srv, "/").body)), daemon=True)
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(answer["pid"] for answer in answers) == sorted(workers), answers
    for answer in answers:  # opened in the worker by post_fork, not inherited from the master
        assert answer["db_opened_in"] == answer["pid"] != srv.pid
        assert answer["query"] == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_worker_abort_flushes_telemetry_when_timeout_kills_a_request(server, tmp_path, threads):
    telemetry = tmp_path / "telemetry.jsonl"
    env = {"HOOKS_DB": str(tmp_path / "app.sqlite3"), "HOOKS_TELEMETRY": str(telemetry)}
    srv = server("-c", str(EXAMPLE_CONFIG), "--workers", "1", "--threads", str(threads), "--timeout", "1",
                 "--graceful-timeout", "1", app="hooks_app:app", env=env)
    [hung] = wait_workers(srv, 1)
    with pytest.raises(FastCGIError, match="connection closed before END_REQUEST"):
        get(srv, "/hang", timeout=30)
    flushed = wait_for(lambda: telemetry.exists() and [json.loads(line) for line in telemetry.read_text().splitlines()],
                       timeout=20, what="the telemetry worker_abort flushed")
    assert [(e["pid"], e["path"], e["flushed"]) for e in flushed] == [(hung, "/hang", "worker_abort")]
    wait_log(srv, "killed by the timeout" if threads == 1 else "timed out after")
    replacement = wait_for(lambda: [p for p in wait_workers(srv, 1) if p != hung], timeout=20,
                           what="a new worker in place of the aborted one")
    assert json.loads(get(srv, "/").body)["pid"] == replacement[0]


# --- failures ------------------------------------------------------------------------------------


def test_a_failing_master_hook_is_logged_and_the_server_keeps_serving(server, tmp_path):
    failing = "".join(f"\ndef {name}(*args):\n    raise RuntimeError('boom in {name}')\n"
                      for name in ("on_starting", "when_ready", "pre_fork", "on_reload", "worker_exit"))
    config, log = recording_config(tmp_path, failing)
    srv = server("-c", str(config), "--workers", "1")
    [first] = wait_workers(srv, 1)
    assert get(srv, "/").status == 200
    srv.send_signal(signal.SIGHUP)
    wait_for(lambda: first not in wait_workers(srv, 1), timeout=20, what="the reload to replace the worker")
    text = wait_log(srv, "boom in worker_exit")
    for name in ("on_starting", "when_ready", "pre_fork", "on_reload", "worker_exit"):
        assert f"the {name} hook failed" in text and f"RuntimeError: boom in {name}" in text, name
    assert "Traceback" in text
    assert get(srv, "/").status == 200
    assert len(named(calls(log), "post_fork")) == 2  # the forks went ahead
    assert srv.stop() == 0


def test_pre_request_raising_fails_that_request_only(server, tmp_path):
    config, log = recording_config(tmp_path, (
        "\n_recording_pre_request = pre_request\n"
        "def pre_request(worker, req):\n"
        "    _recording_pre_request(worker, req)\n"
        "    if req.path == '/refused':\n"
        "        raise PermissionError('not this one')\n"
        "def post_request(worker, req, environ, resp):\n"
        "    _note('post_request', path=req.path, status=resp.status)\n"
        "    if req.path == '/version':\n"
        "        raise RuntimeError('post_request went wrong')\n"))
    srv = server("-c", str(config), "--workers", "1")
    wait_workers(srv, 1)
    client = Client(srv.address, timeout=10)
    refused = client.request("/refused")
    assert refused.status == 500 and refused.body == b"Internal Server Error"
    assert client.request("/").status == 200
    version = client.request("/version")  # post_request raising: after the response, only logged
    assert version.status == 200 and version.body == b"fixture"
    text = wait_log(srv, "post_request went wrong")
    assert "the pre_request hook failed for GET /refused; answering 500" in text
    assert "PermissionError: not this one" in text and "the post_request hook failed" in text
    found = wait_calls(log, count("post_request", 3), "three post_request calls")
    assert [(c["path"], c["status"]) for c in named(found, "post_request")] == [
        ("/refused", "500 Internal Server Error"), ("/", "200 OK"), ("/version", "200 OK")]
    assert srv.is_running()


@pytest.mark.parametrize("hook", ["post_fork", "post_worker_init"])
def test_a_failing_boot_hook_is_a_boot_failure_that_halts_with_exit_3(tmp_path, hook):
    arguments = "server, worker" if hook == "post_fork" else "worker"
    config = tmp_path / "boot.conf.py"
    config.write_text(f"def {hook}({arguments}):\n    raise RuntimeError('no boot for you')\n")
    result = run_to_exit(tmp_path, ["-c", str(config), "--workers", "2", APP], timeout=30)
    assert result.returncode == 3, result.stderr
    assert f"the {hook} hook failed" in result.stderr and "RuntimeError: no boot for you" in result.stderr
    halts = [line for line in result.stderr.splitlines() if line.startswith("wsgi_fcgi: error:")]
    assert len(halts) == 1 and "workers cannot boot" in halts[0], result.stderr
    assert result.stderr.count("started worker") <= 4  # counted like any boot failure: no respawn loop


# --- configuration ------------------------------------------------------------------------------------


def test_a_hook_with_the_wrong_arguments_is_a_clear_usage_error(tmp_path):
    config = tmp_path / "bad.conf.py"
    config.write_text("def post_fork(worker):\n    pass\n")
    result = check_config("-c", str(config), APP)
    assert result.returncode == 2
    assert "hook post_fork: post_fork(worker) cannot be called with 2 argument(s); " \
           "expected post_fork(server, worker)" in result.stderr
    config.write_text("on_exit = 'not a function'\n")
    result = check_config("-c", str(config), APP)
    assert result.returncode == 2 and "hook on_exit: 'not a function' is not callable" in result.stderr


def test_a_gunicorn_hook_wsgi_fcgi_does_not_have_is_named_not_ignored(tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("def worker_int(worker):\n    pass\n")
    result = check_config("-c", str(config), APP)
    assert result.returncode == 2
    assert "worker_int is a gunicorn hook that wsgi_fcgi does not run" in result.stderr


def test_check_config_lists_the_hooks_that_are_set():
    result = check_config("-c", str(EXAMPLE_CONFIG), "--bind", "unix:/tmp/unused.sock",
                          env={"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(HOOKS_DIR)]),
                               "HOOKS_DB": ":memory:"})
    assert result.returncode == 0, result.stderr
    assert "# hooks: post_fork, worker_abort" in result.stdout.splitlines()
    assert "post_fork =" not in result.stdout  # functions are named, not printed as settings


def test_serve_takes_hooks_by_name_and_checks_them():
    def post_fork(server: Any, worker: Any) -> None:
        pass

    assert Config(post_fork=post_fork).post_fork is post_fork
    assert Config(post_fork=post_fork).hooks_set() == ["post_fork"]
    with pytest.raises(ConfigError, match=r"hook worker_exit: .* expected worker_exit\(server, worker\)"):
        serve(lambda environ, start_response: [], worker_exit=lambda worker: None)
    assert len({hook.name for hook in HOOKS}) == 11


def test_without_request_hooks_the_worker_runs_the_plain_handler():
    app = lambda environ, start_response: []  # noqa: E731
    plain = Worker.from_config(app, [], Config(worker_abort=lambda worker: None), max_requests=0, pool_size=1)
    assert type(plain.handler) is RequestHandler  # no hook call, nor a check, per request
    assert plain.hooks is not None and plain.hooks.worker_abort is not None
    assert Worker.from_config(app, [], Config(), max_requests=0, pool_size=1).hooks is None
    hooked = Worker.from_config(app, [], Config(post_request=lambda w, r, e, s: None), max_requests=0, pool_size=1)
    assert type(hooked.handler) is HookedHandler


# --- without a master --------------------------------------------------------------------------------


def test_cgi_mode_runs_the_worker_hooks_that_apply(tmp_path):
    config, log = recording_config(tmp_path)
    env = cgi_environ("/version", query="q=1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(APPS_DIR)])
    run = run_script([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "-c", str(config), APP], env)
    assert run.returncode == 0, run.stderr
    assert run.status == 200 and run.body == b"fixture"
    found = calls(log)
    assert [c["event"] for c in found] == ["post_worker_init", "pre_request", "post_request"]
    assert found[2]["path"] == "/version" and found[2]["status"] == "200 OK"


def test_fd0_mode_runs_the_worker_hooks_that_apply(tmp_path):
    import socket

    config, log = recording_config(tmp_path)
    path = tmp_path / "fd0.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(APPS_DIR)]))
    with open(tmp_path / "stderr", "wb") as stderr:  # the web server's way: the socket on fd 0, one process
        proc = subprocess.Popen([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "-c", str(config), APP],
                                stdin=listener.fileno(), stdout=stderr, stderr=stderr, env=env,
                                start_new_session=True)
    listener.close()
    try:
        response = Client(f"unix:{path}", timeout=10).request("/")
        assert response.status == 200, (tmp_path / "stderr").read_text()
        found = wait_calls(log, count("post_request", 1), "the request's post_request")
        assert [c["event"] for c in found] == ["post_worker_init", "pre_request", "post_request"]
        assert all(c["pid"] == proc.pid for c in found)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cgi_mode_answers_500_when_post_worker_init_fails(tmp_path):
    config = tmp_path / "boot.conf.py"
    config.write_text("def post_worker_init(worker):\n    raise RuntimeError('not today')\n")
    env = cgi_environ("/")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(APPS_DIR)])
    run = run_script([sys.executable, "-m", "wsgi_fcgi", "--allow-root", "-c", str(config), APP], env)
    assert run.returncode == 3 and run.status == 500, run.stderr
    assert "the post_worker_init hook failed" in run.stderr and "RuntimeError: not today" in run.stderr


def test_the_operations_guide_lists_every_hook_with_its_signature():
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = guide.split("## Server hooks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [hook.signature for hook in HOOKS]
    assert [row.split("|")[2].strip() for row in rows] == [hook.runs_in for hook in HOOKS]
