"""Tests of ``wsgi_fcgi.client`` (library and CLI) against a tiny FastCGI
responder written here on top of ``protocol.ServerConnection``.

The responder serves a unix socket from a thread, one connection at a time,
and records what it received (params, STDIN records, KEEP_CONN, which
connection) so the tests can check the client's side of the wire. It never
uses wsgi_fcgi's own worker. Every wait is bounded: the thread polls a stop
flag, sockets have deadlines, and ``stop()`` joins the thread with a timeout.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from support.waiting import wait_for
from wsgi_fcgi import protocol as p
from wsgi_fcgi.client import (
    Client,
    FastCGIError,
    Response,
    build_params,
    main,
    parse_cgi_response,
    request,
)

DEADLINE = 10.0  # seconds any single step of the responder may take


# --- the tiny responder ----------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the responder received it."""

    connection: int
    request_id: int
    role: int
    keep_conn: bool
    params: List[Tuple[str, str]] = field(default_factory=list)
    stdin_records: List[bytes] = field(default_factory=list)
    data: bytes = b""
    stdin_ended: bool = False

    @property
    def env(self) -> Dict[str, str]:
        return dict(self.params)

    @property
    def stdin(self) -> bytes:
        return b"".join(self.stdin_records)


@dataclass
class Reply:
    stdout: bytes = b""
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = p.FCGI_REQUEST_COMPLETE
    cut_after: Optional[int] = None   # send this many STDOUT bytes, then close the connection
    no_end_request: bool = False      # send all of STDOUT (and its end), then close without END_REQUEST
    close_after: bool = False         # close the connection after END_REQUEST even with KEEP_CONN
    raw: Optional[bytes] = None       # send these bytes instead of a response, then close


def cgi(status: Optional[str] = "200 OK", headers: Sequence[Tuple[str, str]] = (("Content-Type", "text/plain"),),
        body: bytes = b"", sep: bytes = b"\r\n") -> bytes:
    lines = ([f"Status: {status}"] if status is not None else []) + [f"{k}: {v}" for k, v in headers]
    return sep.join(line.encode("latin-1") for line in lines) + sep + sep + body


Handler = Callable[[Seen], Reply]


