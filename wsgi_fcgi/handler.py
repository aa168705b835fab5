"""One WSGI call: environ in, FastCGI STDOUT records out.

Strategy: the handler sees the connection only through a small ``Channel``
(read the next STDIN/DATA chunk, send buffers, build the END_REQUEST record,
cut the connection), so it can be driven in tests without sockets and knows
nothing of processes or signals.

Output is coalesced: the CGI header block travels with the first body chunk;
a list or tuple response (the common case) goes out with its end records in a
single send. Headers are validated before a byte is sent, so an app that puts
CR, LF or NUL in a header gets a 500, never a split response.

Errors: an app exception before anything was sent becomes a short generic 500
(traceback to the error log and to FCGI_STDERR, which web servers log); after
the headers went out, the connection is cut without END_REQUEST so the web
server knows the response is incomplete.
"""

from __future__ import annotations

import io
import os
import stat
from collections import deque
import logging
import re
import sys
import tempfile
import time
import traceback
from types import TracebackType
from typing import Any, Final, Protocol
from collections.abc import Callable, Iterable, Iterator

from . import protocol as p
from ._compiled import mypyc_attr
from .environ import environ_from_params
from .logs import AccessLog, describe_request, request_line
from .status import cgi_response, find_page

error_log = logging.getLogger("wsgi_fcgi.error")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SPOOL_THRESHOLD: Final = 1024 * 1024  # bodies of unknown length: memory up to here, then a temp file
FILE_BLOCK_SIZE: Final = 65535
FILE_RECORD_SIZE: Final = 65528  # the largest multiple of 8 a record can hold
MERGE_LIMIT: Final = 65536  # a first body chunk up to this size shares the header block's record
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)  # what a body chunk may be

_STATUS_RE: Final = re.compile(r"[0-9]{3}( [\t\x20-\x7e\x80-\xff]*)?")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
_HOP_BY_HOP: Final = frozenset(("connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade"))

