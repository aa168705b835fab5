"""The prefork master ("arbiter", as gunicorn calls it).

Strategy: the listening sockets are opened once, before any fork, and the
workers accept on them directly (no request ever passes through the
master). The master only supervises, in one loop (``Arbiter.run``):

    observe the workers (booted? busy since when?) -> update the pool figures
    -> handle queued signals -> reap children -> kill the overdue (hung past
    --timeout, or past a stop's deadline) -> finish a reload -> replace workers
    over --max-worker-memory -> size the pool -> tell systemd -> sleep (<= 1 s)

Signal handlers only append to a queue; ``signal.set_wakeup_fd`` writes a
byte to a pipe the sleep waits on. That matters: since PEP 475 a signal no
longer interrupts select(), which is exactly why flup's master never reaps
or stops. What each worker is doing comes from the shared-memory scoreboard
(scoreboard.py): whether it has booted, is idle (and since when) or busy
(with which request, since when). That is what the request timeout, the
dynamic and ondemand pools and the zero-downtime reload are decided on.

--max-worker-memory is decided on the same tick: one read of each worker's
/proc/PID/statm (limits.resident_bytes), nothing in the worker and nothing
per request; a worker over the limit is retired like any other (TERM: it
finishes the request in hand; a new one starts now). The figure is RSS, not
USS: RSS costs the same to read at any size (smaps_rollup walks the page
tables under the worker's memory-map lock), and it moves with a leak and only
with it, while USS also grows when a preloaded worker writes a page it shared
with the master (copy-on-write). The price: RSS counts shared pages in every
worker, so the limit must sit above an idle worker's RSS. uWSGI's
reload-on-rss makes the same choice.

Stopping is not a second loop: a stop signals every worker, gives each a
deadline after which it gets SIGKILL, and the same loop runs until the last
one is reaped.

Under systemd (Type=notify) the same loop tells systemd what it sees
(systemd.py): READY=1 once the first generation can serve, RELOADING=1 on
HUP and READY=1 again when the new generation is up, STOPPING=1 on a stop,
and the pool's figures as STATUS=, when they change, rate-limited.

Server hooks (hooks.py) run at the points gunicorn's do: on_starting and
when_ready in ``_setup``, pre_fork before each fork and post_fork in the child,
on_reload on HUP, worker_exit once a worker is reaped, on_exit in
``_teardown``. A hook that raises in the master is logged and the loop goes on.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import random
import select
import signal
import sys
import time
from types import FrameType
from typing import Any, NoReturn
from collections.abc import Callable, Sequence

from .errors import EXIT_APP_LOAD_ERROR, EXIT_BOOT_ERROR, StartupError
from .hooks import WorkerInfo, boot_hook, call_hook
from .config import Config
from .limits import MIB, resident_bytes
from .loader import AppLoadError, load_app, load_app_at_startup
from .logs import reopen_files
from .privileges import Identity, identity_for, switch_to
from .scoreboard import Scoreboard, SlotState
from .sockets import Address, cleanup
from .systemd import Notifier
from .status import StatusListener, ping_page, status_page
from .worker import FileWatch, PeerFilter, Worker, allowed_networks

_setproctitle: Callable[[str], None] | None
try:  # optional, and untyped: nicer `ps` output
    _setproctitle = importlib.import_module("setproctitle").setproctitle
except ImportError:  # pragma: no cover - depends on what is installed
    _setproctitle = None

error_log = logging.getLogger("wsgi_fcgi.error")

TICK = 1.0  # longest sleep between two looks at the workers
BOOT_POLL = 0.1  # ... while a worker boots (its boot cannot wake us; a reload waits for it)
ABORT_GRACE = 3.0  # a timed-out worker gets SIGABRT, then SIGKILL this much later
QUICK_STOP_GRACE = 2.0  # INT/QUIT: how long workers get to exit before SIGKILL
BOOT_WINDOW = 1.0  # a worker dying this soon after its fork died "at boot"
BOOT_ERROR_LIMIT = 3  # consecutive boot errors (exit 3) with no worker up: halt
MAX_BACKOFF = 10.0  # longest wait between spawns in a crash storm
MIN_SLOTS = 64  # scoreboard slots: room for TTIN and for two generations during a reload
MAX_QUEUED_SIGNALS = 32

# Loaded in the master, before the first fork, when the workers import the app:
# nearly every web stack loads OpenSSL through these (Werkzeug, Django, hmac,
# secrets; http.client imports ssl). A worker that loads it itself pays for the
# dynamic linking and OpenSSL's start-up in its own pages; loaded here, every
# worker shares the master's. bench/rss.py, Flask app: idle worker RSS 29.6 ->
# 26.1 MiB, private memory (USS) 17.2 -> 15.8 MiB. The price: the master's RSS
# +4.9 MiB, and a worker whose app never loads OpenSSL maps 1.4-1.6 MiB more,
# nearly all of it shared (USS +0.1-0.5 MiB).
SHARED_MODULES = ("hashlib", "ssl")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD)

GRACEFUL = "graceful"
QUICK = "quick"


class WorkerProcess:
    """The master's view of one child.

    A plain class, not a dataclass: see config.Setting."""

    __slots__ = ("pid", "slot", "started", "probe", "booted", "old", "stop_reason", "kill_at", "threads",
                 "slow_reported", "info")

    def __init__(self, pid: int, slot: int, started: float, probe: bool = False,
                 info: WorkerInfo | None = None) -> None:
        self.pid = pid
        self.info = info or WorkerInfo(pid, slot)  # the ``worker`` its hooks got
        self.slot = slot
        self.started = started
        self.probe = probe  # ondemand start-up check: loads the app and exits 0
        self.booted = False  # reached its accept loop (its pid appeared in its slot)
        self.old = False  # from before a HUP: retired once the new generation is up
        self.stop_reason = ""  # why we told it to stop ("" = we did not)
        self.kill_at = 0.0  # SIGKILL if still alive then (0 = no deadline)
        self.threads: list[SlotState] = []  # last scoreboard reading, one per thread, once booted
        self.slow_reported: set[float] = set()  # busy_since of requests reported as slow

    @property
    def busy(self) -> list[SlotState]:
        """Its threads' requests in progress."""
        return [state for state in self.threads if state.busy_since]

    @property
    def idle_since(self) -> float | None:
        """When its last request ended, or None while booting or busy."""
        if not self.threads or self.busy:
            return None
        return max(state.idle_since for state in self.threads)

    @property
    def spare(self) -> bool:
        """Can take a new connection now or very soon (a thread idle, or still booting)."""
        return not self.booted or len(self.busy) < len(self.threads)


