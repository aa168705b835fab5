"""The status and ping pages (PHP-FPM's ``pm.status_path`` and ``ping.path``).

Strategy: whichever worker gets the request answers it from the shared
scoreboard, without calling the app: the pool header the master keeps, and
every worker's slot (one per thread with ``--threads``). Per-process CPU and
memory come from /proc at the moment the page is asked for, so nothing is
collected per request. Text by default, ``?json`` and ``?openmetrics``
(Prometheus); ``?full`` adds one entry per worker thread. Both pages are off unless their path is configured, and belong
behind an internal-only location in the web server (the docs show how).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any
from collections.abc import Callable, Sequence

from . import protocol as p
from ._compiled import form
from .environ import build_environ
from .limits import resident_bytes
from .scoreboard import Scoreboard, SlotState

# A page: (status line, headers, body)
Page = tuple[str, list[tuple[str, str]], bytes]
PageFunction = Callable[[dict[str, Any]], Page]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def ping_page(response: str) -> PageFunction:
    body = response.encode("utf-8")

    def page(environ: dict[str, Any]) -> Page:
        return "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                          ("Cache-Control", "no-store")], body
    return page


def status_page(scoreboard: Scoreboard, listeners: Sequence[socket.socket]) -> PageFunction:
    def page(environ: dict[str, Any]) -> Page:
        query = environ.get("QUERY_STRING", "")
        flags = set(part.split("=", 1)[0] for part in query.split("&") if part)
        report = collect(scoreboard, listeners, full="full" in flags)
        if "json" in flags:
            body, kind = json.dumps(report, indent=1).encode(), "application/json"
        elif "openmetrics" in flags:
            body, kind = openmetrics(report).encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8"
        else:
            body, kind = text(report).encode(), "text/plain; charset=utf-8"
        return "200 OK", [("Content-Type", kind), ("Content-Length", str(len(body))),
                          ("Cache-Control", "no-store")], body
    return page


def collect(scoreboard: Scoreboard, listeners: Sequence[socket.socket], *, full: bool) -> dict[str, Any]:
    """The report. With --threads a "worker" in it is one thread, a request
    slot: that is what tells a saturated pool from an idle one."""
    pool = scoreboard.pool()
    now = time.monotonic()
    threads = scoreboard.threads
    slots = [(position % threads, slot) for position, slot in enumerate(scoreboard.slots())
             if slot.pid and _alive(slot.pid)]
    active = sum(1 for _, slot in slots if slot.busy_since)
    queue = listen_queue(listeners)
    report: dict[str, Any] = {
        "pool": pool.pool,
        "start_time": int(pool.start_time),
        "start_since": int(now - pool.started),
        "accepted_requests": pool.retired_requests + sum(slot.requests for _, slot in slots),
        "listen_queue": queue[0] if queue else None,
        "listen_queue_max": queue[1] if queue else None,
        "active_workers": active,
        "idle_workers": len(slots) - active,
        "total_workers": len(slots),
        "max_workers": pool.pool_size * threads,
        "max_active_workers": max(pool.max_active_workers, active),
        "max_workers_reached": pool.max_workers_reached,
        "slow_requests": pool.slow_requests,
        "processes": len({slot.pid for _, slot in slots}),
        "threads_per_process": threads,
        "implementation": form(),  # compiled (mypyc) or pure Python
    }
    if full:
        usage: dict[int, tuple[float | None, int | None]] = {}
        report["workers"] = [_worker(slot, thread, now, usage) for thread, slot in slots]
    return report


def _worker(slot: SlotState, thread: int, now: float,
            usage: dict[int, tuple[float | None, int | None]]) -> dict[str, Any]:
    busy = bool(slot.busy_since)
    duration = (now - slot.busy_since) if busy else slot.last_duration
    method, _, uri = slot.request.partition(" ")
    if slot.pid not in usage:  # read once per process, however many threads it has
        usage[slot.pid] = _process_usage(slot.pid)
    cpu, rss = usage[slot.pid]
    return {"pid": slot.pid, "thread": thread, "state": "busy" if busy else "idle", "requests": slot.requests,
            "request_method": method or None, "request_uri": uri or None,
            "request_duration_ms": round(duration * 1000, 3), "cpu_seconds": cpu, "memory_rss_bytes": rss}


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _process_usage(pid: int) -> tuple[float | None, int | None]:
    """CPU seconds (user + system) and resident memory of ``pid``, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    resident = resident_bytes(pid)
    if resident is None:
        return None, None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, resident


