"""Issue 14, environment and limits: ``--env``, ``--rlimit-nofile``,
``--rlimit-core`` and ``--max-worker-memory``, with real processes.

``--env`` and the resource limits are set at the one start-up place every
mode goes through, so each is checked in every mode (support/modes.py: the
master with and without --preload, fd 0, CGI) by what the app itself sees:
tests/apps/limits_app.py reports os.environ as it was when the app was
imported, and resource.getrlimit in the process serving the request. The
refusal of a limit above the hard one runs the server unprivileged
(``unshare --user``) under a hard limit lowered in the child (preexec_fn).

``--max-worker-memory``: the same app leaks on purpose; the master must
replace the worker after the request in hand, not in the middle of it.
Every process is stopped by PID (fixtures, or ``finally``); every wait polls
a state with wait_for, and no test asserts on time.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import REPO_ROOT
from support.modes import APPS_DIR, MODES, as_nobody, cgi_variables, one_error_line, one_request, run_to_exit
from support.processes import WsgiFcgiServer
from support.waiting import wait_for
from wsgi_fcgi.client import Client
from wsgi_fcgi.limits import RLIMITS, set_soft_limit

APP = "limits_app:app"

pytestmark = pytest.mark.timeout(60)

EVERY_MODE = [*MODES, "preload"]


def serve_once(mode: str, tmp_path: Path, args: list[str], path: str, query: str = "",
               env: dict[str, str] | None = None) -> str:
    """One request to limits_app in ``mode`` ("preload": the master with --preload)."""
    if mode == "preload":
        mode, args = "master", ["--preload", *args]
    return one_request(mode, tmp_path, args, APP, path, query, env).decode()


def check_config(*args: str, prefix: list[str] | None = None, preexec_fn: Callable[[], None] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(APPS_DIR)}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "wsgi_fcgi", "--check-config", *args, APP],
                          capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL,
                          preexec_fn=preexec_fn)


def rlimits(answer: str) -> dict[str, tuple[int, int]]:
    """limits_app's /rlimits answer: {"nofile": (soft, hard), "core": (soft, hard)}."""
    words = answer.split()
    return {words[i]: (int(words[i + 1]), int(words[i + 2])) for i in range(0, len(words), 3)}


LOWERED_HARD_NOFILE = 4096