ERROR_400: Final = (b"Status: 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Length: 11\r\n\r\nBad Request")
ERROR_413: Final = (b"Status: 413 Request Entity Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Length: 24\r\n\r\nRequest Entity Too Large")
ERROR_500: Final = (b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Length: 21\r\n\r\nInternal Server Error")


@mypyc_attr(native_class=False)  # an OSError: mypyc compiles no subclass of it
class ClientDisconnected(OSError):
    """The web server closed the connection or aborted the request (FCGI_ABORT_REQUEST).

    Raised from ``wsgi.input`` reads; an OSError so apps treat it like any
    other lost client.
    """


@mypyc_attr(native_class=False)
class RequestAborted(ClientDisconnected):
    """The web server sent FCGI_ABORT_REQUEST; the connection itself is still good."""


@mypyc_attr(native_class=False)
class RequestBodyTruncated(ClientDisconnected):
    """STDIN ended before CONTENT_LENGTH bytes arrived (the client went away, but
    the web server is still there: the request is answered 400 and ended)."""


class RequestBodyTooLarge(Exception):
    """The body is over --limit-request-body: answered 413 without calling the app."""


class InvalidResponse(Exception):
    """The app's status or headers cannot be sent as they are."""


# A chunk of the body as a channel hands it out: a memoryview of what was
# received (no copy), or bytes. Compiled (mypyc), the annotation is checked.
Chunk = bytes | memoryview


class Channel(Protocol):
    """What the handler needs from a connection (implemented by the worker)."""

    def read_stdin(self) -> Chunk:
        """The next STDIN chunk; b"" at the end of the stream."""

    def read_data(self) -> Chunk:
        """The next FCGI_DATA chunk (FILTER role); b"" at the end of the stream."""

    def send(self, buffers: list[Any]) -> None:
        """Send all buffers, in order; raise ClientDisconnected if the peer is gone."""

    def end_request(self, app_status: int) -> bytes:
        """The END_REQUEST record for this request."""

    # Optional: a channel on a socket may also offer
    # send_file(fd, offset, count) -> None: exactly ``count`` bytes of the file at
    # ``offset`` straight to the peer (os.sendfile), for wsgi.file_wrapper; and
    # check_peer() -> None, called between the chunks of a streamed response: it
    # raises RequestAborted or ClientDisconnected when the web server has aborted
    # the request or gone, so the app's iterable is closed at that chunk.


# --- wsgi.input ------------------------------------------------------------------

class InputStream:
    """A request body read from a stream of chunks as they arrive.

    The app starts before the body is complete, and nothing is held in memory
    beyond one chunk and what the app asked for. If the stream ends before
    ``expected`` bytes, reading raises RequestBodyTruncated instead of
    returning a silently short body (the spec asks an updating responder to
    notice).

    Chunks (usually memoryviews of received data) are queued as they are, and
    each byte is copied once, into the ``bytes`` that a read returns: a chunk
    that is exactly what a read asks for is returned (or copied) whole, several
    are joined, a partly read one stays as a view of its rest.
    """

    def __init__(self, read_chunk: Callable[[], Chunk], expected: int | None = None) -> None:
        self._read_chunk = read_chunk
        self._chunks: deque[Any] = deque()
        self._buffered = 0
        self._received = 0
        self._expected = expected

    def _fill(self) -> bool:
        """Read one more chunk into the queue; False at the end of the stream (the
        channel says so each time it is asked again)."""
        chunk = self._read_chunk()
        if not chunk:
            if self._expected is not None and self._received < self._expected:
                raise RequestBodyTruncated(
                    f"request body ended after {self._received} of {self._expected} bytes")
            return False
        self._received += len(chunk)
        self._buffered += len(chunk)
        self._chunks.append(chunk)
        return True

    def _take(self, size: int) -> bytes:
        """The next ``size`` buffered bytes (at most what is buffered), as bytes."""
        size = min(size, self._buffered)
        if size <= 0:
            return b""
        chunks = self._chunks
        self._buffered -= size
        first = chunks[0]
        if len(first) == size:
            chunks.popleft()
            return bytes(first)  # the whole chunk: one copy, none if it is bytes already
        parts = []
        while size:
            chunk = chunks[0]
            if len(chunk) <= size:
                parts.append(chunks.popleft())
                size -= len(chunk)
            else:
                view = memoryview(chunk)
                parts.append(view[:size])
                chunks[0] = view[size:]
                size = 0
        return b"".join(parts)

    def _find_newline(self, start: int, limit: int) -> int:
        """The length of the first line among the first ``limit`` buffered bytes
        (up to and including its newline), or -1; the first ``start`` bytes are
        known to hold none. Chunks become bytes to be searched: readline is for
        line-based parsers, not the bulk path."""
        chunks = self._chunks
        seen = 0
        for index, chunk in enumerate(chunks):
            if seen >= limit:
                break
            length = len(chunk)
            if seen + length > start:
                if type(chunk) is not bytes:
                    chunk = chunks[index] = bytes(chunk)
                found = chunk.find(b"\n", max(0, start - seen), limit - seen)
                if found >= 0:
                    return seen + found + 1
            seen += length
        return -1

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(self._buffered)
        while self._buffered < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        start = 0
        while True:
            end = self._find_newline(start, limit)
            if end >= 0:
                return self._take(end)
            if self._buffered >= limit:
                return self._take(limit)
            start = self._buffered
            if not self._fill():
                return self._take(limit)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def spool(read_chunk: Callable[[], Chunk], first: Chunk, limit: int = 0) -> tuple[Any, int]:
    """The whole stream in a file object (memory, then disk past SPOOL_THRESHOLD),
    refused as soon as it grows past ``limit`` bytes (0: no limit)."""
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_THRESHOLD)
    size = 0
    chunk = first
    while chunk:
        body.write(chunk)
        size += len(chunk)
        if limit and size > limit:
            body.close()
            raise RequestBodyTooLarge(f"a body of unknown length grew past the limit of {limit} bytes")
        chunk = read_chunk()
    body.seek(0)
    return body, size


