"""wsgi_fcgi/worker.py in the test process: a ``Connection`` (and a ``Worker``
serving one through ``_serve``) over a ``socket.socketpair()``, driven with
real FastCGI bytes from ``wsgi_fcgi.protocol``'s encoders. No subprocess,
no listener, no epoll loop: the seam below ``Worker.run``.

The peer end of the pair plays the web server. What is checked is what the
web server would see (records, END_REQUEST, a closed connection) and what
the worker counts (requests served, connections kept).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from typing import Any, Callable, Iterable, Iterator, List, Tuple

import pytest

from wsgi_fcgi import protocol as p
from wsgi_fcgi.handler import ClientDisconnected
from wsgi_fcgi.worker import Connection, Worker, _timeval

from support.fastcgi import is_end, read_events, request_bytes
from support.procfs import epoll_watched

pytestmark = pytest.mark.timeout(30)

STALL = 0.2  # the read timeout of these connections: a stalled peer is given up on quickly


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """(ours, the web server's) ends of a connected unix stream pair."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.settimeout(10)
    yield ours, peer
    ours.close()
    peer.close()


def connection(sock: socket.socket, read_timeout: float = 10.0) -> Connection:
    """A Connection as the worker makes one for an accepted socket."""
    return Connection(sock, "", p.ServerConnection(), _timeval(read_timeout))


def read_body(conn: Connection) -> bytes:
    chunks = []
    while chunk := conn.read_stdin():
        chunks.append(chunk)
    return b"".join(chunks)


def stdout_of(events: List[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, p.Stdout))


# --- Connection ------------------------------------------------------------------------


def test_request_head_and_body_are_read_from_the_socket(pair) -> None:
    ours, peer = pair
    body = os.urandom(100_000)  # two STDIN records
    peer.sendall(request_bytes(7, "/upload?x=1", keep_conn=True, body=body))
    conn = connection(ours)
    head = conn.read_request_head()
    assert head is not None
    assert head.begin == p.BeginRequest(7, p.FCGI_RESPONDER, True)
    params = head.params
    assert (params["REQUEST_METHOD"], params["PATH_INFO"], params["QUERY_STRING"]) == ("POST", "/upload", "x=1")
    assert params["CONTENT_LENGTH"] == str(len(body))
    assert not conn.proto.input_complete
    assert read_body(conn) == body
    assert conn.proto.input_complete  # the empty STDIN record was read


def test_a_get_in_one_segment_is_known_complete_before_the_app_runs(pair) -> None:
    """nginx sends a GET's head and its empty STDIN record in one segment: the
    fast path takes the end from the buffer, so the connection can later be
    closed without a lingering drain."""
    ours, peer = pair
    peer.sendall(request_bytes(1, "/hello"))
    conn = connection(ours)
    assert conn.read_request_head() is not None
    assert conn.proto.input_complete
    assert conn.read_stdin() == b""
    assert conn.read_stdin() == b""  # and again: the end stays the end


def test_the_head_never_waits_for_a_stdin_end_still_to_come(pair) -> None:
    ours, peer = pair
    data = request_bytes(1, "/hello")
    end = p.encode_end_of_stream(p.FCGI_STDIN, 1)
    assert data.endswith(end)
    peer.sendall(data[: -len(end)])  # the head only
    conn = connection(ours)
    assert conn.read_request_head() is not None  # returns: it did not block on the socket
    assert not conn.proto.input_complete
    peer.sendall(end)
    assert conn.read_stdin() == b""
    assert conn.proto.input_complete


def test_a_peer_closing_mid_body_is_a_client_disconnect(pair) -> None:
    ours, peer = pair
    head = p.encode_begin_request(1) + p.encode_params(1, [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"100")])
    record = p.encode_record(p.FCGI_STDIN, 1, b"x" * 100)
    peer.sendall(head + record[:40])  # a STDIN record cut short
    peer.close()
    conn = connection(ours)
    assert conn.read_request_head() is not None
    with pytest.raises(ClientDisconnected, match="closed the connection"):
        read_body(conn)


