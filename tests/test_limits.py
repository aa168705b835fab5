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
import subprocess
import sys
from pathlib import Path

import pytest

from support.modes import APPS_DIR, MODES, one_request

APP = "limits_app:app"

pytestmark = pytest.mark.timeout(60)

EVERY_MODE = [*MODES, "preload"]


def serve_once(mode: str, tmp_path: Path, args: list[str], path: str, query: str = "",
               env: dict[str, str] | None = None) -> str:
    """One request to limits_app in ``mode`` ("preload": the master with --preload)."""
    if mode == "preload":
        mode, args = "master", ["--preload", *args]
    return one_request(mode, tmp_path, args, APP, path, query, env).decode()


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(APPS_DIR)}
    return subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--check-config", *args, APP], capture_output=True,
                          text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)


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