class Responder:
    """A FastCGI responder on a unix socket, in a thread."""

    def __init__(self, handler: Handler, *, max_conns: int = 5, max_reqs: int = 9, honour_keep_conn: bool = True,
                 respond_after: str = "stdin", roles: Sequence[int] = (p.FCGI_RESPONDER, p.FCGI_AUTHORIZER,
                                                                      p.FCGI_FILTER)) -> None:
        self.handler = handler
        self.max_conns, self.max_reqs = max_conns, max_reqs
        self.honour_keep_conn = honour_keep_conn
        self.respond_after = respond_after  # "stdin" (StdinEnd / DataEnd) or "params" (before reading STDIN)
        self.roles = roles
        self.dir = tempfile.mkdtemp(prefix="fcgi-client-", dir="/tmp")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "app.sock")
        self.address = f"unix:{self.path}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.seen: List[Seen] = []
        self.connections = 0
        self.closed_by_peer: List[int] = []  # connections the client closed (EOF between requests)
        self.errors: List[BaseException] = []
        self.protocol_errors: List[str] = []  # connections dropped because the client broke the protocol
        self.closed = 0  # connections this side has closed
        self.first_stdin = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-responder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "responder thread did not stop"
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # server loop

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(0.05):
                    continue
                try:
                    sock, _ = self.listener.accept()
                except OSError:
                    continue
                self.connections += 1
                try:
                    self._serve(sock, self.connections)
                except (ConnectionError, _Stopped):
                    pass
                except p.ProtocolError as exc:
                    self.protocol_errors.append(exc.reason)
                except BaseException as exc:  # surfaced by the tests
                    self.errors.append(exc)
                finally:
                    sock.close()
                    self.closed += 1

    def _recv(self, sock: socket.socket) -> bytes:
        deadline = time.monotonic() + DEADLINE
        while not self._stop.is_set():
            try:
                return sock.recv(65536)
            except socket.timeout:
                if time.monotonic() > deadline:
                    raise TimeoutError("responder: client sent nothing for too long") from None
        raise _Stopped()

    def _serve(self, sock: socket.socket, index: int) -> None:
        sock.settimeout(0.05)
        conn = p.ServerConnection(max_conns=self.max_conns, max_reqs=self.max_reqs, roles=self.roles)
        current: Optional[Seen] = None
        while True:
            event = conn.next_event()
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            if event is p.NEED_DATA:
                conn.receive_data(self._recv(sock))
                continue
            if isinstance(event, p.ConnectionClosed):
                self.closed_by_peer.append(index)
                return
            if isinstance(event, p.BeginRequest):
                current = Seen(index, event.request_id, event.role, event.keep_conn)
                self.seen.append(current)
                continue
            assert current is not None
            respond = False
            if isinstance(event, p.Params):
                current.params = list(event.pairs)
                respond = self.respond_after == "params"
            elif isinstance(event, p.StdinData):
                current.stdin_records.append(event.data)
                self.first_stdin.set()
            elif isinstance(event, p.StdinEnd):
                current.stdin_ended = True
                respond = current.role != p.FCGI_FILTER and self.respond_after == "stdin"
            elif isinstance(event, p.DataData):
                current.data += event.data
            elif isinstance(event, p.DataEnd):
                respond = self.respond_after == "stdin"
            if not respond:
                continue
            reply = self.handler(current)
            rid = current.request_id
            if reply.raw is not None:
                sock.sendall(reply.raw)
                return
            if reply.cut_after is not None:
                sock.sendall(b"".join(p.encode_stream(p.FCGI_STDOUT, rid, reply.stdout[:reply.cut_after])))
                return
            parts = p.encode_stream(p.FCGI_STDOUT, rid, reply.stdout) + [p.encode_record(p.FCGI_STDOUT, rid)]
            if reply.stderr:
                parts += p.encode_stream(p.FCGI_STDERR, rid, reply.stderr) + [p.encode_record(p.FCGI_STDERR, rid)]
            if reply.no_end_request:
                sock.sendall(b"".join(parts))
                return
            parts.append(conn.end_request(rid, reply.app_status, reply.protocol_status))
            sock.sendall(b"".join(parts))
            if not (current.keep_conn and self.honour_keep_conn) or reply.close_after:
                return
            current = None


class _Stopped(Exception):
    pass


@pytest.fixture
def responder() -> Iterator[Callable[..., Responder]]:
    started: List[Responder] = []

    def start(handler: Handler, **kw: object) -> Responder:
        server = Responder(handler, **kw)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for server in started:
        assert not server.errors, f"responder failed: {server.errors!r}"


def echo_env(seen: Seen) -> Reply:
    body = "\n".join(f"{k}={v}" for k, v in seen.params).encode("latin-1")
    return Reply(cgi(headers=[("Content-Type", "text/plain")], body=body))


def ok(body: bytes = b"hello") -> Handler:
    return lambda seen: Reply(cgi(body=body))


# --- CGI response parsing -------------------------------------------------------------------


@pytest.mark.parametrize(("stdout", "status", "reason", "headers", "body"), [
    (b"Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\n<h1>", 404, "Not Found",
     [("Content-Type", "text/html")], b"<h1>"),
    (b"Content-Type: text/plain\r\n\r\nbody", 200, "OK", [("Content-Type", "text/plain")], b"body"),
    (b"Content-Type: text/plain\n\nbody\r\n\r\nmore", 200, "OK", [("Content-Type", "text/plain")],
     b"body\r\n\r\nmore"),
    (b"Status: 201\r\n\r\n", 201, "Created", [], b""),
    (b"Status: 599 Custom Thing\r\n\r\n", 599, "Custom Thing", [], b""),
    (b"Status: 299\r\n\r\n", 299, "", [], b""),
    (b"Location: /elsewhere\r\n\r\n", 302, "Found", [("Location", "/elsewhere")], b""),
    (b"Status: 301 Moved Permanently\r\nLocation: http://x/\r\n\r\n", 301, "Moved Permanently",
     [("Location", "http://x/")], b""),
    (b"\r\nbody only", 200, "OK", [], b"body only"),
    (b"X-A: 1\r\nx-a:2\r\nX-B:  spaced  \r\n\r\n", 200, "OK", [("X-A", "1"), ("x-a", "2"), ("X-B", "spaced")],
     b""),
    (b"status: 500 Internal Server Error\n\n", 500, "Internal Server Error", [], b""),
])
def test_parse_cgi_response(stdout: bytes, status: int, reason: str, headers: List[Tuple[str, str]],
                            body: bytes) -> None:
    assert parse_cgi_response(stdout) == (status, reason, headers, body)


