"""FastCGI 1.0 wire format, sans-IO.

Strategy: bytes go in through ``receive_data``, events come out of
``next_event``; nothing here touches a socket, a clock or a process. Framing
comes only from records (never from CONTENT_LENGTH), so whatever a peer sends,
the request boundaries are those the records draw.

``ServerConnection`` is the application side of one transport connection. It
owns the per-connection state the spec defines: which request id is active
and where that request is in its ``RequestState`` (which input stream is
open, whether all input has arrived), with the transitions the spec allows
kept as data (``_NEXT_STATE``), as h11 keeps its state machine. The worker
and the handler ask it (``input_complete``, ``stream_open``) instead of
keeping flags of their own. It answers the management records the
spec says a library should answer by itself -- FCGI_GET_VALUES,
FCGI_UNKNOWN_TYPE, a second request on a busy connection (FCGI_CANT_MPX_CONN)
and an unsupported role (FCGI_UNKNOWN_ROLE). Those answers are queued and
handed out by ``data_to_send``.

``ClientConnection`` is the web-server side, used by our client and tests.

Every violation of the protocol raises ``ProtocolError`` with a reason; the
caller ends that connection and nothing else.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections import deque
from typing import Any, Final, NamedTuple
from collections.abc import Iterable, Sequence

# --- constants (spec section 8) -------------------------------------------

FCGI_LISTENSOCK_FILENO: Final = 0
FCGI_HEADER_LEN: Final = 8
FCGI_VERSION_1: Final = 1
FCGI_NULL_REQUEST_ID: Final = 0
FCGI_KEEP_CONN: Final = 1
MAX_CONTENT_LENGTH: Final = 0xFFFF

FCGI_BEGIN_REQUEST: Final = 1
FCGI_ABORT_REQUEST: Final = 2
FCGI_END_REQUEST: Final = 3
FCGI_PARAMS: Final = 4
FCGI_STDIN: Final = 5
FCGI_STDOUT: Final = 6
FCGI_STDERR: Final = 7
FCGI_DATA: Final = 8
FCGI_GET_VALUES: Final = 9
FCGI_GET_VALUES_RESULT: Final = 10
FCGI_UNKNOWN_TYPE: Final = 11
FCGI_MAXTYPE: Final = FCGI_UNKNOWN_TYPE

FCGI_RESPONDER: Final = 1
FCGI_AUTHORIZER: Final = 2
FCGI_FILTER: Final = 3
ROLE_NAMES: Final = {FCGI_RESPONDER: "RESPONDER", FCGI_AUTHORIZER: "AUTHORIZER", FCGI_FILTER: "FILTER"}

FCGI_REQUEST_COMPLETE: Final = 0
FCGI_CANT_MPX_CONN: Final = 1
FCGI_OVERLOADED: Final = 2
FCGI_UNKNOWN_ROLE: Final = 3

FCGI_MAX_CONNS: Final = "FCGI_MAX_CONNS"
FCGI_MAX_REQS: Final = "FCGI_MAX_REQS"
FCGI_MPXS_CONNS: Final = "FCGI_MPXS_CONNS"

HEADER: Final = struct.Struct("!BBHHBx")
BEGIN_REQUEST_BODY: Final = struct.Struct("!HB5x")
END_REQUEST_BODY: Final = struct.Struct("!IB3x")
UNKNOWN_TYPE_BODY: Final = struct.Struct("!B7x")
BEGIN_REQUEST_RECORD: Final = struct.Struct("!BBHHBxHB5x")  # header and body: one unpack call, not two

PADDING: Final = bytes(7)  # what records are padded with
_APPLICATION_TYPES: Final = frozenset(
    (FCGI_BEGIN_REQUEST, FCGI_ABORT_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS,
     FCGI_STDIN, FCGI_STDOUT, FCGI_STDERR, FCGI_DATA)
)


class ProtocolError(Exception):
    """The peer broke the FastCGI protocol; the connection must be closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IncompleteRecord(ProtocolError):
    """The peer closed the connection in the middle of a record: a client that
    went away rather than one that speaks the protocol wrongly."""


class Limits(NamedTuple):
    """Caps checked against declared lengths before anything is allocated."""

    max_params_bytes: int = 256 * 1024
    max_params_count: int = 1000
    max_name_length: int = 1024
    max_value_length: int = 128 * 1024


# --- events ----------------------------------------------------------------

# The events are NamedTuples, made as cheaply as a tuple, and equal only to events of
# their own type (StdinEnd(1) is not DataEnd(1)), as dataclasses would be -- without
# importing dataclasses, which brings inspect, ast and dis: about 0.7 MiB in every
# worker (bench/rss.py).
def _same_event(self: object, other: object) -> bool:
    return type(other) is type(self) and tuple.__eq__(self, other)  # type: ignore[operator]


def _other_event(self: object, other: object) -> bool:
    return not _same_event(self, other)


