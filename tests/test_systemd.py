"""systemd: Type=notify (sd_notify), with real processes.

Notify tests bind their own NOTIFY_SOCKET datagram socket (a path, and an
``@abstract`` name) and record every message the master sends, in order,
as systemd would. Every process is stopped by PID in a ``finally``; every wait
polls a state until a deadline (support.waiting); nothing asserts on time.

The fixture app is tests/apps/systemd_app.py (``/environ`` lists the
names in the workers' os.environ).
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from support.processes import WsgiFcgiServer, short_socket_dir
from support.waiting import wait_for
from wsgi_fcgi.client import request
from wsgi_fcgi.systemd import Notifier

APPS_DIR = Path(__file__).resolve().parent / "apps"
APP = "systemd_app:app"

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
    """Workers held at boot (the app waits for a gate file): no READY=1 yet.
    Released: READY=1 arrives, with STATUS= figures that count both workers,
    and a real request is answered."""
    gate = tmp_path / "gate"
    server = notified_server(tmp_path, notify, "--workers", "2", env={"SYSTEMD_APP_GATE": str(gate)})
    try:
        server.start()  # the master listens before its workers boot
        server.wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 2, timeout=20, what="2 workers at the gate")
        assert not any("READY" in m for m in notify.received()), notify.messages
        gate.touch()
        ready = notify.wait("READY", "1")
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