@pytest.mark.parametrize(("stdout", "why"), [
    (b"", "empty"),
    (b"Content-Type: text/plain\r\nno blank line", "not terminated"),
    (b"just a body without headers", "not terminated"),
    (b"Not a header\r\n\r\nbody", "malformed"),
    (b"Status: OK\r\n\r\n", "Status"),
    (b"Status: 20\r\n\r\n", "Status"),
])
def test_invalid_cgi_response_gives_status_0_and_a_reason(stdout: bytes, why: str) -> None:
    status, reason, headers, body = parse_cgi_response(stdout)
    assert (status, headers, body) == (0, [], stdout)
    assert why in reason


# --- PARAMS -----------------------------------------------------------------------------------


def env_of(**kw: object) -> Dict[str, str]:
    return {n.decode("latin-1"): v.decode("latin-1") for n, v in build_params(**kw)}  # type: ignore[arg-type]


def test_params_are_built_like_nginx_with_path_info() -> None:
    env = env_of(path="/app/caf%C3%A9/a%2Fb?q=1&r=%20z", method="POST", script_name="/app",
                 headers={"X-Forwarded-For": "10.0.0.1", "Content-Type": "text/plain", "User-Agent": "t"},
                 body_length=3, remote_port="4242")
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["SERVER_SOFTWARE"].startswith("wsgi_fcgi.client/")
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/caf\xc3\xa9/a/b"  # decoded bytes as latin-1, as PEP 3333 wants
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a/b"
    assert env["REQUEST_URI"] == "/app/caf%C3%A9/a%2Fb?q=1&r=%20z"
    assert env["QUERY_STRING"] == "q=1&r=%20z"
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["SERVER_PROTOCOL"]) == ("localhost", "80", "HTTP/1.1")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", "4242")
    assert env["HTTP_HOST"] == "localhost"
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert env["HTTP_USER_AGENT"] == "t"
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


def test_params_without_a_body_have_no_content_length_or_type() -> None:
    env = env_of(path="/")
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"], env["REQUEST_URI"]) == ("", "/", "", "/")


@pytest.mark.parametrize(("path", "script_name", "path_info"), [
    ("/app", "/app", ""),
    ("/app/", "/app", "/"),
    ("/app/x", "/app/", "/x"),
    ("/application", "/app", "/application"),  # not a path-segment prefix
    ("/other/x", "/app", "/other/x"),
    ("/caf%C3%A9/x", "/café", "/x"),
    ("/%ff", "", "/\xff"),                      # invalid UTF-8 passes through as bytes
    ("/a%0ab", "", "/a\nb"),
])
def test_path_info_is_the_decoded_path_minus_script_name(path: str, script_name: str, path_info: str) -> None:
    assert env_of(path=path, script_name=script_name)["PATH_INFO"] == path_info


def test_utf8_path_given_as_text_arrives_as_pep3333_latin1() -> None:
    env = env_of(path="/café?x=é")
    assert env["PATH_INFO"] == "/caf\xc3\xa9"
    assert env["QUERY_STRING"] == "x=\xc3\xa9"


def test_host_header_and_repeated_headers() -> None:
    env = env_of(path="/", headers=[("Host", "example.com:8080"), ("X-Dup", "one"), ("x-dup", "two")])
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["HTTP_X_DUP"] == "one, two"


def test_params_override_add_and_delete_raw_pairs() -> None:
    pairs = build_params("/", params={"SERVER_NAME": "example.org", "REMOTE_ADDR": None, "EXTRA": b"\xff\x00"})
    env = dict(pairs)
    assert env[b"SERVER_NAME"] == b"example.org"
    assert b"REMOTE_ADDR" not in env
    assert pairs[-1] == (b"EXTRA", b"\xff\x00")
    assert [n for n, _ in pairs].count(b"SERVER_NAME") == 1
    # a list may repeat a name on purpose (nginx sends SCRIPT_NAME twice with some configs)
    twice = build_params("/", params=[("X", "1"), ("X", "2"), ("SCRIPT_NAME", "/a"), ("SCRIPT_NAME", "/b")])
    assert [v for n, v in twice if n == b"X"] == [b"1", b"2"]
    assert [v for n, v in twice if n == b"SCRIPT_NAME"] == [b"/a", b"/b"]