class Record(NamedTuple):
    """One raw record: what the framing layer yields (a tuple: cheap to make)."""

    type: int
    request_id: int
    content: Any  # bytes-like, usually a memoryview of the received data


class BeginRequest(NamedTuple):
    request_id: int
    role: int
    keep_conn: bool


class Params(NamedTuple):
    """The complete PARAMS stream of a request, decoded as latin-1, wire order kept."""

    request_id: int
    pairs: list[tuple[str, str]]


class RequestHead:
    """The start of a request as a worker serves it: its BEGIN_REQUEST and its
    complete PARAMS. ``ServerConnection.read_request_head`` takes it in one go;
    from the events, the worker makes one itself. A plain class rather than
    two events: one object per request, whose fields compiled code reads
    directly. The PARAMS come collected (``collect_pairs``), not as a list:
    that is what the environ is made of."""

    __slots__ = ("request_id", "role", "keep_conn", "params", "replaced", "stdin_done")

    def __init__(self, request_id: int, role: int, keep_conn: bool, params: dict[str, str],
                 replaced: list[tuple[str, str]], stdin_done: bool = False) -> None:
        self.request_id = request_id
        self.role = role
        self.keep_conn = keep_conn
        self.params = params  # the PARAMS, as collect_pairs() collects them
        self.replaced = replaced  # and the pairs their repeats replaced
        self.stdin_done = stdin_done  # the empty STDIN record came too (a request without a body)

    @property
    def begin(self) -> BeginRequest:
        return BeginRequest(self.request_id, self.role, self.keep_conn)


class StdinData(NamedTuple):
    request_id: int
    data: bytes


class StdinEnd(NamedTuple):
    request_id: int


class DataData(NamedTuple):
    """A chunk of the FILTER role's FCGI_DATA stream."""

    request_id: int
    data: bytes


class DataEnd(NamedTuple):
    request_id: int


class AbortRequest(NamedTuple):
    request_id: int


class ConnectionClosed(NamedTuple):
    """The peer closed its side. Between requests this is normal."""


# events for the client side


class Stdout(NamedTuple):
    request_id: int
    data: bytes  # b"" marks the end of the stream


class Stderr(NamedTuple):
    request_id: int
    data: bytes  # b"" marks the end of the stream


class EndRequest(NamedTuple):
    request_id: int
    app_status: int
    protocol_status: int


class GetValuesResult(NamedTuple):
    values: dict[str, str]


class UnknownType(NamedTuple):
    type: int


for _event in (BeginRequest, Params, StdinData, StdinEnd, DataData, DataEnd, AbortRequest, ConnectionClosed,
               Stdout, Stderr, EndRequest, GetValuesResult, UnknownType):
    # partialmethod: a compiled function (mypyc) does not bind as a method by itself.
    _event.__eq__ = functools.partialmethod(_same_event)  # type: ignore[assignment,method-assign]
    _event.__ne__ = functools.partialmethod(_other_event)  # type: ignore[assignment,method-assign]


ServerEvent = BeginRequest | Params | StdinData | StdinEnd | DataData | DataEnd | AbortRequest | ConnectionClosed
ClientEvent = Stdout | Stderr | EndRequest | GetValuesResult | UnknownType | ConnectionClosed


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by ``next_event`` when more bytes must be received first."""


# --- encoders --------------------------------------------------------------

def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes. ``content`` must fit in one record."""
    length = len(content)
    if length > MAX_CONTENT_LENGTH:
        raise ValueError("record content longer than 65535 bytes")
    padding = -length & 7
    return HEADER.pack(FCGI_VERSION_1, record_type, request_id, length, padding) + content + PADDING[:padding]


def frame(record_type: int, request_id: int, length: int) -> tuple[bytes, bytes]:
    """The header and the padding of a record of ``length`` content bytes, for
    content that is sent by other means (os.sendfile)."""
    if length > MAX_CONTENT_LENGTH:
        raise ValueError("record content longer than 65535 bytes")
    padding = -length & 7
    return HEADER.pack(FCGI_VERSION_1, record_type, request_id, length, padding), PADDING[:padding]


def encode_stream(record_type: int, request_id: int, data: bytes | bytearray | memoryview) -> list[Any]:
    """Buffers holding ``data`` as records of at most 65535 bytes each (no end record).

    The payload is referenced through memoryviews, never copied, so the list can be
    handed to ``socket.sendmsg`` as it is.
    """
    total = len(data)
    if not total:
        return []
    if total <= MAX_CONTENT_LENGTH:  # the common case: one record, no slicing
        padding = -total & 7
        header = HEADER.pack(FCGI_VERSION_1, record_type, request_id, total, padding)
        return [header, data, PADDING[:padding]] if padding else [header, data]
    out: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while pos < total:
        length = min(total - pos, MAX_CONTENT_LENGTH)
        padding = -length & 7
        out.append(HEADER.pack(FCGI_VERSION_1, record_type, request_id, length, padding))
        out.append(view[pos:pos + length])  # type: ignore[arg-type]
        if padding:
            out.append(PADDING[:padding])
        pos += length
    return out


