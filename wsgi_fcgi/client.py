# A FastCGI client: the web-server side of the protocol, as a library and a CLI.
#
# Strategy: the wire work is done by ``protocol.ClientConnection`` and the
# encoders; this module only builds PARAMS the way nginx does, moves bytes and
# turns the STDOUT stream into a CGI response. The socket is non-blocking and
# driven through a selector, so while the request body is still being sent any
# response bytes are read too: an application that answers before reading its
# whole body (or a server that closes early) can never deadlock us, and every
# wait is bounded by ``timeout``. Transport and protocol failures raise
# ``FastCGIError`` (with whatever was received on ``.partial``); a bad or
# missing CGI head from the application is reported in ``Response.status == 0``.

from __future__ import annotations

import argparse
import http
import os
import selectors
import socket
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from wsgi_fcgi import __version__
from wsgi_fcgi import protocol as p
from wsgi_fcgi.protocol import FCGI_AUTHORIZER, FCGI_FILTER, FCGI_RESPONDER
from wsgi_fcgi.sockets import Address, AddressError, connect, parse_address

__all__ = [
    "FCGI_AUTHORIZER",
    "FCGI_FILTER",
    "FCGI_RESPONDER",
    "Client",
    "FastCGIError",
    "Response",
    "main",
    "request",
]

SERVER_SOFTWARE = f"wsgi_fcgi.client/{__version__}"
DEFAULT_VALUES = (p.FCGI_MAX_CONNS, p.FCGI_MAX_REQS, p.FCGI_MPXS_CONNS)
PROTOCOL_STATUS_NAMES = {
    p.FCGI_REQUEST_COMPLETE: "REQUEST_COMPLETE",
    p.FCGI_CANT_MPX_CONN: "CANT_MPX_CONN",
    p.FCGI_OVERLOADED: "OVERLOADED",
    p.FCGI_UNKNOWN_ROLE: "UNKNOWN_ROLE",
}
_RECV_SIZE = 256 * 1024

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]]
ParamValue = str | bytes | None
ParamsArg = Mapping[str, ParamValue] | Mapping[bytes, ParamValue] | Iterable[tuple[str | bytes, ParamValue]]
BodyArg = bytes | bytearray | memoryview | Iterable[bytes]


@dataclass
class Response:
    """What the application sent back for one request.

    ``status`` and ``reason`` come from the CGI ``Status:`` header (200 OK if
    absent, 302 Found for a bare ``Location:``); ``headers`` are the other
    header lines in order. ``status`` is 0 when STDOUT holds no valid CGI head
    (empty, unterminated or malformed head, or the request was rejected with a
    protocolStatus other than REQUEST_COMPLETE); ``reason`` then says why and
    ``body`` is the raw STDOUT. ``stdout`` is always the raw STDOUT stream.
    ``app_status``/``protocol_status`` come from END_REQUEST; both are -1 on a
    partial response (the connection ended before END_REQUEST).
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = p.FCGI_REQUEST_COMPLETE
    stdout: bytes = b""
    stdout_closed: bool = False  # the empty STDOUT record that ends the stream arrived

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        """Every header called ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def complete(self) -> bool:
        """END_REQUEST arrived."""
        return self.protocol_status >= 0