def test_a_peer_that_sends_no_body_is_given_up_after_the_read_timeout(pair) -> None:
    ours, peer = pair
    peer.sendall(p.encode_begin_request(1) + p.encode_params(1, [(b"CONTENT_LENGTH", b"10")]))
    conn = connection(ours, read_timeout=STALL)
    assert conn.read_request_head() is not None
    with pytest.raises(ClientDisconnected, match="nothing within the read timeout"):
        conn.read_stdin()


def test_a_response_larger_than_the_socket_buffer_reaches_the_peer_whole(pair) -> None:
    ours, peer = pair
    body = os.urandom(3 * 1024 * 1024)
    conn = connection(ours)
    conn.request_id = 1
    received: List[Any] = []
    reader = threading.Thread(target=lambda: received.extend(read_events(peer, is_end)))
    reader.start()
    conn.send(p.encode_stream(p.FCGI_STDOUT, 1, body) + [p.encode_end_of_stream(p.FCGI_STDOUT, 1),
                                                        conn.end_request(0)])
    reader.join(10)
    assert not reader.is_alive()
    assert stdout_of(received) == body
    assert received[-1] == p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE)


def test_a_peer_that_stops_reading_is_a_client_disconnect(pair) -> None:
    ours, peer = pair
    conn = connection(ours, read_timeout=STALL)
    conn.request_id = 1
    with pytest.raises(ClientDisconnected, match="sending the response failed"):
        conn.send(p.encode_stream(p.FCGI_STDOUT, 1, bytes(8 * 1024 * 1024)))  # the peer reads none of it


# --- Worker._serve: one connection ------------------------------------------------------


def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ['PATH_INFO']} {len(body)}".encode()]


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A Worker with no listener, and the epoll set its loop would have made."""
    w = Worker(app, [], read_timeout=STALL)
    w._epoll = select.epoll()
    yield w
    for conn in list(w.idle.values()):
        conn.close()
    w._epoll.close()


def accepted(worker: Worker, sock: socket.socket) -> Connection:
    """What the worker's accept makes of a new connection."""
    proto = p.ServerConnection(max_conns=worker.max_conns, max_reqs=worker.max_reqs, limits=worker.limits)
    return Connection(sock, "", proto, worker._timeval)


def closed_by_worker(sock: socket.socket) -> bool:
    return sock.recv(65536) == b""


def test_worker_answers_a_request_and_closes_the_connection(worker: Worker, pair) -> None:
    ours, peer = pair
    peer.sendall(request_bytes(1, "/echo", body=b"abc"))
    worker._serve(accepted(worker, ours))
    events = read_events(peer, is_end)
    assert stdout_of(events).startswith(b"Status: 200 OK\r\n")
    assert stdout_of(events).endswith(b"\r\n\r\n/echo 3")
    assert events[-1] == p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE)
    assert closed_by_worker(peer)  # no FCGI_KEEP_CONN: the worker closes
    assert worker.requests == 1 and not worker.idle


def test_worker_serves_pipelined_kept_requests_then_keeps_the_connection(worker: Worker, pair) -> None:
    ours, peer = pair
    peer.sendall(request_bytes(1, "/one", keep_conn=True) + request_bytes(1, "/two", keep_conn=True, body=b"xy"))
    conn = accepted(worker, ours)
    worker._serve(conn)
    ends: List[Any] = []
    events = read_events(peer, lambda e: is_end(e) and (ends.append(e) or len(ends) == 2))
    assert ends == [p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE)] * 2
    stdout = stdout_of(events)
    assert stdout.index(b"/one 0") < stdout.index(b"/two 2")
    assert worker.requests == 2
    # Parked: idle, and in the epoll set, where the loop waits for its next request.
    assert list(worker.idle) == [conn.fd]
    assert os.fstat(conn.fd).st_ino in epoll_watched(os.getpid())