# The records that end every request are the same few, request after request
# (one request id per connection, status 0): each is built once. A dict with
# an int key, not functools.lru_cache: compiled, the cache call and its
# argument-tuple hash cost more than building the record.
_END_REQUESTS: Final[dict[int, bytes]] = {}
_ENDS_OF_STREAMS: Final[dict[int, bytes]] = {}
_RECORD_CACHE_SIZE: Final = 256


def encode_end_request(request_id: int, app_status: int = 0,
                       protocol_status: int = FCGI_REQUEST_COMPLETE) -> bytes:
    app_status &= 0xFFFFFFFF
    key = _cache_key(request_id, protocol_status, app_status)
    record = _END_REQUESTS.get(key)
    if record is None:
        record = encode_record(FCGI_END_REQUEST, request_id, END_REQUEST_BODY.pack(app_status, protocol_status))
        _remember(_END_REQUESTS, key, record)
    return record


def encode_end_of_stream(record_type: int, request_id: int) -> bytes:
    """The empty record that ends a stream (STDOUT, STDERR, PARAMS, STDIN, DATA)."""
    key = _cache_key(request_id, record_type)
    record = _ENDS_OF_STREAMS.get(key)
    if record is None:
        record = encode_record(record_type, request_id)
        _remember(_ENDS_OF_STREAMS, key, record)
    return record


def _cache_key(request_id: int, small: int, high: int = 0) -> int:
    """One int for a record's fields (a 16-bit id, an 8-bit field, any ``high``
    bits); -1, never cached, when they do not fit the wire (struct then raises)."""
    if not (0 <= request_id <= 0xFFFF and 0 <= small <= 0xFF):
        return -1
    return (high << 8 | small) << 16 | request_id


def _remember(cache: dict[int, bytes], key: int, record: bytes) -> None:
    if key < 0:
        return
    if len(cache) >= _RECORD_CACHE_SIZE:  # a client cycling through request ids: start over
        cache.clear()
    cache[key] = record


def encode_begin_request(request_id: int, role: int = FCGI_RESPONDER, keep_conn: bool = False) -> bytes:
    flags = FCGI_KEEP_CONN if keep_conn else 0
    return encode_record(FCGI_BEGIN_REQUEST, request_id, BEGIN_REQUEST_BODY.pack(role, flags))


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length > 0x7FFFFFFF:
        raise ValueError("name or value longer than 2**31-1 bytes")
    return struct.pack("!I", length | 0x80000000)


def encode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs (spec 3.4) with 1- or 4-byte lengths."""
    parts: list[bytes] = []
    for name, value in pairs:
        parts += (_encode_length(len(name)), _encode_length(len(value)), name, value)
    return b"".join(parts)


def encode_params(request_id: int, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A whole PARAMS stream, end record included."""
    return b"".join(encode_stream(FCGI_PARAMS, request_id, encode_pairs(pairs))) + \
        encode_record(FCGI_PARAMS, request_id)


def decode_pairs(content: bytes | memoryview, limits: Limits | None = None) -> list[tuple[str, str]]:
    """Decode a complete name-value stream into latin-1 strings (PEP 3333's
    rule), in wire order.

    Declared lengths are checked against the remaining bytes and ``limits``
    before any slice is taken, so a 4-byte length claiming 2 GiB costs nothing.
    """
    return _decode_pairs(content, limits, None)


def decode_params(content: bytes | memoryview,
                  limits: Limits | None = None) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The same stream as ``collect_pairs(decode_pairs(content))`` gives it, in
    one pass: what the worker needs, without a list of pairs in between."""
    params: dict[str, str] = {}
    replaced = _decode_pairs(content, limits, params)
    return params, replaced


def collect_pairs(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Pairs as a dict in which a repeated name keeps its last value (in its
    first place), and the ``(name, value)`` pairs those repeats replaced, in
    wire order: nothing is lost, and what to make of a repeat is the reader's
    call (the environ joins repeated headers)."""
    params: dict[str, str] = {}
    replaced: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in params:
            replaced.append((name, params[name]))
        params[name] = value
    return params, replaced


