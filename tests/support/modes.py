"""The server in each of its start-up modes, run once: the prefork master
(``--bind``), the single process a web server spawns with its listening
socket on fd 0, and a CGI script.

- ``run_to_exit(mode, ...)``: for start-up failures, which end every mode
  with the same exit code and one line (``one_error_line``);
- ``one_request(mode, ...)``: the body of one GET in that mode, for what
  every mode must do alike; each process is stopped by PID before it returns;
- ``as_nobody()``: a command prefix that runs the server unprivileged, had
  without a second account: ``unshare --user`` makes it uid 65534 in a new
  user namespace, with no privilege over the real system.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from wsgi_fcgi.client import Client, Response

from . import REPO_ROOT
from .processes import WsgiFcgiServer

APPS_DIR = REPO_ROOT / "tests" / "apps"
MODES = ["master", "fd0", "cgi"]
TIMEOUT = 30

Preexec = Callable[[], None] | None


def as_nobody() -> list[str]:
    """A prefix that runs a command as a non-root user, or a skip."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--user", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --user is not permitted here")
    return [unshare, "--user"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(REPO_ROOT)]),
            **(extra or {})}


def _argv(args: Sequence[str], prefix: Sequence[str]) -> list[str]:
    root = ["--allow-root"] if os.geteuid() == 0 and not prefix else []
    return [*prefix, sys.executable, "-m", "wsgi_fcgi", *root, *args]


def cgi_variables(path: str = "/", query: str = "") -> dict[str, str]:
    return {"REQUEST_METHOD": "GET", "GATEWAY_INTERFACE": "CGI/1.1", "SCRIPT_NAME": "/app.cgi",
            "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1"}


def _listener(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # left by the previous run in the same test
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    return listener


def run_to_exit(mode: str, tmp_path: Path, args: Sequence[str], app: str, prefix: Sequence[str] = (),
                preexec_fn: Preexec = None) -> subprocess.CompletedProcess[bytes]:
    """Run the server in ``mode`` until it exits by itself (a start-up failure)."""
    argv, env = _argv(args, prefix), _env()
    run = dict(capture_output=True, timeout=TIMEOUT, env=env, preexec_fn=preexec_fn)
    if mode == "master":
        return subprocess.run([*argv, "--bind", f"unix:{tmp_path / 's.sock'}", app], stdin=subprocess.DEVNULL,
                              **run)  # type: ignore[call-overload]
    if mode == "cgi":
        env.update(cgi_variables())
        return subprocess.run([*argv, app], stdin=subprocess.DEVNULL, **run)  # type: ignore[call-overload]
    listener = _listener(tmp_path / "fd0.sock")
    try:
        return subprocess.run([*argv, app], stdin=listener.fileno(), **run)  # type: ignore[call-overload]
    finally:
        listener.close()


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    stderr = result.stderr.decode()
    errors = [line for line in stderr.splitlines() if line.startswith("wsgi_fcgi: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def one_request(mode: str, tmp_path: Path, args: Sequence[str], app: str, path: str, query: str = "",
                env: dict[str, str] | None = None) -> bytes:
    """The body of ``GET path?query`` served in ``mode`` (asserting a 200)."""
    if mode == "cgi":
        result = subprocess.run([*_argv(args, ()), app], env=_env({**(env or {}), **cgi_variables(path, query)}),
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert result.returncode == 0 and head.startswith(b"Status: 200"), result
        return body
    uri = f"{path}?{query}" if query else path
    if mode == "master":
        with WsgiFcgiServer(app, args, workdir=tmp_path / "master", pythonpath=[APPS_DIR], env=env) as server:
            response = Client(server.address, timeout=TIMEOUT).request(uri)
    else:
        response = _one_request_on_fd0(tmp_path, [*_argv(args, ()), app], uri, env)
    assert response.status == 200, response
    return response.body


def _one_request_on_fd0(tmp_path: Path, argv: list[str], uri: str, env: dict[str, str] | None) -> Response:
    socket_path = tmp_path / "fd0.sock"
    listener = _listener(socket_path)
    with open(tmp_path / "fd0.stderr", "wb") as log:
        proc = subprocess.Popen(argv, stdin=listener.fileno(), stdout=log, stderr=log, env=_env(env),
                                cwd=str(tmp_path))
    listener.close()
    try:
        return Client(f"unix:{socket_path}", timeout=TIMEOUT).request(uri)
    finally:
        proc.kill()  # by PID: the one process of this mode
        proc.wait(TIMEOUT)