def test_content_length_from_header_when_no_body_length() -> None:
    assert env_of(path="/", headers={"Content-Length": "12"})["CONTENT_LENGTH"] == "12"


def test_authorizer_params_omit_what_the_spec_says() -> None:
    env = env_of(path="/x", role=p.FCGI_AUTHORIZER, body_length=3)
    for name in ("CONTENT_LENGTH", "PATH_INFO", "SCRIPT_NAME"):
        assert name not in env


def test_non_latin1_text_param_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="latin-1"):
        build_params("/", headers={"X-Euro": "€"})


# --- requests against the responder ----------------------------------------------------------


def test_round_trip_status_headers_body(responder: Callable[..., Responder]) -> None:
    def handler(seen: Seen) -> Reply:
        head = cgi("404 Not Found", [("Content-Type", "text/html"), ("X-A", "1"), ("x-a", "2")], b"<p>nope</p>")
        return Reply(head, stderr=b"a warning\n", app_status=3)

    server = responder(handler)
    response = request(server.address, "/missing", timeout=DEADLINE)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (404, "Not Found")
    assert response.headers == [("Content-Type", "text/html"), ("X-A", "1"), ("x-a", "2")]
    assert response.header("content-type") == "text/html"
    assert response.header("X-A") == "1" and response.header_list("X-A") == ["1", "2"]
    assert response.header("Status") is None and response.header("Missing") is None
    assert response.body == b"<p>nope</p>"
    assert response.stderr == b"a warning\n"
    assert (response.app_status, response.protocol_status) == (3, p.FCGI_REQUEST_COMPLETE)
    assert response.stdout.startswith(b"Status: 404 Not Found\r\n") and response.stdout_closed
    assert response.complete
    [seen] = server.seen
    assert (seen.request_id, seen.role, seen.keep_conn, seen.stdin_ended) == (1, p.FCGI_RESPONDER, False, True)
    assert seen.env["PATH_INFO"] == "/missing"


def test_request_sends_params_and_body(responder: Callable[..., Responder]) -> None:
    server = responder(echo_env)
    with Client(server.address, timeout=DEADLINE) as client:
        response = client.request("/app/x?y=1", method="PUT", script_name="/app", body=b"payload",
                                  headers={"Content-Type": "application/json", "X-Token": "t"})
    assert response.status == 200
    [seen] = server.seen
    assert seen.stdin == b"payload"
    env = seen.env
    assert (env["REQUEST_METHOD"], env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == \
        ("PUT", "/app", "/x", "y=1")
    assert (env["CONTENT_LENGTH"], env["CONTENT_TYPE"], env["HTTP_X_TOKEN"]) == ("7", "application/json", "t")
    assert env["REMOTE_PORT"] == "0"  # unix socket: no port
    assert b"PATH_INFO=/x" in response.body


def test_small_request_is_sent_in_one_write(responder: Callable[..., Responder]) -> None:
    # The STDIN records must arrive in the same segment as BEGIN_REQUEST: check by having
    # the server see everything in its first recv (possible only if it was one sendall).
    server = responder(ok())
    with Client(server.address, timeout=DEADLINE) as client:
        sent: List[bytes] = []
        original = client._send

        def spy(data: bytes | memoryview) -> None:
            sent.append(bytes(data))
            original(data)

        client._send = spy  # type: ignore[method-assign]
        assert client.request("/", body=b"x" * 1000).status == 200
    assert len(sent) == 1
    records = [r.type for r in _records(sent[0])]
    assert records == [p.FCGI_BEGIN_REQUEST, p.FCGI_PARAMS, p.FCGI_PARAMS, p.FCGI_STDIN, p.FCGI_STDIN]


def _records(data: bytes) -> List[p.Record]:
    reader = p.RecordReader()
    reader.feed(data)
    out = []
    while (record := reader.next_record()) is not None:
        out.append(record)
    return out


def test_keep_conn_reuses_one_connection_for_three_requests(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi(body=f"n={len(server.seen)}".encode())))
    with Client(server.address, timeout=DEADLINE, keep_conn=True) as client:
        bodies = [client.request(f"/r{i}", body=b"b" * i).body for i in range(3)]
        assert client.connections == 1 and client.is_connected
    assert bodies == [b"n=1", b"n=2", b"n=3"]
    assert [(s.connection, s.keep_conn) for s in server.seen] == [(1, True)] * 3
    assert [s.stdin for s in server.seen] == [b"", b"b", b"bb"]
    assert server.connections == 1
    # Closing the client ends the kept connection.
    wait_for(lambda: server.closed_by_peer, DEADLINE, "the responder to see the client close")
    assert server.closed_by_peer == [1]