class Arbiter:
    """Keep a pool of ``Worker`` processes accepting on ``listeners`` until stopped.

    ``workers`` is the pool size (static) or its maximum (dynamic, ondemand).
    ``app`` is a WSGI callable already loaded in this process (``serve(app)``
    or ``--preload``); otherwise each worker loads ``app_spec`` after fork and
    the master never imports the app.

    The ``server`` the hooks get is this object; its public attributes, the
    ones hooks may rely on: ``pid`` (the master's), ``config`` (the settings,
    ``server.config.workers``), ``addresses`` (where it listens),
    ``num_workers`` (the pool size, or its maximum) and ``worker_pids``.
    """

    def __init__(self, config: Config, listeners: Sequence[Any], addresses: Sequence[Address], *,
                 workers: int, app: Callable[..., Any] | None = None,
                 app_spec: str | None = None, status: tuple[Any, Address] | None = None) -> None:
        if app is None and app_spec is None:
            raise ValueError("Arbiter needs app or app_spec")
        self.config = config
        self.listeners = list(listeners)
        self.addresses = list(addresses)
        self.target = workers  # static: the count; dynamic/ondemand: the maximum
        self.app = app
        self.app_spec = app_spec
        self.pool: str = config.pool
        self.label = app_spec or _callable_name(app)
        self.workers: dict[int, WorkerProcess] = {}
        self.threads = config.threads
        self.scoreboard = Scoreboard(max(MIN_SLOTS, 4 * workers), pool=self.pool, pool_size=workers,
                                     threads=self.threads)
        self._saturated = False  # every worker busy at the last look (for max_workers_reached)
        self._slow_after = config.slow_request_timeout
        self._memory_limit = config.max_worker_memory * MIB  # 0: off
        self._next_memory_check = 0.0
        self._memory_limit_too_low = False  # said once: workers pass the limit at boot
        self._free_slots = list(range(self.scoreboard.size - 1, -1, -1))
        self._signals: list[int] = []
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._wakeup_r = self._wakeup_w = -1
        self._report_r = self._report_w = -1  # children report app load errors here
        self._reports: dict[int, str] = {}
        self._master_pid = os.getpid()
        self._identity: Identity | None = None
        self._socket_files: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) we created
        self._pidfile_written = False
        self._stopping: str | None = None
        self._halted: StartupError | None = None  # why the server stops by itself
        self._exit_code = 0
        self._boot_failures = 0  # consecutive workers that died at boot
        self._boot_errors = 0  # ... of which with exit code 3, in a row
        self._spawn_after = 0.0  # crash-storm back-off: no spawn before this time
        # Every decision reads the time from here: tests/test_arbiter.py drives the
        # decisions with a clock (and a scoreboard) of its own, no process started.
        self.clock: Callable[[], float] = time.monotonic
        self._touch_watch = FileWatch([config.reload_on_touch]) if config.reload_on_touch else None
        self._status: StatusListener | None = None  # --status-bind
        self._status_address = status[1] if status else None
        if status is not None:
            pages = {config.ping_path or "/ping": ping_page(config.ping_response),
                     config.status_path or "/status": status_page(self.scoreboard, self.listeners)}
            self._status = StatusListener(status[0], pages, PeerFilter(allowed_networks(config)).allows,
                                          clock=lambda: self.clock())
        self._notifier = Notifier(None)  # the real one is read from the environment in _setup
        self._ready_pending = True  # READY=1 is owed once the current generation is up
        self._ready_sent = False
        self._spawned = 0  # workers forked so far: the next one's WorkerInfo.age
        self._actions: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self._begin_stop(GRACEFUL),
            signal.SIGINT: lambda: self._begin_stop(QUICK),
            signal.SIGQUIT: lambda: self._begin_stop(QUICK),
            signal.SIGHUP: self._reload,
            signal.SIGTTIN: lambda: self._resize(+1),
            signal.SIGTTOU: lambda: self._resize(-1),
            signal.SIGUSR1: self._reopen_logs,
        }

    # --- what hooks see ------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._master_pid

    @property
    def num_workers(self) -> int:
        return self.target

    @property
    def worker_pids(self) -> list[int]:
        return sorted(pid for pid, worker in self.workers.items() if not worker.probe)

    def _hook(self, name: str, *args: Any) -> None:
        """Run a master hook if it is set; one that raises is logged, never fatal."""
        hook = getattr(self.config, name)
        if hook is not None:
            call_hook(name, hook, self, *args)

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; the process exit code. Raises StartupError when
        it cannot start, or halts because no worker can boot (cli.run prints it)."""
        try:
            if self._setup():
                return 0  # Ctrl-C while preloading
            while True:
                self._observe_workers()  # first: every decision below depends on who is up
                self._update_pool_figures()
                self._handle_signals()
                self._reload_if_touched()
                self._reap()
                if self._stopping and not self.workers:
                    if self._halted is not None:
                        raise self._halted
                    return self._exit_code
                now = self.clock()
                self._kill_overdue(now)
                if not self._stopping:
                    self._finish_reload()
                    self._check_memory(now)  # before sizing: the replacement starts in this pass
                    self._adjust_pool(now)
                    self._notify()
                self._sleep()
        except StartupError as exc:
            self._exit_code = exc.exit_code
            raise
        finally:
            self._teardown()

    def _setup(self) -> bool:
        """Everything before the first fork (StartupError if we cannot start);
        True when interrupted before serving."""
        self._notifier = Notifier.from_environ()  # first: a preloaded app must not see NOTIFY_SOCKET either
        self._hook("on_starting")
        self._remember_socket_files()
        self._identity = identity_for(self.config)
        _set_title(f"wsgi_fcgi: master [{self.label}]")
        self._write_pidfile()
        if self.config.preload and self.app is None and self._preload():
            return True
        if self.app is None:
            _import_shared_modules()
        # Keep the collector off the objects the workers inherit (our modules, the
        # standard library's, a preloaded app): a worker's full collection would
        # write their GC headers and copy those pages into every worker. Measured
        # in a forked child that imports the app and runs gc.collect(): private
        # memory 5.5 -> 1.9 MiB for bench/apps.py, 18.6 -> 17.3 MiB for Flask.
        gc.freeze()
        self._report_r, self._report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._install_signals()
        error_log.info("master %d: %s pool of %s%d worker(s)%s for %s on %s", os.getpid(), self.pool,
                       "up to " if self.pool != "static" else "", self.target,
                       f" x {self.threads} threads" if self.threads > 1 else "", self.label,
                       ", ".join(str(a) for a in self.addresses))
        self._hook("when_ready")
        if self.pool == "ondemand" and self.app is None:
            self._spawn(probe=True)  # find an unimportable app now, not at the first request
        return False

    def _sleep(self) -> None:
        """Wait up to TICK for a signal (or, when the pool would grow for it, a waiting connection)."""
        poller = select.poll()
        poller.register(self._wakeup_r, select.POLLIN)
        if self._want_connection_wakeup():
            for sock in self.listeners:
                poller.register(sock.fileno(), select.POLLIN)
        status = self._status
        if status is not None:
            for fd, writing in status.watched():
                poller.register(fd, select.POLLIN | (select.POLLOUT if writing else 0))
        timeout = max(0.0, min(TICK, self._next_deadline() - self.clock()))
        for fd, _ in poller.poll(timeout * 1000):
            if fd == self._wakeup_r:
                _drain(self._wakeup_r)
            elif status is not None:
                status.handle(fd)  # the status socket or one of its connections: answered here
        if status is not None:
            status.expire()

    def _next_deadline(self) -> float:
        now = self.clock()
        deadlines = [w.kill_at for w in self.workers.values() if w.kill_at]
        if any(not w.booted and not w.stop_reason for w in self.workers.values()):
            deadlines.append(now + BOOT_POLL)
        if self._spawn_after > now:
            deadlines.append(self._spawn_after)
        return min(deadlines, default=now + TICK)

    # --- signals ------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._queue_signal)

    def _queue_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the loop: only note it. SIGCHLD needs
        # no entry; the wakeup byte is enough to make the loop reap.
        if signum != signal.SIGCHLD and len(self._signals) < MAX_QUEUED_SIGNALS:
            self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:  # in arrival order: TTIN twice means two more workers
            self._actions[self._signals.pop(0)]()

    def _begin_stop(self, mode: str, code: int = 0) -> None:
        """TERM: workers finish their request (up to --graceful-timeout).
        INT/QUIT (and a halt): workers exit at once. A quick stop overrides a graceful one."""
        if self._stopping == QUICK or (self._stopping and mode == GRACEFUL):
            return
        if self._stopping is None:
            self._close_listeners()
            self._notifier.stopping()
        self._stopping = mode
        self._exit_code = self._exit_code or code
        now = self.clock()
        if mode == GRACEFUL:
            sig, grace = signal.SIGTERM, self.config.graceful_timeout
            error_log.info("stopping: %d worker(s) finish their requests (up to %gs)", len(self.workers), grace)
        else:
            sig, grace = signal.SIGQUIT, min(QUICK_STOP_GRACE, self.config.graceful_timeout)
            if not code:  # a halt has said why already
                error_log.info("stopping now")
        for worker in self.workers.values():
            self._signal(worker, sig)
            worker.stop_reason = worker.stop_reason or "stop"
            worker.kill_at = min(worker.kill_at or now + grace, now + grace)

    def _reload(self) -> None:
        """HUP: start a new generation of workers; retire the old one once it is up.
        Listening sockets stay open throughout, so no connection is refused."""
        if self._stopping:
            return
        self._hook("on_reload")
        if self.app is None:
            error_log.info("reloading: new workers load %s afresh", self.label)
        else:
            error_log.info("reloading: new workers fork from the app loaded at start "
                           "(--preload); restart the server to load changed code")
        if self._ready_sent:  # still starting: the READY=1 owed covers the new generation too
            self._notifier.reloading()
        self._ready_pending = True  # READY=1 again once the new generation is up (or the old one is back)
        current = self._active()
        for worker in current:
            worker.old = True
        count = self.target if self.pool == "static" else min(self.target, len(current))
        if self.pool == "dynamic":
            count = max(count, 1)
        self._boot_failures = self._boot_errors = 0
        self._spawn_after = 0.0
        for _ in range(count):
            self._spawn()

    def _reload_if_touched(self) -> None:
        """--reload-on-touch: the file changed since the last tick; a reload, as HUP does."""
        if self._touch_watch is not None and self._touch_watch.changed() and not self._stopping:
            error_log.info("%s was touched: reloading (--reload-on-touch)", self._touch_watch.changed_file)
            self._reload()

    def _resize(self, delta: int) -> None:
        """TTIN/TTOU: one worker more or fewer (the maximum, for dynamic and ondemand pools)."""
        if self._stopping:
            return
        wanted = self.target + delta
        if wanted < 1:
            error_log.info("TTOU: already down to 1 worker")
            return
        if wanted * 2 > self.scoreboard.size:
            error_log.warning("TTIN: at most %d workers (restart with a larger --workers)",
                              self.scoreboard.size // 2)
            return
        error_log.info("%s: workers %d -> %d", "TTIN" if delta > 0 else "TTOU", self.target, wanted)
        self.target = wanted
        self.scoreboard.write_pool(self.scoreboard.pool()._replace(pool_size=wanted))

    def _reopen_logs(self) -> None:
        """USR1: reopen log files (after logrotate moved them), here and in the workers."""
        reopen_files()
        error_log.info("reopened log files")
        for worker in self._serving():  # a booting worker opens its files afresh anyway
            self._signal(worker, signal.SIGUSR1)

    # --- children -----------------------------------------------------------------

    def _reap(self) -> None:
        """Collect every child that exited (no zombies), and decide what it means."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue  # not one of ours (e.g. a process a preloaded app started)
            if self.scoreboard.slot(worker.slot).read().pid == pid:
                worker.booted = True  # it may have booted and exited between two looks
            self._free_slots.append(worker.slot)
            self._read_reports()
            code = os.waitstatus_to_exitcode(status)
            self._on_exit(worker, code)
            self._reports.pop(pid, None)
            if not worker.probe:
                worker.info.exit_code = code
                self._hook("worker_exit", worker.info)

    def _on_exit(self, worker: WorkerProcess, code: int) -> None:
        pid, how = worker.pid, _describe_exit(code)
        if worker.threads:  # its requests still count in the status page's total
            final = self.scoreboard.read_worker(worker.slot)
            last_seen = final if final[0].pid == worker.pid else worker.threads
            served = sum(state.requests for state in last_seen)
            pool = self.scoreboard.pool()
            self.scoreboard.write_pool(pool._replace(retired_requests=pool.retired_requests + served))
        if worker.stop_reason:
            log = error_log.warning if worker.stop_reason == "timeout" else error_log.debug
            log("worker %d %s (%s)", pid, how, worker.stop_reason)
        elif worker.probe and code == 0:
            error_log.info("%s loads; workers start when connections arrive", self.label)
        elif code == EXIT_APP_LOAD_ERROR and not worker.booted:
            self._on_app_load_error(worker)
        elif code == 0:
            error_log.info("worker %d exited by itself (max requests served, or the master changed)", pid)
        elif not worker.booted or self.clock() - worker.started < BOOT_WINDOW:
            self._on_boot_failure(worker, code)
        else:
            error_log.error("worker %d %s; replacing it", pid, how)

    def _on_app_load_error(self, worker: WorkerProcess) -> None:
        """Exit 4: the app cannot be imported. Halt, unless workers are up that
        can keep serving (a HUP after a bad deploy must not take the site down)."""
        message = f"cannot load the app: {self._reports.pop(worker.pid, 'see the log above')}"
        if not self._serving():
            self._halt(EXIT_APP_LOAD_ERROR, message)
        elif any(w.old for w in self.workers.values()):
            error_log.error("reload failed, %s; the running workers keep serving the code they loaded", message)
            self._cancel_reload()
        else:
            error_log.error("%s; %d running worker(s) keep serving", message, len(self._serving()))
            self._back_off()

    def _on_boot_failure(self, worker: WorkerProcess, code: int) -> None:
        """A crash storm backs off exponentially; boot errors (exit 3) with no
        worker up halt the server instead of looping."""
        self._boot_failures += 1
        self._boot_errors = self._boot_errors + 1 if code == EXIT_BOOT_ERROR else 0
        if self._boot_errors >= BOOT_ERROR_LIMIT and not self._serving():
            self._halt(EXIT_BOOT_ERROR, f"workers cannot boot ({self._boot_errors} in a row exited with "
                                        f"code {EXIT_BOOT_ERROR}; see the log above)")
            return
        delay = self._back_off()
        error_log.error("worker %d died at boot (%s); %d in a row, next start in %.1fs", worker.pid,
                        _describe_exit(code), self._boot_failures, delay)

    def _back_off(self) -> float:
        failures = max(self._boot_failures, 1)
        delay = 0.0 if failures == 1 else min(0.1 * 2 ** (failures - 2), MAX_BACKOFF)
        self._spawn_after = self.clock() + delay
        return delay

    def _halt(self, code: int, message: str) -> None:
        """No worker can serve: stop at once, then end with this error (cli.run prints it)."""
        if self._stopping is None:
            self._halted = StartupError(message, code)
        self._begin_stop(QUICK, code)

    def _cancel_reload(self) -> None:
        """The new generation cannot load the app: stop its booting workers and
        make the old generation current again."""
        for worker in self._active():
            if not worker.booted:
                self._stop_worker(worker, "reload failed", signal.SIGKILL, grace=1.0)
        for worker in self.workers.values():
            worker.old = False

    def _observe_workers(self) -> None:
        """Read the scoreboard: who has booted, who is idle (since when), who is busy (with what)."""
        now = self.clock()
        for worker in self.workers.values():
            threads = self.scoreboard.read_worker(worker.slot)
            if threads[0].pid != worker.pid:
                continue  # still booting: its Worker has not claimed its slots yet
            worker.threads = threads
            worker.booted = True
            if self._slow_after:
                self._check_slow(worker, now)
            if self._boot_failures and now - worker.started >= BOOT_WINDOW:
                # Up and still alive after the boot window: the crash storm is over.
                self._boot_failures = self._boot_errors = 0

    def _check_slow(self, worker: WorkerProcess, now: float) -> None:
        """--slow-request-timeout: the worker writes the stack of each slow
        request (its thread's) to the slow log on USR2; the requests go on."""
        running = {state.busy_since for state in worker.busy}
        slow = {since for since in running if now - since > self._slow_after} - worker.slow_reported
        worker.slow_reported = (worker.slow_reported & running) | slow  # each request once
        if not slow:
            return
        self._signal(worker, signal.SIGUSR2)
        pool = self.scoreboard.pool()
        self.scoreboard.write_pool(pool._replace(slow_requests=pool.slow_requests + len(slow)))

    def _update_pool_figures(self) -> None:
        """Running maxima for the status page, from one look at the workers."""
        current = [w for w in self.workers.values() if w.booted and w.threads and not w.old]
        active = sum(len(w.busy) for w in current)  # threads: one each without --threads
        saturated = bool(current) and active >= self.target * self.threads
        pool = self.scoreboard.pool()
        if active > pool.max_active_workers or (saturated and not self._saturated):
            self.scoreboard.write_pool(pool._replace(
                max_active_workers=max(pool.max_active_workers, active),
                max_workers_reached=pool.max_workers_reached + (1 if saturated and not self._saturated else 0)))
        self._saturated = saturated

    def _kill_overdue(self, now: float) -> None:
        """SIGKILL workers past their stop deadline; SIGABRT those busy beyond --timeout."""
        timeout = self.config.timeout
        for worker in self.workers.values():
            if worker.kill_at and now >= worker.kill_at:
                error_log.warning("worker %d did not exit in time (%s); killing it",
                                  worker.pid, worker.stop_reason or "stop")
                self._signal(worker, signal.SIGKILL)
                worker.kill_at = 0.0
                continue
            if not timeout or worker.stop_reason == "timeout":
                continue
            late = [state for state in worker.busy if now - state.busy_since > timeout]
            if late:
                self._time_out(worker, late[0].request)

    def _time_out(self, worker: WorkerProcess, request: str) -> None:
        """SIGABRT makes the worker log the stack of the request first. Without
        threads it then exits; a thread cannot be killed, so a threaded worker
        takes no new connections, lets its other requests finish for up to
        --graceful-timeout and exits. Either way a new worker takes its place now."""
        timeout = self.config.timeout
        if self.threads == 1:
            error_log.error("worker %d timed out after %gs handling %s; killing it",
                            worker.pid, timeout, request or "a request")
            self._stop_worker(worker, "timeout", signal.SIGABRT, grace=ABORT_GRACE)
            return
        error_log.error("worker %d: a request timed out after %gs (%s); retiring the worker, its other "
                        "requests get up to %gs", worker.pid, timeout, request or "a request",
                        self.config.graceful_timeout)
        self._stop_worker(worker, "timeout", signal.SIGABRT, grace=self.config.graceful_timeout)

    def _check_memory(self, now: float) -> None:
        """--max-worker-memory: retire each worker whose RSS is above the limit,
        looked at once a tick (the loop also turns faster, while workers boot)."""
        if not self._memory_limit or now < self._next_memory_check:
            return
        self._next_memory_check = now + TICK
        for worker in self._serving():
            rss = resident_bytes(worker.pid)
            if rss is None or rss <= self._memory_limit:
                continue
            figures = (worker.slot, worker.pid, rss // MIB, self.config.max_worker_memory)
            if worker.busy or any(state.requests for state in worker.threads):
                error_log.warning("worker %d (pid %d) uses %d MiB RSS, above --max-worker-memory %d: "
                                  "replacing it", *figures)
                self._retire(worker, "memory limit")
            elif not self._memory_limit_too_low:
                # Above the limit before any request: replaced now, its successor would be
                # too, in a loop of boots. Say so once; each is replaced after a request.
                self._memory_limit_too_low = True
                error_log.warning("worker %d (pid %d) uses %d MiB RSS before serving a request, above "
                                  "--max-worker-memory %d: every worker will be replaced after its first "
                                  "request; raise the limit above what the app needs to start", *figures)

    def _finish_reload(self) -> None:
        """Retire the old generation once every new worker has booted."""
        old = [w for w in self.workers.values() if w.old and not w.stop_reason]
        if old and all(w.booted for w in self._active()):
            for worker in old:
                self._retire(worker, "replaced by reload")

    # --- systemd ----------------------------------------------------------------------

    def _notify(self) -> None:
        """READY=1 when owed and the generation is up; otherwise STATUS= if the figures changed."""
        if not self._notifier.enabled:
            return
        if self._ready_pending and self._generation_up():
            self._ready_pending = False
            self._ready_sent = True
            self._notifier.ready(self._status_text())
        elif self._ready_sent:  # before the first READY=1 there are no figures worth showing
            self._notifier.status(self._status_text())

    def _generation_up(self) -> bool:
        """Every worker the current generation starts with can serve: a static
        pool at full size; a dynamic one's starting workers; an ondemand pool
        once the app is known to load (it has no worker at rest). Never during
        a reload's overlap: the old generation is retired only when this holds."""
        if any(w.probe or (w.old and not w.stop_reason) for w in self.workers.values()):
            return False
        active = self._active()
        if not all(w.booted for w in active):
            return False
        if self.pool == "static":
            return len(active) >= self.target
        return bool(active) or self.pool == "ondemand"

    def _status_text(self) -> str:
        """PHP-FPM's STATUS= line: "workers 4, busy 1, idle 3, requests 120".
        With --threads a worker is a thread, as on the status page."""
        serving = [w for w in self.workers.values() if w.threads and not w.stop_reason]
        total = sum(len(w.threads) for w in serving)
        busy = sum(len(w.busy) for w in serving)
        requests = self.scoreboard.pool().retired_requests + sum(
            state.requests for w in self.workers.values() for state in w.threads)
        return f"workers {total}, busy {busy}, idle {total - busy}, requests {requests}"

    # --- pool sizing ------------------------------------------------------------------

    def _active(self) -> list[WorkerProcess]:
        """Current-generation workers not told to stop (what the pool size counts)."""
        return [w for w in self.workers.values() if not (w.old or w.stop_reason or w.probe)]

    def _serving(self) -> list[WorkerProcess]:
        """Booted workers not told to stop, of any generation."""
        return [w for w in self.workers.values() if w.booted and not w.stop_reason]

    def _adjust_pool(self, now: float) -> None:
        active = self._active()
        self._retire_extra(active, len(active) - self.target)  # after TTOU
        if self.pool == "static":
            self._spawn_up_to(self.target - len(active), now)
            return
        spare = [w for w in active if w.spare]
        if not spare and len(active) < self.target and self._connection_waiting():
            self._spawn_up_to(1, now)  # a connection waits and every worker is busy
        if self.pool == "dynamic":
            floor = max(min(self.config.min_spare, self.target) - len(spare), 1 - len(active))
            self._spawn_up_to(min(floor, self.target - len(active)), now)
            self._retire_idle(active, len(spare) - self.config.max_spare, keep=1)
        else:
            self._retire_idle(active, len(active), keep=0)

    def _spawn_up_to(self, count: int, now: float) -> None:
        if count <= 0 or now < self._spawn_after:
            return
        if self._boot_failures:
            count = 1  # in a crash storm, try one at a time
        for _ in range(count):
            self._spawn()

    def _retire_extra(self, active: list[WorkerProcess], count: int) -> None:
        """After TTOU: retire booting, then idle, then the oldest workers."""
        if count <= 0:
            return
        order = sorted(active, key=lambda w: (w.booted, w.idle_since is None, w.started))
        for worker in order[:count]:
            self._retire(worker, "pool shrunk")

    def _retire_idle(self, active: list[WorkerProcess], count: int, *, keep: int) -> None:
        """Retire up to ``count`` workers idle for longer than --idle-timeout, longest idle first."""
        cutoff = self.clock() - self.config.idle_timeout
        idle = sorted((w for w in active if w.idle_since is not None and w.idle_since < cutoff),
                      key=lambda w: w.idle_since or 0.0)
        count = min(count, len(active) - keep)
        for worker in idle[:max(count, 0)]:
            self._retire(worker, "idle")

    def _want_connection_wakeup(self) -> bool:
        """Should a waiting connection wake the loop? Only when it would make us spawn,
        otherwise a connection in the backlog would keep the poll returning at once."""
        if self.pool == "static" or self._stopping or self.clock() < self._spawn_after \
                or not self._free_slots:
            return False
        active = self._active()
        return len(active) < self.target and not any(w.spare for w in active)

    def _connection_waiting(self) -> bool:
        """A connection sits in a listen backlog (the master never accepts it)."""
        poller = select.poll()
        for sock in self.listeners:
            poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    # --- one worker ---------------------------------------------------------------

    def _spawn(self, probe: bool = False) -> None:
        if not self._free_slots:
            error_log.warning("no scoreboard slot free; not starting a worker")
            return
        index = self._free_slots.pop()
        for slot in self.scoreboard.worker_slots(index):
            slot.reset(0)  # no stale "busy" left by the slot's last owner
        max_requests = self.config.max_requests
        if max_requests:
            max_requests += random.randint(0, self.config.max_requests_jitter)
        info = None
        if not probe:  # a probe only checks that the app loads: no worker, no worker hooks
            self._spawned += 1
            info = WorkerInfo(None, index, self._spawned)
            self._hook("pre_fork", info)
        # A signal the child gets before _become_child has replaced the master's
        # handlers is lost: CPython drops those that arrive during fork, and the
        # master's handler only queues. (Seen: TTOU right after TTIN, the new
        # worker told to stop never stopped.) So they wait, blocked, until each
        # side has the handlers it needs.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            self._free_slots.append(index)
            error_log.error("cannot start a worker: %s", exc.strerror or exc)
            self._boot_failures += 1
            self._back_off()
            return
        if pid == 0:
            self._worker_main(index, max_requests, info)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        if info is not None:
            info.pid = pid
        self.workers[pid] = WorkerProcess(pid, index, self.clock(), probe=probe, info=info)
        error_log.info("started %s %d", "a check that the app loads:" if probe else "worker", pid)

    def _retire(self, worker: WorkerProcess, reason: str) -> None:
        """TERM: the worker finishes the request in hand, then exits."""
        error_log.info("retiring worker %d (%s)", worker.pid, reason)
        self._stop_worker(worker, reason, signal.SIGTERM, grace=self.config.graceful_timeout)

    def _stop_worker(self, worker: WorkerProcess, reason: str, sig: int, *, grace: float) -> None:
        worker.stop_reason = reason
        worker.kill_at = self.clock() + grace
        self._signal(worker, sig)

    def _signal(self, worker: WorkerProcess, sig: int) -> None:
        try:
            os.kill(worker.pid, sig)
        except ProcessLookupError:
            pass  # already gone; the next reap collects it

    def _read_reports(self) -> None:
        """Messages children wrote before exiting 4: ``pid<TAB>message`` lines."""
        data = _drain(self._report_r)
        for line in data.decode("utf-8", "replace").splitlines():
            pid, _, message = line.partition("\t")
            if pid.isdigit():
                self._reports[int(pid)] = message

    # --- in the child -------------------------------------------------------------

    def _worker_main(self, index: int, max_requests: int, info: WorkerInfo | None) -> NoReturn:
        """The forked child (a probe when ``info`` is None). Whatever happens in
        it, it must never return into the master's loop."""
        code = EXIT_BOOT_ERROR
        try:
            code = self._serve_as_worker(index, max_requests, info)
        finally:
            _flush_output()
            os._exit(code)

    def _serve_as_worker(self, index: int, max_requests: int, info: WorkerInfo | None) -> int:
        """post_fork, load the app (unless preloaded) and serve; the exit code."""
        booted = False
        try:
            self._become_child()
            _set_title(f"wsgi_fcgi: worker [{self.label}]")
            switch_to(self._identity)
            if info is not None:
                info.pid = os.getpid()
                if self.config.post_fork is not None:  # after --user: hook code never runs as root in a worker
                    boot_hook("post_fork", self.config.post_fork, self, info)
            app = self.app if self.app is not None else load_app(self.app_spec or "")
            os.close(self._report_w)  # only boot failures are reported
            if info is None:
                return 0  # the probe: the app loads
            worker = Worker.from_config(app, self.listeners, self.config, max_requests=max_requests,
                                        pool_size=self.target, scoreboard=self.scoreboard, slot_index=index,
                                        parent_pid=self._master_pid, info=info)
            booted = True
            worker.run()
            return 0
        except AppLoadError as exc:
            self._report(str(exc))  # the master prints it once, however many workers fail
            return EXIT_APP_LOAD_ERROR
        except StartupError as exc:  # cannot switch user: the master counts it as a boot error
            error_log.error("worker %d: %s", os.getpid(), exc.reason)
            return exc.exit_code
        except SystemExit as exc:  # INT/QUIT in the worker: exit now, quietly
            return exc.code if isinstance(exc.code, int) else 0
        except BaseException:  # noqa: B902 - whatever it was, log it and leave the master a code
            error_log.exception("worker %d %s", os.getpid(), "crashed" if booted else "failed to boot")
            return 1 if booted else EXIT_BOOT_ERROR

    def _become_child(self) -> None:
        """Drop the master's signal plumbing. Until the Worker installs its own
        handlers (after the app has loaded), TERM/INT/QUIT just end the process:
        a booting worker holds no request."""
        signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, _exit_at_once)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal's hang-up is the master's business
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # its default would kill a booting worker
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # blocked since before the fork
        for fd in (self._wakeup_r, self._wakeup_w, self._report_r):
            os.close(fd)
        self._signals.clear()
        self.workers.clear()
        for sock in self.listeners:
            sock.set_inheritable(False)  # already so; app code may exec, it must not leak them
        self._notifier.close()  # only the master speaks for the service
        if self._status is not None:
            self._status.close()  # the master's alone
            self._status = None

    def _report(self, message: str) -> None:
        data = f"{os.getpid()}\t{message}".replace("\n", " ")[:3000] + "\n"
        try:
            os.write(self._report_w, data.encode("utf-8", "replace"))
        except OSError:
            error_log.error("cannot load the app: %s", message)

    # --- process hygiene -----------------------------------------------------------

    def _preload(self) -> bool:
        """--preload: import the app here so workers share its memory. With
        --user the master drops privileges first: app code never runs as root.
        True if interrupted (Ctrl-C)."""
        switch_to(self._identity)
        try:
            self.app = load_app_at_startup(self.app_spec or "")
        except KeyboardInterrupt:
            return True
        return False

    def _remember_socket_files(self) -> None:
        # Only the files we created, and only while they are still ours: a
        # server started while we drain may already have bound the same path.
        for address in self.addresses:
            if address.is_unix and not address.is_fd and not address.adopted:  # systemd's stay
                try:
                    st = os.stat(str(address.target))
                except OSError:
                    continue
                self._socket_files[str(address.target)] = (st.st_dev, st.st_ino)

    def _close_listeners(self) -> None:
        """Stop taking connections: remove our socket files first, so a client
        gets "refused" at once instead of waiting in a backlog nobody serves."""
        for address in self.addresses:
            path = str(address.target)
            if path in self._socket_files:
                try:
                    st = os.stat(path)
                    if (st.st_dev, st.st_ino) == self._socket_files[path]:
                        cleanup(address)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # e.g. --preload --user: the master dropped root
                    error_log.warning("cannot remove %s: %s", path, exc.strerror or exc)
        self._socket_files.clear()
        for sock in self.listeners:
            sock.close()  # the workers' copies stay open until each one exits

    def _close_status(self) -> None:
        """--status-bind: answered until the master exits; then its socket file goes."""
        if self._status is None:
            return
        self._status.close()
        self._status = None
        if self._status_address is not None and self._status_address.is_unix and not self._status_address.is_fd:
            try:
                cleanup(self._status_address)
            except OSError as exc:
                error_log.warning("cannot remove %s: %s", self._status_address.target, exc.strerror or exc)

    def _write_pidfile(self) -> None:
        path = self.config.pidfile
        if not path:
            return
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(temporary, path)
        except OSError as exc:
            raise StartupError(f"cannot write --pid {path}: {exc.strerror or exc}", EXIT_BOOT_ERROR) from None
        self._pidfile_written = True

    def _remove_pidfile(self) -> None:
        path = self.config.pidfile
        if not (path and self._pidfile_written):
            return
        try:
            with open(path) as f:
                ours = f.read().strip() == str(os.getpid())
            if ours:
                os.unlink(path)
        except OSError as exc:
            error_log.warning("cannot remove %s: %s", path, exc.strerror or exc)

    def _teardown(self) -> None:
        """Runs however run() ends: no child left behind, signals restored, files removed."""
        if os.getpid() != self._master_pid:
            return  # a child that got here by accident must not clean up the master's things
        if self.workers:  # only after an unexpected error: kill and reap what is left
            for worker in self.workers.values():
                self._signal(worker, signal.SIGKILL)
            for pid in list(self.workers):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            self.workers.clear()
        if self._stopping is None:
            self._close_listeners()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        for fd in (self._wakeup_r, self._wakeup_w, self._report_r, self._report_w):
            if fd >= 0:
                os.close(fd)
        self._wakeup_r = self._wakeup_w = self._report_r = self._report_w = -1
        self._remove_pidfile()
        self._notifier.close()
        self._close_status()
        self._hook("on_exit")
        gc.unfreeze()  # serve() may return into a program that goes on
        if self._exit_code == 0:
            error_log.info("master %d: stopped", os.getpid())


# --- helpers ------------------------------------------------------------------------


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    os._exit(0)


def _drain(fd: int) -> bytes:
    chunks = []
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
    except (BlockingIOError, OSError):
        pass
    return b"".join(chunks)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _import_shared_modules() -> None:
    for name in SHARED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - a Python built without OpenSSL
            pass


def _set_title(title: str) -> None:
    if _setproctitle is not None:
        _setproctitle(title)


def _callable_name(app: Any) -> str:
    module = getattr(app, "__module__", None) or "?"
    name = getattr(app, "__qualname__", None) or getattr(app, "__name__", None) or type(app).__name__
    return f"{module}:{name}"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