class ErrorStream:
    """wsgi.errors: what the app writes here goes to the error log, line by line."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            error_log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            error_log.error("%s", self._partial)
            self._partial = ""


class FileWrapper:
    """wsgi.file_wrapper: a file sent block by block, never read whole."""

    def __init__(self, filelike: Any, block_size: int = FILE_BLOCK_SIZE) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.block_size
        while True:
            block = read(size)
            if not block:
                return
            yield block


# --- the request ------------------------------------------------------------------

@mypyc_attr(allow_interpreted_subclasses=True)  # wsgi_fcgi.gunicorn subclasses it, uncompiled
class RequestHandler:
    """Calls one WSGI app for each request; one instance per worker, shared by
    its threads (``multithread``): it keeps no per-request state of its own."""

    def __init__(self, app: WSGIApp, *, script_name: str | None = None, multiprocess: bool = True,
                 multithread: bool = False, limit_request_body: int = 0, access_log: AccessLog | None = None,
                 pages: dict[str, Callable[[dict[str, Any]], Any]] | None = None) -> None:
        self.app = app
        self.pages = pages or {}  # paths answered without calling the app: ping, status
        self.script_name = script_name
        self.multiprocess = multiprocess
        self.multithread = multithread
        self.limit_request_body = limit_request_body
        self.access_log = access_log if access_log is not None and access_log.enabled else None
        # wsgi.errors buffers a partial line: one stream per request when requests run at once.
        self.errors: ErrorStream | None = None if multithread else ErrorStream()
        # On a request thread no signal handler runs, so a SystemExit can only come
        # from the app: it fails that request (500), not the thread. Without threads
        # it is the worker's own quick stop (INT/QUIT) and must go through.
        self._app_failures: tuple[type[BaseException], ...] = (Exception, SystemExit) if multithread else (Exception,)

    def handle(self, channel: Channel, request_id: int, role: int, pairs: list[tuple[str, str]],
               on_start: Callable[[str, str], None] | None = None) -> bool:
        """Run one request to completion. False when the connection can no
        longer be used (peer gone, or cut after an app error). ``on_start`` is
        told the request's method and URI before the app runs (the scoreboard)."""
        params, replaced = p.collect_pairs(pairs)
        return self.handle_params(channel, request_id, role, params, replaced, on_start)

    def handle_params(self, channel: Channel, request_id: int, role: int, params: dict[str, str],
                      replaced: list[tuple[str, str]], on_start: Callable[[str, str], None] | None = None) -> bool:
        """``handle`` for PARAMS already collected (``protocol.collect_pairs``),
        as the worker has them; ``params`` becomes the environ."""
        started = time.monotonic() if self.access_log is not None else 0.0
        environ = environ_from_params(params, replaced, script_name=self.script_name, role=role,
                                      multiprocess=self.multiprocess, multithread=self.multithread)
        if on_start is not None:
            method, uri = request_line(environ)
            on_start(method, uri)  # (not *args: compiled, that builds a tuple and a generic call)
        response = Response(channel, request_id, role, environ.get("REQUEST_METHOD") == "HEAD")
        try:
            return self._run(channel, role, environ, response)
        finally:
            if self.access_log is not None:
                self.access_log.log(environ, response.status, response.headers, response.sent, started)

    def _run(self, channel: Channel, role: int, environ: dict[str, Any], response: Response) -> bool:
        if self.pages:
            page = find_page(self.pages, environ)
            if page is not None:
                return response.send_page(*page(environ))
        try:
            self._prepare_input(channel, role, environ)
        except ClientDisconnected as exc:
            return self._client_gone(response, environ, exc)
        except RequestBodyTooLarge as too_large:  # not "exc": compiled, one name has one type
            error_log.warning("refused %s: %s (--limit-request-body)", describe_request(environ), too_large)
            return response.send_simple(ERROR_413)
        environ["wsgi.errors"] = self.errors or ErrorStream()
        environ["wsgi.file_wrapper"] = FileWrapper
        try:
            self._call_app(environ, response)
        except ClientDisconnected as exc:
            return self._client_gone(response, environ, exc)
        return not response.cut

    def _prepare_input(self, channel: Channel, role: int, environ: dict[str, Any]) -> None:
        """Set wsgi.input: the live STDIN stream, or a spooled copy when it must be read first.

        Whatever the app leaves unread needs no draining: once END_REQUEST is
        sent the request id is inactive and the protocol layer skips its records.
        """
        if role in p.ROLES_WITHOUT_STDIN:  # no body, whatever CONTENT_LENGTH says
            environ["wsgi.input"] = io.BytesIO()
            return
        if role == p.FCGI_FILTER:
            body, size = spool(channel.read_stdin, channel.read_stdin())
            environ["wsgi.input"] = body
            environ["wsgi_fcgi.data"] = InputStream(channel.read_data, _int_or_none(environ.get("FCGI_DATA_LENGTH")))
            return
        length = environ.get("CONTENT_LENGTH")
        if length is None:
            # Unknown length (Apache mod_proxy_fcgi streaming a chunked body):
            # spool it so CONTENT_LENGTH can be set -- Django reads nothing
            # without it, and Werkzeug ignores the body while TE: chunked stays.
            first = channel.read_stdin()
            if not first:
                environ["wsgi.input"] = io.BytesIO()
                return
            body, size = spool(channel.read_stdin, first, self.limit_request_body)
            environ["wsgi.input"] = body
            environ["CONTENT_LENGTH"] = str(size)
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            return
        limit = self.limit_request_body
        if limit and int(length) > limit:
            raise RequestBodyTooLarge(f"a body of {length} bytes is over the limit of {limit}")
        environ["wsgi.input"] = InputStream(channel.read_stdin, int(length))

    def _call_app(self, environ: dict[str, Any], response: Response) -> None:
        result: Iterable[bytes] | None = None
        try:
            result = self.app(environ, response.start_response)
            if type(result) in (list, tuple):
                response.write_all(result)
            elif type(result) is FileWrapper and response.send_file(result.filelike):
                pass
            else:
                self._stream(result, response)
            response.finish()
        except ClientDisconnected:
            raise
        except self._app_failures:
            self._app_error(environ, response, sys.exc_info())
        finally:
            # (a list or tuple has no close(); asking costs an AttributeError)
            close = getattr(result, "close", None) if type(result) not in (list, tuple) else None
            if close is not None:
                try:
                    close()
                except self._app_failures:
                    error_log.exception("error in close() of the response of %s", describe_request(environ))

    @staticmethod
    def _stream(result: Iterable[bytes], response: Response) -> None:
        """An iterable response, each chunk sent as it comes (a generator may be a
        long download or server-sent events): between chunks, the channel checks
        whether the web server aborted the request or went away."""
        check_peer = getattr(response.channel, "check_peer", _nothing)
        for chunk in result:
            if chunk:
                response.write(chunk)
                response.flush()
                check_peer()

    def _app_error(self, environ: dict[str, Any], response: Response, exc_info: Any) -> None:
        text = "".join(traceback.format_exception(*exc_info))
        error_log.error("error handling %s\n%s", describe_request(environ), text.rstrip())
        if response.headers_sent:
            response.cut_connection()
            return
        response.send_error_500(text)

    @staticmethod
    def _client_gone(response: Response, environ: dict[str, Any], exc: ClientDisconnected) -> bool:
        error_log.info("client went away during %s: %s", describe_request(environ), exc)
        if isinstance(exc, RequestBodyTruncated):
            # The web server is still there and has ended STDIN: a proper answer
            # and END_REQUEST keep its connection usable (no 502 from nginx).
            return response.send_end_only() if response.headers_sent else response.send_simple(ERROR_400)
        if isinstance(exc, RequestAborted):
            # FCGI_ABORT_REQUEST: the connection stays; answer with END_REQUEST.
            return response.send_end_only()
        return False