def test_without_keep_conn_every_request_has_its_own_connection(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    with Client(server.address, timeout=DEADLINE) as client:
        for _ in range(3):
            assert client.request("/").status == 200
            assert not client.is_connected
        assert client.connections == 3
    assert [(s.connection, s.keep_conn) for s in server.seen] == [(1, False), (2, False), (3, False)]


def test_keep_conn_reconnects_when_the_application_closed_in_between(responder: Callable[..., Responder]) -> None:
    server = responder(ok(), honour_keep_conn=False)
    with Client(server.address, timeout=DEADLINE, keep_conn=True) as client:
        assert client.request("/").status == 200
        wait_for(lambda: server.closed >= 1, DEADLINE, "the responder to close the connection")
        assert server.closed == 1
        assert client.request("/").status == 200
        assert client.connections == 2
    assert [s.connection for s in server.seen] == [1, 2]


def test_streamed_body_reaches_the_app_before_it_is_complete(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi(body=str(len(seen.stdin)).encode())))
    big = os.urandom(200_000)
    arrived_early: List[bool] = []

    def body() -> Iterator[bytes]:
        yield b"first chunk"
        # the app has the first chunk while we still hold the rest of the body
        arrived_early.append(server.first_stdin.wait(DEADLINE))
        yield b""  # empty chunks are skipped, never sent as a premature end of stream
        yield big

    response = request(server.address, "/upload", method="POST", body=body(), timeout=DEADLINE)
    assert arrived_early == [True]
    assert response.body == str(len(big) + 11).encode()
    [seen] = server.seen
    assert seen.stdin == b"first chunk" + big
    assert max(len(r) for r in seen.stdin_records) <= 65535
    assert "CONTENT_LENGTH" not in seen.env  # unknown length, like a streamed chunked body