def _decode_pairs(content: bytes | memoryview, limits: Limits | None,
                  params: dict[str, str] | None) -> list[tuple[str, str]]:
    """The pairs in a list; with ``params``, collected into it instead (as
    ``collect_pairs`` does), and the list holds what repeats replaced."""
    limits = limits or _DEFAULT_LIMITS
    # latin-1 maps every byte to one code point, so one decode of the whole
    # buffer lets names and values be sliced out as str, with no per-pair
    # decode. Lengths are read by indexing ``bytes`` (an int per byte: a plain
    # C load once compiled, where a memoryview or struct call is not); running
    # off the end shows up as IndexError.
    data = content if type(content) is bytes else bytes(content)
    text = data.decode("latin-1")
    end = len(data)
    pos = 0
    count = 0
    pairs: list[tuple[str, str]] = []
    max_name = limits.max_name_length
    max_value = limits.max_value_length
    try:
        while pos < end:
            name_len = data[pos]
            if name_len > 127:
                name_len = _length4(data, pos)
                pos += 4
            else:
                pos += 1
            value_len = data[pos]
            if value_len > 127:
                value_len = _length4(data, pos)
                pos += 4
            else:
                pos += 1
            value_start = pos + name_len
            value_end = value_start + value_len
            if value_end > end or name_len > max_name or value_len > max_value:
                _explain_bad_pair(name_len, value_len, limits)
                raise ProtocolError("name-value pair runs past the end of the stream")
            name = text[pos:value_start]
            value = text[value_start:value_end]
            if params is None:
                pairs.append((name, value))
            else:
                # one hash lookup for a new name; a repeat keeps its first place
                size = len(params)
                current = params.setdefault(name, value)
                if len(params) == size:
                    pairs.append((name, current))
                    params[name] = value
            count += 1
            pos = value_end
    except IndexError:
        raise ProtocolError("truncated length in name-value pair") from None
    # Checked once at the end: the stream's size, already capped, bounds the count meanwhile.
    if count > limits.max_params_count:
        raise ProtocolError(f"more than {limits.max_params_count} parameters")
    return pairs


def _length4(data: bytes, pos: int) -> int:
    """A 4-byte name or value length (its top bit is the "long form" flag)."""
    return ((data[pos] & 0x7F) << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]


def _explain_bad_pair(name_len: int, value_len: int, limits: Limits) -> None:
    if name_len > limits.max_name_length:
        raise ProtocolError(f"parameter name of {name_len} bytes exceeds the limit of {limits.max_name_length}")
    if value_len > limits.max_value_length:
        raise ProtocolError(f"parameter value of {value_len} bytes exceeds the limit of {limits.max_value_length}")


_DEFAULT_LIMITS: Final = Limits()


# --- framing -----------------------------------------------------------------

class RecordReader:
    """Turns a byte stream, split anywhere, into ``Record`` objects.

    Strategy: one copy at most for any byte. The buffer is one received chunk
    plus a read offset; a record that lies inside it is handed out as a
    memoryview of it (a GET from nginx is one segment: nothing is copied or
    moved). Chunks received while a record is still incomplete wait in a queue
    untouched; once they complete it, only that record's bytes are joined, and
    reading goes on in the queued chunk where the record ended.

    A record's content is a read-only bytes-like object (usually a memoryview):
    it keeps its received chunk alive, so consumers copy what they keep.
    """

    def __init__(self) -> None:
        self._buffer: Any = b""  # bytes, or a memoryview of the tail of a received chunk
        self._offset = 0
        self._queue: deque[Any] = deque()  # chunks received behind an incomplete record
        self._queued = 0
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Append received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        elif self._offset >= len(self._buffer) and not self._queue:
            self._buffer, self._offset = bytes(data), 0  # no copy when data is bytes
        else:
            self._queue.append(bytes(data))
            self._queued += len(data)

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._offset + self._queued

    def window(self) -> tuple[Any, int]:
        """The current chunk and the read offset in it: what the fast paths walk
        (records that lie whole inside it), then hand back with ``advance``."""
        return self._buffer, self._offset

    def contiguous(self, size: int) -> tuple[Any, int]:
        """The window, after making its next ``size`` bytes contiguous (joined from
        queued chunks if need be); the caller has checked ``buffered >= size``."""
        if len(self._buffer) - self._offset < size:
            self._join(size)
        return self._buffer, self._offset

    def peek_header(self) -> tuple[int, int, int] | None:
        """(type, request id, content length) of the next record, its header fully
        received; None if not. Nothing is taken."""
        if len(self._buffer) - self._offset < FCGI_HEADER_LEN:
            if self.buffered < FCGI_HEADER_LEN:
                return None
            self._join(FCGI_HEADER_LEN)
        _, record_type, request_id, length, _ = HEADER.unpack_from(self._buffer, self._offset)
        return record_type, request_id, length

    def next_record(self) -> Record | None:
        """The next complete record, or None if more bytes are needed."""
        buf, start = self._buffer, self._offset
        available = len(buf) - start
        if available >= FCGI_HEADER_LEN:
            version, record_type, request_id, length, padding = HEADER.unpack_from(buf, start)
            if version != FCGI_VERSION_1:
                raise ProtocolError(f"unsupported FastCGI version {version}")
            content_start = start + FCGI_HEADER_LEN
            end = content_start + length + padding
            if end <= len(buf):
                self.advance(end)
                return Record(record_type, request_id, memoryview(buf)[content_start:content_start + length])
            needed = end - start
        else:
            needed = FCGI_HEADER_LEN
        if available + self._queued < needed:
            if self._eof and available + self._queued:
                raise IncompleteRecord("connection closed inside a record" if available >= FCGI_HEADER_LEN
                                       else "connection closed inside a record header")
            return None
        self._join(needed)
        return self.next_record()

    def advance(self, offset: int) -> None:
        """Move the read offset past a record; a used-up
        buffer is replaced by the next queued chunk at once, so that the fast
        paths, which look at the buffer alone, see what follows."""
        if offset < len(self._buffer) or not self._queue:
            self._offset = offset
        else:
            self._buffer, self._offset = self._queue.popleft(), 0
            self._queued -= len(self._buffer)

    def _join(self, size: int) -> None:
        """Make the buffer hold exactly the next ``size`` bytes, taken from its rest
        and the queue; only those bytes are copied."""
        pieces = [memoryview(self._buffer)[self._offset:]]
        missing = size - len(pieces[0])
        queue = self._queue
        while missing > 0:
            chunk = queue[0]
            if len(chunk) <= missing:
                pieces.append(queue.popleft())
                missing -= len(chunk)
            else:
                pieces.append(memoryview(chunk)[:missing])
                queue[0] = memoryview(chunk)[missing:]
                missing = 0
        self._queued -= size - len(pieces[0])
        self._buffer, self._offset = b"".join(pieces), 0