_TCP_INFO = struct.Struct("=8B6I")  # ... tcpi_unacked, tcpi_sacked: for a listener, its queue and backlog


def listen_queue(listeners: Sequence[socket.socket]) -> tuple[int, int] | None:
    """(connections waiting, backlog) summed over TCP listeners; None where the
    platform does not tell (unix sockets)."""
    waiting = backlog = 0
    found = False
    for sock in listeners:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
        except (OSError, AttributeError):
            continue
        fields = _TCP_INFO.unpack(info)
        waiting, backlog, found = waiting + fields[12], backlog + fields[13], True
    return (waiting, backlog) if found else None


def text(report: dict[str, Any]) -> str:
    lines = [f"{key.replace('_', ' ')}: {'-' if value is None else value}"
             for key, value in report.items() if key != "workers"]
    for worker in report.get("workers", []):
        lines.append("")
        lines += [f"{key.replace('_', ' ')}: {'-' if value is None else value}" for key, value in worker.items()]
    return "\n".join(lines) + "\n"


def openmetrics(report: dict[str, Any]) -> str:
    gauges = ("listen_queue", "active_workers", "idle_workers", "total_workers", "max_workers",
              "max_active_workers", "processes", "threads_per_process")
    counters = ("accepted_requests", "max_workers_reached", "slow_requests")
    lines: list[str] = []
    for name in gauges:
        if report.get(name) is not None:
            lines += [f"# TYPE wsgi_fcgi_{name} gauge", f"wsgi_fcgi_{name} {report[name]}"]
    for name in counters:
        lines += [f"# TYPE wsgi_fcgi_{name} counter", f"wsgi_fcgi_{name}_total {report[name]}"]
    lines += ["# TYPE wsgi_fcgi_start_time gauge", f"wsgi_fcgi_start_time {report['start_time']}"]
    lines += ["# TYPE wsgi_fcgi_build info", f'wsgi_fcgi_build_info{{implementation="{report["implementation"]}"}} 1']
    workers = report.get("workers", [])
    if workers:  # ?full: one series per worker thread in each family
        lines += _worker_series(workers)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# per-worker families of ?openmetrics&full: (name, type, field of the worker's entry)
_WORKER_FAMILIES = (
    ("wsgi_fcgi_worker_busy", "gauge", "state"),
    ("wsgi_fcgi_worker_request_duration_seconds", "gauge", "request_duration_ms"),
    ("wsgi_fcgi_worker_cpu_seconds", "counter", "cpu_seconds"),
    ("wsgi_fcgi_worker_memory_rss_bytes", "gauge", "memory_rss_bytes"),
)


def _worker_series(workers: list[dict[str, Any]]) -> list[str]:
    lines = ["# TYPE wsgi_fcgi_worker_requests gauge"]  # requests served by this thread of this process
    for worker in workers:
        labels = f'{{pid="{worker["pid"]}",thread="{worker["thread"]}",state="{worker["state"]}"}}'
        lines.append(f"wsgi_fcgi_worker_requests{labels} {worker['requests']}")
    for name, kind, field in _WORKER_FAMILIES:
        lines.append(f"# TYPE {name} {kind}")
        sample = name + ("_total" if kind == "counter" else "")
        for worker in workers:
            value = worker[field]
            if field == "state":
                value = int(value == "busy")
            elif field == "request_duration_ms":
                value = round(value / 1000, 6)
            if value is not None:
                lines.append(f'{sample}{{pid="{worker["pid"]}",thread="{worker["thread"]}"}} {value}')
    return lines


# --- pages on a socket of the master's own (--status-bind) -----------------------------

def find_page(pages: dict[str, PageFunction], environ: dict[str, Any]) -> PageFunction | None:
    """The page for this request's path, whether the web server counts the
    mount point in SCRIPT_NAME or not; None: not one of ours."""
    return pages.get(environ["SCRIPT_NAME"] + environ["PATH_INFO"]) or pages.get(environ["PATH_INFO"])