def test_large_bytes_body_is_split_into_records(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    data = os.urandom(1_000_003)
    assert request(server.address, "/", method="POST", body=data, timeout=DEADLINE).status == 200
    [seen] = server.seen
    assert seen.stdin == data and seen.env["CONTENT_LENGTH"] == str(len(data))
    assert [len(r) for r in seen.stdin_records[:-1]] == [65535] * (len(seen.stdin_records) - 1)


@pytest.mark.parametrize("content_length", [None, 5])
def test_content_length_can_be_forced_or_omitted(responder: Callable[..., Responder],
                                                 content_length: Optional[int]) -> None:
    server = responder(ok())
    request(server.address, "/", body=b"abc", content_length=content_length, timeout=DEADLINE)
    assert server.seen[0].env.get("CONTENT_LENGTH") == (None if content_length is None else "5")


def test_app_answering_before_reading_the_body_does_not_deadlock(responder: Callable[..., Responder]) -> None:
    # The responder answers right after PARAMS and closes without reading STDIN, while the
    # client still has megabytes to send: the client must stop sending and read the answer.
    server = responder(lambda seen: Reply(cgi("413 Payload Too Large", body=b"too big")), respond_after="params")
    response = request(server.address, "/", method="POST", body=b"x" * 8_000_000, timeout=DEADLINE)
    assert (response.status, response.body) == (413, b"too big")


def test_big_response_while_sending_a_big_body_does_not_deadlock(responder: Callable[..., Responder]) -> None:
    # The responder writes 4 MB before reading any STDIN; the client is writing 4 MB of body.
    # Both sides' socket buffers fill up unless the client reads while it sends.
    big = os.urandom(4_000_000)
    server = responder(lambda seen: Reply(cgi(body=big)), respond_after="params")
    response = request(server.address, "/", method="POST", body=b"y" * 4_000_000, timeout=DEADLINE)
    assert response.status == 200 and response.body == big


def test_get_values(responder: Callable[..., Responder]) -> None:
    server = responder(ok(), max_conns=5, max_reqs=9)
    with Client(server.address, timeout=DEADLINE) as client:
        assert client.get_values() == {"FCGI_MAX_CONNS": "5", "FCGI_MAX_REQS": "9", "FCGI_MPXS_CONNS": "0"}
        assert client.get_values(["FCGI_MPXS_CONNS", "NOT_A_VALUE"]) == {"FCGI_MPXS_CONNS": "0"}


def test_get_values_then_request_on_a_kept_connection(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    with Client(server.address, timeout=DEADLINE, keep_conn=True) as client:
        assert client.get_values(["FCGI_MAX_REQS"]) == {"FCGI_MAX_REQS": "9"}
        assert client.request("/").status == 200
        assert client.connections == 1


def test_server_closing_mid_response_raises_with_the_partial_response(
        responder: Callable[..., Responder]) -> None:
    full = cgi(body=b"0123456789" * 10)
    server = responder(lambda seen: Reply(full, cut_after=len(full) - 30))
    with pytest.raises(FastCGIError, match="closed before END_REQUEST") as info:
        request(server.address, "/", timeout=DEADLINE)
    partial = info.value.partial
    assert partial is not None and not partial.complete
    assert partial.stdout == full[:-30] and not partial.stdout_closed
    assert partial.status == 200 and partial.body == full[len(full) - 100:-30]
    assert (partial.app_status, partial.protocol_status) == (-1, -1)


def test_server_closing_after_stdout_but_before_end_request_is_still_an_error(
        responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi(body=b"all of it"), no_end_request=True))
    with pytest.raises(FastCGIError, match="closed before END_REQUEST") as info:
        request(server.address, "/", timeout=DEADLINE)
    assert info.value.partial is not None
    assert info.value.partial.stdout_closed and info.value.partial.body == b"all of it"


def test_server_closing_without_any_answer(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(raw=b""))
    with pytest.raises(FastCGIError, match="closed before END_REQUEST") as info:
        request(server.address, "/", timeout=DEADLINE)
    assert info.value.partial is not None and info.value.partial.stdout == b""


def test_garbage_from_the_server_is_a_protocol_error(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(raw=b"HTTP/1.1 200 OK\r\n\r\n"))
    with pytest.raises(FastCGIError, match="protocol error"):
        request(server.address, "/", timeout=DEADLINE)


def test_timeout_raises_timed_out(responder: Callable[..., Responder]) -> None:
    release = threading.Event()
    answered = threading.Event()

    def slow(seen: Seen) -> Reply:
        release.wait(DEADLINE)
        answered.set()
        return Reply(cgi())

    server = responder(slow)
    try:
        with pytest.raises(FastCGIError, match="timed out"):
            request(server.address, "/", timeout=0.3)
        # The client gave up on its own timeout, while the responder still held the answer back.
        assert not answered.is_set()
    finally:
        release.set()


def test_connection_refused_is_a_fastcgi_error() -> None:
    with pytest.raises(FastCGIError, match="cannot connect"):
        request("unix:/nonexistent-dir-for-wsgi-fcgi-tests/app.sock", "/", timeout=DEADLINE)


def test_invalid_address_is_a_fastcgi_error() -> None:
    with pytest.raises(FastCGIError, match="invalid address"):
        Client("no-port-here")
    with pytest.raises(FastCGIError, match="invalid address"):
        Client("fd://3")


def test_tcp_address() -> None:
    # A TCP listener served by the same code path: proves host:port parsing and REMOTE_PORT.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got: List[Dict[str, str]] = []

    def serve() -> None:
        listener.settimeout(DEADLINE)
        sock, _ = listener.accept()
        sock.settimeout(DEADLINE)
        with sock:
            conn = p.ServerConnection()
            while True:
                event = conn.next_event()
                if event is p.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, p.Params):
                    got.append(dict(event.pairs))
                elif isinstance(event, (p.StdinEnd, p.ConnectionClosed)):
                    break
            sock.sendall(b"".join(p.encode_stream(p.FCGI_STDOUT, 1, cgi(body=b"tcp")))
                         + p.encode_record(p.FCGI_STDOUT, 1) + conn.end_request(1))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        response = request(f"127.0.0.1:{port}", "/", timeout=DEADLINE)
    finally:
        thread.join(DEADLINE)
        listener.close()
    assert not thread.is_alive()
    assert response.body == b"tcp"
    assert got and got[0]["REMOTE_PORT"].isdigit() and got[0]["REMOTE_PORT"] != "0"


