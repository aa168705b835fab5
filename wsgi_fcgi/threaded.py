"""``--threads N``: one worker process serving up to N requests at once.

Strategy: the main thread keeps the worker's epoll loop (worker.py) and is the
only thread that touches it -- the listening sockets, the idle kept-alive
connections, the signal pipe. N request threads wait on one queue for a
connection with a request ready; a thread serves requests on it until it
closes or goes idle, then hands it back on a second queue (and a byte on a
pipe wakes the loop), and the loop parks it again. No thread is tied to an
idle connection.

``busy`` counts the threads that hold a connection. When all N are busy the
loop takes the listening sockets out of its epoll set, so the kernel gives new
connections to another worker rather than this one queueing them. A thread
that finishes while all were busy takes the next connection itself -- a kept
one with a request waiting first (only this worker can serve it), else one
from the listen queue -- and tells the loop only if it found none (so the
loop listens again) or has a kept connection to park. Under load a request
then costs no round trip through the loop; without load, only the hand-off.

Signal handlers only set flags (they run in the main thread, which is always
in the loop, never in a request); the loop acts on them. A request past
--timeout cannot be killed with its thread, so the loop logs that thread's
stack, stops accepting, lets the other threads finish (the master allows
--graceful-timeout) and exits.

Shared between threads, with no reliance on the GIL (free-threaded builds):
the two queues (``queue.SimpleQueue``) and the deque of waiting connections
(appends and pops are atomic), ``busy``, the stuck set and the request counter
(one lock), and ``alive``, a flag only ever set to False. Each thread writes
only its own scoreboard slot and the connection it holds. The handler's
module-level caches (checked header names, lru_cache'd records) hold values
that are the same whoever computes them.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import sys
import threading
import time
import traceback
from collections import deque
from types import FrameType
from typing import Any
from collections.abc import Sequence

from .handler import WSGIApp
from .scoreboard import Slot
from .worker import DRAIN_SECONDS, NOTHING_TO_ACCEPT, QUIET_BEFORE_CLOSE, Connection, Worker, drain_pipe

error_log = logging.getLogger("wsgi_fcgi.error")

class ThreadedWorker(Worker):
    """A Worker whose requests run on ``len(slots)`` threads, one scoreboard slot each."""

    def __init__(self, app: WSGIApp, listeners: list[Any], *, slots: Sequence[Slot], timeout: float = 0.0,
                 slow_request_timeout: float = 0.0, **options: Any) -> None:
        self.threads = len(slots)
        super().__init__(app, listeners, slot=slots[0], multithread=True, **options)
        self.slots = list(slots)
        self.timeout = timeout
        self.slow_request_timeout = slow_request_timeout
        self._lock = threading.Lock()  # busy, _stuck, requests
        self.busy = 0  # threads that hold a connection
        self._ready: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        # Threads to the loop: a kept connection to park, or None for "a thread is free".
        self._finished: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._finished_r = self._finished_w = -1
        self._waiting: deque[Connection] = deque()  # kept connections with a request, no thread free
        self._stuck: set[int] = set()  # threads whose request passed --timeout
        self._idents: list[int] = [0] * self.threads
        self._slow_reported: dict[int, float] = {}  # thread -> busy_since of the request logged as slow
        self._abort_asked = self._slow_asked = False
        self._drain_until = 0.0

    # --- signals: flags for the loop
    def _timed_out(self, signum: int, frame: FrameType | None) -> None:
        self._abort_asked = True

    def _log_slow_request(self, signum: int, frame: FrameType | None) -> None:
        self._slow_asked = True

    # --- request threads
    def _thread_main(self, index: int) -> None:
        self._idents[index] = threading.get_ident()
        slot = self.slots[index]
        while True:
            conn = self._ready.get()
            if conn is None:
                return
            while True:
                keep = self._serve_safely(conn, slot)
                following = None if keep else self._next_while_saturated()
                if following is None:
                    break
                conn = following
            self._release_thread(index, conn if keep else None)

    def _serve_safely(self, conn: Connection, slot: Slot) -> bool:
        try:
            return self._serve_requests(conn, slot)
        except BaseException:  # noqa: B902 - a bug must cost this connection only, never the thread
            error_log.exception("worker %d: unexpected error on a connection from %s", os.getpid(),
                                conn.peer or "peer")
            conn.close()
            return False

    def _next_while_saturated(self) -> Connection | None:
        """With every thread busy the loop is not listening: take the next
        connection here, a waiting kept one first. (A stale look at ``busy``
        costs at most one round trip through the loop.)"""
        if not self.alive or self.busy < self.threads:
            return None
        if self._waiting:
            try:
                return self._waiting.popleft()
            except IndexError:
                pass  # the loop or another thread took it meanwhile
        for listener in self.listeners.values():
            conn = self._take_connection(listener, pause_on_error=False)
            if conn is not NOTHING_TO_ACCEPT and conn is not None:
                return conn  # type: ignore[no-any-return]
        return None

    def _release_thread(self, index: int, to_park: Connection | None) -> None:
        """This thread is free. The loop hears of it only when that changes
        what it does: it parks a kept connection, listens again after all
        threads were busy, or ends once told to stop."""
        with self._lock:
            was_full = self.busy >= self.threads
            self.busy -= 1
            self._stuck.discard(index)
        if to_park is None and not was_full and self.alive:
            return
        self._finished.put(to_park)
        try:
            os.write(self._finished_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the loop has not read yet: it will look

    def _count_request(self, slot: Slot) -> None:
        slot.end()
        with self._lock:
            self.requests += 1

    def _free_threads(self) -> int:
        with self._lock:
            return self.threads - self.busy

    # --- the loop
    def _claim_slots(self, pid: int) -> None:
        for slot in reversed(self.slots):  # slot 0 last: the master takes its pid as "booted"
            slot.reset(pid)

    def run(self) -> None:
        self._finished_r, self._finished_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for index in range(self.threads):
            threading.Thread(target=self._thread_main, args=(index,), name=f"wsgi_fcgi-request-{index}",
                             daemon=True).start()
        epoll = self._open_loop()
        epoll.register(self._finished_r, select.EPOLLIN)
        try:
            while not self._finished_serving():
                self.heartbeat()
                events = epoll.poll(self._poll_timeout())
                for fd, _ in events:
                    if fd == self._finished_r:
                        self._collect_finished()
                    elif fd == self._wakeup_r:
                        self._drain_wakeup()
                        self._act_on_signals()
                    elif fd in self.listeners:
                        self._accept_for_free_threads(self.listeners[fd])
                    elif fd in self.idle:
                        self._dispatch_idle(fd)
                self._between_events(bool(events))
        finally:
            for conn in list(self.idle.values()) + list(self._waiting):
                conn.close()
            self.idle.clear()
            self._waiting.clear()
            for _ in range(self.threads):
                self._ready.put(None)  # idle threads end; a stuck one ends with the process
            epoll.close()

    def _finished_serving(self) -> bool:
        """Once told to stop: when every request that can finish has, and the
        kept connections are drained (closed once quiet, as Worker does, for
        at most DRAIN_SECONDS)."""
        if self.alive:
            return False
        now = time.monotonic()
        if not self.draining:
            self.draining = True
            self._drain_until = now + min(DRAIN_SECONDS, self.keepalive_timeout)
            self._set_listening(False)
        if self.idle:
            self._close_quiet(limit=len(self.idle))
        with self._lock:
            requests_left = self.busy > len(self._stuck)
        return not (requests_left or self._waiting) and (not self.idle or now >= self._drain_until)

    def _poll_timeout(self) -> float:
        if self.draining:
            return QUIET_BEFORE_CLOSE / 2
        return super()._poll_timeout()

    def _wants_connections(self) -> bool:
        return super()._wants_connections() and self._free_threads() > 0 and not self._waiting

    def _hand_off(self, conn: Connection) -> None:
        with self._lock:
            self.busy += 1
        self._ready.put(conn)

    def _accept_for_free_threads(self, listener: Any) -> None:
        """Accept as many queued connections as there are free threads, then
        stop watching the listeners if none is left."""
        while self._listening and self._free_threads() > 0:
            conn = self._take_connection(listener)
            if conn is NOTHING_TO_ACCEPT:
                break
            if conn is not None:
                self._hand_off(conn)
        self._set_listening(self._wants_connections())

    def _dispatch_idle(self, fd: int) -> None:
        """A request (or a close) arrived on a kept connection: to a free thread, or to the wait line."""
        conn = self.idle.pop(fd)
        assert self._epoll is not None
        self._epoll.unregister(fd)
        if self._free_threads() > 0:
            self._hand_off(conn)
        else:
            self._waiting.append(conn)
        self._set_listening(self._wants_connections())

    def _collect_finished(self) -> None:
        """Connections the threads are done with: park the kept ones, give the
        freed threads to waiting connections first, then listen again."""
        drain_pipe(self._finished_r)
        while True:
            try:
                conn = self._finished.get_nowait()
            except queue.Empty:
                break
            if conn is not None:
                self._park(conn)
        while self._waiting and self._free_threads() > 0:
            try:
                conn = self._waiting.popleft()
            except IndexError:  # a thread took it
                break
            self._hand_off(conn)
        self._set_listening(self._wants_connections())

    # --- timeouts and slow requests, per thread
    def _act_on_signals(self) -> None:
        if self._abort_asked:
            self._abort_asked = False
            self._retire_for_timeout()
        if self._slow_asked:
            self._slow_asked = False
            self._log_slow_threads()

    def _over(self, limit: float) -> list[tuple[int, Any]]:
        """(thread, slot state) of every request running for ``limit`` seconds or more."""
        now = time.monotonic()
        states = [(index, slot.read()) for index, slot in enumerate(self.slots)]
        return [(index, state) for index, state in states
                if limit and state.busy_since and now - state.busy_since >= limit]

    def _stack_of(self, index: int) -> FrameType | None:
        return sys._current_frames().get(self._idents[index])

    def _retire_for_timeout(self) -> None:
        """SIGABRT from the master: log each request past --timeout with its
        own thread's stack, then retire the worker (a thread cannot be killed)."""
        timed_out = self._over(self.timeout)
        for index, state in timed_out:
            with self._lock:
                self._stuck.add(index)
            frame = self._stack_of(index)
            stack = "".join(traceback.format_stack(frame)) if frame else ""
            error_log.error("worker %d: thread %d timed out after %.1fs handling %s; it is here:\n%s",
                            os.getpid(), index, time.monotonic() - state.busy_since, state.request or "a request",
                            stack.rstrip())
        with self._lock:
            others = self.busy - len(self._stuck)
        error_log.error("worker %d retires: a thread cannot be killed, so it takes no new connections; "
                        "its %d other request(s) in progress may finish", os.getpid(), max(others, 0))
        if self.hooks is not None:
            self.hooks.aborted()  # worker_abort, on this (the loop's) thread: the stuck one cannot run it
        self.alive = False

    def _log_slow_threads(self) -> None:
        for index, state in self._over(self.slow_request_timeout):
            if self._slow_reported.get(index) != state.busy_since:
                self._slow_reported[index] = state.busy_since
                self._write_slow_entry(state, self._stack_of(index), where=f" (thread {index})")
