"""One worker process: accept, read records, run the app, write records.

Strategy: a worker serves one request at a time, but it is not stuck with one
connection. An epoll set holds the listening sockets (EPOLLEXCLUSIVE: the
kernel wakes one idle worker per new connection, no thundering herd, and a
busy worker is never picked), the idle FCGI_KEEP_CONN connections this worker
keeps for nginx ``keepalive`` / Apache ``enablereuse``, and the signal wakeup
pipe. TERM and USR1 only set flags, which the loop acts on between requests,
so a TERM lets the current request finish (what mod_fcgid and the master
expect) and an accepted connection is never dropped. The others act at once:
INT and QUIT raise SystemExit (a quick stop), ABRT (the master's --timeout)
logs where the request was stuck and exits, USR2 writes the slow request's
stack to the slow log with one os.write, and the request goes on.

Socket calls first try without blocking (MSG_DONTWAIT): a request from a
web server usually arrives in one segment and its answer fits the socket
buffer, so most connections never wait and cost no setsockopt. The first
call that would block arms SO_RCVTIMEO/SO_SNDTIMEO as the stall timeout (once
per connection) and retries blocking: unlike ``settimeout`` that costs no
extra poll() per call.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import signal
import socket
import _socket
import struct
import sys
import time
import traceback
from types import FrameType
from typing import Any, Final
from collections.abc import Callable, Sequence

from . import protocol as p
from ._compiled import mypyc_attr, run_signal_handlers
from .config import Config, parse_networks
from .handler import Chunk, ClientDisconnected, RequestAborted, RequestHandler, WSGIApp
from .hooks import HookedHandler, WorkerHooks, WorkerInfo
from .logs import AccessLog, reopen_files
from .scoreboard import Scoreboard, Slot, SlotState
from .status import ping_page, status_page

error_log = logging.getLogger("wsgi_fcgi.error")

RECV_SIZE: Final = 64 * 1024  # a request head, or a record
BODY_RECV_SIZE: Final = 256 * 1024  # while a body streams in: fewer recv calls (heap-allocated, see _keep_freed_memory)
MAX_IOV: Final = 512  # buffers per sendmsg call, well under IOV_MAX (1024)
LINGER_SECONDS: Final = 2.0
REFUSAL_LOG_INTERVAL: Final = 60.0  # log a refused peer address at most once a minute
ACCEPT_PAUSE: Final = 0.5  # seconds without accepting after EMFILE and friends
QUIET_BEFORE_CLOSE: Final = 0.2  # a kept connection unused this long is not about to be reused
DRAIN_SECONDS: Final = 3.0  # most a leaving worker spends serving its kept connections
ACCEPT_ERROR_LOG_INTERVAL: Final = 10.0
ACCEPT_STREAK: Final = 16  # connections served back to back before the loop checks signals and timers again
CHECK_PEER_INTERVAL = 0.05  # seconds of a streamed response between looks at what the web server sent


# Module attributes read per request, copied once: compiled, a Final is a C
# global, where ``socket.X`` is an attribute lookup on the module each time.
_MSG_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_SOCK_STREAM: Final = int(socket.SOCK_STREAM)
_SOCKET: Final = _socket.socket
NOTHING_TO_ACCEPT: Final = object()  # _take_connection: the queue is empty (or accepting paused)


class ReadTimeout(Exception):
    """The peer sent nothing for ``read_timeout`` seconds."""


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class Connection:
    """One accepted transport connection; the handler's ``Channel`` for its current request.

    What the request's streams are doing is the protocol's to know
    (``proto.stream_open``, ``proto.ended_input_complete``): this class only
    moves bytes between the socket and it."""

    __slots__ = ("sock", "fd", "proto", "peer", "request_id", "idle_since", "_timeval", "_flags", "_next_check")

    def __init__(self, sock: socket.socket, peer: Any, proto: p.ServerConnection, timeval: bytes) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = proto
        self.peer = peer
        self.request_id = 0
        self.idle_since = 0.0
        self._timeval = timeval  # the stall timeout, packed once per worker; b"": none
        # Until the first call that would block, recv/sendmsg do not wait.
        self._flags = _MSG_DONTWAIT if timeval else 0
        self._next_check = 0.0  # check_peer: when it next looks at the socket; 0: not yet timed

    def start_request(self, request_id: int) -> None:
        self.request_id = request_id
        self._next_check = 0.0

    def _arm_stall_timeout(self) -> None:
        """A call would block: from now on calls wait, at most the stall timeout."""
        self._flags = 0
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._timeval)

    # reading
    def next_event(self) -> p.ServerEvent:
        """The next protocol event, reading from the socket as needed."""
        proto = self.proto
        while True:
            event: Any = proto.next_event()
            reply = proto.data_to_send()
            if reply:
                self._send_bytes(reply)
            if event is not p.NEED_DATA:
                return event  # type: ignore[no-any-return]
            proto.receive_data(self._recv())

    def _recv(self, size: int = RECV_SIZE) -> bytes:
        try:
            return self.sock.recv(size, self._flags)
        except BlockingIOError:
            if not self._flags:
                raise ReadTimeout() from None  # SO_RCVTIMEO expired
        except ConnectionResetError:
            return b""
        self._arm_stall_timeout()
        return self._recv(size)

    def read_request_head(self) -> p.RequestHead | None:
        """BEGIN_REQUEST and PARAMS through the protocol's fast path, reading once
        if nothing is buffered; None when the general path (next_event) must run.
        A GET from nginx arrives in one segment with its empty STDIN record, which
        the fast path takes too: the request's input is then known complete."""
        proto = self.proto
        if not proto.has_buffered_data:
            data = self._recv()
            proto.receive_data(data)
            if not data:
                return None
        return proto.read_request_head()

    # Channel for the handler
    def read_stdin(self) -> Chunk:
        if not self.proto.stream_open(p.FCGI_STDIN):
            return b""
        chunk = self.proto.read_stdin_chunk()
        if type(chunk) is memoryview:  # a body record already received: the common case, taken at once
            return chunk
        return self._read_stream(p.StdinData, self.proto.read_stdin_chunk)

    def read_data(self) -> Chunk:
        if not self.proto.stream_open(p.FCGI_DATA):
            return b""
        return self._read_stream(p.DataData)

    def _fast_chunk(self, read_chunk: Callable[[], Any]) -> Any:
        """A body chunk through the protocol's fast path (receiving while it asks
        for data), or None when the general path must take over."""
        while True:
            chunk = read_chunk()
            if chunk is not p.NEED_DATA:
                return chunk
            data = self._recv(BODY_RECV_SIZE)
            self.proto.receive_data(data)
            if not data:
                return None

    def _read_stream(self, chunk_type: type, fast: Callable[[], Any] | None = None) -> Chunk:
        """The next chunk of an open input stream; b"" at its end."""
        try:
            if fast is not None:
                chunk = self._fast_chunk(fast)
                if chunk is not None:
                    return chunk  # type: ignore[no-any-return]
            event = self.next_event()
        except ReadTimeout:
            raise ClientDisconnected("the web server sent nothing within the read timeout") from None
        except p.IncompleteRecord:
            raise ClientDisconnected("the web server closed the connection") from None
        except p.ProtocolError as exc:
            raise self._protocol_error(exc) from None
        if type(event) is chunk_type:
            return event.data  # type: ignore[union-attr]
        if type(event) in (p.StdinEnd, p.DataEnd):
            return b""
        raise self._lost(event, "while reading the request body")

    def _protocol_error(self, exc: p.ProtocolError) -> ClientDisconnected:
        error_log.warning("protocol error from %s: %s", self.peer or "peer", exc.reason)
        return ClientDisconnected(f"protocol error: {exc.reason}")

    @staticmethod
    def _lost(event: Any, when: str) -> ClientDisconnected:
        """What an event that ends the request in the middle means to the app."""
        if isinstance(event, p.AbortRequest):
            return RequestAborted("the web server aborted the request (FCGI_ABORT_REQUEST)")
        if isinstance(event, p.ConnectionClosed):
            return ClientDisconnected("the web server closed the connection")
        return ClientDisconnected(f"unexpected {type(event).__name__} {when}")

    def check_peer(self) -> None:
        """Between the chunks of a streamed response: take what the web server
        sent meanwhile -- answer a GET_VALUES or a second BEGIN_REQUEST
        (FCGI_CANT_MPX_CONN) at once, and raise RequestAborted on
        FCGI_ABORT_REQUEST or ClientDisconnected when it has closed, so the
        handler stops the app at this chunk. It looks at the socket (one
        non-blocking recv) only once the response has streamed for
        CHECK_PEER_INTERVAL, and then at most that often: a response that is over
        sooner costs no system call. The app's unread body is left where it is."""
        now = time.monotonic()
        if now < self._next_check or self.proto.active_request_id != self.request_id:
            return
        first_call = not self._next_check
        self._next_check = now + CHECK_PEER_INTERVAL
        if first_call:
            return
        proto = self.proto
        if not proto.has_buffered_data:
            try:
                data = self.sock.recv(RECV_SIZE, _MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # reset by the peer
            proto.receive_data(data)
        try:
            event: Any = proto.next_event_during_response()
        except p.ProtocolError as exc:
            raise self._protocol_error(exc) from None
        reply = proto.data_to_send()
        if reply:
            self._send_bytes(reply)
        if event is not p.NEED_DATA:
            raise self._lost(event, "while the app was responding")

    def send(self, buffers: list[Any]) -> None:
        """Send every byte of ``buffers``: one sendmsg in the common case."""
        try:
            try:
                sent = self.sock.sendmsg(buffers, (), self._flags) if len(buffers) <= MAX_IOV else 0
            except BlockingIOError:
                if not self._flags:
                    raise
                sent = 0
            total = 0
            for buffer in buffers:  # (compiled, a loop of C calls; sum(map(len)) looks up two builtins)
                total += len(buffer)
            if sent != total:
                self._send_rest(buffers, sent)
        except (BrokenPipeError, ConnectionResetError, BlockingIOError) as exc:
            raise ClientDisconnected(f"sending the response failed: {exc.strerror or 'timed out'}") from None

    def send_file(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of file ``fd`` from ``offset`` (wsgi.file_wrapper), by
        os.sendfile: no copy through Python, and the stall timeout applies."""
        if self._flags:
            self._arm_stall_timeout()
        try:
            while count:
                sent = os.sendfile(self.fd, fd, offset, count)
                if not sent:
                    raise OSError(f"the file ended {count} bytes before the size it had when the response began")
                offset += sent
                count -= sent
        except (BrokenPipeError, ConnectionResetError, BlockingIOError) as exc:
            raise ClientDisconnected(f"sending the response failed: {exc.strerror or 'timed out'}") from None

    def _send_rest(self, buffers: list[Any], sent: int) -> None:
        """The slow path of send(): a full socket buffer or more than MAX_IOV buffers."""
        if self._flags:
            self._arm_stall_timeout()
        buffers = _skip(buffers, sent)
        for start in range(0, len(buffers), MAX_IOV):
            _sendmsg_all(self.sock, buffers[start:start + MAX_IOV])

    def _send_bytes(self, data: bytes) -> None:
        self.send([data])

    def end_request(self, app_status: int) -> bytes:
        return self.proto.end_request(self.request_id, app_status)

    # closing
    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def close_after_response(self) -> None:
        """Close at the end of a request. Unread input still on its way would
        make close() send a RST that can destroy the response in flight, so in
        that case shut down our side and drain briefly first (lingering close)."""
        if not self._rest_of_input_arrived():
            try:
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(LINGER_SECONDS))
                deadline = time.monotonic() + LINGER_SECONDS
                while time.monotonic() < deadline and self.sock.recv(RECV_SIZE):
                    pass
            except OSError:
                pass
        self.close()

    def _rest_of_input_arrived(self) -> bool:
        """Whether the end of the answered request's input is already here: known
        to the protocol, in our buffer, or in the socket (one non-blocking read).
        An app that reads exactly CONTENT_LENGTH bytes never asks for the empty
        STDIN record, yet nginx has usually sent it; then no lingering drain is needed."""
        proto = self.proto
        if proto.ended_input_complete or self._input_end_buffered():
            return True
        try:
            data = self.sock.recv(RECV_SIZE, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        if data == b"":
            return True  # the peer has closed: nothing left to read
        proto.receive_data(data)
        return self._input_end_buffered()

    def _input_end_buffered(self) -> bool:
        proto = self.proto
        try:
            while not proto.ended_input_complete and proto.next_event() is not p.NEED_DATA:
                pass
        except p.ProtocolError:
            return False
        return proto.ended_input_complete


def drain_pipe(fd: int) -> None:
    """Read a non-blocking wake-up pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _sendmsg_all(sock: socket.socket, buffers: list[Any]) -> None:
    """sendmsg until every byte of ``buffers`` is out (a blocking send can be partial)."""
    while buffers:
        buffers = _skip(buffers, sock.sendmsg(buffers))


def _skip(buffers: list[Any], sent: int) -> list[Any]:
    """What is left of ``buffers`` once their first ``sent`` bytes went out."""
    for index, buffer in enumerate(buffers):
        length = len(buffer)
        if sent < length:
            return [memoryview(buffer)[sent:]] + buffers[index + 1:] if sent else buffers[index:]
        sent -= length
    return []


@mypyc_attr(allow_interpreted_subclasses=True)  # wsgi_fcgi.gunicorn subclasses it, uncompiled
class Worker:
    """Serve requests from ``listeners`` until told to stop, one at a time
    (``ThreadedWorker`` in threaded.py: several at once).

    ``max_requests`` counts requests, not connections, so kept-alive
    connections recycle on time too. ``parent_pid`` (set under a master) makes
    the worker exit when its master has gone.
    """

    threads = 1  # requests served at once

    def __init__(self, app: WSGIApp, listeners: list[socket.socket], *, script_name: str | None = None,
                 max_requests: int = 0, read_timeout: float = 30.0, keepalive_timeout: float = 60.0,
                 limits: p.Limits | None = None, pool_size: int = 1, slot: Slot | None = None,
                 parent_pid: int | None = None, multiprocess: bool = True, multithread: bool = False,
                 limit_request_body: int = 0, max_idle_connections: int = 32,
                 allowed_peers: Sequence[Any] = (), access_log: AccessLog | None = None,
                 pages: dict[str, Any] | None = None, slow_log_fd: int = 2, reload: bool = False,
                 reload_on_touch: str | None = None, hooks: WorkerHooks | None = None) -> None:
        handler_options: dict[str, Any] = dict(script_name=script_name, multiprocess=multiprocess,
                                               multithread=multithread, limit_request_body=limit_request_body,
                                               access_log=access_log, pages=pages)
        self.hooks = hooks
        if hooks is not None:
            hooks.info.attach(self)
        self.handler = _request_handler(app, hooks, handler_options)
        self.slow_log_fd = slow_log_fd
        self.source_watch = source_watch() if reload else None
        # --reload-on-touch without a master (fd 0: mod_fcgid): exit between requests,
        # and the web server starts a fresh process (under a master, it reloads).
        self.touch_watch = FileWatch([reload_on_touch]) if reload_on_touch else None
        self.max_idle_connections = max_idle_connections
        self.allowed_peers = PeerFilter(allowed_peers)
        self.listeners = {sock.fileno(): sock for sock in listeners}
        self._families = {sock: sock.family for sock in listeners}  # the property builds an enum each time
        self.max_requests = max_requests
        self.read_timeout = read_timeout
        self._timeval = _timeval(read_timeout) if read_timeout > 0 else b""
        self.keepalive_timeout = keepalive_timeout
        self.limits = limits or p.Limits()
        # FCGI_GET_VALUES: requests the pool serves at once, and connections it holds open
        # (each worker: those it serves plus its idle kept-alive connections).
        self.max_reqs = pool_size * self.threads
        self.max_conns = pool_size * (self.threads + max_idle_connections)
        self.slot = slot or Scoreboard(1).slot(0)
        self.parent_pid = parent_pid
        self.alive = True
        self.draining = False
        self._next_idle_check = 0.0
        self.reopen_logs = False
        self.requests = 0
        self.idle: dict[int, Connection] = {}
        self._epoll: select.epoll | None = None
        self._accept_paused_until = 0.0
        self._listening = False  # the listening sockets are in the epoll set
        self._last_accept_error_log = -ACCEPT_ERROR_LOG_INTERVAL
        self._wakeup_r = -1

    @staticmethod
    def from_config(app: WSGIApp, listeners: list[socket.socket], config: Config, *, max_requests: int,
                    pool_size: int, scoreboard: Scoreboard | None = None, slot_index: int = 0,
                    parent_pid: int | None = None, info: WorkerInfo | None = None) -> Worker:
        """The one place where settings become worker options (master and
        single-process mode): a Worker, or a ThreadedWorker with --threads.
        ``info`` is the ``worker`` its hooks get (the master made it at fork)."""
        if scoreboard is None:  # no master: a scoreboard of our own, for the status page
            scoreboard = Scoreboard(1, pool_size=1, threads=config.threads)
        slots = scoreboard.worker_slots(slot_index)
        pages: dict[str, Any] = {}
        if config.ping_path:
            pages[config.ping_path] = ping_page(config.ping_response)
        if config.status_path:
            pages[config.status_path] = status_page(scoreboard, listeners)
        options: dict[str, Any] = dict(
            script_name=config.script_name, max_requests=max_requests,
            read_timeout=config.read_timeout, keepalive_timeout=config.keepalive_timeout,
            limits=p.Limits(max_params_bytes=config.max_params_bytes, max_params_count=config.max_params_count),
            pool_size=pool_size, parent_pid=parent_pid, limit_request_body=config.limit_request_body,
            max_idle_connections=config.max_idle_connections, allowed_peers=allowed_networks(config),
            access_log=AccessLog(config.access_logformat), pages=pages,
            slow_log_fd=open_slow_log(config), reload=config.reload,
            reload_on_touch=config.reload_on_touch if parent_pid is None else None,
            hooks=WorkerHooks.from_config(config, info or WorkerInfo(os.getpid(), slot_index)))
        if config.threads == 1:
            return Worker(app, listeners, slot=slots[0], **options)
        from .threaded import ThreadedWorker

        return ThreadedWorker(app, listeners, slots=slots, timeout=config.timeout,
                              slow_request_timeout=config.slow_request_timeout, **options)

    # --- signals
    def _install_signals(self) -> None:
        self._wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._stop_gracefully)
        signal.signal(signal.SIGINT, self._stop_now)
        signal.signal(signal.SIGQUIT, self._stop_now)
        signal.signal(signal.SIGABRT, self._timed_out)
        signal.signal(signal.SIGUSR2, self._log_slow_request)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, self._ask_reopen_logs)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _ask_reopen_logs(self, signum: int, frame: FrameType | None) -> None:
        self.reopen_logs = True  # done in the loop, never inside a handler that may interrupt a log write

    def _stop_gracefully(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False

    def _stop_now(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    def _log_slow_request(self, signum: int, frame: FrameType | None) -> None:
        """USR2 from the master: this request is slow. Its stack goes to the slow log with
        one os.write (no logging lock taken inside a signal handler); the request goes on."""
        state = self.slot.read()
        if state.busy_since:
            self._write_slow_entry(state, frame)

    def _write_slow_entry(self, state: SlotState, frame: FrameType | None, where: str = "") -> None:
        stack = "".join(traceback.format_stack(frame)) if frame else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = (f"{stamp} [{os.getpid()}] [SLOW] {state.request}{where} running for "
                f"{time.monotonic() - state.busy_since:.1f}s:\n{stack}\n")
        try:
            os.write(self.slow_log_fd, text.encode("utf-8", "replace"))
        except OSError:
            pass

    def _timed_out(self, signum: int, frame: FrameType | None) -> None:
        state = self.slot.read()
        stack = "".join(traceback.format_stack(frame)) if frame else ""
        error_log.error("worker %d killed by the timeout while handling %s; it was here:\n%s",
                        os.getpid(), state.request or "a request", stack.rstrip())
        if self.hooks is not None:
            self.hooks.aborted()  # worker_abort, before the process is gone: e.g. flush telemetry
        logging.shutdown()
        os._exit(1)

    # --- the loop
    def heartbeat(self) -> None:
        """Called before each wait for events and before reading each request
        on a connection. A no-op here: a worker run by another process manager
        reports that it is alive from it (wsgi_fcgi.gunicorn notifies gunicorn's
        arbiter, which kills a worker that stays silent for --timeout)."""

    def _open_loop(self) -> select.epoll:
        """What every worker loop does first: signal handlers, the allocator's
        setting, its scoreboard slots claimed, and the epoll set with the
        listening sockets and the signal pipe."""
        self._install_signals()
        _keep_freed_memory()
        if self.hooks is not None:
            self.hooks.initialized()  # post_worker_init: raising, it leaves the slots unclaimed (not booted)
        self._claim_slots(os.getpid())
        epoll = self._epoll = select.epoll()
        for sock in self.listeners.values():
            sock.setblocking(False)
        self._set_listening(True)
        epoll.register(self._wakeup_r, select.EPOLLIN)
        return epoll

    def _claim_slots(self, pid: int) -> None:
        self.slot.reset(pid)  # the master now takes this worker as booted

    def run(self) -> None:
        epoll = self._open_loop()
        try:
            while self.alive:
                self.heartbeat()
                events = epoll.poll(self._poll_timeout())
                for fd, _ in events:
                    if fd == self._wakeup_r:
                        self._drain_wakeup()
                    elif fd in self.listeners:
                        self._accept(self.listeners[fd])
                    elif fd in self.idle:
                        self._resume(fd)
                    if not self.alive:
                        break
                self._between_events(bool(events))
        except BaseException:  # a quick stop (INT/QUIT) or a crash: no more requests
            for conn in list(self.idle.values()):
                conn.close()
            self.idle.clear()
            raise
        else:
            self._drain_then_close_idle()
        finally:
            epoll.close()

    def _between_events(self, had_events: bool) -> None:
        """The loop's chores after each wait: timers, log reopening, --reload, the master."""
        self._expire_idle()
        self._resume_accepting_when_due()
        if self.reopen_logs:
            self.reopen_logs = False
            reopen_files()
        if self.source_watch is not None and self.source_watch.changed():
            error_log.info("worker %d: %s changed, restarting (--reload)", os.getpid(),
                           self.source_watch.changed_file)
            self.alive = False
        if self.touch_watch is not None and self.touch_watch.changed():
            error_log.info("worker %d: %s was touched, exiting for the web server to start a fresh process "
                           "(--reload-on-touch)", os.getpid(), self.touch_watch.changed_file)
            self.alive = False
        # Only when idle: a worker whose master died exits within a second
        # of going quiet, at no syscall per request.
        if not had_events and self.parent_pid is not None and os.getppid() != self.parent_pid:
            error_log.warning("worker %d: master %d has gone, exiting", os.getpid(), self.parent_pid)
            self.alive = False

    def _poll_timeout(self) -> float:
        if self.source_watch is not None or self.touch_watch is not None:
            return 1.0
        if self._accept_paused_until:
            return max(0.0, min(1.0, self._accept_paused_until - time.monotonic()))
        return 1.0 if self.parent_pid is not None or self.idle else -1

    def _drain_wakeup(self) -> None:
        drain_pipe(self._wakeup_r)
        run_signal_handlers()  # compiled, nothing else would run them now (see there)

    def _accept(self, listener: socket.socket) -> None:
        """Serve the connections queued on ``listener``: after one, take the next
        without waiting in epoll again (under load the queue is rarely empty), up
        to ACCEPT_STREAK in a row. Not while kept connections wait, which epoll
        would report, nor once the worker must stop."""
        for _ in range(ACCEPT_STREAK):
            if not self._accept_one(listener) or self.idle or not self.alive or self._accept_paused_until:
                return

    def _accept_one(self, listener: socket.socket) -> bool:
        """Accept and serve one connection; False if there was none to accept."""
        conn = self._take_connection(listener)
        if conn is NOTHING_TO_ACCEPT:
            return False
        if conn is not None:
            self._serve(conn)
        return True

    def _take_connection(self, listener: socket.socket, pause_on_error: bool = True) -> Any:
        """The next connection on ``listener``: a Connection, None when one was
        taken but is not served (refused peer, aborted), NOTHING_TO_ACCEPT when
        the queue is empty or accepting must pause (``pause_on_error``: the
        caller owns the epoll set, and pauses it)."""
        try:
            # _accept and the C-level socket type skip socket.py's wrapper
            # (timeout bookkeeping and io refcounts we never use): per request.
            fd, peer = listener._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return NOTHING_TO_ACCEPT  # the queue is empty, or another worker took it
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                if pause_on_error:
                    self._pause_accepting(exc.strerror or str(exc))
                return NOTHING_TO_ACCEPT
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                return None
            raise
        sock = _SOCKET(self._families[listener], _SOCK_STREAM, 0, fd)
        if not self.allowed_peers.allows(peer):
            sock.close()
            return None
        proto = p.ServerConnection(max_conns=self.max_conns, max_reqs=self.max_reqs, limits=self.limits)
        return Connection(sock, peer, proto, self._timeval)  # type: ignore[arg-type]

    def _pause_accepting(self, reason: str) -> None:
        """Out of descriptors or memory: stop watching the listening sockets for a
        moment (level-triggered epoll would otherwise spin at 100% CPU) while the
        kept connections go on being served; other workers take new connections."""
        now = time.monotonic()
        if now - self._last_accept_error_log >= ACCEPT_ERROR_LOG_INTERVAL:
            self._last_accept_error_log = now
            error_log.error("worker %d cannot accept connections: %s; pausing accept for %gs",
                            os.getpid(), reason, ACCEPT_PAUSE)
        self._accept_paused_until = now + ACCEPT_PAUSE
        self._set_listening(False)

    def _resume_accepting_when_due(self) -> None:
        if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._set_listening(self._wants_connections())

    def _wants_connections(self) -> bool:
        """Whether the listening sockets belong in the epoll set now."""
        return self.alive and not self.draining and not self._accept_paused_until

    def _set_listening(self, on: bool) -> None:
        """Watch the listening sockets, or stop: a worker that does not watch
        them is never woken for a new connection, so another worker takes it."""
        if on == self._listening:
            return
        assert self._epoll is not None
        for fd in self.listeners:
            if on:
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            else:
                self._epoll.unregister(fd)
        self._listening = on

    def _resume(self, fd: int) -> None:
        conn = self.idle.pop(fd)
        assert self._epoll is not None
        self._epoll.unregister(fd)
        self._serve(conn)

    def _park(self, conn: Connection) -> None:
        """Keep an idle FCGI_KEEP_CONN connection. Beyond the cap, close one that has
        been quiet for a while -- never one the web server has just used (it reuses the
        most recent first, so that is where its next request goes) or one on which a
        request is already waiting. If none qualifies, the cap waits."""
        if self.max_idle_connections == 0:
            conn.close()
            return
        if len(self.idle) >= self.max_idle_connections:
            self._close_quiet(limit=len(self.idle) - self.max_idle_connections + 1)
        first_time = conn.idle_since == 0.0
        conn.idle_since = time.monotonic()
        self.idle[conn.fd] = conn
        assert self._epoll is not None
        self._epoll.register(conn.fd, select.EPOLLIN | select.EPOLLRDHUP)
        if first_time and not self.draining:
            self._requeue_listeners()

    def _close_quiet(self, limit: int, quiet_for: float = QUIET_BEFORE_CLOSE) -> int:
        """Close up to ``limit`` idle connections, longest idle first, that have been
        quiet for ``quiet_for`` seconds and have no request waiting. Returns how many."""
        cutoff = time.monotonic() - quiet_for
        candidates = sorted((c for c in self.idle.values() if c.idle_since <= cutoff), key=lambda c: c.idle_since)
        if not candidates:
            return 0
        waiting = self._readable_idle()
        closed = 0
        for conn in candidates:
            if closed >= limit:
                break
            if conn.fd not in waiting:
                self._forget(conn)
                closed += 1
        return closed

    def _requeue_listeners(self) -> None:
        """Go to the back of the kernel's queue of idle workers. With EPOLLEXCLUSIVE the
        kernel wakes the first waiter, so at low traffic one worker would accept every
        new connection and, with keep-alive, keep them all while the others idle.
        Done once per kept connection, not per request."""
        if self._listening:
            self._set_listening(False)
            self._set_listening(True)

    def _readable_idle(self) -> set[int]:
        """Idle connections on which a request has already arrived (or the peer closed)."""
        poller = select.poll()
        for fd in self.idle:
            poller.register(fd, select.POLLIN)
        return {fd for fd, _ in poller.poll(0)}

    def _forget(self, conn: Connection) -> None:
        del self.idle[conn.fd]
        assert self._epoll is not None
        self._epoll.unregister(conn.fd)
        conn.close()

    def _expire_idle(self) -> None:
        """Close kept connections idle past --keepalive-timeout, and bring an idle set
        that grew past the cap while busy back under it (checked five times a second)."""
        now = time.monotonic()
        if not self.idle or now < self._next_idle_check:
            return
        self._next_idle_check = now + QUIET_BEFORE_CLOSE
        over = len(self.idle) - self.max_idle_connections
        if over > 0:
            self._close_quiet(limit=over)
        self._close_quiet(limit=len(self.idle), quiet_for=self.keepalive_timeout)

    def _drain_then_close_idle(self) -> None:
        """Leaving (max-requests, reload, stop) with kept connections: accept nothing
        new, go on serving requests that arrive on them, and close each once it has
        been quiet for a moment -- the web server then drops it from its pool without
        sending on it. FastCGI cannot announce a close, so a connection closed at the
        instant the web server reuses it fails that request: nginx retries a GET,
        not a POST, and Apache retries nothing. Bounded by DRAIN_SECONDS."""
        if not self.idle:
            return
        assert self._epoll is not None
        self.draining = True
        self._set_listening(False)
        deadline = time.monotonic() + min(DRAIN_SECONDS, self.keepalive_timeout)
        while self.idle and time.monotonic() < deadline:
            for fd, _ in self._epoll.poll(QUIET_BEFORE_CLOSE / 2):
                if fd in self.idle:
                    self._resume(fd)
            self._close_quiet(limit=len(self.idle))
        for conn in list(self.idle.values()):
            conn.close()
        self.idle.clear()

    def _recycle_due(self) -> bool:
        return bool(self.max_requests) and self.requests >= self.max_requests

    # --- one connection
    def _serve(self, conn: Connection) -> None:
        if self._serve_requests(conn, self.slot):
            self._park(conn)

    def _serve_requests(self, conn: Connection, slot: Slot) -> bool:
        """Serve requests on ``conn`` until it closes, goes idle or must end.
        True: it is idle and kept (FCGI_KEEP_CONN), for the caller to park."""
        try:
            while True:
                self.heartbeat()
                head = self._read_request_head(conn)
                if head is None:
                    conn.close()
                    return False
                if not self._run_request(conn, head, slot):
                    conn.close()
                    return False
                if self.alive and self._recycle_due():
                    error_log.info("worker %d: served %d requests, recycling", os.getpid(), self.requests)
                    self.alive = False
                if not head.keep_conn:
                    conn.close_after_response()
                    return False
                if not self.alive and not self.draining:
                    conn.close()
                    return False
                if not conn.proto.has_buffered_data:
                    return True
        except ReadTimeout:
            error_log.info("closing connection from %s: no data within %gs", conn.peer or "peer",
                           self.read_timeout)
        except p.IncompleteRecord:
            pass  # the peer went away between our reads: nothing to report
        except p.ProtocolError as exc:
            error_log.warning("protocol error from %s, closing the connection: %s", conn.peer or "peer",
                              exc.reason)
        except ClientDisconnected:
            pass
        conn.close()
        return False

    def _read_request_head(self, conn: Connection) -> p.RequestHead | None:
        """Wait for BEGIN_REQUEST and the complete PARAMS; None if the peer closed."""
        head = conn.read_request_head()
        if head is not None:
            return head
        begin: p.BeginRequest | None = None
        while True:
            event = conn.next_event()
            if isinstance(event, p.ConnectionClosed):
                return None
            if isinstance(event, p.BeginRequest):
                begin = event
            elif isinstance(event, p.Params) and begin is not None:
                params, replaced = p.collect_pairs(event.pairs)
                return p.RequestHead(begin.request_id, begin.role, begin.keep_conn, params, replaced)
            elif isinstance(event, p.AbortRequest) and begin is not None:
                # Aborted before it started: answer at once, as the spec asks.
                conn.start_request(begin.request_id)
                conn.send([conn.end_request(0)])
                begin = None

    def _run_request(self, conn: Connection, head: p.RequestHead, slot: Slot) -> bool:
        conn.start_request(head.request_id)
        try:
            return self.handler.handle_params(conn, head.request_id, head.role, head.params, head.replaced,
                                              slot.begin)
        finally:
            self._count_request(slot)

    def _count_request(self, slot: Slot) -> None:
        self.requests += 1
        slot.end()


def _request_handler(app: WSGIApp, hooks: WorkerHooks | None, options: dict[str, Any]) -> RequestHandler:
    """The plain handler unless pre_request or post_request is set: no hook, no cost per request."""
    if hooks is None or not hooks.per_request:
        return RequestHandler(app, **options)
    return HookedHandler(hooks, app, **options)


def _keep_freed_memory() -> None:
    """Let the allocator keep up to 2 MiB of freed memory instead of handing it
    back to the kernel after every request.

    A request with a body allocates and frees a megabyte or so in 64 KiB
    pieces; with glibc's default 128 KiB trim threshold the top of the heap
    goes back to the kernel after each request and is faulted in again with the
    next (``brk`` three times per 1 MiB upload, its cost charged to the
    worker's CPU). Freeing one 1 MiB block, which malloc serves by mmap, raises
    glibc's dynamic thresholds (mallopt(3), M_MMAP_THRESHOLD): blocks up to
    1 MiB then come from the heap, and up to 2 MiB of free heap is kept. Other
    allocators ignore it."""
    block = bytearray(1 << 20)
    del block


def open_slow_log(config: Config) -> int:
    """The descriptor slow-request stacks are written to: --slow-log, else the
    error log's file, else stderr."""
    path = config.slow_log or (config.error_logfile if config.error_logfile not in (None, "-") else None)
    if path is None:
        return 2
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        error_log.error("cannot open the slow log %s: %s; using stderr", path, exc.strerror)
        return 2


class FileWatch:
    """Has one of these files changed since the last look: its mtime, or whether
    it exists (a restart.txt may be created only when wanted)? Polled, one stat
    per file per look; after a change the watch starts again from what it saw."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.changed_file = ""
        self._mtimes = {path: _mtime(path) for path in paths}

    def changed(self) -> bool:
        for path, mtime in self._mtimes.items():
            now = _mtime(path)
            if now != mtime:
                self._mtimes[path] = now
                self.changed_file = path
                return True
        return False


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def source_watch() -> FileWatch:
    """--reload: the source files of the loaded modules, the standard library's excepted."""
    import sysconfig

    skip = tuple({sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")})
    files = [getattr(module, "__file__", None) for module in list(sys.modules.values())]
    return FileWatch([path for path in files
                      if isinstance(path, str) and path.endswith(".py") and not path.startswith(skip)])


def allowed_networks(config: Config) -> list[Any]:
    """--allowed-addr plus FCGI_WEB_SERVER_ADDRS (spec 3.2: comma-separated addresses)."""
    networks = list(config.allowed_addr or [])
    from_env = os.environ.get("FCGI_WEB_SERVER_ADDRS", "").strip()
    if from_env:
        try:
            networks += parse_networks(from_env)
        except ValueError as exc:
            error_log.error("ignoring FCGI_WEB_SERVER_ADDRS: %s", exc)
    return networks


class PeerFilter:
    """Which TCP peers may connect. Unix-socket peers always may: the socket
    file's mode guards them (flup rejects every unix and IPv6 peer when
    FCGI_WEB_SERVER_ADDRS is set)."""

    def __init__(self, networks: Sequence[Any]) -> None:
        self.networks = list(networks)
        self._logged: dict[str, float] = {}

    def allows(self, peer: Any) -> bool:
        if not self.networks or not isinstance(peer, tuple):
            return True
        try:
            address = ipaddress.ip_address(peer[0].split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        if any(address.version == net.version and address in net for net in self.networks):
            return True
        self._log_refusal(str(address))
        return False

    def _log_refusal(self, address: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(address, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
            self._logged[address] = now
            error_log.warning("refused a connection from %s: not in --allowed-addr / FCGI_WEB_SERVER_ADDRS "
                              "(logged once a minute per address)", address)
