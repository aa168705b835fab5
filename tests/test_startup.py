"""One start-up sequence: the same failure ends every mode with the same exit
code and one line on stderr (wsgi_fcgi/errors.py).

The modes: the prefork master (``--bind``), the single process a web server
spawns with its listening socket on fd 0, and CGI. The failures: options this
process cannot honour (``--user`` of another account without being root: 2)
and an app that cannot be imported (4). Not being root is had without a
second account: ``unshare --user`` runs the server in a new user namespace,
where it is uid 65534 and cannot switch users.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

from support import REPO_ROOT

APPS_DIR = REPO_ROOT / "tests" / "apps"
GOOD_APP = "manager_app:app"
BAD_APP = "no_such_module_xyz:app"

pytestmark = pytest.mark.timeout(60)

MODES = ["master", "fd0", "cgi"]


def _as_nobody() -> List[str]:
    """A prefix that runs a command as a non-root user, or a skip."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--user", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --user is not permitted here")
    return [unshare, "--user"]


def run_mode(mode: str, tmp_path: Path, args: List[str], app: str,
             prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(REPO_ROOT)])}
    root = ["--allow-root"] if os.geteuid() == 0 and not prefix else []
    argv = [*prefix, sys.executable, "-m", "wsgi_fcgi", *root, *args]
    if mode == "master":
        return subprocess.run(argv + ["--bind", f"unix:{tmp_path / 's.sock'}", app], capture_output=True,
                              timeout=30, env=env, stdin=subprocess.DEVNULL)
    if mode == "cgi":
        env.update(REQUEST_METHOD="GET", GATEWAY_INTERFACE="CGI/1.1", SCRIPT_NAME="/app.cgi", PATH_INFO="/",
                   SERVER_NAME="localhost", SERVER_PORT="80", SERVER_PROTOCOL="HTTP/1.1")
        return subprocess.run(argv + [app], capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "fd0.sock"))
    listener.listen(4)
    try:
        return subprocess.run(argv + [app], capture_output=True, timeout=30, env=env, stdin=listener.fileno())
    finally:
        listener.close()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    stderr = result.stderr.decode()
    errors = [line for line in stderr.splitlines() if line.startswith("wsgi_fcgi: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.mark.parametrize("mode", MODES)
def test_user_switch_that_cannot_happen_exits_2_in_every_mode(mode: str, tmp_path: Path) -> None:
    result = run_mode(mode, tmp_path, ["--user", "daemon"], GOOD_APP, prefix=_as_nobody())
    assert result.returncode == 2, result.stderr.decode()
    assert one_error_line(result) == \
        "wsgi_fcgi: error: --user/--group: only a server started as root can switch to another user"
    if mode == "cgi":
        assert result.stdout.startswith(b"Status: 500")  # the client still gets an answer


@pytest.mark.parametrize("mode", MODES)
def test_unimportable_app_exits_4_in_every_mode(mode: str, tmp_path: Path) -> None:
    result = run_mode(mode, tmp_path, [], BAD_APP)
    assert result.returncode == 4, result.stderr.decode()
    line = one_error_line(result)
    assert line.startswith("wsgi_fcgi: error: cannot load the app:")
    assert "no_such_module_xyz" in line
    if mode == "cgi":
        assert result.stdout.startswith(b"Status: 500")