def lower_hard_nofile() -> None:
    """In the child, before exec: a hard limit it cannot raise back unprivileged."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOWERED_HARD_NOFILE, LOWERED_HARD_NOFILE))


# --- --env --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", EVERY_MODE)
def test_env_is_set_before_the_app_is_imported_in_every_mode(mode: str, tmp_path: Path) -> None:
    args = ["--env", "GREETING=hello world", "--env", "EMPTY=", "--env", "EQUALS=a=b"]
    assert serve_once(mode, tmp_path, args, "/env", "name=GREETING").startswith("hello world")
    assert serve_once(mode, tmp_path, args, "/env", "name=EMPTY").startswith(" ")
    assert serve_once(mode, tmp_path, args, "/env", "name=EQUALS").startswith("a=b ")


def test_env_overrides_the_inherited_environment(tmp_path: Path) -> None:
    answer = serve_once("master", tmp_path, ["--env", "GREETING=from --env"], "/env", "name=GREETING",
                        env={"GREETING": "inherited"})
    assert answer.startswith("from --env ")


def test_under_cgi_env_is_the_app_s_not_the_request_s(tmp_path: Path) -> None:
    # The request's variables are the web server's: --env can neither forge nor change them.
    imported, request = serve_once("cgi", tmp_path, ["--env", "PATH_INFO=/forged", "--env", "APP_ONLY=1"],
                                   "/env", "name=PATH_INFO").split(" ")
    assert (imported, request) == ("/forged", "/env")
    assert serve_once("cgi", tmp_path, ["--env", "APP_ONLY=1"], "/env", "name=APP_ONLY") == "1 -"


def test_serve_takes_env_as_a_dict(tmp_path: Path) -> None:
    # A dispatch.fcgi imported the app before serve() ran: the variables are there from then on.
    script = tmp_path / "dispatch.fcgi"
    script.write_text("from wsgi_fcgi import serve\nfrom limits_app import app\n"
                      f"serve(app, env={{'GREETING': 'from serve'}}, allow_root={os.geteuid() == 0})\n")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(REPO_ROOT)]),
           **cgi_variables("/env-now", "name=GREETING")}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.endswith(b"\r\n\r\nfrom serve")


def test_check_config_shows_every_new_setting() -> None:
    result = check_config("--env", "A=1", "--env", "B=two words", "--rlimit-nofile", "1000", "--rlimit-core", "0",
                          "--max-worker-memory", "256")
    assert result.returncode == 0, result.stderr
    for line in ("env = {'A': '1', 'B': 'two words'}", "rlimit_nofile = 1000", "rlimit_core = 0",
                 "max_worker_memory = 256"):
        assert line in result.stdout.splitlines()


# --- --rlimit-nofile, --rlimit-core -------------------------------------------------


@pytest.mark.parametrize("mode", EVERY_MODE)
def test_rlimits_reach_the_process_serving_requests_in_every_mode(mode: str, tmp_path: Path) -> None:
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, core_hard = resource.getrlimit(resource.RLIMIT_CORE)
    nofile = min(1000, nofile_hard)
    answer = serve_once(mode, tmp_path, ["--rlimit-nofile", str(nofile), "--rlimit-core", "4096"], "/rlimits")
    # The soft limits as asked; the hard ones untouched, since neither had to rise.
    assert rlimits(answer) == {"nofile": (nofile, nofile_hard), "core": (4096, core_hard)}


def test_rlimit_core_takes_unlimited(tmp_path: Path) -> None:
    _, core_hard = resource.getrlimit(resource.RLIMIT_CORE)
    if core_hard != resource.RLIM_INFINITY and os.geteuid() != 0:
        pytest.skip("the hard core limit is finite and we cannot raise it")
    answer = serve_once("master", tmp_path, ["--rlimit-core", "unlimited"], "/rlimits")
    assert rlimits(answer)["core"] == (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def may_raise_hard_nofile(to: int) -> bool:
    """Whether a process started here may raise its hard RLIMIT_NOFILE (root with
    CAP_SYS_RESOURCE; containers often drop it), asked of a child."""
    probe = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({to}, {to}))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30).returncode == 0


def test_a_privileged_server_raises_the_hard_limit_when_the_soft_one_must_pass_it(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard + 1000
    if not may_raise_hard_nofile(wanted):
        pytest.skip("this process may not raise its hard RLIMIT_NOFILE (needs CAP_SYS_RESOURCE)")
    answer = serve_once("master", tmp_path, ["--rlimit-nofile", str(wanted)], "/rlimits")
    assert rlimits(answer)["nofile"] == (wanted, wanted)


@pytest.mark.parametrize("hard, wanted, expected", [
    (200, 150, (150, 200)),                 # under the hard limit: the hard one stays
    (200, 300, (300, 300)),                 # above it: raised to the soft one, no further
    (resource.RLIM_INFINITY, "unlimited", (resource.RLIM_INFINITY, resource.RLIM_INFINITY)),
    (200, "unlimited", (resource.RLIM_INFINITY, resource.RLIM_INFINITY)),
])
def test_the_hard_limit_rises_only_when_it_must(monkeypatch: pytest.MonkeyPatch, hard: int, wanted: Any,
                                                 expected: tuple[int, int]) -> None:
    # The privileged path, which this machine may not allow for real (see the test above).
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (100, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(limits))
    set_soft_limit(RLIMITS[1], wanted)
    assert calls == [expected]


REFUSAL = (f"wsgi_fcgi: error: --rlimit-nofile: 1048576 is above the hard limit {LOWERED_HARD_NOFILE} "
           "(raise it with ulimit -Hn or LimitNOFILE= in the systemd unit)")


@pytest.mark.parametrize("mode", MODES)
def test_rlimit_above_the_hard_limit_unprivileged_exits_2_in_every_mode(mode: str, tmp_path: Path) -> None:
    result = run_to_exit(mode, tmp_path, ["--rlimit-nofile", "1048576"], APP, prefix=as_nobody(),
                         preexec_fn=lower_hard_nofile)
    assert result.returncode == 2, result.stderr.decode()
    assert one_error_line(result) == REFUSAL
    assert not (tmp_path / "s.sock").exists()  # refused before it listened


def test_check_config_refuses_a_limit_it_cannot_have() -> None:
    result = check_config("--rlimit-nofile", "1048576", prefix=as_nobody(), preexec_fn=lower_hard_nofile)
    assert result.returncode == 2
    assert result.stderr.strip() == REFUSAL
    assert "rlimit_nofile = 1048576" in result.stdout.splitlines()


# --- --max-worker-memory -------------------------------------------------------------

LIMIT_MIB = 64
REPLACED = re.compile(r"worker \d+ \(pid (\d+)\) uses (\d+) MiB RSS, above --max-worker-memory "
                      rf"{LIMIT_MIB}: replacing it")


@pytest.fixture
def leaky(wsgi_server: Callable[..., WsgiFcgiServer]) -> Callable[[int], WsgiFcgiServer]:
    """``leaky(threads)``: limits_app, one worker, --max-worker-memory LIMIT_MIB."""
    def start(threads: int) -> WsgiFcgiServer:
        return wsgi_server(APP, "--workers", "1", "--threads", str(threads), "--max-worker-memory",
                           str(LIMIT_MIB), pythonpath=[APPS_DIR])
    return start


def get(server: WsgiFcgiServer, uri: str) -> str:
    """The body of a request that must succeed: any failure fails the test at once."""
    response = Client(server.address, timeout=30).request(uri)
    assert response.status == 200, response
    return response.body.decode()


def served_by(server: WsgiFcgiServer) -> int:
    return int(get(server, "/").rsplit(" ", 1)[1])


def replacement(server: WsgiFcgiServer, old: int) -> int:
    """Wait, requests succeeding all along, for a worker other than ``old`` to answer."""
    return wait_for(lambda: (pid := served_by(server)) != old and pid, timeout=20, what="a new worker")


def logged_replacement(server: WsgiFcgiServer) -> tuple[int, int]:
    """(pid, MiB) of the first replacement the master logged."""
    match = wait_for(lambda: REPLACED.search(server.stderr_text()), timeout=20, what="the replacement logged")
    return int(match[1]), int(match[2])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_worker_that_grows_past_the_limit_is_replaced_and_no_request_fails(
        leaky: Callable[[int], WsgiFcgiServer], threads: int) -> None:
    server = leaky(threads)
    first = served_by(server)
    for _ in range(40):  # 8 MiB kept per request, until past the limit
        pid, rss = map(int, get(server, "/leak?mib=8").split())
        if rss > LIMIT_MIB or pid != first:
            break
    else:
        pytest.fail(f"40 leaking requests did not take the worker past {LIMIT_MIB} MiB")
    assert replacement(server, first) != first
    pid, mib = logged_replacement(server)
    assert pid == first and mib > LIMIT_MIB
    assert "did not exit in time" not in server.stderr_text()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_worker_past_the_limit_finishes_its_request_first(
        leaky: Callable[[int], WsgiFcgiServer], threads: int, tmp_path: Path) -> None:
    server = leaky(threads)
    first = served_by(server)
    held: dict[str, str] = {}
    uri = f"/leak?mib={LIMIT_MIB}&hold={tmp_path}"
    request = threading.Thread(target=lambda: held.update(body=get(server, uri)))
    request.start()
    try:
        wait_for((tmp_path / "started").exists, what="the leaking request to start")
        # Past the limit in the middle of a request: the master decides now...
        assert logged_replacement(server)[0] == first
        # ... and a new worker serves while the old one still holds its request.
        assert replacement(server, first) != first
        assert request.is_alive()
    finally:
        (tmp_path / "go").touch()
        request.join(30)
    assert held["body"].split()[0] == str(first)  # answered in full by the worker that was replaced
    wait_for(lambda: not os.path.exists(f"/proc/{first}"), what=f"worker {first} to exit and be reaped")
    assert "did not exit in time" not in server.stderr_text()


def test_no_limit_no_replacement(wsgi_server: Callable[..., WsgiFcgiServer]) -> None:
    server = wsgi_server(APP, "--workers", "1", pythonpath=[APPS_DIR])
    first = served_by(server)
    get(server, f"/leak?mib={LIMIT_MIB * 2}")
    assert served_by(server) == first
    assert "--max-worker-memory" not in server.stderr_text()


def test_a_limit_below_what_the_app_starts_with_is_said_once(wsgi_server: Callable[..., WsgiFcgiServer]) -> None:
    server = wsgi_server(APP, "--workers", "1", "--max-worker-memory", "1", pythonpath=[APPS_DIR])
    wait_for(lambda: "before serving a request" in server.stderr_text(), what="the warning")
    first = served_by(server)  # an idle worker over the limit is not replaced in a loop of boots...
    replacement(server, first)  # ... but after a request, like any other
    assert server.stderr_text().count("before serving a request") == 1


def test_on_fd0_there_is_no_master_to_apply_it(tmp_path: Path) -> None:
    assert serve_once("fd0", tmp_path, ["--max-worker-memory", "64"], "/").startswith("hello from")
    assert "--max-worker-memory is the master's" in (tmp_path / "fd0.stderr").read_text()