def test_filter_role_sends_the_data_stream(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi(body=seen.data.upper())))
    response = request(server.address, "/f", role=p.FCGI_FILTER, data=b"file contents", body=b"in",
                       timeout=DEADLINE)
    assert response.body == b"FILE CONTENTS"
    [seen] = server.seen
    assert (seen.role, seen.stdin, seen.data) == (p.FCGI_FILTER, b"in", b"file contents")
    assert seen.env["FCGI_DATA_LENGTH"] == "13"


def test_filter_role_with_large_data(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi(body=str(len(seen.data)).encode())))
    data = os.urandom(150_000)
    response = request(server.address, "/f", role=p.FCGI_FILTER, data=data, timeout=DEADLINE)
    assert response.body == b"150000" and server.seen[0].data == data


def test_unknown_role_rejection_is_a_response_with_status_0(responder: Callable[..., Responder]) -> None:
    server = responder(ok(), roles=(p.FCGI_RESPONDER,))
    response = request(server.address, "/", role=p.FCGI_AUTHORIZER, timeout=DEADLINE)
    assert response.protocol_status == p.FCGI_UNKNOWN_ROLE
    assert response.status == 0 and "UNKNOWN_ROLE" in response.reason
    assert server.seen == []


def test_request_id_is_configurable(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    assert request(server.address, "/", request_id=0xBEEF, timeout=DEADLINE).status == 200
    assert server.seen[0].request_id == 0xBEEF
    with pytest.raises(ValueError):
        request(server.address, "/", request_id=0, timeout=DEADLINE)


def test_raw_access_for_malformed_input(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    with Client(server.address, timeout=DEADLINE) as client:
        client.send_raw(p.encode_record(42, 0))
        assert client.next_event() == p.UnknownType(42)
        client.send_raw(p.encode_record(p.FCGI_GET_VALUES, 0, p.encode_pairs([(b"FCGI_MPXS_CONNS", b"")])))
        assert client.next_event() == p.GetValuesResult({"FCGI_MPXS_CONNS": "0"})
        client.send_raw(p.encode_record(p.FCGI_STDOUT, 1, b"not for applications"))
        assert client.read_raw() == b""  # the application drops the connection: EOF
    assert server.connections == 1
    assert len(server.protocol_errors) == 1


def test_read_raw_times_out_with_what_it_read(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    with Client(server.address, timeout=DEADLINE) as client:
        client.send_raw(p.encode_record(p.FCGI_GET_VALUES, 0))
        with pytest.raises(FastCGIError, match="timed out") as info:
            client.read_raw(timeout=0.3)
        assert info.value.raw == p.encode_record(p.FCGI_GET_VALUES_RESULT, 0)


def test_a_failing_body_iterable_does_not_leave_a_half_sent_request(responder: Callable[..., Responder]) -> None:
    server = responder(ok())

    def body() -> Iterator[bytes]:
        yield b"part"
        raise RuntimeError("upload source failed")

    with Client(server.address, timeout=DEADLINE, keep_conn=True) as client:
        with pytest.raises(RuntimeError):
            client.request("/", body=body())
        assert not client.is_connected
        assert client.request("/").status == 200  # on a new connection
        assert client.connections == 2


def test_str_body_is_rejected(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    with pytest.raises(TypeError):
        request(server.address, "/", body="text", timeout=DEADLINE)  # type: ignore[arg-type]


# --- CLI --------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "wsgi_fcgi.client", *args], input=stdin,
                          capture_output=True, timeout=60)


def test_cli_prints_status_line_headers_and_body(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")],
                                              b"pong")))
    result = run_cli(server.address, "/ping", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-App: yes\r\n\r\npong"
    assert result.stderr == b""
    assert server.seen[0].env["PATH_INFO"] == "/ping"


def test_cli_body_only(responder: Callable[..., Responder]) -> None:
    server = responder(ok(b"just the body"))
    result = run_cli(server.address, "/", "-b")
    assert (result.returncode, result.stdout) == (0, b"just the body")


def test_cli_4xx_exits_0(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi("404 Not Found", body=b"no")))
    result = run_cli(server.address, "/nope")
    assert result.returncode == 0
    assert result.stdout.startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_cli_5xx_exits_1_and_shows_the_app_stderr(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi("500 Internal Server Error", body=b"boom"), stderr=b"Traceback...\n"))
    result = run_cli(server.address, "/")
    assert result.returncode == 1
    assert result.stdout.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and result.stdout.endswith(b"boom")
    assert b"Traceback..." in result.stderr