def test_worker_recycles_after_max_requests_and_closes_the_kept_connection(pair, caplog) -> None:
    ours, peer = pair
    w = Worker(app, [], read_timeout=STALL, max_requests=1)
    peer.sendall(request_bytes(1, "/last", keep_conn=True))
    with caplog.at_level(logging.INFO, logger="wsgi_fcgi.error"):
        w._serve(accepted(w, ours))
    assert stdout_of(read_events(peer, is_end)).endswith(b"/last 0")
    assert closed_by_worker(peer)
    assert not w.alive  # the loop ends after this request
    assert "served 1 requests, recycling" in caplog.text


def test_a_peer_closing_mid_body_costs_only_its_connection(worker: Worker, pair) -> None:
    ours, peer = pair
    data = request_bytes(1, "/upload", body=b"z" * 50_000)
    peer.sendall(data[:30_000])
    peer.shutdown(socket.SHUT_WR)  # gone mid-body
    worker._serve(accepted(worker, ours))
    assert closed_by_worker(peer)
    assert worker.requests == 1 and not worker.idle and worker.alive
    # The next connection is served as usual.
    again, again_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with again, again_peer:
        again_peer.settimeout(10)
        again_peer.sendall(request_bytes(1, "/echo", body=b"ok"))
        worker._serve(accepted(worker, again))
        assert stdout_of(read_events(again_peer, is_end)).endswith(b"/echo 2")
    assert worker.requests == 2


# --- what the web server sends while the app runs ------------------------------------


def test_a_body_cut_short_is_answered_400_and_the_kept_connection_serves_on(worker: Worker, pair) -> None:
    """STDIN ends (its empty record) before CONTENT_LENGTH bytes: wsgi.input raises,
    the app lets it through, and the web server, still there, gets a 400 and
    END_REQUEST instead of a cut connection (which nginx reports as a 502)."""
    ours, peer = pair
    short = (p.encode_begin_request(1, keep_conn=True)
             + p.encode_params(1, [(b"REQUEST_METHOD", b"POST"), (b"PATH_INFO", b"/short"),
                                   (b"CONTENT_LENGTH", b"100")])
             + p.encode_record(p.FCGI_STDIN, 1, b"only ten b") + p.encode_record(p.FCGI_STDIN, 1))
    peer.sendall(short + request_bytes(2, "/next", keep_conn=True, body=b"fine"))
    conn = accepted(worker, ours)
    worker._serve(conn)
    ends: List[Any] = []
    events = read_events(peer, lambda e: is_end(e) and (ends.append(e) or len(ends) == 2))
    assert ends == [p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE), p.EndRequest(2, 0, p.FCGI_REQUEST_COMPLETE)]
    first = b"".join(e.data for e in events if isinstance(e, p.Stdout) and e.request_id == 1)
    assert first.startswith(b"Status: 400 Bad Request\r\n")
    assert stdout_of(events).endswith(b"/next 4")
    assert list(worker.idle) == [conn.fd]  # still kept


