"""Subprocesses the tests start: the wsgi_fcgi server, and (through
``ManagedProcess``) the web servers of ``support.webservers``.

Rules every process here follows:

- started with ``start_new_session=True``: its own process group, so the
  workers a master leaves behind can be found and killed;
- output goes to a file in the test's temp dir, shown when something fails;
- ready means "accepts a connection", polled until a deadline; exiting early
  or missing the deadline fails with the process's output in the message;
- stopped by PID: a signal, a bounded wait, SIGKILL, then SIGKILL to any
  process still in its group. ``stop()`` is idempotent and meant for a
  ``finally`` or a fixture teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import FLASK_APP_DIR, REPO_ROOT
from .net import parse_address, unix_path
from .waiting import wait_for

# Linux limit for sun_path is 108 bytes including the NUL; keep a margin.
MAX_UNIX_PATH = 100


class ProcessError(AssertionError):
    """A test process did not start or stop as it should (fails the test)."""


def can_connect(spec: str, timeout: float = 0.5) -> bool:
    """True if something accepts a connection on ``spec`` right now."""
    family, target = parse_address(spec)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError:
            return False
    return True


def short_socket_dir(preferred: Path) -> Path:
    """A directory for unix sockets: ``preferred`` if socket paths in it fit
    in sun_path, else a fresh short dir under the system temp dir (the caller
    removes it)."""
    if len(str(preferred / "wsgi_fcgi.sock")) <= MAX_UNIX_PATH:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="wfcgi-"))


def _group_members(pgid: int) -> List[int]:
    """PIDs whose process group is ``pgid`` (Linux /proc; empty elsewhere)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


class ManagedProcess:
    """One subprocess in its own session, with its output in a file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path,
        cwd: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.returncode: Optional[int] = None
        # PIDs still in the process group after the leader exited: a master
        # that leaked workers. Filled in by stop().
        self.leftover_pids: List[int] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self) -> None:
        assert self.proc is None, f"{self.name} already started"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> str:
        return f"{self.name} (pid {self.proc.pid if self.proc else '-'}): {' '.join(self.argv)}"

    def wait_until(self, probe: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``probe`` until true; fail at once if the process exits, or when time runs out."""
        def ready() -> bool:
            if probe():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessError(
                    f"{self.describe()}\nexited with {self.proc.returncode} before {what}.\n"
                    f"--- output ---\n{self.output_text()}"
                )
            return False

        try:
            wait_for(ready, timeout, what)
        except ProcessError:
            raise
        except AssertionError:
            raise ProcessError(
                f"{self.describe()}\nnot {what} after {timeout:.0f} s.\n--- output ---\n{self.output_text()}"
            ) from None

    def send_signal(self, sig: int) -> None:
        if self.is_running():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> Optional[int]:
        """Wait for exit; the exit code, or None if still running."""
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
        """Send ``sig`` by PID, wait up to ``timeout``, then SIGKILL; then kill
        whatever is left in the process group. Returns the exit code (negative
        = killed by that signal)."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, sig)
                if self.wait(timeout) is None:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.wait(10)
            self.returncode = self.proc.returncode
        finally:
            self._kill_group()
        return self.returncode

    def _kill_group(self) -> None:
        assert self.proc is not None
        pgid = self.proc.pid  # start_new_session: the leader's PID is the group ID
        if pgid == os.getpgid(0):
            return
        members = _group_members(pgid)
        if self.proc.poll() is not None:
            self.leftover_pids = members
        if members or not os.path.isdir("/proc"):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                wait_for(lambda: not _group_members(pgid), 5, f"process group {pgid} to be gone")
            except AssertionError:
                pass  # SIGKILL sent; a process stuck in the kernel is beyond a test's reach


def server_env(
    extra_pythonpath: Sequence[Union[str, Path]] = (), env: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """The environment for a server under test: ours, with the checkout and
    the example app first on PYTHONPATH."""
    result = dict(os.environ)
    paths = [str(p) for p in (*extra_pythonpath, REPO_ROOT, FLASK_APP_DIR)]
    if result.get("PYTHONPATH"):
        paths.append(result["PYTHONPATH"])
    result["PYTHONPATH"] = os.pathsep.join(paths)
    result["PYTHONUNBUFFERED"] = "1"
    result.pop("PYTHONSTARTUP", None)
    if env:
        result.update(env)
    return result


class WsgiFcgiServer(ManagedProcess):
    """``python -m wsgi_fcgi [ARGS] APP`` as a subprocess.

    Without a ``--bind`` in ``args`` it listens on ``unix:<socket_dir>/wsgi_fcgi.sock``.
    ``addresses`` lists every bind spec; ``address`` is the first one.
    """

    def __init__(
        self,
        app: str = "app:app",
        args: Sequence[str] = (),
        *,
        workdir: Path,
        socket_dir: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
        pythonpath: Sequence[Union[str, Path]] = (),
        python: str = sys.executable,
        ready_timeout: float = 20.0,
    ) -> None:
        args = [str(a) for a in args]
        self.addresses = _bind_specs(args)
        if not self.addresses:
            sock_dir = socket_dir or workdir
            sock_dir.mkdir(parents=True, exist_ok=True)
            self.addresses = [f"unix:{sock_dir / 'wsgi_fcgi.sock'}"]
            args = ["--bind", self.addresses[0], *args]
        if os.geteuid() == 0 and "--user" not in args and "--allow-root" not in args:
            args.append("--allow-root")  # tests (and CI) run as root; the server refuses that by default
        self.app = app
        self.ready_timeout = ready_timeout
        super().__init__(
            [python, "-m", "wsgi_fcgi", *args, app],
            name="wsgi_fcgi",
            log_path=workdir / "wsgi_fcgi.stderr",
            cwd=REPO_ROOT,
            env=server_env(pythonpath, env),
        )

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def socket_path(self) -> Optional[Path]:
        """The first unix socket's path, or None when bound to TCP only."""
        for spec in self.addresses:
            path = unix_path(spec)
            if path is not None:
                return Path(path)
        return None

    def stderr_text(self) -> str:
        return self.output_text()

    def start(self) -> "WsgiFcgiServer":
        super().start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        self.wait_until(
            lambda: all(can_connect(a) for a in self.addresses),
            timeout=self.ready_timeout if timeout is None else timeout,
            what=f"accepting connections on {', '.join(self.addresses)}",
        )

    def __enter__(self) -> "WsgiFcgiServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _bind_specs(args: Sequence[str]) -> List[str]:
    specs = []
    for i, arg in enumerate(args):
        if arg in ("--bind", "-b") and i + 1 < len(args):
            specs.append(args[i + 1])
        elif arg.startswith("--bind="):
            specs.append(arg[len("--bind=") :])
    return specs