def cgi_response(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """A page as the STDOUT stream carries it: the CGI head, then the body."""
    head = "".join([f"Status: {status}\r\n"] + [f"{n}: {v}\r\n" for n, v in headers] + ["\r\n"])
    return head.encode("latin-1") + body


NOT_FOUND: Page = ("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")], b"Not Found")
STATUS_DEADLINE = 10.0  # seconds a status connection has to send its request
MAX_STATUS_CONNECTIONS = 16  # beyond these, new ones are closed at once


class _StatusConnection:
    __slots__ = ("sock", "proto", "deadline", "outgoing")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.proto = p.ServerConnection()
        self.deadline = deadline
        self.outgoing = b""  # the answer, once the request is in


class StatusListener:
    """--status-bind: the master answers ping and status itself, on a FastCGI
    socket of its own (PHP-FPM's ``pm.status_listen``), so a monitor sees a
    saturated pool instead of waiting behind it.

    Strategy: no thread and no blocking call in the master. Its poll watches
    this socket and each status connection; ``handle`` takes what is ready:
    accepts, reads (the request head through protocol.py), and sends the
    answer as far as the socket takes it. A connection has STATUS_DEADLINE
    seconds to be done, and at most MAX_STATUS_CONNECTIONS are open at once,
    so a client that stalls costs the master nothing but a descriptor.
    """

    def __init__(self, sock: socket.socket, pages: dict[str, PageFunction], allows: Callable[[Any], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.pages = pages
        self.allows = allows
        self.clock = clock
        self._connections: dict[int, _StatusConnection] = {}

    def watched(self) -> list[tuple[int, bool]]:
        """(descriptor, wants to write) for the master's poll."""
        return [(self.sock.fileno(), False)] + [(fd, bool(c.outgoing)) for fd, c in self._connections.items()]

    def handle(self, fd: int) -> None:
        if fd == self.sock.fileno():
            self._accept()
            return
        conn = self._connections.get(fd)
        if conn is not None and not self._step(conn):
            self._close(fd)

    def expire(self) -> None:
        now = self.clock()
        for fd in [fd for fd, conn in self._connections.items() if now >= conn.deadline]:
            self._close(fd)

    def close(self) -> None:
        for fd in list(self._connections):
            self._close(fd)
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(MAX_STATUS_CONNECTIONS):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors, aborted: the client tries again
            if len(self._connections) >= MAX_STATUS_CONNECTIONS or not self.allows(peer):
                sock.close()
                continue
            sock.setblocking(False)
            self._connections[sock.fileno()] = _StatusConnection(sock, self.clock() + STATUS_DEADLINE)

    def _step(self, conn: _StatusConnection) -> bool:
        """Read or write what is ready; False once the connection is done with."""
        try:
            if conn.outgoing:
                conn.outgoing = conn.outgoing[conn.sock.send(conn.outgoing):]
                return bool(conn.outgoing)
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        conn.proto.receive_data(data)
        try:
            return self._answer(conn)
        except p.ProtocolError:
            return False

    def _answer(self, conn: _StatusConnection) -> bool:
        while True:
            event = conn.proto.next_event()
            reply = conn.proto.data_to_send()  # GET_VALUES, a rejected role
            if reply:
                conn.outgoing += reply
            if isinstance(event, p.Params):
                conn.outgoing += self._page_records(event)
                return self._step(conn)
            elif event is p.NEED_DATA:
                return True if not conn.outgoing else self._step(conn)
            elif isinstance(event, (p.ConnectionClosed, p.AbortRequest)):
                return False

    def _page_records(self, params: p.Params) -> bytes:
        environ = build_environ(params.pairs)
        page = find_page(self.pages, environ)
        status, headers, body = page(environ) if page is not None else NOT_FOUND
        if environ.get("REQUEST_METHOD") == "HEAD":
            body = b""
        rid = params.request_id
        records = p.encode_stream(p.FCGI_STDOUT, rid, cgi_response(status, headers, body))
        records += [p.encode_end_of_stream(p.FCGI_STDOUT, rid), p.encode_end_request(rid)]
        return b"".join(bytes(r) for r in records)  # then closed: one request per connection

    def _close(self, fd: int) -> None:
        conn = self._connections.pop(fd)
        conn.sock.close()
