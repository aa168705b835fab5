"""The master's decisions in the test process, as gunicorn tests its arbiter:
an ``Arbiter`` whose fork and kill are replaced by records, reading a fake
scoreboard (what each worker's slots say) and a fake clock. No process is
started: what is checked is which worker the master would signal, spawn or
retire, and when. tests/test_manager.py runs the real thing end to end.
"""

from __future__ import annotations

import signal
from typing import Any, Dict, List, Tuple

import pytest

from wsgi_fcgi import manager
from wsgi_fcgi.config import Config
from wsgi_fcgi.errors import EXIT_BOOT_ERROR, StartupError
from wsgi_fcgi.manager import Arbiter, WorkerProcess
from wsgi_fcgi.scoreboard import PoolState, SlotState

START = 1000.0  # the fake clock's first reading


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeSlot:
    def __init__(self, board: FakeScoreboard, index: int) -> None:
        self.board, self.index = board, index

    def read(self) -> SlotState:
        return self.board.read_worker(self.index)[0]


class FakeScoreboard:
    """What the workers would have written: per slot, one SlotState per thread."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.states: Dict[int, List[SlotState]] = {}
        self._pool = PoolState(START, START, 0, 0, 0, 0, 0, "static")

    def read_worker(self, index: int) -> List[SlotState]:
        return self.states.get(index, [SlotState(0.0, 0.0, 0.0, 0, 0, "")])

    def slot(self, index: int) -> FakeSlot:
        return FakeSlot(self, index)

    def pool(self) -> PoolState:
        return self._pool

    def write_pool(self, state: PoolState) -> None:
        self._pool = state


class DryArbiter(Arbiter):
    """Spawning makes a WorkerProcess with a made-up pid; signals are recorded."""

    def __init__(self, **settings: Any) -> None:
        workers = settings.pop("workers", 2)
        super().__init__(Config(**settings), [], [], workers=workers, app_spec="app:app")
        self.clock = FakeClock()
        self.scoreboard = FakeScoreboard()  # type: ignore[assignment]
        self.signals: List[Tuple[int, int]] = []
        self._next_pid = 100

    def _spawn(self, probe: bool = False) -> None:
        index = self._free_slots.pop()
        pid, self._next_pid = self._next_pid, self._next_pid + 1
        self.workers[pid] = WorkerProcess(pid, index, self.clock(), probe=probe)

    def _signal(self, worker: WorkerProcess, sig: int) -> None:
        self.signals.append((worker.pid, sig))

    # what the test makes the workers do
    def boot(self, pid: int) -> None:
        self.set_state(pid, idle_since=self.clock())

    def set_state(self, pid: int, *, busy_since: float = 0.0, idle_since: float = 0.0, request: str = "") -> None:
        slot = self.workers[pid].slot
        self.scoreboard.states[slot] = [SlotState(busy_since, idle_since, 0.0, 0, pid, request)]  # type: ignore[attr-defined]

    def tick(self) -> None:
        """One pass of the loop's decisions (Arbiter.run, without the signals and the sleep)."""
        self._observe_workers()
        now = self.clock()
        self._kill_overdue(now)
        self._finish_reload()
        self._adjust_pool(now)

    def signalled(self, sig: int) -> List[int]:
        return [pid for pid, s in self.signals if s == sig]


def started(arbiter: DryArbiter) -> List[int]:
    """Every worker the first pass spawns, booted and idle."""
    arbiter.tick()
    pids = sorted(arbiter.workers)
    for pid in pids:
        arbiter.boot(pid)
    arbiter.tick()
    return pids


def test_a_static_pool_is_spawned_to_its_size_and_replaces_a_worker_that_died() -> None:
    arbiter = DryArbiter(workers=3)
    pids = started(arbiter)
    assert len(pids) == 3 and all(w.booted for w in arbiter.workers.values())
    arbiter.clock.now += 60  # long after its boot: a crash, not a boot failure
    gone = arbiter.workers.pop(pids[0])
    arbiter._free_slots.append(gone.slot)
    arbiter._on_exit(gone, -signal.SIGSEGV)
    arbiter.tick()
    assert len(arbiter.workers) == 3 and pids[0] not in arbiter.workers


