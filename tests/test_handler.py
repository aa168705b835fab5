"""The WSGI layer driven directly: a fake Channel instead of a socket.

Each test checks what a user (or the web server) would see: the CGI response
on STDOUT, what lands on STDERR, whether END_REQUEST was sent, what the app
saw in its environ.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from wsgi_fcgi import protocol as p
from wsgi_fcgi.handler import InputStream, RequestBodyTruncated, RequestHandler

BASE_PARAMS = [
    ("REQUEST_METHOD", "GET"), ("SCRIPT_NAME", ""), ("PATH_INFO", "/"), ("QUERY_STRING", ""),
    ("REQUEST_URI", "/"), ("SERVER_NAME", "localhost"), ("SERVER_PORT", "80"),
    ("SERVER_PROTOCOL", "HTTP/1.1"), ("REMOTE_ADDR", "127.0.0.1"),
]


class FakeChannel:
    """Feeds STDIN chunks to the handler and records what it sends."""

    def __init__(self, stdin: List[bytes], data: Optional[List[bytes]] = None, fail_send: bool = False) -> None:
        self.stdin = list(stdin)
        self.data = list(data or [])
        self.sends: List[bytes] = []
        self.stdin_reads = 0
        self.fail_send = fail_send

    def read_stdin(self) -> bytes:
        self.stdin_reads += 1
        return self.stdin.pop(0) if self.stdin else b""

    def read_data(self) -> bytes:
        return self.data.pop(0) if self.data else b""

    def send(self, buffers: List[Any]) -> None:
        if self.fail_send:
            from wsgi_fcgi.handler import ClientDisconnected
            raise ClientDisconnected("broken pipe")
        self.sends.append(b"".join(bytes(b) for b in buffers))

    def end_request(self, app_status: int) -> bytes:
        return p.encode_end_request(1, app_status)

    # what a web server would parse out of it
    def records(self) -> List[Any]:
        conn = p.ClientConnection()
        conn.receive_data(b"".join(self.sends))
        events = []
        while True:
            event = conn.next_event()
            if event is p.NEED_DATA:
                return events
            events.append(event)

    def stdout(self) -> bytes:
        return b"".join(e.data for e in self.records() if isinstance(e, p.Stdout))

    def stderr(self) -> bytes:
        return b"".join(e.data for e in self.records() if isinstance(e, p.Stderr))

    def ended(self) -> bool:
        return any(isinstance(e, p.EndRequest) for e in self.records())


def run(app: Any, params: Optional[List[Tuple[str, str]]] = None, stdin: Optional[List[bytes]] = None,
        role: int = p.FCGI_RESPONDER, **channel_args: Any) -> Tuple[FakeChannel, bool]:
    channel = FakeChannel(stdin if stdin is not None else [], **channel_args)
    usable = RequestHandler(app).handle(channel, 1, role, params or BASE_PARAMS)
    return channel, usable


def with_params(**overrides: str) -> List[Tuple[str, str]]:
    params = dict(BASE_PARAMS)
    params.update(overrides)
    return list(params.items())


def hello(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, World!"]


# --- responses ---------------------------------------------------------------

def test_list_response_goes_out_in_one_send_with_end_request() -> None:
    channel, usable = run(hello)
    assert usable
    assert len(channel.sends) == 1
    assert channel.stdout() == b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nHello, World!"
    assert channel.ended()


def test_records_are_padded_to_eight_bytes() -> None:
    channel, _ = run(hello)
    assert len(channel.sends[0]) % 8 == 0


def test_generator_chunks_stream_and_headers_travel_with_the_first() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"one"
        yield b""
        yield b"two"

    channel, _ = run(app)
    assert len(channel.sends) == 3  # first chunk + headers, second chunk, end records
    assert channel.sends[0].count(b"Status: 200 OK") == 1 and b"one" in channel.sends[0]
    assert channel.stdout().endswith(b"\r\n\r\nonetwo")


def test_large_body_is_split_into_records_of_at_most_65535_bytes() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [body]

    channel, _ = run(app)
    sizes = [len(e.data) for e in channel.records() if isinstance(e, p.Stdout)]
    assert max(sizes) == 65535
    assert channel.stdout().endswith(body)


def test_write_callable_sends_at_once() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        write = start_response("200 OK", [])
        write(b"early ")
        return [b"late"]

    channel, _ = run(app)
    assert b"early " in channel.sends[0]
    assert channel.stdout().endswith(b"early late")


def test_empty_response_still_has_headers_and_end() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response("204 No Content", [])
        return []

    channel, _ = run(app)
    assert channel.stdout() == b"Status: 204 No Content\r\n\r\n"
    assert channel.ended()


def test_head_sends_headers_but_no_body() -> None:
    channel, _ = run(hello, with_params(REQUEST_METHOD="HEAD"))
    assert channel.stdout() == b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n"


def test_close_is_called_on_normal_end_and_on_error() -> None:
    closed = []

    class Body:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def __iter__(self) -> Iterator[bytes]:
            yield b"x"
            if self.fail:
                raise RuntimeError("boom")

        def close(self) -> None:
            closed.append(self.fail)

    for fail in (False, True):
        def app(environ: Dict[str, Any], start_response: Any, fail: bool = fail) -> Body:
            start_response("200 OK", [])
            return Body(fail)
        run(app)
    assert closed == [False, True]


def test_close_is_called_when_the_client_is_gone() -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    _, usable = run(app, fail_send=True)
    assert closed == [True]
    assert not usable


# --- errors ------------------------------------------------------------------

def test_exception_before_headers_is_a_generic_500_with_traceback_on_stderr(caplog: Any) -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        raise ValueError("secret detail /etc/passwd")

    with caplog.at_level(logging.ERROR, logger="wsgi_fcgi.error"):
        channel, usable = run(app)
    out = channel.stdout()
    assert out.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"secret" not in out and b"Traceback" not in out
    assert b"ValueError: secret detail" in channel.stderr()
    assert "ValueError: secret detail" in caplog.text and "GET /" in caplog.text
    assert channel.ended() and usable


def test_exception_after_headers_cuts_the_connection() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise RuntimeError("boom")

    channel, usable = run(app)
    assert not usable
    assert not channel.ended()  # the web server must see an incomplete response


@pytest.mark.parametrize("status, headers", [
    ("200 OK", [("X-Bad", "a\r\nSet-Cookie: evil=1")]),
    ("200 OK", [("X-Bad", "nul\x00")]),
    ("200 OK", [("Bad Name", "x")]),
    ("200 OK", [("X-Snowman", "\u2603")]),
    ("200 OK\r\nX-Injected: 1", []),
    ("OK", []),
    ("200 OK", [("X-Bytes", b"value")]),
])
def test_invalid_status_or_headers_become_500(status: str, headers: Any) -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response(status, headers)
        return [b"body"]

    channel, _ = run(app)
    out = channel.stdout()
    assert out.startswith(b"Status: 500 ")
    assert b"evil" not in out and b"X-Injected" not in out


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return [b""]

    channel, _ = run(app)
    assert channel.stdout().startswith(b"Status: 500 ")


def test_exc_info_replaces_headers_not_yet_sent() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise KeyError("x")
        except KeyError:
            start_response("503 Service Unavailable", [("X-Second", "1")], sys.exc_info())
        return [b"sorry"]

    channel, _ = run(app)
    assert channel.stdout() == b"Status: 503 Service Unavailable\r\nX-Second: 1\r\n\r\nsorry"


def test_exc_info_after_headers_sent_reraises_and_cuts() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"started"
        try:
            raise KeyError("x")
        except KeyError:
            start_response("500 Oops", [], sys.exc_info())
        yield b"never"

    channel, usable = run(app)
    assert not usable and not channel.ended()
    assert b"never" not in channel.stdout()


def test_str_body_chunk_is_an_app_error() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[Any]:
        start_response("200 OK", [])
        return ["text"]

    channel, _ = run(app)
    assert channel.stdout().startswith(b"Status: 500 ")


def test_hop_by_hop_headers_are_dropped() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response("200 OK", [("Connection", "close"), ("Transfer-Encoding", "chunked"), ("X-Ok", "1")])
        return [b"x"]

    channel, _ = run(app)
    assert channel.stdout() == b"Status: 200 OK\r\nX-Ok: 1\r\n\r\nx"


# --- the environ and wsgi.input -------------------------------------------------

def capture_environ() -> Tuple[Any, Dict[str, Any]]:
    seen: Dict[str, Any] = {}

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b""]
    return app, seen


def test_environ_has_every_pep3333_key_with_the_right_types() -> None:
    app, seen = capture_environ()
    run(app)
    for key in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
                "SERVER_PROTOCOL"):
        assert type(seen[key]) is str, key
    assert seen["wsgi.version"] == (1, 0)
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.multithread"] is False and seen["wsgi.multiprocess"] is True
    assert seen["wsgi.run_once"] is False
    assert seen["wsgi.input_terminated"] is True
    assert hasattr(seen["wsgi.errors"], "write") and callable(seen["wsgi.file_wrapper"])


def test_https_on_gives_https_scheme() -> None:
    app, seen = capture_environ()
    run(app, with_params(HTTPS="on"))
    assert seen["wsgi.url_scheme"] == "https"


def test_httpoxy_header_never_reaches_the_app() -> None:
    import os
    app, seen = capture_environ()
    before = dict(os.environ)
    run(app, with_params(HTTP_PROXY="http://evil:8080"))
    assert "HTTP_PROXY" not in seen
    assert dict(os.environ) == before


def test_body_streams_as_it_arrives() -> None:
    reads_before_app: List[int] = []
    channel = FakeChannel([b"a" * 10, b"b" * 10, b"c" * 10])

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        reads_before_app.append(channel.stdin_reads)
        body = environ["wsgi.input"].read(15)
        start_response("200 OK", [])
        return [body]

    RequestHandler(app).handle(channel, 1, p.FCGI_RESPONDER, with_params(REQUEST_METHOD="POST", CONTENT_LENGTH="30"))
    assert reads_before_app == [0]  # the app ran before any of the body was read
    assert channel.stdout().endswith(b"a" * 10 + b"b" * 5)


def test_input_read_readline_readlines_iteration() -> None:
    chunks = [b"line one\nli", b"ne two\n", b"last"]

    def stream() -> InputStream:
        pending = list(chunks)
        return InputStream(lambda: pending.pop(0) if pending else b"")

    assert stream().read() == b"line one\nline two\nlast"
    s = stream()
    assert s.read(3) == b"lin" and s.read(0) == b"" and s.readline() == b"e one\n"
    assert s.readline(4) == b"line" and s.readline() == b" two\n" and s.readline() == b"last"
    assert s.readline() == b"" and s.read() == b"" and s.read(5) == b""
    assert stream().readlines() == [b"line one\n", b"line two\n", b"last"]
    assert list(stream()) == [b"line one\n", b"line two\n", b"last"]


def test_input_matches_bytesio_for_any_read_sizes() -> None:
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20),
           st.lists(st.one_of(st.integers(-1, 40), st.just("line")), max_size=20))
    def check(body: bytes, cuts: List[int], reads: List[Any]) -> None:
        pieces, pos = [], 0
        for cut in cuts:
            pieces.append(body[pos:pos + cut])
            pos += cut
        pieces.append(body[pos:])
        pieces = [x for x in pieces if x]
        ours = InputStream(lambda: pieces.pop(0) if pieces else b"")
        ref = io.BytesIO(body)
        for op in reads:
            if op == "line":
                assert ours.readline() == ref.readline()
            else:
                assert ours.read(op) == ref.read(op)
        assert ours.read() == ref.read()

    check()


def test_short_body_raises_instead_of_returning_silently_short() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        try:
            environ["wsgi.input"].read(100)
        except RequestBodyTruncated as exc:
            start_response("400 Bad Request", [])
            return [str(exc).encode()]
        start_response("200 OK", [])
        return [b"complete?"]

    channel, _ = run(app, with_params(REQUEST_METHOD="POST", CONTENT_LENGTH="100"), [b"x" * 40])
    assert b"ended after 40 of 100 bytes" in channel.stdout()


def test_body_of_unknown_length_is_spooled_and_content_length_set() -> None:
    app, seen = capture_environ()
    params = with_params(REQUEST_METHOD="POST", HTTP_TRANSFER_ENCODING="chunked")
    run(app, params, [b"x" * 7000, b"y" * 11000])
    assert seen["CONTENT_LENGTH"] == "18000"
    assert "HTTP_TRANSFER_ENCODING" not in seen
    assert seen["body"] == b"x" * 7000 + b"y" * 11000


def test_wsgi_errors_goes_to_the_error_log(caplog: Any) -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        environ["wsgi.errors"].write("something odd\nsecond ")
        environ["wsgi.errors"].write("line\n")
        start_response("200 OK", [])
        return [b""]

    with caplog.at_level(logging.INFO, logger="wsgi_fcgi.error"):
        run(app)
    assert "something odd" in caplog.messages and "second line" in caplog.messages


def test_file_wrapper_sends_the_file_in_blocks(tmp_path: Any) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    reads: List[int] = []

    class Tracked(io.FileIO):
        def read(self, size: int = -1) -> bytes:  # type: ignore[override]
            reads.append(size)
            return super().read(size)

    def app(environ: Dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](Tracked(str(path)), 65536)

    channel, _ = run(app)
    assert channel.stdout().endswith(path.read_bytes())
    assert reads and all(size == 65536 for size in reads)


# --- roles ----------------------------------------------------------------------

def test_authorizer_200_passes_only_variable_headers() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        assert environ["FCGI_ROLE"] == "AUTHORIZER"
        start_response("200 OK", [("Variable-USER_ID", "42"), ("Content-Type", "text/plain")])
        return [b"ignored body"]

    channel, _ = run(app, [p for p in BASE_PARAMS if p[0] not in ("SCRIPT_NAME", "PATH_INFO")],
                     role=p.FCGI_AUTHORIZER)
    assert channel.stdout() == b"Status: 200 OK\r\nVariable-USER_ID: 42\r\n\r\n"


def test_authorizer_denial_is_passed_through() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"no entry"]

    channel, _ = run(app, role=p.FCGI_AUTHORIZER)
    assert channel.stdout() == b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno entry"


def test_filter_role_offers_the_data_stream() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        data = environ["wsgi_fcgi.data"].read()
        start_response("200 OK", [])
        return [environ["wsgi.input"].read() + b"|" + data.upper()]

    params = with_params(FCGI_DATA_LENGTH="11")
    channel = FakeChannel([b"stdin"], data=[b"hello", b" world"])
    RequestHandler(app).handle(channel, 1, p.FCGI_FILTER, params)
    assert channel.stdout().endswith(b"stdin|HELLO WORLD")


def test_end_records_go_with_the_chunk_that_completes_content_length(caplog: Any) -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "6")])
        yield b"abc"
        yield b"def"
        yield b"extra"  # past Content-Length: an app bug, never sent

    with caplog.at_level(logging.WARNING, logger="wsgi_fcgi.error"):
        channel, usable = run(app)
    assert usable
    assert len(channel.sends) == 2
    last = FakeChannel([])
    last.sends = [channel.sends[1]]
    assert [type(e) for e in last.records()] == [p.Stdout, p.Stdout, p.EndRequest]  # data, end of STDOUT
    assert channel.stdout().endswith(b"\r\n\r\nabcdef")
    assert "past the Content-Length" in caplog.text


def test_header_block_shares_a_record_with_the_start_of_the_body() -> None:
    def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        yield b"no entry"

    channel, _ = run(app)
    first = [e for e in channel.records() if isinstance(e, p.Stdout)][0]
    assert first.data == b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno entry"


def test_authorizer_does_not_wait_for_stdin() -> None:
    channel = FakeChannel([])

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        assert environ["wsgi.input"].read() == b""
        start_response("200 OK", [])
        return [b""]

    RequestHandler(app).handle(channel, 1, p.FCGI_AUTHORIZER, BASE_PARAMS)
    assert channel.stdin_reads == 0 and channel.ended()