def test_cli_connection_refused_exits_2_with_one_line() -> None:
    result = run_cli("unix:/nonexistent-dir-for-wsgi-fcgi-tests/app.sock", "/ping")
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0] and "Traceback" not in result.stderr.decode()


def test_cli_bad_address_exits_2() -> None:
    result = run_cli("not-an-address", "/")
    assert result.returncode == 2 and b"Traceback" not in result.stderr


def test_cli_protocol_error_exits_2(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(raw=b"\x02" * 16))
    result = run_cli(server.address, "/")
    assert result.returncode == 2
    assert b"protocol error" in result.stderr and b"Traceback" not in result.stderr


def test_cli_cut_response_exits_2(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(cgi(body=b"x" * 100), cut_after=20))
    result = run_cli(server.address, "/")
    assert result.returncode == 2 and b"END_REQUEST" in result.stderr


def test_cli_sends_method_headers_body_and_params(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    result = run_cli(server.address, "/app/submit?x=1", "-H", "X-Token: abc", "-H", "Content-Type: text/plain",
                     "-d", "a=1&b=2", "--script-name", "/app", "-p", "REMOTE_USER=alice")
    assert result.returncode == 0, result.stderr
    [seen] = server.seen
    env = seen.env
    assert (env["REQUEST_METHOD"], env["SCRIPT_NAME"], env["PATH_INFO"]) == ("POST", "/app", "/submit")
    assert (env["HTTP_X_TOKEN"], env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("abc", "text/plain", "7")
    assert env["REMOTE_USER"] == "alice"
    assert seen.stdin == b"a=1&b=2"


def test_cli_data_from_file_and_stdin(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    with tempfile.NamedTemporaryFile(dir=server.dir, delete=False) as fh:
        fh.write(b"\x00\x01file body")
    assert run_cli(server.address, "/", "-X", "PUT", "-d", f"@{fh.name}").returncode == 0
    assert run_cli(server.address, "/", "-d", "@-", stdin=b"from stdin").returncode == 0
    assert [(s.env["REQUEST_METHOD"], s.stdin) for s in server.seen] == [("PUT", b"\x00\x01file body"),
                                                                          ("POST", b"from stdin")]
    assert server.seen[1].env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"


def test_cli_missing_data_file_exits_2(responder: Callable[..., Responder]) -> None:
    server = responder(ok())
    result = run_cli(server.address, "/", "-d", "@/nonexistent/file")
    assert result.returncode == 2 and b"Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_get_values(responder: Callable[..., Responder]) -> None:
    server = responder(ok(), max_conns=4, max_reqs=4)
    result = run_cli(server.address, "--get-values")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["FCGI_MAX_CONNS=4", "FCGI_MAX_REQS=4", "FCGI_MPXS_CONNS=0"]


def test_cli_no_valid_cgi_response_exits_1(responder: Callable[..., Responder]) -> None:
    server = responder(lambda seen: Reply(b"no head at all"))
    result = run_cli(server.address, "/")
    assert result.returncode == 1
    assert b"not terminated" in result.stderr and result.stdout == b"no head at all"


def test_main_in_process_returns_the_exit_status(responder: Callable[..., Responder],
                                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    server = responder(ok(b"in process"))
    assert main([server.address, "/", "--body-only"]) == 0
    assert capsysbinary.readouterr().out == b"in process"
