"""Shared-memory scoreboard: how the master sees what each worker is doing.

Strategy: the master maps one anonymous shared page area before forking; each
worker owns one fixed-size slot and writes into it when a request begins and
ends. That costs no system call per request (gunicorn touches a file, flup
writes to a pipe), yet the master can tell an idle worker from a hung one and
name the request a hung worker is stuck in. ``time.monotonic`` is the
system-wide CLOCK_MONOTONIC, so timestamps compare across processes.
"""

from __future__ import annotations

import mmap
import struct
import time
from typing import NamedTuple

# busy_since (0.0 = idle), idle_since, requests served, pid, request description
_SLOT = struct.Struct("=ddQi4x224s")
SLOT_SIZE = _SLOT.size


class SlotState(NamedTuple):
    busy_since: float
    idle_since: float
    requests: int
    pid: int
    request: str


class Slot:
    """One worker's slot. The worker writes; the master reads."""

    __slots__ = ("_memory", "_offset", "requests", "pid")

    def __init__(self, memory: mmap.mmap, offset: int) -> None:
        self._memory = memory
        self._offset = offset
        self.requests = 0
        self.pid = 0

    def reset(self, pid: int) -> None:
        self.requests = 0
        self.pid = pid
        _SLOT.pack_into(self._memory, self._offset, 0.0, time.monotonic(), 0, pid, b"")

    def begin(self, method: str, uri: str) -> None:
        """A request starts: the master's timeout clock runs from now."""
        # The master reads this only when a worker hangs; the worker writes it on every request.
        _SLOT.pack_into(self._memory, self._offset, time.monotonic(), 0.0, self.requests, self.pid,
                        (method + " " + uri).encode("latin-1", "replace"))

    def end(self) -> None:
        self.requests += 1
        struct.pack_into("=ddQ", self._memory, self._offset, 0.0, time.monotonic(), self.requests)

    def read(self) -> SlotState:
        busy, idle, requests, pid, text = _SLOT.unpack_from(self._memory, self._offset)
        return SlotState(busy, idle, requests, pid, text.rstrip(b"\0").decode("latin-1"))


class Scoreboard:
    """``size`` slots in memory shared with every worker forked afterwards."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._memory = mmap.mmap(-1, max(1, size) * SLOT_SIZE)

    def slot(self, index: int) -> Slot:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return Slot(self._memory, index * SLOT_SIZE)


def private_slot() -> Slot:
    """A slot nobody else reads (a worker running without a master)."""
    return Scoreboard(1).slot(0)