def test_a_request_past_the_timeout_gets_sigabrt_then_sigkill_after_the_grace() -> None:
    arbiter = DryArbiter(workers=2, timeout=30)
    hung, other = started(arbiter)
    arbiter.set_state(hung, busy_since=arbiter.clock(), request="GET /hang")
    arbiter.set_state(other, busy_since=arbiter.clock() + 20, request="GET /slow")
    arbiter.clock.now += 30  # exactly the timeout: not yet past it
    arbiter.tick()
    assert arbiter.signals == []
    arbiter.clock.now += 1
    arbiter.tick()
    assert arbiter.signals == [(hung, signal.SIGABRT)]  # the other request is 11 s old
    arbiter.clock.now += manager.ABORT_GRACE
    arbiter.tick()
    assert arbiter.signalled(signal.SIGKILL) == [hung]
    assert len([w for w in arbiter.workers.values() if not w.stop_reason]) == 2  # a replacement is up


def test_a_dynamic_pool_grows_when_no_worker_is_spare_and_retires_the_idle_beyond_max_spare() -> None:
    arbiter = DryArbiter(workers=4, pool="dynamic", min_spare=1, max_spare=1, idle_timeout=10)
    first = started(arbiter)
    assert len(first) == 1  # min_spare
    arbiter.set_state(first[0], busy_since=arbiter.clock(), request="GET /")
    arbiter.tick()  # no spare worker: one more, up to the maximum
    assert len(arbiter.workers) == 2
    second = max(arbiter.workers)
    arbiter.boot(second)
    arbiter.set_state(first[0], idle_since=arbiter.clock())  # its request is done: two spare now
    arbiter.clock.now += 5
    arbiter.tick()
    assert arbiter.signals == []  # not idle for --idle-timeout yet
    arbiter.clock.now += 6
    arbiter.tick()
    assert arbiter.signalled(signal.SIGTERM) == [first[0]]  # the longest idle of the one too many


def test_an_ondemand_pool_retires_every_worker_idle_past_the_idle_timeout() -> None:
    arbiter = DryArbiter(workers=3, pool="ondemand", idle_timeout=10)
    arbiter._spawn()
    arbiter._spawn()
    for pid in arbiter.workers:
        arbiter.boot(pid)
    arbiter.clock.now += 11
    arbiter.tick()
    assert sorted(arbiter.signalled(signal.SIGTERM)) == sorted(arbiter.workers)


def test_workers_dying_at_boot_back_off_then_halt_the_master() -> None:
    arbiter = DryArbiter(workers=1)
    delays = []
    for _ in range(manager.BOOT_ERROR_LIMIT):
        arbiter.tick()
        (worker,) = arbiter.workers.values()
        del arbiter.workers[worker.pid]
        arbiter._free_slots.append(worker.slot)
        arbiter._on_exit(worker, EXIT_BOOT_ERROR)  # never booted
        delays.append(arbiter._spawn_after - arbiter.clock())
        arbiter.clock.now = max(arbiter.clock.now, arbiter._spawn_after)
    assert delays[:2] == pytest.approx([0.0, 0.1])  # the first retry at once, then exponential
    assert isinstance(arbiter._halted, StartupError) and arbiter._halted.exit_code == EXIT_BOOT_ERROR
    assert arbiter._stopping == manager.QUICK


def test_a_reload_retires_the_old_generation_only_once_the_new_one_has_booted() -> None:
    arbiter = DryArbiter(workers=2)
    old = started(arbiter)
    arbiter._reload()
    new = sorted(set(arbiter.workers) - set(old))
    assert len(new) == 2
    arbiter.boot(new[0])
    arbiter.tick()
    assert arbiter.signals == []  # one new worker is still booting: the old ones serve on
    arbiter.boot(new[1])
    arbiter.tick()
    assert sorted(arbiter.signalled(signal.SIGTERM)) == old


@pytest.mark.parametrize("pool", ["static", "dynamic"])
def test_a_stop_signals_every_worker_and_kills_those_past_the_graceful_timeout(pool: str) -> None:
    arbiter = DryArbiter(workers=2, pool=pool, min_spare=2, graceful_timeout=30)
    pids = started(arbiter)
    arbiter._begin_stop(manager.GRACEFUL)
    assert sorted(arbiter.signalled(signal.SIGTERM)) == pids
    arbiter.clock.now += 31
    arbiter._kill_overdue(arbiter.clock())
    assert sorted(arbiter.signalled(signal.SIGKILL)) == pids
