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
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.modes import APPS_DIR, MODES, as_nobody, one_error_line, one_request, run_to_exit
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


def test_check_config_shows_env() -> None:
    result = check_config("--env", "A=1", "--env", "B=two words")
    assert result.returncode == 0, result.stderr
    assert "env = {'A': '1', 'B': 'two words'}" in result.stdout.splitlines()


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