# --- application side ----------------------------------------------------------

class RequestState(enum.Enum):
    """Where the active request is in its input (spec 3.3 and 6): PARAMS come
    first, then STDIN, then (FILTER role only) DATA, each ended by an empty
    record; once every input stream has ended, all input has arrived. The
    response may begin in any state: the app runs while its body streams in."""

    PARAMS = "reading PARAMS"
    STDIN = "reading STDIN"
    DATA = "reading DATA"
    INPUT_COMPLETE = "all input received"

    # Enum's own __hash__ is Python code (hash of the name), and states are
    # looked up in the tables below on every request; members are singletons,
    # so the identity hash is the same equivalence, in C.
    __hash__ = object.__hash__


# The empty record that ends the stream being read moves the request on; which
# state follows depends on the role (spec 6: only a FILTER has a DATA stream).
_NEXT_STATE: Final = {
    (FCGI_RESPONDER, RequestState.PARAMS): RequestState.STDIN,
    (FCGI_RESPONDER, RequestState.STDIN): RequestState.INPUT_COMPLETE,
    (FCGI_AUTHORIZER, RequestState.PARAMS): RequestState.STDIN,
    (FCGI_AUTHORIZER, RequestState.STDIN): RequestState.INPUT_COMPLETE,
    (FCGI_FILTER, RequestState.PARAMS): RequestState.STDIN,
    (FCGI_FILTER, RequestState.STDIN): RequestState.DATA,
    (FCGI_FILTER, RequestState.DATA): RequestState.INPUT_COMPLETE,
}
# Roles whose STDIN a web server may leave out altogether: an AUTHORIZER has no
# request body (spec 6.3), and mod_authnz_fcgi sends not even the empty STDIN
# record. Nothing of it is waited for: wsgi.input is empty, and once the request
# has ended the connection may close without waiting for a STDIN record.
ROLES_WITHOUT_STDIN: Final = frozenset((FCGI_AUTHORIZER,))
_STREAM_STATE: Final = {FCGI_PARAMS: RequestState.PARAMS, FCGI_STDIN: RequestState.STDIN, FCGI_DATA: RequestState.DATA}
_STREAM_NAMES: Final = {FCGI_PARAMS: "PARAMS", FCGI_STDIN: "STDIN", FCGI_DATA: "DATA"}
_STATE_ORDER: Final = list(RequestState)
_STREAMS_TO_COME: Final = {
    RequestState.PARAMS: (FCGI_STDIN, FCGI_DATA),
    RequestState.STDIN: (FCGI_STDIN, FCGI_DATA),
    RequestState.DATA: (FCGI_DATA,),
    RequestState.INPUT_COMPLETE: (),
}


class _ActiveRequest:
    __slots__ = ("request_id", "role", "state", "params")

    def __init__(self, request_id: int, role: int, state: RequestState = RequestState.PARAMS) -> None:
        self.request_id = request_id
        self.role = role
        self.state = state
        self.params = bytearray()

    def end_stream(self) -> None:
        self.state = _NEXT_STATE[self.role, self.state]


def _out_of_order(active: _ActiveRequest, record_type: int) -> ProtocolError:
    """Why a PARAMS, STDIN or DATA record cannot come in the request's state."""
    name = _STREAM_NAMES[record_type]
    wanted = _STREAM_STATE[record_type]
    if record_type != FCGI_PARAMS and active.state is RequestState.PARAMS:
        return ProtocolError(f"{name} record before the end of the PARAMS stream")
    if record_type == FCGI_DATA and active.role != FCGI_FILTER:
        return ProtocolError("DATA record for a request that is not in the FILTER role")
    if _STATE_ORDER.index(active.state) < _STATE_ORDER.index(wanted):
        return ProtocolError("DATA record before the end of STDIN (inputs are sent one after the other)")
    return ProtocolError(f"{name} record after the end of the {name} stream")


