"""Shared-memory scoreboard: how the master sees what each worker is doing.

Strategy: the master maps one anonymous shared area before forking: a pool
header it alone writes (start time, pool figures) and, per worker, one
fixed-size slot per thread (``--threads``; one slot without threads), which
that thread alone writes when a request begins and ends. That
costs no system call per request (gunicorn touches a file, flup writes to a
pipe), yet the master can tell an idle worker from a hung one and name the
request a hung worker is stuck in, and any worker can answer the status page.
``time.monotonic`` is the system-wide CLOCK_MONOTONIC, so timestamps compare
across processes.
"""

from __future__ import annotations

import mmap
import struct
import time
from time import monotonic  # per request, twice: compiled, a global beats a module attribute
from typing import Final, NamedTuple

# busy_since (0.0 = idle), idle_since, last request's duration, requests served,
# pid, current (or last) request description
_SLOT: Final = struct.Struct("=dddQi4x216s")
_SLOT_END: Final = struct.Struct("=dddQ")
SLOT_SIZE: Final = _SLOT.size

# started (wall clock), started (monotonic), max active workers seen, times every
# worker was busy, slow requests, requests served by workers that have exited,
# pool size (the maximum for dynamic/ondemand), pool mode
_HEADER: Final = struct.Struct("=ddQQQQQ16s")
HEADER_SIZE: Final = 128
assert _HEADER.size <= HEADER_SIZE


class SlotState(NamedTuple):
    busy_since: float
    idle_since: float
    last_duration: float
    requests: int
    pid: int
    request: str


class PoolState(NamedTuple):
    start_time: float
    started: float
    max_active_workers: int
    max_workers_reached: int
    slow_requests: int
    retired_requests: int
    pool_size: int
    pool: str


class Slot:
    """One thread's slot (a worker's, without threads). Only that thread writes;
    the master and the status page read."""

    __slots__ = ("_memory", "_offset", "requests", "pid", "_began")

    def __init__(self, memory: mmap.mmap, offset: int) -> None:
        self._memory = memory
        self._offset = offset
        self.requests = 0
        self.pid = 0
        self._began = 0.0

    def reset(self, pid: int) -> None:
        self.requests = 0
        self.pid = pid
        _SLOT.pack_into(self._memory, self._offset, 0.0, time.monotonic(), 0.0, 0, pid, b"")

    def begin(self, method: str, uri: str) -> None:
        """A request starts: the master's timeout clock runs from now."""
        # The master reads this only when a worker hangs; the worker writes it on every request.
        self._began = now = monotonic()
        _SLOT.pack_into(self._memory, self._offset, now, 0.0, 0.0, self.requests, self.pid,
                        (method + " " + uri).encode("latin-1", "replace"))

    def end(self) -> None:
        """The request is done; its description stays as "the last request"."""
        self.requests += 1
        now = monotonic()
        _SLOT_END.pack_into(self._memory, self._offset, 0.0, now, now - self._began, self.requests)

    def read(self) -> SlotState:
        busy, idle, last, requests, pid, text = _SLOT.unpack_from(self._memory, self._offset)
        return SlotState(busy, idle, last, requests, pid, text.rstrip(b"\0").decode("latin-1"))


class Scoreboard:
    """A pool header and ``size`` workers' slots (``threads`` each) in memory
    shared with every worker forked afterwards."""

    def __init__(self, size: int, pool: str = "static", pool_size: int = 1, threads: int = 1) -> None:
        self.size = size
        self.threads = threads
        self._memory = mmap.mmap(-1, HEADER_SIZE + max(1, size) * threads * SLOT_SIZE)
        self.write_pool(PoolState(time.time(), time.monotonic(), 0, 0, 0, 0, pool_size, pool))

    def slot(self, index: int, thread: int = 0) -> Slot:
        if not (0 <= index < self.size and 0 <= thread < self.threads):
            raise IndexError(index, thread)
        return Slot(self._memory, HEADER_SIZE + (index * self.threads + thread) * SLOT_SIZE)

    def worker_slots(self, index: int) -> list[Slot]:
        """Worker ``index``'s slots, one per thread."""
        return [self.slot(index, thread) for thread in range(self.threads)]

    def read_worker(self, index: int) -> list[SlotState]:
        return [slot.read() for slot in self.worker_slots(index)]

    def slots(self) -> list[SlotState]:
        """Every thread's slot, worker by worker."""
        return [state for index in range(self.size) for state in self.read_worker(index)]

    def pool(self) -> PoolState:
        values = list(_HEADER.unpack_from(self._memory, 0))
        values[-1] = values[-1].rstrip(b"\0").decode("ascii")
        return PoolState(*values)

    def write_pool(self, state: PoolState) -> None:
        """The master's figures (only the master writes the header)."""
        _HEADER.pack_into(self._memory, 0, state.start_time, state.started, state.max_active_workers,
                          state.max_workers_reached, state.slow_requests, state.retired_requests,
                          state.pool_size, state.pool.encode("ascii"))
