"""FastCGI at the record level for the functional tests: raw connections,
hand-built request bytes, the events a web server would read back, and small
process helpers. Used where the point of a test is bytes a normal client
would never send."""

from __future__ import annotations

import socket
from typing import Any, Callable, List

from wsgi_fcgi import protocol as p

from .net import connect
from .waiting import wait_for as wait_for  # re-exported: tests/test_threads.py imports it from here


def raw_connect(address: str) -> socket.socket:
    return connect(address, timeout=10)


def connect_from(source: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to ``host:port`` from the local address ``source``: any
    127/8 address is this machine's, so a test can be "another host" to a
    server's --allowed-addr."""
    sock = socket.socket()
    try:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def request_bytes(request_id: int = 1, path: str = "/hello", keep_conn: bool = False, body: bytes = b"",
                  role: int = p.FCGI_RESPONDER) -> bytes:
    path_info, _, query = path.partition("?")
    pairs = [(b"REQUEST_METHOD", b"POST" if body else b"GET"), (b"SCRIPT_NAME", b""),
             (b"PATH_INFO", path_info.encode()),
             (b"QUERY_STRING", query.encode()), (b"REQUEST_URI", path.encode()), (b"SERVER_NAME", b"localhost"),
             (b"SERVER_PORT", b"80"), (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"CONTENT_LENGTH", str(len(body)).encode())]
    stdin = b"".join(bytes(b) for b in p.encode_stream(p.FCGI_STDIN, request_id, body))
    return (p.encode_begin_request(request_id, role, keep_conn) + p.encode_params(request_id, pairs)
            + stdin + p.encode_record(p.FCGI_STDIN, request_id))


def read_events(sock: socket.socket, until: Callable[[Any], bool]) -> List[Any]:
    """Events until ``until(event)`` is true or the server closes the connection."""
    conn = p.ClientConnection()
    events: List[Any] = []
    while True:
        event = conn.next_event()
        if event is p.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        events.append(event)
        if isinstance(event, p.ConnectionClosed) or until(event):
            return events


def is_end(event: Any) -> bool:
    return isinstance(event, p.EndRequest)


def server_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def children_of(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
