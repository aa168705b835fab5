"""systemd: Type=notify (sd_notify) and socket activation (LISTEN_FDS), with real processes.

Notify tests bind their own NOTIFY_SOCKET datagram socket (a path, and an
``@abstract`` name) and record every message the master sends, in order,
as systemd would. Socket activation runs the real ``systemd-socket-activate``
(package ``systemd``), which binds the socket, execs ``python -m wsgi_fcgi``
on the first connection and passes the socket as fd 3 with LISTEN_FDS and
LISTEN_PID set. Every process is stopped by PID in a ``finally``; every wait
polls a state until a deadline (support.waiting); nothing asserts on time.

The fixture app is tests/apps/systemd_app.py (``/environ`` lists the
names in the workers' os.environ).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from support import FLASK_APP_DIR, REPO_ROOT
from support.ci import missing
from support.net import free_port
from support.processes import ManagedProcess, WsgiFcgiServer, server_env, short_socket_dir
from support.units import unit_section
from support.waiting import wait_for
from wsgi_fcgi.client import request
from wsgi_fcgi.errors import EXIT_BOOT_ERROR, StartupError
from wsgi_fcgi.sockets import AddressError, adopt_activated
from wsgi_fcgi.systemd import Notifier, listen_fds

APPS_DIR = Path(__file__).resolve().parent / "apps"
APP = "systemd_app:app"
SYSTEMD_DIR = REPO_ROOT / "examples" / "systemd"
ROOT_ARGS = ["--allow-root"] if os.geteuid() == 0 else []  # tests (and CI) run as root
SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

pytestmark = pytest.mark.timeout(60)


# --- a NOTIFY_SOCKET of our own ---------------------------------------------------------


class NotifyListener:
    """The systemd end of sd_notify: a datagram socket that keeps every message, in order."""

    def __init__(self, directory: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"wsgi_fcgi-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.env_value = f"@{name}"
        else:
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.sock.setblocking(False)
        self.messages: List[Dict[str, str]] = []

    def _receive(self) -> List[Dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait(self, key: str, value: Optional[str] = None, *, after: int = 0, timeout: float = 20) -> int:
        """Index of the first message from ``after`` on that sets ``key`` (to ``value``)."""
        def found() -> Optional[int]:
            for index, message in enumerate(self._receive()[after:], start=after):
                if key in message and (value is None or message[key] == value):
                    return index + 1  # wait_for needs a true value
            return None
        return wait_for(found, timeout, f"{key}={value or '*'} from the master (got {self.messages})") - 1

    def received(self) -> List[Dict[str, str]]:
        return list(self._receive())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    directory = short_socket_dir(tmp_path / "n")
    listener = NotifyListener(directory, abstract=request.param == "abstract")
    try:
        yield listener
    finally:
        listener.close()
        if directory != tmp_path / "n":
            shutil.rmtree(directory, ignore_errors=True)


def notified_server(tmp_path: Path, notify: NotifyListener, *args: str,
                    env: Optional[Dict[str, str]] = None) -> WsgiFcgiServer:
    workdir = tmp_path / "server"
    workdir.mkdir(exist_ok=True)
    return WsgiFcgiServer(APP, args, workdir=workdir, socket_dir=short_socket_dir(workdir), pythonpath=[APPS_DIR],
                          env={"NOTIFY_SOCKET": notify.env_value, **(env or {})})


def environ_names(address: str) -> List[str]:
    response = request(address, "/environ", timeout=20)
    assert response.status == 200, response
    return response.body.decode().split("\n")


def pid_of(address: str) -> int:
    response = request(address, "/", timeout=20)
    assert response.status == 200, response
    return int(response.body.decode().rsplit(" ", 1)[1])


# --- Type=notify ---------------------------------------------------------------------


def test_ready_only_once_every_worker_serves(tmp_path: Path, notify: NotifyListener) -> None:
    """Workers held at boot (the app waits for a gate file): no READY=1 yet,
    nor RELOADING=1 for a HUP then. Released: READY=1 arrives, with STATUS=
    figures that count both workers, and a real request is answered."""
    gate = tmp_path / "gate"
    server = notified_server(tmp_path, notify, "--workers", "2", env={"SYSTEMD_APP_GATE": str(gate)})
    try:
        server.start()  # the master listens before its workers boot
        server.wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 2, timeout=20, what="2 workers at the gate")
        assert not any("READY" in m for m in notify.received()), notify.messages
        server.send_signal(signal.SIGHUP)  # a reload while starting: the READY=1 owed covers it
        server.wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 4, timeout=20, what="2 more at the gate")
        gate.touch()
        ready = notify.wait("READY", "1")
        assert not any("RELOADING" in m for m in notify.messages), notify.messages
        assert notify.messages[ready]["STATUS"] == "workers 2, busy 0, idle 2, requests 0"
        assert pid_of(server.address) > 0
    finally:
        server.stop()


def test_reload_and_stop_are_announced_in_order(tmp_path: Path, notify: NotifyListener) -> None:
    """READY=1; HUP: RELOADING=1 with MONOTONIC_USEC, READY=1 once new workers
    serve; TERM: STOPPING=1. NOTIFY_SOCKET never reaches the app."""
    server = notified_server(tmp_path, notify, "--workers", "2")
    try:
        server.start()
        ready = notify.wait("READY", "1")
        first = pid_of(server.address)
        assert "NOTIFY_SOCKET" not in environ_names(server.address)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING", "1", after=ready + 1)
        assert before <= int(notify.messages[reloading]["MONOTONIC_USEC"])
        notify.wait("READY", "1", after=reloading + 1)
        wait_for(lambda: pid_of(server.address) != first, 20, "a worker of the new generation answering")
        assert "NOTIFY_SOCKET" not in environ_names(server.address)
        assert server.stop(signal.SIGTERM) == 0, server.stderr_text()
        stopping = notify.wait("STOPPING", "1", after=reloading + 1)
        assert [m for m in notify.messages[stopping + 1:] if "READY" in m] == []
    finally:
        server.stop()


def test_status_follows_the_pool(tmp_path: Path, notify: NotifyListener) -> None:
    """STATUS= changes when the figures change (rate-limited, so it may take a few seconds)."""
    server = notified_server(tmp_path, notify, "--workers", "2")
    try:
        server.start()
        ready = notify.wait("READY", "1")
        for _ in range(3):
            pid_of(server.address)
        notify.wait("STATUS", "workers 2, busy 0, idle 2, requests 3", after=ready + 1)
    finally:
        server.stop()


def test_preloaded_app_does_not_see_notify_socket(tmp_path: Path, notify: NotifyListener) -> None:
    server = notified_server(tmp_path, notify, "--workers", "1", "--preload")
    try:
        server.start()
        notify.wait("READY", "1")
        assert "NOTIFY_SOCKET" not in environ_names(server.address)  # neither at import (master) nor in the worker
    finally:
        server.stop()


@pytest.mark.parametrize("pool", ["dynamic", "ondemand"])
def test_ready_for_dynamic_and_ondemand_pools(tmp_path: Path, notify: NotifyListener, pool: str) -> None:
    """dynamic: once its starting workers are up; ondemand (no worker at rest):
    once the app is known to load. Either way a request is then served."""
    server = notified_server(tmp_path, notify, "--workers", "3", "--pool", pool)
    try:
        server.start()
        notify.wait("READY", "1")
        assert pid_of(server.address) > 0
    finally:
        server.stop()


def test_notify_failures_are_logged_once_and_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="wsgi_fcgi.error"):
        notifier.ready("workers 1")
        notifier.reloading()
        notifier.stopping()
    notifier.close()
    assert [r.getMessage() for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()] == [
        f"cannot notify systemd on NOTIFY_SOCKET {tmp_path / 'nobody-listens.sock'}: No such file or directory "
        "(further failures not logged)"]


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    environ: Dict[str, str] = {}
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    notifier.ready("x")  # nothing to send to, nothing raised


def test_status_is_rate_limited(tmp_path: Path) -> None:
    """A change is sent at most once per STATUS_INTERVAL; one held back goes out on a later offer."""
    listener = NotifyListener(short_socket_dir(tmp_path / "n"), abstract=True)
    now = [100.0]
    notifier = Notifier(listener.env_value, clock=lambda: now[0])
    try:
        notifier.ready("requests 0")
        notifier.status("requests 1")  # too soon: held back
        notifier.status("requests 1")
        now[0] += 10
        notifier.status("requests 1")  # now it goes
        notifier.status("requests 1")  # unchanged: not sent again
        listener.wait("STATUS", "requests 1")
        assert [m.get("STATUS") for m in listener.received()] == ["requests 0", "requests 1"]
    finally:
        notifier.close()
        listener.close()


# --- LISTEN_FDS read from the environment (in this process) -------------------------------


def test_listen_fds_for_this_process() -> None:
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "app:admin", "OTHER": "x"}
    assert listen_fds(environ) == [(3, "app"), (4, "admin")]
    assert environ == {"OTHER": "x"}


def test_listen_fds_for_another_process_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    with caplog.at_level(logging.WARNING, logger="wsgi_fcgi.error"):
        assert listen_fds(environ) == []
    assert environ == {}
    assert "LISTEN_PID=1 is another process" in caplog.text


def test_listen_fds_without_listen_pid_is_an_error() -> None:
    environ = {"LISTEN_FDS": "1"}
    with pytest.raises(StartupError, match="LISTEN_PID is not") as info:
        listen_fds(environ)
    assert info.value.exit_code == EXIT_BOOT_ERROR and environ == {}


def test_datagram_and_connected_sockets_are_refused() -> None:
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left, right = socket.socketpair()  # what Accept=yes passes: one connection
    try:
        with pytest.raises(AddressError, match=r"datagram socket \(ListenDatagram=\).*ListenStream="):
            adopt_activated(datagram.fileno(), "app")
        with pytest.raises(AddressError, match="connected socket.*Accept=yes.*Accept=no"):
            adopt_activated(left.fileno())
        assert datagram.fileno() >= 0 and left.fileno() >= 0  # refused, not closed
    finally:
        for sock in (datagram, left, right):
            sock.close()


def test_listen_fds_without_listen_pid_ends_the_server_with_exit_3() -> None:
    env = server_env([APPS_DIR], {"LISTEN_FDS": "1"})
    env.pop("LISTEN_PID", None)
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_ARGS, APP], env=env, capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("wsgi_fcgi: error: LISTEN_FDS=1 is set but LISTEN_PID is not"), result.stderr


# --- socket activation with systemd-socket-activate -------------------------------------


@pytest.fixture
def socket_activate() -> str:
    path = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
    if not os.access(path, os.X_OK):
        missing("systemd-socket-activate is not installed (apt-get install systemd)")
    return path


class Activated(ManagedProcess):
    """``systemd-socket-activate -l ADDR... python -m wsgi_fcgi ARGS``: it binds
    each ADDR, and on the first connection execs the server (same PID) with
    the sockets as fds 3 and up."""

    def __init__(self, tool: str, listen: Sequence[str], argv: Sequence[str], *, workdir: Path,
                 cwd: Optional[Path] = None, fdnames: str = "") -> None:
        self.listen = list(listen)
        env = server_env([APPS_DIR])
        # it passes its children only LISTEN_* and what -E names
        setenv = [f"--setenv={name}={env[name]}" for name in ("PYTHONPATH", "PYTHONUNBUFFERED")]
        names = [f"--fdname={fdnames}"] if fdnames else []
        super().__init__([tool, *(f"--listen={a}" for a in self.listen), *setenv, *names, *argv],
                         name="systemd-socket-activate", log_path=workdir / "activate.log", cwd=cwd or REPO_ROOT,
                         env=env)

    def start(self) -> None:
        super().start()
        self.wait_until(lambda: self.output_text().count("Listening on ") == len(self.listen), timeout=20,
                        what="listening")


def activated_server(tool: str, tmp_path: Path, listen: Sequence[str], *args: str,
                     fdnames: str = "") -> Activated:
    return Activated(tool, listen, [sys.executable, "-m", "wsgi_fcgi", *ROOT_ARGS, *args, APP],
                     workdir=tmp_path, fdnames=fdnames)


def test_socket_activation_on_a_unix_socket(socket_activate: str, tmp_path: Path) -> None:
    """The passed socket serves; the app sees no LISTEN_*; HUP keeps serving on
    the same socket; TERM leaves the socket file (systemd's) in place."""
    directory = short_socket_dir(tmp_path / "s")
    path = directory / "app.sock"
    server = activated_server(socket_activate, tmp_path, [str(path)], "--workers", "2", fdnames="app")
    started = re.compile(r"started worker (\d+)")
    try:
        server.start()
        address = f"unix:{path}"
        names = environ_names(address)  # the first connection makes it exec the server
        assert not [n for n in names if n in SYSTEMD_VARS], names
        assert f"unix:{path} (systemd fd 3, app)" in server.output_text()
        inode = path.stat().st_ino
        wait_for(lambda: len(started.findall(server.output_text())) == 2, 20, "2 workers")
        old = set(started.findall(server.output_text()))
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: server.output_text().count("(replaced by reload)") == 2, 20, "the old workers retired")
        assert str(pid_of(address)) not in old
        assert path.stat().st_ino == inode
        assert server.stop(signal.SIGTERM) == 0, server.output_text()
        assert path.exists()  # systemd's socket file: not ours to remove
    finally:
        server.stop()
        if directory != tmp_path / "s":
            shutil.rmtree(directory, ignore_errors=True)