class Response:
    """start_response, write() and the STDOUT framing of one request.

    Two framing rules matter to real web servers. The header block travels in
    the same record as the start of the body (mod_authnz_fcgi keeps only the
    body bytes that share a record with the end of the headers). And once the
    body reaches the app's Content-Length, the end of STDOUT and END_REQUEST
    go out in the same send: a client that closes as soon as it has its bytes
    would otherwise make nginx throw away its kept-alive upstream connection,
    since the FastCGI response looked unfinished.
    """

    __slots__ = ("channel", "request_id", "role", "is_head", "status", "headers",
                 "headers_sent", "pending", "cut", "discard_body", "remaining", "ended", "sent")

    def __init__(self, channel: Channel, request_id: int, role: int, is_head: bool) -> None:
        self.channel = channel
        self.request_id = request_id
        self.role = role
        self.is_head = is_head
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.pending: list[Any] = []
        self.cut = False
        self.discard_body = is_head
        self.remaining: int | None = None  # body bytes still due by the app's Content-Length
        self.ended = False  # the end records are queued or sent
        self.sent = 0  # body bytes sent (for the access log)

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # avoid a reference cycle
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        self.status, self.headers = _checked_status(status), _checked_headers(headers)
        return self.write_now

    def write_now(self, data: bytes) -> None:
        """The legacy write() callable: sent at once."""
        self.write(data)
        self.flush()

    def write(self, data: bytes) -> None:
        if type(data) is not bytes and not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"response body chunks must be bytes, not {type(data).__name__}")
        if self.ended:
            if data and not self.discard_body:
                error_log.warning("dropping %d response bytes past the Content-Length the app declared", len(data))
            return
        head = b"" if self.headers_sent else self._header_block()  # may decide to discard the body
        if self.discard_body:
            data = b""
        if not head:
            if data:
                self.pending += p.encode_stream(p.FCGI_STDOUT, self.request_id, data)
        elif len(data) <= MERGE_LIMIT:
            self.pending += p.encode_stream(p.FCGI_STDOUT, self.request_id, head + data)
        else:  # too big to copy for nothing: the head goes in its own record
            self.pending += p.encode_stream(p.FCGI_STDOUT, self.request_id, head)
            self.pending += p.encode_stream(p.FCGI_STDOUT, self.request_id, data)
        self.sent += len(data)
        if self.remaining is not None:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._queue_end()

    def send_file(self, filelike: Any) -> bool:
        """wsgi.file_wrapper with a regular file: the body goes from the page cache
        to the socket (os.sendfile), from the file's current position to its end or
        to the declared Content-Length, in records of FILE_RECORD_SIZE bytes (a
        multiple of 8: no padding between them). False when the channel or the
        file cannot do that; the wrapper is then iterated like any response."""
        send_file = getattr(self.channel, "send_file", None)
        if send_file is None:
            return False
        try:
            fd = filelike.fileno()
            offset = filelike.tell()
            info = os.fstat(fd)
        except (AttributeError, OSError, ValueError):  # no descriptor (BytesIO), closed, ...
            return False
        if not stat.S_ISREG(info.st_mode) or type(fd) is not int:
            return False
        self.write(b"")  # the header block, in pending (it may decide to discard the body)
        count = 0 if self.discard_body else max(0, info.st_size - offset)
        if self.remaining is not None:
            count = min(count, self.remaining)
        check_peer = getattr(self.channel, "check_peer", _nothing)
        while count:
            length = min(count, FILE_RECORD_SIZE)
            header, padding = p.frame(p.FCGI_STDOUT, self.request_id, length)
            self.pending.append(header)
            self.flush()
            send_file(fd, offset, length)
            offset += length
            count -= length
            self.sent += length
            if self.remaining is not None:
                self.remaining -= length
            if padding:
                self.pending.append(padding)
            check_peer()
        if self.remaining is not None and self.remaining <= 0 and not self.ended:
            self._queue_end()
        return True

    def write_all(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if self.pending:
            buffers, self.pending = self.pending, []
            self.channel.send(buffers)

    def finish(self) -> None:
        """Headers if none went out yet, the end of STDOUT and END_REQUEST, in one send."""
        if not self.headers_sent:
            self.write(b"")
        if not self.ended:
            self._queue_end()
        self.flush()

    def _queue_end(self) -> None:
        self.pending.append(p.encode_end_of_stream(p.FCGI_STDOUT, self.request_id))
        self.pending.append(self.channel.end_request(0))
        self.ended = True

    def _header_block(self) -> bytes:
        """The CGI response head; notes the declared Content-Length on the way."""
        if self.status is None:
            raise AssertionError("the app returned or wrote a body before calling start_response()")
        headers = self.headers
        if self.role == p.FCGI_AUTHORIZER and self.status[:3] == "200":
            # Spec 6.3: on 200 only Variable-* headers mean something; the body is ignored.
            headers = [(n, v) for n, v in headers if n[:9].lower() == "variable-"]
            self.discard_body = True
        lines = [f"Status: {self.status}\r\n"]
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n")
            if not self.discard_body and len(name) == 14 and name.lower() == "content-length" and value.isdigit():
                self.remaining = int(value)
        lines.append("\r\n")
        self.headers_sent = True
        return "".join(lines).encode("latin-1")

    def send_error_500(self, traceback_text: str) -> None:
        """The generic 500 (no traceback to the client); the traceback to FCGI_STDERR."""
        stderr = traceback_text.encode("utf-8", "replace")
        buffers = p.encode_stream(p.FCGI_STDERR, self.request_id, stderr)
        buffers.append(p.encode_end_of_stream(p.FCGI_STDERR, self.request_id))
        self.status, self.headers, self.sent = "500 Internal Server Error", [], 21
        body = ERROR_500 if not self.is_head else ERROR_500[:ERROR_500.index(b"\r\n\r\n") + 4]
        buffers += p.encode_stream(p.FCGI_STDOUT, self.request_id, body)
        buffers.append(p.encode_end_of_stream(p.FCGI_STDOUT, self.request_id))
        buffers.append(self.channel.end_request(1))
        self.pending = []
        self.headers_sent = True
        self.channel.send(buffers)

    def send_simple(self, cgi_response: bytes) -> bool:
        """A fixed response of our own, the app not called; False if the peer is gone."""
        self.status = cgi_response[8:cgi_response.index(b"\r\n")].decode("latin-1")
        if self.is_head:
            cgi_response = cgi_response[:cgi_response.index(b"\r\n\r\n") + 4]
        buffers = p.encode_stream(p.FCGI_STDOUT, self.request_id, cgi_response)
        buffers += [p.encode_end_of_stream(p.FCGI_STDOUT, self.request_id), self.channel.end_request(0)]
        try:
            self.channel.send(buffers)
        except ClientDisconnected:
            return False
        return True

    def send_page(self, status: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        """A page of our own (ping, status): the app is not called."""
        self.headers, self.sent = headers, len(body)
        return self.send_simple(cgi_response(status, headers, body))

    def send_end_only(self) -> bool:
        """The end of STDOUT and END_REQUEST, after FCGI_ABORT_REQUEST or a body cut
        short (whatever was pending is dropped); False if that send failed."""
        try:
            if self.ended:  # the app's Content-Length was reached: the end is out, or pending
                self.flush()
                return True
            self.pending = []
            self.channel.send([p.encode_end_of_stream(p.FCGI_STDOUT, self.request_id), self.channel.end_request(0)])
        except ClientDisconnected:
            return False
        return True

    def cut_connection(self) -> None:
        """End the connection without END_REQUEST: the web server sees a cut response."""
        self.pending = []
        self.cut = True


def _nothing() -> None:
    """check_peer for a channel that has none."""


def _checked_status(status: Any) -> str:
    if type(status) is str and status in _GOOD_STATUSES:
        return status
    if not isinstance(status, str) or not _STATUS_RE.fullmatch(status):
        raise InvalidResponse(f"invalid status {status!r}: expected e.g. '200 OK'")
    if type(status) is str and len(_GOOD_STATUSES) < _GOOD_NAMES_MAX:
        _GOOD_STATUSES.add(status)
    return status


def _checked_headers(headers: Any) -> list[tuple[str, str]]:
    if not isinstance(headers, list):
        raise InvalidResponse(f"headers must be a list of (name, value) tuples, not {type(headers).__name__}")
    checked: list[tuple[str, str]] = []
    good_names = _GOOD_NAMES
    for item in headers:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidResponse(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if name not in good_names:
            _check_name(name)
        if not isinstance(value, str) or not _is_good_value(value):
            raise InvalidResponse(f"invalid value for header {name}: {value!r}")
        if good_names.get(name) is False:
            error_log.debug("dropping hop-by-hop header %s from the response", name)
            continue
        checked.append(item)
    return checked


# Header names already checked: True to send, False to drop (hop-by-hop). An
# app sends the same dozen names again and again; the regex runs once each.
_GOOD_NAMES: Final[dict[str, bool]] = {}
_GOOD_NAMES_MAX: Final = 1024
_GOOD_STATUSES: set[str] = set()  # status lines already checked, the same way


def _is_good_value(value: str) -> bool:
    """No control character but tab, nothing beyond latin-1. Printable ASCII,
    nearly every value, is answered without the regex."""
    return (value.isascii() and value.isprintable()) or not _BAD_VALUE_RE.search(value)


def _check_name(name: Any) -> None:
    if type(name) is not str or not _TOKEN_RE.fullmatch(name):
        raise InvalidResponse(f"invalid header name {name!r}")
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES[name] = name.lower() not in _HOP_BY_HOP
    elif name.lower() in _HOP_BY_HOP:  # cache full: decide without remembering
        _GOOD_NAMES.setdefault(name, False)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


__all__ = ["RequestHandler", "InputStream", "FileWrapper", "ClientDisconnected", "RequestAborted",
           "RequestBodyTruncated", "InvalidResponse", "Channel", "WSGIApp"]
