"""What systemd hands a service through its environment: the notify socket
(``Type=notify``) and activated listening sockets (a ``.socket`` unit).

Strategy: the standard library only -- no libsystemd, no python-systemd. Both
protocols are a few environment variables and file descriptors, read once at
start-up and then removed from ``os.environ``, so neither the app nor the
workers (nor anything they exec) ever sees them: a worker that inherited
NOTIFY_SOCKET could tell systemd the service is ready, and a child that
inherited LISTEN_FDS would believe our sockets were meant for it.

- ``Notifier``: sd_notify(3). One datagram per message to ``$NOTIFY_SOCKET``
  (a path, or ``@name`` for an abstract socket); a no-op when the variable is
  unset, so the master calls it unconditionally. A failed send is logged once
  and never stops the server: systemd being away is no reason to stop serving.
- ``listen_fds``: sd_listen_fds(3). ``LISTEN_FDS=N`` fds from 3 on, when
  ``LISTEN_PID`` is this process; their names from ``LISTEN_FDNAMES``.
  sockets.py turns each into a socket and its Address.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

from .errors import EXIT_BOOT_ERROR, StartupError

error_log = logging.getLogger("wsgi_fcgi.error")

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first fd systemd passes
SEND_TIMEOUT = 1.0  # a send may wait this long for room in systemd's queue, never longer
STATUS_INTERVAL = 5.0  # at most one STATUS= change per this many seconds (not one per request)


class Notifier:
    """sd_notify(3) for the master: READY, RELOADING, STOPPING and STATUS."""

    def __init__(self, address: str | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._target = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._clock = clock
        self._failed = False  # a send failed: said once, then quiet
        self._status = ""  # the STATUS= text systemd has
        self._status_at = float("-inf")  # when we last sent one

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``, which is removed from ``environ``
        (before the first fork, so workers and the app never see it)."""
        return cls(environ.pop("NOTIFY_SOCKET", None) or None)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *self._status_line(status))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one (sd_notify(3)).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        """STATUS=text if it changed, at most once per STATUS_INTERVAL: the
        master offers the current figures on every turn of its loop, and a
        change held back now goes out on a later turn."""
        if text == self._status or self._clock() - self._status_at < STATUS_INTERVAL:
            return
        self.send(*self._status_line(text))

    def _status_line(self, text: str) -> list[str]:
        if not text:
            return []
        self._status, self._status_at = text, self._clock()
        return [f"STATUS={text}"]

    def send(self, *lines: str) -> None:
        """One datagram of ``KEY=value`` lines; errors are logged once, never raised."""
        if self._target is None or not lines:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self._target)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                error_log.warning("cannot notify systemd on NOTIFY_SOCKET %s: %s (further failures not logged)",
                                  _printable(self._target), exc.strerror or exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | bytes | None:
    """NOTIFY_SOCKET -> a sendto() address: a path, or ``@name`` -> the abstract ``\\0name``."""
    if address.startswith("@"):
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return address
    error_log.warning("NOTIFY_SOCKET=%s: not a socket path or an @abstract name; not notifying systemd", address)
    return None


def _printable(target: str | bytes) -> str:
    return "@" + os.fsdecode(target[1:]) if isinstance(target, bytes) else target


def listen_fds(environ: MutableMapping[str, str] = os.environ) -> list[tuple[int, str]]:
    """(fd, name) of each socket systemd passed this process; [] when none.

    LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES are removed from ``environ``
    whatever they say. LISTEN_PID names the process they are for: another
    process's are ignored (with a warning; systemd's rule, for a variable
    leaked by a parent), and LISTEN_FDS without LISTEN_PID is refused, since
    nothing then says whose sockets fds 3 and up are."""
    count = environ.pop("LISTEN_FDS", None)
    pid = environ.pop("LISTEN_PID", None)
    names = environ.pop("LISTEN_FDNAMES", None)
    if count is None:
        return []
    if not count.strip().isdigit():
        raise StartupError(f"LISTEN_FDS={count!r} is not a number of sockets (socket activation)", EXIT_BOOT_ERROR)
    if pid is None:
        raise StartupError(f"LISTEN_FDS={count} is set but LISTEN_PID is not, so nothing says these sockets "
                           "are for this process: start it from a systemd .socket unit or systemd-socket-activate, "
                           "or unset LISTEN_FDS", EXIT_BOOT_ERROR)
    if pid.strip() != str(os.getpid()):
        error_log.warning("ignoring LISTEN_FDS=%s: LISTEN_PID=%s is another process (this is %d), so the "
                          "sockets are not ours", count, pid, os.getpid())
        return []
    labels = names.split(":") if names else []
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))
    return [(fd, labels[i] if len(labels) == len(fds) else "") for i, fd in enumerate(fds)]