def test_socket_activation_on_tcp(socket_activate: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = activated_server(socket_activate, tmp_path, [address], "--workers", "1")
    try:
        server.start()
        names = environ_names(address)
        assert not [n for n in names if n in SYSTEMD_VARS], names
        assert f"{address} (systemd fd 3)" in server.output_text()
    finally:
        server.stop()


def test_activated_socket_beyond_loopback_needs_allow_remote(socket_activate: str, tmp_path: Path) -> None:
    port = free_port("0.0.0.0")
    server = activated_server(socket_activate, tmp_path, [f"0.0.0.0:{port}"], "--workers", "1")
    try:
        server.start()
        with socket.create_connection(("127.0.0.1", port), timeout=20):
            pass  # makes it exec the server
        assert server.wait(20) == EXIT_BOOT_ERROR, server.output_text()
        assert "wsgi_fcgi: error: refusing to listen on 0.0.0.0:" in server.output_text()
        assert "--allow-remote" in server.output_text()
    finally:
        server.stop()


def test_activated_sockets_win_over_bind(socket_activate: str, tmp_path: Path) -> None:
    directory = short_socket_dir(tmp_path / "s")
    path, bound = directory / "app.sock", directory / "bind.sock"
    server = activated_server(socket_activate, tmp_path, [str(path)], "--bind", f"unix:{bound}")
    try:
        server.start()
        assert pid_of(f"unix:{path}") > 0
        assert f"listening on the socket(s) systemd passed (LISTEN_FDS), not on --bind unix:{bound}" \
            in server.output_text()
        assert not bound.exists()
    finally:
        server.stop()
        if directory != tmp_path / "s":
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("kind", ["--datagram", "--seqpacket", "--accept"])
def test_datagram_and_accept_yes_end_the_server(socket_activate: str, tmp_path: Path, kind: str) -> None:
    """What systemd-socket-activate passes for ListenDatagram=, ListenSequentialPacket= and Accept=yes
    ends the server with exit 3."""
    directory = short_socket_dir(tmp_path / "s")
    path = directory / "app.sock"
    server = Activated(socket_activate, [str(path)], [kind, sys.executable, "-m", "wsgi_fcgi", *ROOT_ARGS, APP],
                       workdir=tmp_path)
    expected = "use Accept=no" if kind == "--accept" else "use ListenStream="
    try:
        server.start()
        if kind == "--datagram":
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.sendto(b"x", str(path))  # makes it exec the server
            assert server.wait(20) == EXIT_BOOT_ERROR, server.output_text()
        elif kind == "--seqpacket":
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
                client.connect(str(path))
                assert server.wait(20) == EXIT_BOOT_ERROR, server.output_text()
        else:  # one server per connection, each given only that connection
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                wait_for(lambda: expected in server.output_text(), 20, "the refusal")
        assert "wsgi_fcgi: error: fd 3 from systemd is " in server.output_text()
        assert expected in server.output_text()
    finally:
        server.stop()
        if directory != tmp_path / "s":
            shutil.rmtree(directory, ignore_errors=True)


def test_check_config_lists_activated_sockets(socket_activate: str, tmp_path: Path) -> None:
    directory = short_socket_dir(tmp_path / "s")
    path = directory / "app.sock"
    server = activated_server(socket_activate, tmp_path, [str(path)], "--check-config", fdnames="app")
    try:
        server.start()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # makes it exec --check-config
            assert server.wait(20) == 0, server.output_text()
        assert f"\n# listen: unix:{path} (systemd fd 3, app)\n" in server.output_text()
    finally:
        server.stop()
        if directory != tmp_path / "s":
            shutil.rmtree(directory, ignore_errors=True)


# --- the units of docs/systemd.md -----------------------------------------------------------


def _exec_start(service: Path, mapping: Dict[str, str]) -> List[str]:
    """ExecStart of ``service`` with its install paths mapped to this checkout."""
    unit = unit_section(service, "Service")
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[0] == "/srv/flask_app/venv/bin/python", "ExecStart no longer starts with the venv's python"
    assert unit["WorkingDirectory"] == ["/srv/flask_app/app"]
    for old, new in mapping.items():
        argv = [a.replace(old, new) for a in argv]
    return [sys.executable, *argv[1:], *ROOT_ARGS]


def test_notify_service_unit_tells_systemd(tmp_path: Path, notify: NotifyListener) -> None:
    """examples/systemd/flask_app.service is Type=notify: its ExecStart, given
    a NOTIFY_SOCKET as systemd would, says READY=1 once it serves, then
    RELOADING=1 and READY=1 for ExecReload's HUP, STOPPING=1 for KillSignal."""
    service = SYSTEMD_DIR / "flask_app.service"
    unit = unit_section(service, "Service")
    assert unit["Type"] == ["notify"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    runtime = short_socket_dir(tmp_path / "run")
    argv = _exec_start(service, {f"/run/{unit['RuntimeDirectory'][0]}/": f"{runtime}/"})
    process = ManagedProcess(argv, name="flask_app.service", log_path=tmp_path / "service.log", cwd=FLASK_APP_DIR,
                             env=server_env(env={"NOTIFY_SOCKET": notify.env_value}))
    try:
        process.start()
        ready = notify.wait("READY", "1")
        response = request(f"unix:{runtime / 'app.sock'}", "/hello/systemd", timeout=20)
        assert response.body == b"Hello, systemd!", response
        process.send_signal(signal.SIGHUP)
        notify.wait("READY", "1", after=notify.wait("RELOADING", "1", after=ready + 1) + 1)
        assert process.stop(signal.SIGTERM, float(unit["TimeoutStopSec"][0])) == 0, process.output_text()
        notify.wait("STOPPING", "1", after=ready + 1)
    finally:
        process.stop()
        if runtime != tmp_path / "run":
            shutil.rmtree(runtime, ignore_errors=True)


def test_socket_unit_and_its_service_serve_through_socket_activate(socket_activate: str, tmp_path: Path) -> None:
    """examples/systemd/flask_app-activated.socket's ListenStream, and its
    service's ExecStart run from WorkingDirectory, through systemd-socket-activate
    (which names the fd after the socket unit, as systemd does): a real request."""
    socket_unit = SYSTEMD_DIR / "flask_app-activated.socket"
    service = SYSTEMD_DIR / "flask_app-activated.service"
    listen = unit_section(socket_unit, "Socket")
    assert listen.get("Accept", ["no"]) == ["no"]
    assert unit_section(service, "Service")["Type"] == ["notify"]
    assert unit_section(service, "Unit")["Requires"] == [socket_unit.name]
    [stream] = listen["ListenStream"]
    assert stream.startswith("/run/flask_app/")
    runtime = short_socket_dir(tmp_path / "run")
    path = runtime / Path(stream).name
    argv = _exec_start(service, {})
    assert "--bind" not in argv and "-b" not in argv, "the socket comes from the .socket unit"
    server = Activated(socket_activate, [str(path)], argv, workdir=tmp_path, cwd=FLASK_APP_DIR,
                       fdnames=socket_unit.name)
    try:
        server.start()
        response = request(f"unix:{path}", "/hello/systemd", timeout=30)
        assert response.body == b"Hello, systemd!", response
        assert f"unix:{path} (systemd fd 3, {socket_unit.name})" in server.output_text()
        assert server.stop(signal.SIGTERM) == 0, server.output_text()
    finally:
        server.stop()
        if runtime != tmp_path / "run":
            shutil.rmtree(runtime, ignore_errors=True)
