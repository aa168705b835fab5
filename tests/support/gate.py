"""A gate an app under test waits at until the test opens it.

``tests/apps/bridge_app.py`` routes that take ``?fifo=PATH`` block on the
FIFO at PATH until something writes to it (or a bound of their own passes):
the test decides, from what it has observed, when the app may go on -- an
event, never a sleep on either side.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class FifoGate:
    """A FIFO at ``path`` (mode 0666: apps Apache starts run as www-data)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        os.mkfifo(self.path)
        os.chmod(self.path, 0o666)

    def open(self) -> bool:
        """Let the app waiting at the gate go on. False while no app waits:
        a FIFO with no reader cannot be opened for writing (ENXIO), so a test
        polls this with ``wait_for`` until the app has got there."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False
            raise
        try:
            os.write(fd, b"open")
        finally:
            os.close(fd)
        return True