class FastCGIError(Exception):
    """Connection failure, timeout, protocol error, or a connection closed before END_REQUEST.

    ``partial`` holds what was received of the response so far (None if the
    request never got that far); ``raw`` the bytes read by ``read_raw``.
    """

    def __init__(self, message: str, *, partial: Response | None = None, raw: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial
        self.raw = raw


class _PeerGone(Exception):
    """The peer stopped reading (EPIPE/ECONNRESET) or closed while we were sending."""


def _status_phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def parse_cgi_response(stdout: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Split a CGI response (RFC 3875 section 6) into status, reason, headers and body.

    The head ends at the first empty line (``\\r\\n`` or ``\\n``). Returns status 0
    with the reason in ``reason`` and the raw bytes as body if there is no valid head.
    """
    if not stdout:
        return 0, "empty STDOUT: no CGI response", [], b""
    pos = 0
    lines: list[bytes] = []
    while True:
        nl = stdout.find(b"\n", pos)
        if nl < 0:
            return 0, "CGI response head not terminated by an empty line", [], stdout
        line = stdout[pos:nl]
        pos = nl + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        lines.append(line)
    body = stdout[pos:]
    headers: list[tuple[str, str]] = []
    status: int | None = None
    reason = ""
    for raw in lines:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            return 0, f"malformed CGI header line {raw[:80]!r}", [], stdout
        value = value.strip()
        if name.lower() == "status":
            code, _, phrase = value.partition(" ")
            if len(code) != 3 or not code.isdigit():
                return 0, f"malformed CGI Status header {value[:80]!r}", [], stdout
            status, reason = int(code), phrase.strip()
            continue
        headers.append((name, value))
    if status is None:
        location = next((v for k, v in headers if k.lower() == "location"), None)
        status = 302 if location is not None else 200
    if not reason:
        reason = _status_phrase(status)
    return status, reason, headers, body


def _to_wire(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not latin-1: pass bytes to send other encodings") from None


class Client:
    """A FastCGI connection to one address (``unix:PATH``, ``HOST:PORT``, ``[V6]:PORT``).

    The connection is opened on first use. With ``keep_conn`` the requests set
    FCGI_KEEP_CONN and reuse one connection (reopened, and counted in
    ``connections``, only if the application closed it in between); without
    it each request gets a connection of its own, closed after END_REQUEST.
    """

    def __init__(self, address: str, *, timeout: float = 30.0, keep_conn: bool = False) -> None:
        try:
            self.address: Address = parse_address(address)
        except AddressError as exc:
            raise FastCGIError(f"invalid address: {exc}") from None
        if self.address.is_fd:
            raise FastCGIError(f"invalid address: cannot connect to {address}")
        self.timeout = timeout
        self.keep_conn = keep_conn
        self.connections = 0  # transport connections opened so far
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._conn = p.ClientConnection()
        self._eof = False

    # --- connection management ------------------------------------------------

    def __enter__(self) -> Client:  # noqa: PYI034 (typing.Self is 3.11+)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the transport connection (if open)."""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def is_connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the transport connection now (request() does it when needed)."""
        if self._sock is not None:
            return
        try:
            sock = connect(self.address, self.timeout)
        except socket.timeout:
            raise FastCGIError(f"timed out connecting to {self.address} after {self.timeout:g}s") from None
        except OSError as exc:
            raise FastCGIError(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self._sock = sock
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._conn = p.ClientConnection()
        self._eof = False
        self.connections += 1

    def _ensure_fresh_connection(self) -> None:
        """Reuse a kept connection unless the application closed it meanwhile."""
        if self._sock is not None and self._stale():
            self.close()
        self.connect()

    def _stale(self) -> bool:
        assert self._sock is not None
        if self._eof:
            return True
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            return True
        self._conn.receive_data(data)  # unsolicited bytes: kept, the next read sees them
        return False

    # --- low-level I/O ------------------------------------------------------------

    def _wait(self, write: bool, what: str) -> tuple[bool, bool]:
        assert self._sock is not None and self._selector is not None
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        if self._eof:
            mask &= ~selectors.EVENT_READ
        if not mask:
            return False, False
        self._selector.modify(self._sock, mask)
        ready = self._selector.select(self.timeout)
        if not ready:
            raise FastCGIError(f"timed out after {self.timeout:g}s {what}")
        events = ready[0][1]
        return bool(events & selectors.EVENT_READ), bool(events & selectors.EVENT_WRITE)

    def _receive(self) -> bool:
        """One recv() into the protocol parser; False (and EOF fed) once the peer closed."""
        assert self._sock is not None
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return True  # spurious wake-up
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if data:
            self._conn.receive_data(data)
            return True
        self._eof = True
        self._conn.receive_data(b"")
        return False

    def _send(self, data: bytes | memoryview) -> None:
        """Send everything, reading whatever arrives meanwhile. Raises _PeerGone."""
        view = memoryview(data)
        assert self._sock is not None
        while view:
            if self._eof:
                raise _PeerGone()
            readable, writable = self._wait(True, "sending the request")
            if readable and not self._receive():
                raise _PeerGone()
            if writable:
                try:
                    sent = self._sock.send(view)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    raise _PeerGone() from None
                view = view[sent:]

    def _next_event(self, what: str) -> p.ClientEvent | p._NeedData:
        """The next protocol event, waiting for bytes as needed."""
        while True:
            event = self._conn.next_event()
            if event is not p.NEED_DATA:
                return event
            self._wait(False, what)
            self._receive()

    # --- raw access, for tests of malformed input -------------------------------

    def send_raw(self, data: bytes) -> None:
        """Send ``data`` as it is (connecting first if needed)."""
        self.connect()
        try:
            self._send(data)
        except _PeerGone:
            raise FastCGIError("connection closed by the application while sending") from None

    def read_raw(self, max_bytes: int | None = None, *, timeout: float | None = None) -> bytes:
        """Read until EOF (or ``max_bytes``), bypassing the parser.

        Raises FastCGIError("timed out ...") with the bytes read so far on ``.raw``
        if nothing arrives for ``timeout`` (default: the client's) seconds.
        """
        self.connect()
        assert self._sock is not None and self._selector is not None
        wait = self.timeout if timeout is None else timeout
        out = bytearray()
        while not self._eof and (max_bytes is None or len(out) < max_bytes):
            self._selector.modify(self._sock, selectors.EVENT_READ)
            if not self._selector.select(wait):
                raise FastCGIError(f"timed out after {wait:g}s reading raw bytes", raw=bytes(out))
            try:
                limit = _RECV_SIZE if max_bytes is None else min(_RECV_SIZE, max_bytes - len(out))
                data = self._sock.recv(limit)
            except (BlockingIOError, InterruptedError):
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                data = b""
            if not data:
                self._eof = True
                break
            out += data
        return bytes(out)

    def next_event(self) -> p.ClientEvent:
        """The next parsed record from the application (ConnectionClosed at EOF)."""
        self.connect()
        try:
            event = self._next_event("waiting for a record")
        except p.ProtocolError as exc:
            raise FastCGIError(f"protocol error: {exc.reason}") from None
        assert not isinstance(event, p._NeedData)
        return event

    # --- requests -------------------------------------------------------------------

    def get_values(self, names: Sequence[str] = DEFAULT_VALUES) -> dict[str, str]:
        """FCGI_GET_VALUES: the values the application reports for ``names``."""
        self._ensure_fresh_connection()
        content = p.encode_pairs((_to_wire(n, "name"), b"") for n in names)
        try:
            try:
                self._send(p.encode_record(p.FCGI_GET_VALUES, 0, content))
            except _PeerGone:
                pass
            while True:
                event = self._next_event("waiting for FCGI_GET_VALUES_RESULT")
                if isinstance(event, p.GetValuesResult):
                    return event.values
                if isinstance(event, p.ConnectionClosed):
                    raise FastCGIError("connection closed before FCGI_GET_VALUES_RESULT")
                if isinstance(event, p.UnknownType):
                    raise FastCGIError(f"application answered FCGI_UNKNOWN_TYPE for type {event.type}")
        except p.ProtocolError as exc:
            self.close()
            raise FastCGIError(f"protocol error: {exc.reason}") from None
        except BaseException:
            self.close()
            raise
        finally:
            if not self.keep_conn:
                self.close()

    def request(self, path: str | bytes = "/", *, method: str = "GET", headers: HeadersArg = (),
                body: BodyArg = b"", params: ParamsArg | None = None, script_name: str = "",
                role: int = FCGI_RESPONDER, data: bytes = b"", request_id: int = 1,
                content_length: int | None | Literal["auto"] = "auto") -> Response:
        """Send one request and read its response up to END_REQUEST.

        ``body`` is bytes or an iterable of bytes; an iterable is streamed in
        STDIN records as it yields, and (with ``content_length="auto"``) sends
        no CONTENT_LENGTH. ``content_length`` may force a value (int) or
        omit it (None). ``data`` is the FILTER role's DATA stream.
        """
        if isinstance(body, str):
            raise TypeError("body must be bytes or an iterable of bytes, not str")
        if isinstance(body, (bytes, bytearray, memoryview)):
            body_bytes: bytes | None = bytes(body)
            chunks: Iterable[bytes] | None = None
        else:
            body_bytes, chunks = None, body
        if content_length == "auto":
            length: int | None = len(body_bytes) if body_bytes else None
        else:
            length = content_length
        if not 1 <= request_id <= 0xFFFF:
            raise ValueError("request_id must be 1..65535")
        self._ensure_fresh_connection()
        assert self._sock is not None
        pairs = build_params(path, method=method, headers=headers, params=params, script_name=script_name,
                             role=role, body_length=length,
                             data_length=len(data) if role == FCGI_FILTER else None,
                             remote_port=_local_port(self._sock))
        head = [p.encode_begin_request(request_id, role, self.keep_conn), p.encode_params(request_id, pairs)]
        try:
            self._send_request(request_id, head, body_bytes, chunks, role, data)
        except _PeerGone:
            pass  # the application stopped reading: its answer (or its EOF) tells the rest
        except BaseException:
            self.close()  # a half-sent request (timeout, failing body iterable) must not be reused
            raise
        return self._read_response(request_id)

    def _send_request(self, rid: int, head: list[bytes], body: bytes | None, chunks: Iterable[bytes] | None,
                      role: int, data: bytes) -> None:
        end_stdin = p.encode_record(p.FCGI_STDIN, rid)
        filter_data = role == FCGI_FILTER
        if body is not None and len(body) <= p.MAX_CONTENT_LENGTH:
            # The common case in one write: BEGIN_REQUEST, PARAMS, STDIN and its end (and a small DATA).
            buffers = head + p.encode_stream(p.FCGI_STDIN, rid, body) + [end_stdin]
            if filter_data and len(data) <= p.MAX_CONTENT_LENGTH:
                buffers += p.encode_stream(p.FCGI_DATA, rid, data) + [p.encode_record(p.FCGI_DATA, rid)]
                filter_data = False
            self._send(b"".join(buffers))
        else:
            self._send(b"".join(head))
            for chunk in _iter_body(body, chunks):
                self._send_stream(p.FCGI_STDIN, rid, chunk)
            self._send(end_stdin)
        if filter_data:
            self._send_stream(p.FCGI_DATA, rid, data)
            self._send(p.encode_record(p.FCGI_DATA, rid))

    def _send_stream(self, record_type: int, rid: int, data: bytes) -> None:
        # One record per write: a large body is never copied whole, and a slow
        # reader is noticed (and its output read) between records.
        view = memoryview(data)
        for pos in range(0, len(data), p.MAX_CONTENT_LENGTH):
            piece = view[pos:pos + p.MAX_CONTENT_LENGTH]
            self._send(b"".join(p.encode_stream(record_type, rid, piece)))

    def _read_response(self, rid: int) -> Response:
        stdout = bytearray()
        stderr = bytearray()
        stdout_closed = False

        def partial() -> Response:
            status, reason, headers, body = parse_cgi_response(bytes(stdout))
            return Response(status, reason, headers, body, bytes(stderr), -1, -1, bytes(stdout), stdout_closed)

        try:
            while True:
                event = self._next_event("waiting for the response")
                if isinstance(event, p.Stdout) and event.request_id == rid:
                    if event.data:
                        stdout += event.data
                    else:
                        stdout_closed = True
                elif isinstance(event, p.Stderr) and event.request_id == rid:
                    stderr += event.data
                elif isinstance(event, p.EndRequest) and event.request_id == rid:
                    end = event
                    break
                elif isinstance(event, p.ConnectionClosed):
                    raise FastCGIError(
                        f"connection closed before END_REQUEST ({len(stdout)} bytes of STDOUT received"
                        f"{', STDOUT stream ended' if stdout_closed else ''})", partial=partial())
                # anything else (other request ids, management answers) is not ours: ignored
        except p.ProtocolError as exc:
            self.close()
            raise FastCGIError(f"protocol error: {exc.reason}", partial=partial()) from None
        except FastCGIError as exc:
            self.close()
            if exc.partial is None:
                exc.partial = partial()
            raise
        except BaseException:
            self.close()
            raise
        if not self.keep_conn:
            self.close()
        out = bytes(stdout)
        status, reason, headers, body = parse_cgi_response(out)
        if end.protocol_status != p.FCGI_REQUEST_COMPLETE and not out:
            name = PROTOCOL_STATUS_NAMES.get(end.protocol_status, str(end.protocol_status))
            reason = f"request rejected: {name}"
        return Response(status, reason, headers, body, bytes(stderr), end.app_status, end.protocol_status,
                        out, stdout_closed)


def _local_port(sock: socket.socket) -> str:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return str(sock.getsockname()[1])
    return "0"


def _iter_body(body: bytes | None, chunks: Iterable[bytes] | None) -> Iterator[bytes]:
    if body is not None:
        yield body
        return
    assert chunks is not None
    for chunk in chunks:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"body iterable yielded {type(chunk).__name__}, not bytes")
        if chunk:
            yield bytes(chunk)


def _header_param(name: str) -> str:
    key = name.strip().upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return key
    return "HTTP_" + key


def build_params(path: str | bytes = "/", *, method: str = "GET", headers: HeadersArg = (),
                 params: ParamsArg | None = None, script_name: str = "", role: int = FCGI_RESPONDER,
                 body_length: int | None = None, data_length: int | None = None,
                 remote_port: str = "0") -> list[tuple[bytes, bytes]]:
    """PARAMS as nginx sends them with ``fastcgi_param SCRIPT_NAME``/``PATH_INFO`` set.

    ``path`` is the raw request target (path and query, percent-encoded or
    not). PATH_INFO is its percent-decoded path as latin-1 of the bytes (PEP
    3333), minus ``script_name`` when that is a prefix. Headers become HTTP_*
    (repeated names are joined with ", "); ``params`` then replaces, adds or
    (value None) deletes raw pairs.
    """
    raw = path if isinstance(path, bytes) else path.encode("utf-8")
    raw_path, _, query = raw.partition(b"?")
    decoded = urllib.parse.unquote_to_bytes(raw_path)
    sn = script_name.rstrip("/").encode("utf-8")
    if sn and (decoded == sn or decoded.startswith(sn + b"/")):
        path_info = decoded[len(sn):]
    else:
        path_info = decoded

    header_items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    merged: dict[str, str] = {}
    for name, value in header_items:
        key = _header_param(name)
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    content_type = merged.pop("CONTENT_TYPE", None)
    header_length = merged.pop("CONTENT_LENGTH", None)
    length = str(body_length) if body_length is not None else header_length
    host = merged.pop("HTTP_HOST", "localhost")

    pairs: list[tuple[str, str | bytes]] = [
        ("QUERY_STRING", query), ("REQUEST_METHOD", method),
    ]
    if content_type is not None:
        pairs.append(("CONTENT_TYPE", content_type))
    if length is not None and role != FCGI_AUTHORIZER:
        pairs.append(("CONTENT_LENGTH", length))
    if role != FCGI_AUTHORIZER:
        pairs.append(("SCRIPT_NAME", sn))
    pairs += [
        ("REQUEST_URI", raw), ("DOCUMENT_URI", decoded), ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"), ("GATEWAY_INTERFACE", "CGI/1.1"), ("SERVER_SOFTWARE", SERVER_SOFTWARE),
        ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", remote_port), ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"), ("SERVER_NAME", "localhost"),
    ]
    if role != FCGI_AUTHORIZER:
        pairs.append(("PATH_INFO", path_info))
    if role == FCGI_FILTER:
        pairs += [("FCGI_DATA_LENGTH", str(data_length or 0)), ("FCGI_DATA_LAST_MOD", "0")]
    pairs.append(("HTTP_HOST", host))
    pairs += list(merged.items())

    wire: list[tuple[bytes, bytes]] = [(_to_wire(n, "param name"), _to_wire(v, f"value of {n}")) for n, v in pairs]
    if params is not None:
        wire = _apply_overrides(wire, params)
    return wire


def _apply_overrides(wire: list[tuple[bytes, bytes]], params: ParamsArg) -> list[tuple[bytes, bytes]]:
    items: Iterable[tuple[str | bytes, ParamValue]]
    if isinstance(params, Mapping):
        items = list(params.items())
    else:
        items = params
    touched: set[bytes] = set()
    for name, value in items:
        key = _to_wire(name, "param name")
        if value is None:
            wire = [(n, v) for n, v in wire if n != key]
            touched.discard(key)
            continue
        val = _to_wire(value, f"value of {key.decode('latin-1')}")
        if key in touched or all(n != key for n, _ in wire):
            wire.append((key, val))  # a new name, or deliberately repeated
        else:
            first = next(i for i, (n, _) in enumerate(wire) if n == key)
            wire = [pair for i, pair in enumerate(wire) if pair[0] != key or i == first]
            wire[first] = (key, val)
        touched.add(key)
    return wire


def request(address: str, path: str | bytes = "/", *, timeout: float = 30.0, method: str = "GET",
            headers: HeadersArg = (), body: BodyArg = b"", params: ParamsArg | None = None,
            script_name: str = "", role: int = FCGI_RESPONDER, data: bytes = b"", request_id: int = 1,
            content_length: int | None | Literal["auto"] = "auto") -> Response:
    """One request on a connection of its own."""
    with Client(address, timeout=timeout) as client:
        return client.request(path, method=method, headers=headers, body=body, params=params,
                              script_name=script_name, role=role, data=data, request_id=request_id,
                              content_length=content_length)


# --- command line -------------------------------------------------------------------

def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _parse_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsgi_fcgi.client",
        description="Send one request to a FastCGI application and print the response "
                    "(status line, headers, blank line, body), like curl -i. "
                    "Exit status: 0 for a response below 500, 1 for 5xx or no valid CGI response, "
                    "2 for a connection, timeout or protocol error.")
    parser.add_argument("address", metavar="ADDR", help="unix:/path/to.sock, HOST:PORT or [IPV6]:PORT")
    parser.add_argument("path", metavar="PATH", nargs="?", default="/",
                        help="request target, path and query, e.g. /ping or '/search?q=x' (default /)")
    parser.add_argument("-X", "--request", dest="method", metavar="METHOD",
                        help="request method (default GET, or POST with -d)")
    parser.add_argument("-H", "--header", dest="headers", action="append", type=_parse_header, default=[],
                        metavar="'NAME: VALUE'", help="request header (repeatable)")
    parser.add_argument("-d", "--data", metavar="BODY",
                        help="request body; @FILE reads a file, @- standard input")
    parser.add_argument("-p", "--param", dest="params", action="append", type=_parse_param, default=[],
                        metavar="NAME=VALUE", help="add or replace a raw FastCGI param (repeatable)")
    parser.add_argument("--script-name", default="", metavar="PREFIX",
                        help="SCRIPT_NAME (the app's mount point); PATH_INFO is the path minus it")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="connect and idle timeout (default 30)")
    parser.add_argument("-i", "--include", action="store_true",
                        help="print the status line and headers (the default; kept for curl habits)")
    parser.add_argument("-b", "--body-only", action="store_true", help="print only the body")
    parser.add_argument("--get-values", action="store_true",
                        help="send FCGI_GET_VALUES and print NAME=VALUE lines instead of a request")
    return parser


def _read_body(spec: str) -> bytes:
    if spec.startswith("@"):
        name = spec[1:]
        if name == "-":
            return sys.stdin.buffer.read()
        with open(name, "rb") as fh:
            return fh.read()
    return spec.encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status."""
    args = _arg_parser().parse_args(argv)
    prog = "wsgi_fcgi.client"
    out = sys.stdout.buffer
    try:
        with Client(args.address, timeout=args.timeout) as client:
            if args.get_values:
                values = client.get_values()
                for name, value in values.items():
                    out.write(f"{name}={value}\n".encode("latin-1"))
                out.flush()
                return 0
            body = _read_body(args.data) if args.data is not None else b""
            headers: list[tuple[str, str]] = list(args.headers)
            if args.data is not None and not any(n.lower() == "content-type" for n, _ in headers):
                headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            method = args.method or ("POST" if args.data is not None else "GET")
            response = client.request(args.path, method=method, headers=headers, body=body,
                                      params=list(args.params) or None, script_name=args.script_name,
                                      content_length=len(body) if args.data is not None else "auto")
    except FastCGIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # reading the -d @file
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if response.stderr:
        sys.stderr.buffer.write(response.stderr)
        sys.stderr.flush()
    if response.status == 0:
        print(f"{prog}: error: {response.reason}", file=sys.stderr)
        out.write(response.stdout)
        out.flush()
        return 1
    if not args.body_only:
        head = [f"HTTP/1.1 {response.status} {response.reason}".rstrip()]
        head += [f"{name}: {value}" for name, value in response.headers]
        out.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    out.write(response.body)
    out.flush()
    return 1 if response.status >= 500 else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os._exit(1)