_ALL_ROLES: Final = frozenset((FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER))


class ServerConnection:
    """Application-side state machine of one FastCGI transport connection.

    ``max_conns`` and ``max_reqs`` are what FCGI_GET_VALUES reports: the real
    capacity of the process pool behind the listening socket. This connection
    never multiplexes, so FCGI_MPXS_CONNS is always "0".
    """

    def __init__(self, *, max_conns: int = 1, max_reqs: int = 1,
                 roles: Sequence[int] | frozenset[int] = _ALL_ROLES,
                 limits: Limits | None = None) -> None:
        self.limits = limits or _DEFAULT_LIMITS
        self.roles = roles if type(roles) is frozenset else frozenset(roles)  # one set, not one per connection
        self.max_conns = max_conns
        self.max_reqs = max_reqs
        self._reader = RecordReader()
        self._active: _ActiveRequest | None = None
        self._outgoing: list[bytes] = []
        self.closed = False
        # After END_REQUEST: has the whole input of that request arrived (its empty
        # STDIN record seen)? Then the connection can close without lingering.
        self.ended_input_complete = False
        self._ended_id = 0

    # input side
    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    @property
    def active_request_id(self) -> int | None:
        return self._active.request_id if self._active else None

    @property
    def state(self) -> RequestState | None:
        """The active request's state; None between requests."""
        return self._active.state if self._active else None

    @property
    def input_complete(self) -> bool:
        """Whether every input stream of the active request has ended."""
        return self._active is not None and self._active.state is RequestState.INPUT_COMPLETE

    def stream_open(self, record_type: int) -> bool:
        """Whether the active request may still receive records of this input stream
        (FCGI_STDIN or FCGI_DATA): False once it has ended, or for a role without it."""
        active = self._active
        if active is None or (record_type == FCGI_DATA and active.role != FCGI_FILTER):
            return False
        return record_type in _STREAMS_TO_COME[active.state]

    @property
    def has_buffered_data(self) -> bool:
        return self._reader.buffered > 0

    def next_event(self) -> ServerEvent | _NeedData:
        """Process records until one yields an event for the application."""
        while True:
            record = self._reader.next_record()
            if record is None:
                if self._reader.eof:
                    self.closed = True
                    return ConnectionClosed()
                return NEED_DATA
            event = self._handle(record)
            if event is not None:
                return event

    def next_event_during_response(self) -> ServerEvent | _NeedData:
        """What ``next_event`` gives while the app runs, leaving the active
        request's input in the buffer for the app to read (it may read its body
        after it starts responding). Records before that input are handled: a
        management record or another request's BEGIN_REQUEST is answered (queued
        for ``data_to_send``: FCGI_CANT_MPX_CONN), FCGI_ABORT_REQUEST comes out as
        an event, and so does the end of the connection. NEED_DATA when nothing
        more can be taken now. An event for the end of the app's input stream is
        not returned: the state says it, and wsgi.input then reads b""."""
        reader = self._reader
        while True:
            header = reader.peek_header()
            if header is None:
                if reader.eof and not reader.buffered:
                    self.closed = True
                    return ConnectionClosed()
                return NEED_DATA
            record_type, request_id, length = header
            active = self._active
            if length and active is not None and request_id == active.request_id \
                    and record_type in (FCGI_STDIN, FCGI_DATA) and self.stream_open(record_type):
                return NEED_DATA  # the app's input: wsgi.input reads it (an empty record, its end, is taken)
            record = reader.next_record()
            if record is None:
                return NEED_DATA
            event = self._handle(record)
            if event is not None and type(event) not in (StdinEnd, DataEnd):
                return event

    def read_request_head(self) -> RequestHead | None:
        """The fast path for the start of a request, from the buffer alone.

        What a web server sends for nearly every request, in one segment:
        BEGIN_REQUEST, the PARAMS records, the empty PARAMS record and, for a
        request without a body, the empty STDIN record. When the buffer starts
        with exactly that, this takes it in one walk over the buffer, with no
        Record or event objects, and returns what ``next_event`` would have
        returned for it (the BeginRequest, the Params' pairs as ``collect_pairs``
        collects them, and whether the StdinEnd came too), leaving the same
        state behind. For anything else -- no active
        request allowed, a record not yet complete, a management record, an
        unsupported role, PARAMS over the limit or malformed -- it returns None
        and takes nothing, and ``next_event`` handles it the general way. Tests pin the two
        paths to the same results for every split of real requests.
        """
        if self._active is not None:
            return None
        reader = self._reader
        buf, pos = reader.window()
        end: int = len(buf)
        if end - pos < 16:
            return None
        # The fields declared int: compiled, the arithmetic and comparisons below are on C integers.
        version: int
        rtype: int
        rid: int
        length: int
        padding: int
        record_id: int
        role: int
        flags: int
        version, rtype, rid, length, padding, role, flags = BEGIN_REQUEST_RECORD.unpack_from(buf, pos)
        if version != FCGI_VERSION_1 or rtype != FCGI_BEGIN_REQUEST or not rid or length != 8:
            return None
        pos += FCGI_HEADER_LEN + 8 + padding
        if role not in self.roles:
            return None
        chunks: list[bytes | memoryview] = []
        size = 0
        max_size = self.limits.max_params_bytes
        while True:  # PARAMS records up to the empty one
            if end - pos < FCGI_HEADER_LEN:
                return None
            version, rtype, record_id, length, padding = HEADER.unpack_from(buf, pos)
            start = pos + FCGI_HEADER_LEN
            pos = start + length + padding
            if version != FCGI_VERSION_1 or rtype != FCGI_PARAMS or record_id != rid or pos > end:
                return None
            if not length:
                break
            size += length
            if size > max_size:
                return None
            chunks.append(buf[start:start + length])
        try:
            params, replaced = decode_params(chunks[0] if len(chunks) == 1 else b"".join(chunks), self.limits)
        except ProtocolError:
            return None  # next_event raises it, after the BeginRequest event, as always
        active = self._active = _ActiveRequest(rid, role, _NEXT_STATE[role, RequestState.PARAMS])
        stdin_done = False
        if active.state is RequestState.STDIN \
                and buf[pos:pos + FCGI_HEADER_LEN] == encode_end_of_stream(FCGI_STDIN, rid):
            # the empty STDIN record of a request without a body (compared as
            # bytes: cheaper than unpacking; one with padding is left to next_event)
            pos += FCGI_HEADER_LEN
            active.end_stream()
            stdin_done = True
        reader.advance(pos)
        return RequestHead(rid, role, bool(flags & FCGI_KEEP_CONN), params, replaced, stdin_done)

    def read_stdin_chunk(self) -> Any:
        """The fast path for the body: the content of the next record when it is
        a non-empty STDIN record of the active request (a memoryview, as a
        StdinData event would carry); NEED_DATA when that record has not fully
        arrived yet, or nothing has; None for anything else, which
        ``next_event`` then handles. Pinned to the general path by the same
        tests as ``read_request_head``."""
        reader = self._reader
        buf, pos = reader.window()
        end: int = len(buf)
        if end - pos < FCGI_HEADER_LEN:
            return NEED_DATA if not reader.buffered and not reader.eof else None
        version: int  # declared int, as in read_request_head: C integers when compiled
        rtype: int
        rid: int
        length: int
        padding: int
        version, rtype, rid, length, padding = HEADER.unpack_from(buf, pos)
        active = self._active
        if rtype != FCGI_STDIN or not length or version != FCGI_VERSION_1 or active is None \
                or rid != active.request_id or active.state is not RequestState.STDIN:
            return None
        size = FCGI_HEADER_LEN + length + padding
        if pos + size > end:  # the record goes on in chunks received after this one
            if reader.buffered < size:
                return NEED_DATA if not reader.eof else None
            buf, pos = reader.contiguous(size)
        reader.advance(pos + size)
        return memoryview(buf)[pos + FCGI_HEADER_LEN:pos + FCGI_HEADER_LEN + length]

    def data_to_send(self) -> bytes:
        """Replies the protocol layer produced on its own (management, rejections)."""
        if not self._outgoing:
            return b""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    # output side: the only outgoing record that changes state
    def end_request(self, request_id: int, app_status: int = 0,
                    protocol_status: int = FCGI_REQUEST_COMPLETE) -> bytes:
        """END_REQUEST for the active request; its id becomes inactive."""
        if self._active is not None and self._active.request_id == request_id:
            self.ended_input_complete = self._active.state is RequestState.INPUT_COMPLETE \
                or self._active.role in ROLES_WITHOUT_STDIN
            self._ended_id = request_id
            self._active = None
        return encode_end_request(request_id, app_status, protocol_status)

    # record dispatch
    def _handle(self, record: Record) -> ServerEvent | None:
        rtype, rid = record.type, record.request_id
        if rid == FCGI_NULL_REQUEST_ID:
            self._handle_management(record)
            return None
        if rtype == FCGI_BEGIN_REQUEST:
            return self._begin(record)
        active = self._active
        if active is None or active.request_id != rid:
            # The spec: records for an inactive request id are ignored (as
            # libfcgi does, whatever their type) -- unless no web server sends that type.
            if rtype in (FCGI_STDOUT, FCGI_STDERR, FCGI_END_REQUEST):
                raise ProtocolError(f"record type {rtype} is sent by applications, not to them")
            if rtype == FCGI_STDIN and rid == self._ended_id and not record.content:
                self.ended_input_complete = True  # the rest of an answered request's body has arrived
            return None
        if rtype in _STREAM_STATE:
            return self._stream(active, rtype, record.content)
        if rtype == FCGI_ABORT_REQUEST:
            return AbortRequest(rid)
        if rtype not in _APPLICATION_TYPES:
            raise ProtocolError(f"unknown record type {rtype} for the active request {rid}")
        raise ProtocolError(f"record type {rtype} is sent by applications, not to them")

    def _handle_management(self, record: Record) -> None:
        if record.type == FCGI_GET_VALUES:
            # Each known name answered once, whatever a peer repeats: the answer
            # must fit one record.
            names = dict.fromkeys(name for name, _ in decode_pairs(record.content, self.limits))
            values = {FCGI_MAX_CONNS: str(self.max_conns), FCGI_MAX_REQS: str(self.max_reqs), FCGI_MPXS_CONNS: "0"}
            known = [(n.encode("latin-1"), values[n].encode("latin-1")) for n in names if n in values]
            self._outgoing.append(encode_record(FCGI_GET_VALUES_RESULT, 0, encode_pairs(known)))
        elif record.type in _APPLICATION_TYPES:
            raise ProtocolError(f"record type {record.type} needs a non-zero request id")
        else:
            self._outgoing.append(encode_record(FCGI_UNKNOWN_TYPE, 0, UNKNOWN_TYPE_BODY.pack(record.type & 0xFF)))
        return None

    def _begin(self, record: Record) -> BeginRequest | None:
        if len(record.content) != BEGIN_REQUEST_BODY.size:
            raise ProtocolError(f"BEGIN_REQUEST body of {len(record.content)} bytes, expected 8")
        role, flags = BEGIN_REQUEST_BODY.unpack(record.content)
        rid = record.request_id
        if self._active is not None:
            if self._active.request_id == rid:
                raise ProtocolError(f"BEGIN_REQUEST for request {rid}, which is already active")
            self._outgoing.append(encode_end_request(rid, 0, FCGI_CANT_MPX_CONN))
            return None
        if role not in self.roles:
            self._outgoing.append(encode_end_request(rid, 0, FCGI_UNKNOWN_ROLE))
            return None
        self._active = _ActiveRequest(rid, role)
        return BeginRequest(rid, role, bool(flags & FCGI_KEEP_CONN))

    def _stream(self, active: _ActiveRequest, record_type: int, content: Any) -> ServerEvent | None:
        """A PARAMS, STDIN or DATA record: checked against the state, then taken."""
        if active.state is not _STREAM_STATE[record_type]:
            raise _out_of_order(active, record_type)
        if record_type == FCGI_PARAMS:
            return self._params(active, content)
        rid = active.request_id
        if content:
            return StdinData(rid, content) if record_type == FCGI_STDIN else DataData(rid, content)
        active.end_stream()
        return StdinEnd(rid) if record_type == FCGI_STDIN else DataEnd(rid)

    def _params(self, active: _ActiveRequest, content: Any) -> Params | None:
        if content:
            if len(active.params) + len(content) > self.limits.max_params_bytes:
                raise ProtocolError(f"PARAMS exceed the limit of {self.limits.max_params_bytes} bytes")
            active.params += content
            return None
        active.end_stream()
        pairs = decode_pairs(bytes(active.params), self.limits)
        active.params = bytearray()
        return Params(active.request_id, pairs)