class Peer:
    """The web server's end, reading the records the worker sends as they come."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.client = p.ClientConnection()

    def next(self) -> Any:
        while True:
            event = self.client.next_event()
            if event is not p.NEED_DATA:
                return event
            self.client.receive_data(self.sock.recv(65536))

    def until(self, wanted: Callable[[Any], bool]) -> List[Any]:
        events = []
        for _ in range(10_000):
            event = self.next()
            events.append(event)
            if wanted(event) or isinstance(event, p.ConnectionClosed):
                return events
        raise AssertionError("the wanted record did not come")


class StreamingApp:
    """Streams b"one", then b"two" once the test has sent its record, then b"three".
    ``closed`` is set when the server closes the iterable; ``chunks`` says how far it got."""

    def __init__(self) -> None:
        self.sent = threading.Event()
        self.closed = threading.Event()
        self.chunks: List[bytes] = []

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self._body()

    def _body(self) -> Iterator[bytes]:
        try:
            for chunk in (b"one", b"two", b"three"):
                self.chunks.append(chunk)
                yield chunk
                if chunk == b"one":
                    assert self.sent.wait(10)
        finally:
            self.closed.set()


@pytest.fixture
def streaming(monkeypatch) -> Iterator[Tuple[StreamingApp, Worker]]:
    """A worker serving a StreamingApp, told to look at the socket after every chunk
    (CHECK_PEER_INTERVAL 0): what it notices is then tied to a chunk, not to a clock."""
    import wsgi_fcgi.worker as worker_module

    monkeypatch.setattr(worker_module, "CHECK_PEER_INTERVAL", 0.0)
    streamer = StreamingApp()
    w = Worker(streamer, [], read_timeout=10)
    w._epoll = select.epoll()
    yield streamer, w
    for conn in list(w.idle.values()):
        conn.close()
    w._epoll.close()


def serve_in_thread(worker: Worker, conn: Connection) -> threading.Thread:
    thread = threading.Thread(target=worker._serve, args=(conn,), daemon=True)
    thread.start()
    return thread


def streaming_started(worker: Worker, pair: Tuple[socket.socket, socket.socket], *,
                      keep_conn: bool = False) -> Tuple[Peer, threading.Thread, Connection]:
    """A /stream request served on a thread, once its first chunk has reached the peer."""
    ours, peer = pair
    peer.sendall(request_bytes(1, "/stream", keep_conn=keep_conn))
    web = Peer(peer)
    conn = accepted(worker, ours)
    thread = serve_in_thread(worker, conn)
    web.until(lambda e: b"one" in stdout_text(e))
    return web, thread, conn


def stdout_text(event: Any) -> bytes:
    return event.data if isinstance(event, p.Stdout) else b""


def test_a_second_begin_request_during_a_streamed_response_is_refused_at_once(streaming, pair) -> None:
    streamer, worker = streaming
    web, thread, _ = streaming_started(worker, pair, keep_conn=True)
    pair[1].sendall(request_bytes(2, "/second"))  # a web server that multiplexes
    streamer.sent.set()
    events = web.until(lambda e: e == p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE))
    refusal = events.index(p.EndRequest(2, 0, p.FCGI_CANT_MPX_CONN))
    three = next(i for i, e in enumerate(events) if b"three" in stdout_text(e))
    assert refusal < three  # answered while the app was still streaming
    thread.join(10)
    assert not thread.is_alive() and worker.requests == 1


def test_get_values_during_a_streamed_response_is_answered_at_once(streaming, pair) -> None:
    streamer, worker = streaming
    web, thread, _ = streaming_started(worker, pair)
    pair[1].sendall(p.encode_record(p.FCGI_GET_VALUES, 0, p.encode_pairs([(b"FCGI_MPXS_CONNS", b"")])))
    streamer.sent.set()
    events = web.until(is_end)
    answer = events.index(p.GetValuesResult({"FCGI_MPXS_CONNS": "0"}))
    three = next(i for i, e in enumerate(events) if b"three" in stdout_text(e))
    assert answer < three
    thread.join(10)
    assert not thread.is_alive()


def test_an_abort_during_a_streamed_response_closes_the_iterable_and_keeps_the_connection(streaming, pair) -> None:
    streamer, worker = streaming
    web, thread, conn = streaming_started(worker, pair, keep_conn=True)
    pair[1].sendall(p.encode_record(p.FCGI_ABORT_REQUEST, 1))
    streamer.sent.set()
    events = web.until(is_end)
    assert events[-1] == p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE)
    assert streamer.closed.is_set() and streamer.chunks == [b"one", b"two"]  # closed at the next chunk
    assert not any(b"three" in stdout_text(e) for e in events)
    thread.join(10)
    assert not thread.is_alive() and list(worker.idle) == [conn.fd]  # the connection is kept


def test_the_web_server_closing_during_a_streamed_response_stops_the_app(streaming, pair) -> None:
    streamer, worker = streaming
    _, thread, _ = streaming_started(worker, pair)
    pair[1].shutdown(socket.SHUT_WR)  # nginx gives up on the upstream when its client has gone
    streamer.sent.set()
    thread.join(10)
    assert not thread.is_alive()
    assert streamer.closed.is_set() and streamer.chunks == [b"one", b"two"]
    assert not worker.idle