# --- web-server side (client) ------------------------------------------------

class ClientConnection:
    """Web-server side: parses what an application sends back."""

    def __init__(self) -> None:
        self._reader = RecordReader()

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_event(self) -> ClientEvent | _NeedData:
        record = self._reader.next_record()
        if record is None:
            return ConnectionClosed() if self._reader.eof else NEED_DATA
        rtype = record.type
        if rtype == FCGI_STDOUT:
            return Stdout(record.request_id, bytes(record.content))
        if rtype == FCGI_STDERR:
            return Stderr(record.request_id, bytes(record.content))
        if rtype == FCGI_END_REQUEST:
            if len(record.content) != END_REQUEST_BODY.size:
                raise ProtocolError("END_REQUEST body is not 8 bytes")
            app_status, protocol_status = END_REQUEST_BODY.unpack(record.content)
            return EndRequest(record.request_id, app_status, protocol_status)
        if rtype == FCGI_GET_VALUES_RESULT:
            return GetValuesResult(dict(decode_pairs(record.content)))
        if rtype == FCGI_UNKNOWN_TYPE:
            if len(record.content) != UNKNOWN_TYPE_BODY.size:
                raise ProtocolError("UNKNOWN_TYPE body is not 8 bytes")
            return UnknownType(record.content[0])
        raise ProtocolError(f"record type {rtype} is not sent by applications")
