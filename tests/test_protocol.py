"""Unit tests of the sans-IO FastCGI layer (``wsgi_fcgi.protocol``): no sockets.

Each test is named after one behaviour of the FastCGI 1.0 specification
that the protocol layer owns. The
property-based tests at the end drive ``ServerConnection`` with generated
request streams, split anywhere, and with random and mutated bytes.

Name-value pairs are cross-checked against a deliberately plain reference
codec written here from spec section 3.4, independent of the module's own.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wsgi_fcgi import protocol as p
from wsgi_fcgi.protocol import (
    FCGI_ABORT_REQUEST,
    FCGI_AUTHORIZER,
    FCGI_BEGIN_REQUEST,
    FCGI_CANT_MPX_CONN,
    FCGI_DATA,
    FCGI_END_REQUEST,
    FCGI_FILTER,
    FCGI_GET_VALUES,
    FCGI_GET_VALUES_RESULT,
    FCGI_PARAMS,
    FCGI_REQUEST_COMPLETE,
    FCGI_RESPONDER,
    FCGI_STDERR,
    FCGI_STDIN,
    FCGI_STDOUT,
    FCGI_UNKNOWN_ROLE,
    FCGI_UNKNOWN_TYPE,
    NEED_DATA,
    AbortRequest,
    BeginRequest,
    ClientConnection,
    ConnectionClosed,
    DataData,
    DataEnd,
    EndRequest,
    GetValuesResult,
    Limits,
    Params,
    ProtocolError,
    Record,
    RecordReader,
    ServerConnection,
    StdinData,
    StdinEnd,
    UnknownType,
    decode_pairs,
    encode_begin_request,
    encode_pairs,
    encode_params,
    encode_record,
    encode_stream,
)

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


# --- helpers -------------------------------------------------------------------------


def rec(rtype: int, rid: int, content: bytes = b"", padding: int = 0, version: int = 1) -> bytes:
    """A record with an explicit padding length (0..255), built by hand from the spec."""
    return (bytes([version, rtype, rid >> 8, rid & 0xFF, len(content) >> 8, len(content) & 0xFF, padding, 0])
            + content + b"\xaa" * padding)


def begin(rid: int = 1, role: int = FCGI_RESPONDER, flags: int = 0) -> bytes:
    return rec(FCGI_BEGIN_REQUEST, rid, struct.pack("!HB5x", role, flags))


def params_stream(rid: int, pairs: Sequence[Tuple[bytes, bytes]]) -> bytes:
    return encode_params(rid, pairs)


def drain(conn: ServerConnection, *, on_end: bool = True, limit: int = 100_000) -> List[object]:
    """All events available now. On StdinEnd (and AbortRequest) the request is ended,
    as an application would; bounded so a bug cannot hang the test run."""
    events: List[object] = []
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        if on_end and isinstance(event, (StdinEnd, AbortRequest)):
            conn.end_request(event.request_id)
    raise AssertionError("next_event() did not settle within the loop bound")


def feed(conn: ServerConnection, data: bytes, **kw: bool) -> List[object]:
    conn.receive_data(data)
    return drain(conn, **kw)


def replies(data: bytes) -> List[object]:
    """Parse what the library sent back, as a web server would."""
    client = ClientConnection()
    client.receive_data(data)
    out: List[object] = []
    while True:
        event = client.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)


def raw_records(data: bytes) -> List[Record]:
    reader = RecordReader()
    reader.feed(data)
    out: List[Record] = []
    while (record := reader.next_record()) is not None:
        out.append(record)
    assert reader.buffered == 0
    return out


def started(conn: ServerConnection, rid: int = 1, role: int = FCGI_RESPONDER, *,
            pairs: Sequence[Tuple[bytes, bytes]] = ((b"A", b"1"),)) -> None:
    """Bring ``rid`` to the point where STDIN may flow."""
    events = feed(conn, begin(rid, role) + params_stream(rid, pairs))
    assert events == [BeginRequest(rid, role, False), Params(rid, [(n.decode("latin-1"), v.decode("latin-1"))
                                                                    for n, v in pairs])]


# --- reference name-value codec (spec 3.4, written plainly) ------------------------------


def ref_length(n: int) -> bytes:
    if n <= 127:
        return bytes([n])
    return bytes([((n >> 24) & 0x7F) | 0x80, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF])


def ref_encode(pairs: Iterable[Tuple[bytes, bytes]]) -> bytes:
    out = b""
    for name, value in pairs:
        out += ref_length(len(name)) + ref_length(len(value)) + name + value
    return out


def ref_decode(data: bytes) -> List[Tuple[bytes, bytes]]:
    pairs = []
    i = 0

    def length() -> int:
        nonlocal i
        if data[i] >> 7 == 0:
            i += 1
            return data[i - 1]
        if len(data[i:i + 4]) != 4:
            raise ValueError("truncated")
        b3, b2, b1, b0 = data[i:i + 4]
        i += 4
        return ((b3 & 0x7F) << 24) + (b2 << 16) + (b1 << 8) + b0

    while i < len(data):
        name_len = length()
        value_len = length()
        name = data[i:i + name_len]
        i += name_len
        value = data[i:i + value_len]
        i += value_len
        if len(name) != name_len or len(value) != value_len:
            raise ValueError("truncated")
        pairs.append((name, value))
    return pairs


def as_str(pairs: Iterable[Tuple[bytes, bytes]]) -> List[Tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in pairs]


# === record header and padding ============================================================


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 15, 16, 17, 1000, 65534, 65535])
def test_encode_record_pads_content_to_a_multiple_of_8(length: int) -> None:
    content = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    data = encode_record(FCGI_STDOUT, 0x1234, content)
    assert len(data) % 8 == 0
    version, rtype, rid, clen, padding, reserved = struct.unpack("!BBHHBB", data[:8])
    assert (version, rtype, rid, clen, reserved) == (1, FCGI_STDOUT, 0x1234, length, 0)
    assert padding == -length % 8 and padding < 8
    assert data[8:8 + length] == content
    assert len(data) == 8 + length + padding


def test_encode_record_refuses_more_than_65535_bytes_of_content() -> None:
    with pytest.raises(ValueError):
        encode_record(FCGI_STDOUT, 1, bytes(65536))


def test_encode_stream_splits_at_65535_bytes_per_record() -> None:
    data = random.Random(1).randbytes(2 * 65535 + 10)
    wire = b"".join(encode_stream(FCGI_STDOUT, 3, data))
    records = raw_records(wire)
    assert [len(r.content) for r in records] == [65535, 65535, 10]
    assert all(r.type == FCGI_STDOUT and r.request_id == 3 for r in records)
    assert b"".join(r.content for r in records) == data
    # each record is padded to 8 on its own
    pos = 0
    for r in records:
        padding = wire[pos + 6]
        assert (8 + len(r.content) + padding) % 8 == 0
        pos += 8 + len(r.content) + padding
    assert pos == len(wire)


def test_encode_stream_of_nothing_is_no_records() -> None:
    assert encode_stream(FCGI_STDOUT, 1, b"") == []


@pytest.mark.parametrize("padding", [0, 1, 3, 7, 8, 9, 100, 255])
def test_record_with_any_padding_parses_like_one_without(padding: int) -> None:
    content = b"hello, padded world"
    assert raw_records(rec(FCGI_STDIN, 9, content, padding)) == raw_records(rec(FCGI_STDIN, 9, content, 0)) \
        == [Record(FCGI_STDIN, 9, content)]


@pytest.mark.parametrize("padding", [0, 5, 255])
def test_padding_is_honoured_by_server_connection(padding: int) -> None:
    conn = ServerConnection()
    data = (rec(FCGI_BEGIN_REQUEST, 1, struct.pack("!HB5x", FCGI_RESPONDER, 0), padding)
            + rec(FCGI_PARAMS, 1, encode_pairs([(b"N", b"V")]), padding) + rec(FCGI_PARAMS, 1, b"", padding)
            + rec(FCGI_STDIN, 1, b"body", padding) + rec(FCGI_STDIN, 1, b"", padding))
    assert feed(conn, data) == [BeginRequest(1, FCGI_RESPONDER, False), Params(1, [("N", "V")]),
                                StdinData(1, b"body"), StdinEnd(1)]


@pytest.mark.parametrize("version", [0, 2, 255])
def test_version_other_than_1_is_a_protocol_error_with_a_reason(version: int) -> None:
    reader = RecordReader()
    reader.feed(rec(FCGI_STDIN, 1, b"x", version=version))
    with pytest.raises(ProtocolError) as info:
        reader.next_record()
    assert str(version) in info.value.reason and "version" in info.value.reason
    conn = ServerConnection()
    conn.receive_data(rec(FCGI_BEGIN_REQUEST, 1, bytes(8), version=version))
    with pytest.raises(ProtocolError, match="version"):
        conn.next_event()


def test_record_reader_reassembles_a_record_fed_one_byte_at_a_time() -> None:
    data = rec(FCGI_STDIN, 513, b"abcdefghij", 6)
    reader = RecordReader()
    for i, byte in enumerate(data):
        assert reader.next_record() is None
        reader.feed(bytes([byte]))
        if i < len(data) - 1:
            assert reader.next_record() is None
    assert reader.next_record() == Record(FCGI_STDIN, 513, b"abcdefghij")


def test_request_id_uses_both_bytes() -> None:
    conn = ServerConnection()
    assert feed(conn, begin(0xABCD)) == [BeginRequest(0xABCD, FCGI_RESPONDER, False)]


# === name-value pairs =========================================================================

SHORT, LONG = 5, 300  # lengths needing a 1-byte and a 4-byte encoding


@pytest.mark.parametrize(("name_len", "value_len", "prefix_len"), [
    (SHORT, SHORT, 2),     # 11
    (SHORT, LONG, 5),      # 14
    (LONG, SHORT, 5),      # 41
    (LONG, LONG, 8),       # 44
    (127, 127, 2),         # largest 1-byte lengths
    (128, 128, 8),         # smallest 4-byte lengths
    (0, 0, 2),             # empty name and value
])
def test_pair_length_encodings_round_trip(name_len: int, value_len: int, prefix_len: int) -> None:
    name, value = b"N" * name_len, bytes(range(256)) * (value_len // 256) + bytes(range(value_len % 256))
    encoded = encode_pairs([(name, value)])
    assert encoded == ref_encode([(name, value)])
    assert len(encoded) == prefix_len + name_len + value_len
    assert decode_pairs(encoded) == as_str([(name, value)])


def test_four_byte_length_decodes_the_full_31_bits() -> None:
    # 0x80 0x01 0x00 0x00 = 65536; the high bit of the first byte is the flag, not part of the length
    value = b"v" * 65536
    data = b"\x01" + b"\x80\x01\x00\x00" + b"n" + value
    assert decode_pairs(data, Limits(max_value_length=70000)) == [("n", "v" * 65536)]


def test_four_byte_length_for_a_short_string_is_accepted() -> None:
    # Not the canonical encoding, but the spec does not forbid it (and some clients send it).
    data = b"\x80\x00\x00\x03\x80\x00\x00\x02" + b"abcXY"
    assert decode_pairs(data) == [("abc", "XY")]
    assert ref_decode(data) == [(b"abc", b"XY")]


@given(st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300)), max_size=12))
@SETTINGS
def test_encode_pairs_matches_the_reference_encoder(pairs: List[Tuple[bytes, bytes]]) -> None:
    encoded = encode_pairs(pairs)
    assert encoded == ref_encode(pairs)
    assert ref_decode(encoded) == pairs
    assert decode_pairs(encoded) == as_str(pairs)


@given(st.lists(st.tuples(st.binary(max_size=200), st.binary(max_size=200), st.booleans(), st.booleans()),
                max_size=10))
@SETTINGS
def test_decode_pairs_agrees_with_the_reference_decoder_on_any_length_encoding(
        items: List[Tuple[bytes, bytes, bool, bool]]) -> None:
    # Short strings written with 4-byte lengths too: both decoders must read them the same.
    data = b""
    for name, value, long_name, long_value in items:
        for s, force in ((name, long_name), (value, long_value)):
            data += struct.pack("!I", len(s) | 0x80000000) if force or len(s) > 127 else bytes([len(s)])
        data += name + value
    assert decode_pairs(data) == as_str(ref_decode(data))


def test_params_are_latin_1_strings_and_every_byte_round_trips() -> None:
    high = bytes(range(0x80, 0x100))
    pairs = [(b"HTTP_X_BYTES", high), (b"N\xe9", b"caf\xc3\xa9"), (b"ALL", bytes(range(256)))]
    conn = ServerConnection()
    events = feed(conn, begin() + params_stream(1, pairs))
    assert events[1] == Params(1, as_str(pairs))
    for (name, value), (sname, svalue) in zip(pairs, events[1].pairs, strict=True):  # type: ignore[attr-defined]
        assert sname.encode("latin-1") == name and svalue.encode("latin-1") == value


def _split_stream(rid: int, encoded: bytes, cuts: Sequence[int]) -> bytes:
    """``encoded`` as PARAMS records cut at ``cuts``, then the empty end record."""
    bounds = [0, *cuts, len(encoded)]
    out = b"".join(rec(FCGI_PARAMS, rid, encoded[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a)
    return out + rec(FCGI_PARAMS, rid, b"")


PAIRS_TO_SPLIT = [(b"SHORT", b"x"), (b"N" * 130, b"V" * 200), (b"LAST", b"y" * 140)]
ENC = encode_pairs(PAIRS_TO_SPLIT)
# offsets inside the second pair: its lengths start at 7 (1+1+5+1)
SECOND = 2 + 5 + 1


@pytest.mark.parametrize("cut", [
    pytest.param(SECOND + 1, id="inside-name-length"),
    pytest.param(SECOND + 3, id="inside-name-length-late"),
    pytest.param(SECOND + 4, id="between-name-and-value-length"),
    pytest.param(SECOND + 6, id="inside-value-length"),
    pytest.param(SECOND + 8 + 50, id="inside-name"),
    pytest.param(SECOND + 8 + 130, id="between-name-and-value"),
    pytest.param(SECOND + 8 + 130 + 100, id="inside-value"),
])
def test_pair_split_across_two_params_records_decodes(cut: int) -> None:
    conn = ServerConnection()
    events = feed(conn, begin() + _split_stream(1, ENC, [cut]))
    assert events == [BeginRequest(1, FCGI_RESPONDER, False), Params(1, as_str(PAIRS_TO_SPLIT))]


def test_pairs_split_at_every_byte_offset_decode() -> None:
    for cut in range(1, len(ENC)):
        conn = ServerConnection()
        assert feed(conn, begin() + _split_stream(1, ENC, [cut]))[1] == Params(1, as_str(PAIRS_TO_SPLIT)), cut
    # and one record per byte
    conn = ServerConnection()
    assert feed(conn, begin() + _split_stream(1, ENC, range(1, len(ENC))))[1] == Params(1, as_str(PAIRS_TO_SPLIT))


@pytest.mark.parametrize("size", range(1, len(encode_pairs([(b"AB", b"C" * 130)]))))
def test_truncated_pair_is_a_protocol_error(size: int) -> None:
    whole = encode_pairs([(b"AB", b"C" * 130)])
    with pytest.raises(ProtocolError):
        decode_pairs(whole[:size])
    conn = ServerConnection()
    conn.receive_data(begin() + rec(FCGI_PARAMS, 1, whole[:size]) + rec(FCGI_PARAMS, 1, b""))
    assert conn.next_event() == BeginRequest(1, FCGI_RESPONDER, False)
    with pytest.raises(ProtocolError):
        conn.next_event()


@given(st.lists(st.tuples(st.binary(max_size=150), st.binary(max_size=150)), min_size=1, max_size=4))
@SETTINGS
def test_every_prefix_of_a_pair_stream_decodes_or_is_a_protocol_error(pairs: List[Tuple[bytes, bytes]]) -> None:
    # A prefix ending on a pair boundary is the first k pairs; any other prefix is truncated.
    encoded = encode_pairs(pairs)
    boundaries = {len(encode_pairs(pairs[:k])): k for k in range(len(pairs) + 1)}
    for size in range(len(encoded)):
        if size in boundaries:
            assert decode_pairs(encoded[:size]) == as_str(pairs[:boundaries[size]])
        else:
            with pytest.raises(ProtocolError):
                decode_pairs(encoded[:size])


def test_collect_pairs_keeps_each_last_value_in_its_first_place_and_what_it_replaced() -> None:
    params, replaced = p.collect_pairs([("A", "1"), ("B", "2"), ("A", "3"), ("C", ""), ("A", "")])
    assert list(params.items()) == [("A", ""), ("B", "2"), ("C", "")]
    assert replaced == [("A", "1"), ("A", "3")]  # in wire order: nothing is lost


@given(st.lists(st.tuples(st.sampled_from([b"A", b"HTTP_X", b"\xe9"]) | st.binary(max_size=20),
                          st.binary(max_size=40)), max_size=12))
@SETTINGS
def test_decode_params_collects_what_decode_pairs_decodes(pairs: List[Tuple[bytes, bytes]]) -> None:
    # The worker's one-pass decoder against the two steps it stands for, on every
    # prefix of the stream: the same dict in the same order, the same replaced
    # pairs, or the same protocol error.
    encoded = encode_pairs(pairs)
    for size in range(len(encoded) + 1):
        try:
            params, replaced = p.collect_pairs(decode_pairs(encoded[:size]))
        except ProtocolError as exc:
            with pytest.raises(ProtocolError) as raised:
                p.decode_params(encoded[:size])
            assert raised.value.reason == exc.reason
        else:
            got, got_replaced = p.decode_params(encoded[:size])
            assert (list(got.items()), got_replaced) == (list(params.items()), replaced)


def test_truncated_second_pair_after_a_good_one_is_a_protocol_error() -> None:
    data = encode_pairs([(b"A", b"1")]) + b"\x05"
    with pytest.raises(ProtocolError):
        decode_pairs(data)


@pytest.mark.parametrize("limits", [
    pytest.param(Limits(), id="default-limits"),
    pytest.param(Limits(max_name_length=2**31, max_value_length=2**31), id="no-length-limits"),
])
@pytest.mark.parametrize("which", ["name", "value"])
def test_two_gib_length_claim_is_rejected_without_allocating(limits: Limits, which: str) -> None:
    huge = b"\xff\xff\xff\xff"  # 2**31 - 1
    data = (huge + b"\x01" if which == "name" else b"\x01" + huge) + b"abc"
    tracemalloc.start()
    try:
        # Rejected on the claim itself (a limit, or "runs past the end" of the
        # 3 bytes there are), not after trying to read or allocate 2 GiB.
        with pytest.raises(ProtocolError, match=r"2147483647 bytes exceeds the limit|runs past the end"):
            decode_pairs(data, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"decoding a 2 GiB claim allocated {peak} bytes"


def test_two_gib_length_claim_through_server_connection() -> None:
    conn = ServerConnection()
    conn.receive_data(begin() + rec(FCGI_PARAMS, 1, b"\xff\xff\xff\xff\x00") + rec(FCGI_PARAMS, 1, b""))
    assert conn.next_event() == BeginRequest(1, FCGI_RESPONDER, False)
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_limit_max_params_bytes_is_checked_as_records_arrive() -> None:
    limits = Limits(max_params_bytes=100)
    ok = ServerConnection(limits=limits)
    exact = encode_pairs([(b"N", b"v" * 97)])
    assert len(exact) == 100
    assert feed(ok, begin() + rec(FCGI_PARAMS, 1, exact) + rec(FCGI_PARAMS, 1, b""))[1] == \
        Params(1, [("N", "v" * 97)])
    conn = ServerConnection(limits=limits)
    conn.receive_data(begin() + rec(FCGI_PARAMS, 1, exact[:60]) + rec(FCGI_PARAMS, 1, exact[60:] + b"\x00"))
    assert conn.next_event() == BeginRequest(1, FCGI_RESPONDER, False)
    with pytest.raises(ProtocolError, match="100"):
        conn.next_event()  # no end record needed: the second record already crosses the cap


def test_limit_max_params_count() -> None:
    limits = Limits(max_params_count=3)
    assert len(decode_pairs(encode_pairs([(b"a", b"")] * 3), limits)) == 3
    with pytest.raises(ProtocolError, match="3"):
        decode_pairs(encode_pairs([(b"a", b"")] * 4), limits)
    with pytest.raises(ProtocolError, match="3"):  # repeats count: each is a pair read
        p.decode_params(encode_pairs([(b"a", b"")] * 4), limits)
    conn = ServerConnection(limits=limits)
    conn.receive_data(begin() + params_stream(1, [(b"a", b"")] * 4))
    conn.next_event()
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_limit_max_name_length() -> None:
    limits = Limits(max_name_length=10)
    assert decode_pairs(encode_pairs([(b"n" * 10, b"")]), limits) == [("n" * 10, "")]
    with pytest.raises(ProtocolError, match="name"):
        decode_pairs(encode_pairs([(b"n" * 11, b"")]), limits)


def test_limit_max_value_length() -> None:
    limits = Limits(max_value_length=200)
    assert decode_pairs(encode_pairs([(b"n", b"v" * 200)]), limits) == [("n", "v" * 200)]
    with pytest.raises(ProtocolError, match="value"):
        decode_pairs(encode_pairs([(b"n", b"v" * 201)]), limits)


def test_length_limits_are_checked_before_the_data_is_present() -> None:
    # A declared 1 MiB value with only 3 bytes present fails on the limit, not on the truncation.
    with pytest.raises(ProtocolError, match="limit"):
        decode_pairs(b"\x01\x80\x10\x00\x00" + b"abc", Limits(max_value_length=1000))


# === ServerConnection: requests ==============================================================


@pytest.mark.parametrize(("flags", "keep_conn"), [(0, False), (1, True), (0xFF, True), (0xFE, False)])
def test_begin_request_event_takes_keep_conn_from_the_flags(flags: int, keep_conn: bool) -> None:
    conn = ServerConnection()
    assert feed(conn, begin(7, FCGI_RESPONDER, flags)) == [BeginRequest(7, FCGI_RESPONDER, keep_conn)]
    assert conn.active_request_id == 7


def test_encode_begin_request_matches_the_spec_layout() -> None:
    assert encode_begin_request(1, FCGI_AUTHORIZER, True) == rec(FCGI_BEGIN_REQUEST, 1, b"\x00\x02\x01" + bytes(5))


def test_params_stream_is_one_event_in_wire_order() -> None:
    pairs = [(b"Z_LAST_ALPHABETICALLY", b"1"), (b"A", b"2"), (b"DUP", b"x"), (b"DUP", b"y"), (b"EMPTY", b"")]
    conn = ServerConnection()
    encoded = encode_pairs(pairs)
    conn.receive_data(begin() + rec(FCGI_PARAMS, 1, encoded[:10]) + rec(FCGI_PARAMS, 1, encoded[10:]))
    assert drain(conn) == [BeginRequest(1, FCGI_RESPONDER, False)]  # nothing until the end record
    assert feed(conn, rec(FCGI_PARAMS, 1, b"")) == [Params(1, as_str(pairs))]


def test_empty_params_stream_gives_an_empty_params_event() -> None:
    conn = ServerConnection()
    assert feed(conn, begin() + rec(FCGI_PARAMS, 1, b""))[1] == Params(1, [])


def test_stdin_records_become_stdin_data_then_stdin_end() -> None:
    conn = ServerConnection()
    started(conn)
    assert feed(conn, rec(FCGI_STDIN, 1, b"abc") + rec(FCGI_STDIN, 1, b"\x00" * 65535)) == \
        [StdinData(1, b"abc"), StdinData(1, b"\x00" * 65535)]
    assert feed(conn, rec(FCGI_STDIN, 1, b""), on_end=False) == [StdinEnd(1)]


def test_abort_request_becomes_an_event() -> None:
    conn = ServerConnection()
    started(conn)
    assert feed(conn, rec(FCGI_STDIN, 1, b"partial") + rec(FCGI_ABORT_REQUEST, 1), on_end=False) == \
        [StdinData(1, b"partial"), AbortRequest(1)]
    # the application answers the abort with END_REQUEST; the id is free again
    assert raw_records(conn.end_request(1)) == [Record(FCGI_END_REQUEST, 1, bytes(8))]
    assert conn.active_request_id is None


def test_abort_request_before_params_end_is_delivered() -> None:
    conn = ServerConnection()
    assert feed(conn, begin() + rec(FCGI_ABORT_REQUEST, 1), on_end=False) == \
        [BeginRequest(1, FCGI_RESPONDER, False), AbortRequest(1)]


def test_end_request_encodes_app_status_and_protocol_status() -> None:
    conn = ServerConnection()
    started(conn)
    data = conn.end_request(1, app_status=0xDEADBEEF, protocol_status=FCGI_REQUEST_COMPLETE)
    assert replies(data) == [EndRequest(1, 0xDEADBEEF, FCGI_REQUEST_COMPLETE)]
    assert len(data) == 16


# === ServerConnection: management records ====================================================


def _get_values(*names: bytes) -> bytes:
    return encode_record(FCGI_GET_VALUES, 0, encode_pairs([(n, b"") for n in names]))


def test_get_values_is_answered_by_the_library_with_the_constructor_values() -> None:
    conn = ServerConnection(max_conns=7, max_reqs=3)
    assert feed(conn, _get_values(b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS")) == []
    out = conn.data_to_send()
    assert replies(out) == [GetValuesResult({"FCGI_MAX_CONNS": "7", "FCGI_MAX_REQS": "3", "FCGI_MPXS_CONNS": "0"})]
    assert raw_records(out)[0].request_id == 0 and raw_records(out)[0].type == FCGI_GET_VALUES_RESULT
    assert conn.data_to_send() == b""  # handed out once


def test_get_values_omits_names_it_does_not_understand() -> None:
    conn = ServerConnection()
    feed(conn, _get_values(b"FCGI_SOMETHING_NEW", b"FCGI_MPXS_CONNS", b"fcgi_max_conns"))
    assert replies(conn.data_to_send()) == [GetValuesResult({"FCGI_MPXS_CONNS": "0"})]


def test_get_values_with_no_names_gets_an_empty_result() -> None:
    conn = ServerConnection()
    feed(conn, encode_record(FCGI_GET_VALUES, 0))
    assert raw_records(conn.data_to_send()) == [Record(FCGI_GET_VALUES_RESULT, 0, b"")]


def test_get_values_is_answered_in_the_middle_of_a_request() -> None:
    conn = ServerConnection(max_conns=2, max_reqs=2)
    events = feed(conn, begin() + rec(FCGI_PARAMS, 1, encode_pairs([(b"A", b"1")])) + _get_values(b"FCGI_MAX_REQS")
                  + rec(FCGI_PARAMS, 1, b"") + rec(FCGI_STDIN, 1, b"x") + _get_values(b"FCGI_MAX_CONNS")
                  + rec(FCGI_STDIN, 1, b""), on_end=False)
    assert events == [BeginRequest(1, FCGI_RESPONDER, False), Params(1, [("A", "1")]), StdinData(1, b"x"),
                      StdinEnd(1)]
    assert replies(conn.data_to_send()) == [GetValuesResult({"FCGI_MAX_REQS": "2"}),
                                            GetValuesResult({"FCGI_MAX_CONNS": "2"})]
    assert conn.active_request_id == 1


def test_malformed_get_values_is_a_protocol_error() -> None:
    conn = ServerConnection()
    conn.receive_data(encode_record(FCGI_GET_VALUES, 0, b"\x0e\x00FCGI_MAX"))
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_get_values_with_many_repeated_names_does_not_crash() -> None:
    # 3800 x FCGI_MPXS_CONNS is 64600 bytes in; echoed back it is 68400 bytes, more than a record holds.
    # Needs max_params_count above ~3600 (the default 1000 only overflows with 50-digit max_conns values).
    conn = ServerConnection(limits=Limits(max_params_count=10_000))
    conn.receive_data(_get_values(*[b"FCGI_MPXS_CONNS"] * 3800))
    assert conn.next_event() is NEED_DATA
    assert replies(conn.data_to_send()) == [GetValuesResult({"FCGI_MPXS_CONNS": "0"})]


def _full_request(rid: int = 1, body: bytes = b"body", flags: int = 0) -> bytes:
    return (begin(rid, FCGI_RESPONDER, flags) + params_stream(rid, [(b"K", b"V")]) + rec(FCGI_STDIN, rid, body)
            + rec(FCGI_STDIN, rid, b""))


def _full_events(rid: int = 1, body: bytes = b"body", keep: bool = False) -> List[object]:
    return [BeginRequest(rid, FCGI_RESPONDER, keep), Params(rid, [("K", "V")]), StdinData(rid, body), StdinEnd(rid)]


@pytest.mark.parametrize("rtype", [0, 12, 42, 255, FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE])
def test_unknown_management_type_gets_unknown_type_and_the_connection_stays_usable(rtype: int) -> None:
    conn = ServerConnection()
    assert feed(conn, rec(rtype, 0, b"whatever content")) == []
    assert replies(conn.data_to_send()) == [UnknownType(rtype)]
    assert feed(conn, _full_request(), on_end=False) == _full_events()


def test_unknown_management_type_in_the_middle_of_a_request() -> None:
    conn = ServerConnection()
    started(conn)
    assert feed(conn, rec(42, 0) + rec(FCGI_STDIN, 1, b"x"), on_end=False) == [StdinData(1, b"x")]
    assert replies(conn.data_to_send()) == [UnknownType(42)]


def test_second_begin_request_gets_cant_mpx_conn_and_its_records_are_ignored() -> None:
    conn = ServerConnection()
    started(conn, 1)
    events = feed(conn, begin(2) + params_stream(2, [(b"OTHER", b"1")]) + rec(FCGI_STDIN, 2, b"not yours")
                  + rec(FCGI_STDIN, 1, b"mine") + rec(FCGI_STDIN, 2, b"") + rec(FCGI_ABORT_REQUEST, 2)
                  + rec(FCGI_STDIN, 1, b""), on_end=False)
    assert events == [StdinData(1, b"mine"), StdinEnd(1)]
    assert replies(conn.data_to_send()) == [EndRequest(2, 0, FCGI_CANT_MPX_CONN)]
    assert conn.active_request_id == 1


def test_begin_request_for_the_already_active_id_is_a_protocol_error() -> None:
    conn = ServerConnection()
    started(conn, 1)
    conn.receive_data(begin(1))
    with pytest.raises(ProtocolError):
        conn.next_event()


@pytest.mark.parametrize(("roles", "role"), [
    ((FCGI_RESPONDER, FCGI_AUTHORIZER), FCGI_FILTER),
    ((FCGI_RESPONDER,), FCGI_AUTHORIZER),
    ((FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER), 99),
    ((FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER), 0),
    ((FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER), 0xFFFF),
])
def test_unsupported_role_gets_unknown_role(roles: Tuple[int, ...], role: int) -> None:
    conn = ServerConnection(roles=roles)
    events = feed(conn, begin(3, role) + params_stream(3, [(b"A", b"1")]) + rec(FCGI_STDIN, 3, b"x")
                  + rec(FCGI_DATA, 3, b"d") + rec(FCGI_STDIN, 3, b""))
    assert events == []
    assert replies(conn.data_to_send()) == [EndRequest(3, 0, FCGI_UNKNOWN_ROLE)]
    assert conn.active_request_id is None
    assert feed(conn, _full_request(3), on_end=False) == _full_events(3)  # a supported role still works


@pytest.mark.parametrize("rtype", [FCGI_PARAMS, FCGI_STDIN, FCGI_DATA, FCGI_ABORT_REQUEST])
def test_records_for_inactive_request_ids_are_ignored(rtype: int) -> None:
    conn = ServerConnection()
    assert feed(conn, rec(rtype, 5, b"ignored") + rec(rtype, 5)) == []
    assert conn.data_to_send() == b""
    started(conn, 1)
    assert feed(conn, rec(rtype, 5, b"ignored") + rec(rtype, 5)) == []
    assert conn.data_to_send() == b""


def test_after_end_request_the_id_is_inactive_and_can_begin_again() -> None:
    conn = ServerConnection()
    started(conn, 1)
    # the app answered early, before reading all of STDIN
    assert raw_records(conn.end_request(1, 3)) == [Record(FCGI_END_REQUEST, 1, struct.pack("!IB3x", 3, 0))]
    assert conn.active_request_id is None
    # the rest of its STDIN is ignored: it cannot leak into the next request
    assert feed(conn, rec(FCGI_STDIN, 1, b"leftover") + rec(FCGI_STDIN, 1, b"")) == []
    assert feed(conn, _full_request(1, b"second", flags=1), on_end=False) == _full_events(1, b"second", keep=True)


def test_keep_conn_connection_serves_sequential_requests() -> None:
    conn = ServerConnection()
    for i in range(5):
        body = f"request {i}".encode()
        events = feed(conn, _full_request(1 + i % 2, body, flags=1))
        assert events == _full_events(1 + i % 2, body, keep=True)
        assert conn.active_request_id is None


def test_end_request_for_another_id_leaves_the_active_one_alone() -> None:
    conn = ServerConnection()
    started(conn, 1)
    conn.end_request(2, 0, FCGI_CANT_MPX_CONN)
    assert conn.active_request_id == 1


@pytest.mark.parametrize("rtype", [FCGI_BEGIN_REQUEST, FCGI_ABORT_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS,
                                   FCGI_STDIN, FCGI_STDOUT, FCGI_STDERR, FCGI_DATA])
def test_application_record_with_request_id_0_is_a_protocol_error(rtype: int) -> None:
    conn = ServerConnection()
    content = struct.pack("!HB5x", FCGI_RESPONDER, 0) if rtype == FCGI_BEGIN_REQUEST else b""
    conn.receive_data(rec(rtype, 0, content))
    with pytest.raises(ProtocolError):
        conn.next_event()


@pytest.mark.parametrize("rtype", [FCGI_STDOUT, FCGI_STDERR, FCGI_END_REQUEST])
@pytest.mark.parametrize("active", [True, False])
def test_records_only_applications_send_are_protocol_errors(rtype: int, active: bool) -> None:
    conn = ServerConnection()
    if active:
        started(conn, 1)
    conn.receive_data(rec(rtype, 1, bytes(8) if rtype == FCGI_END_REQUEST else b"out"))
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_stdin_before_the_end_of_params_is_a_protocol_error() -> None:
    conn = ServerConnection()
    conn.receive_data(begin() + rec(FCGI_PARAMS, 1, encode_pairs([(b"A", b"1")])) + rec(FCGI_STDIN, 1, b"x"))
    assert conn.next_event() == BeginRequest(1, FCGI_RESPONDER, False)
    with pytest.raises(ProtocolError, match="PARAMS"):
        conn.next_event()


def test_params_after_the_end_of_params_is_a_protocol_error() -> None:
    conn = ServerConnection()
    started(conn)
    conn.receive_data(rec(FCGI_PARAMS, 1, encode_pairs([(b"LATE", b"1")])))
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_stdin_after_the_end_of_stdin_is_a_protocol_error() -> None:
    conn = ServerConnection()
    started(conn)
    feed(conn, rec(FCGI_STDIN, 1, b""), on_end=False)
    conn.receive_data(rec(FCGI_STDIN, 1, b"more"))
    with pytest.raises(ProtocolError):
        conn.next_event()


@pytest.mark.parametrize("role", [FCGI_RESPONDER, FCGI_AUTHORIZER])
def test_data_for_a_role_other_than_filter_is_a_protocol_error(role: int) -> None:
    conn = ServerConnection()
    started(conn, 1, role)
    conn.receive_data(rec(FCGI_DATA, 1, b"file"))
    with pytest.raises(ProtocolError, match="FILTER"):
        conn.next_event()


def test_filter_role_data_stream_becomes_data_events() -> None:
    conn = ServerConnection()
    started(conn, 4, FCGI_FILTER, pairs=[(b"FCGI_DATA_LENGTH", b"10"), (b"FCGI_DATA_LAST_MOD", b"0")])
    events = feed(conn, rec(FCGI_STDIN, 4, b"in") + rec(FCGI_STDIN, 4, b"") + rec(FCGI_DATA, 4, b"file ")
                  + rec(FCGI_DATA, 4, b"data!") + rec(FCGI_DATA, 4, b""), on_end=False)
    assert events == [StdinData(4, b"in"), StdinEnd(4), DataData(4, b"file "), DataData(4, b"data!"), DataEnd(4)]


def test_filter_data_after_the_end_of_data_is_a_protocol_error() -> None:
    conn = ServerConnection()
    started(conn, 4, FCGI_FILTER)
    feed(conn, rec(FCGI_STDIN, 4, b"") + rec(FCGI_DATA, 4, b""), on_end=False)
    conn.receive_data(rec(FCGI_DATA, 4, b"more"))
    with pytest.raises(ProtocolError):
        conn.next_event()


@pytest.mark.parametrize("size", [0, 7, 9, 16])
def test_begin_request_body_that_is_not_8_bytes_is_a_protocol_error(size: int) -> None:
    conn = ServerConnection()
    conn.receive_data(rec(FCGI_BEGIN_REQUEST, 1, b"\x00\x01" + bytes(max(size - 2, 0)) if size else b""))
    with pytest.raises(ProtocolError, match="8"):
        conn.next_event()


@pytest.mark.parametrize("mid_request", [False, True])
def test_eof_between_records_is_connection_closed(mid_request: bool) -> None:
    conn = ServerConnection()
    if mid_request:
        started(conn)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.closed


def test_eof_after_complete_records_delivers_them_first() -> None:
    conn = ServerConnection()
    conn.receive_data(_full_request())
    conn.receive_data(b"")
    assert drain(conn, on_end=False) == [*_full_events(), ConnectionClosed()]


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 10, 8 + 19, 8 + 20, 8 + 23])
def test_eof_inside_a_record_is_a_protocol_error(cut: int) -> None:
    data = rec(FCGI_STDIN, 1, b"x" * 20, padding=4)  # header 8, content 20, padding 4 = 32 bytes
    conn = ServerConnection()
    started(conn)
    conn.receive_data(data[:cut])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(ProtocolError, match="closed inside"):
        conn.next_event()


def test_data_to_send_is_empty_when_nothing_is_queued() -> None:
    assert ServerConnection().data_to_send() == b""


# === ClientConnection (the web-server side) ===================================================


def test_client_connection_parses_application_records() -> None:
    data = (b"".join(encode_stream(FCGI_STDOUT, 1, b"Status: 200 OK\r\n\r\nhi")) + encode_record(FCGI_STDOUT, 1)
            + encode_record(FCGI_STDERR, 1, b"warn") + p.encode_end_request(1, 5))
    assert replies(data) == [p.Stdout(1, b"Status: 200 OK\r\n\r\nhi"), p.Stdout(1, b""), p.Stderr(1, b"warn"),
                             EndRequest(1, 5, FCGI_REQUEST_COMPLETE)]


@pytest.mark.parametrize("rtype", [FCGI_BEGIN_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_DATA, FCGI_GET_VALUES, 42])
def test_client_connection_rejects_records_applications_do_not_send(rtype: int) -> None:
    client = ClientConnection()
    client.receive_data(rec(rtype, 1, bytes(8)))
    with pytest.raises(ProtocolError):
        client.next_event()


def test_client_connection_rejects_short_end_request() -> None:
    client = ClientConnection()
    client.receive_data(rec(FCGI_END_REQUEST, 1, bytes(5)))
    with pytest.raises(ProtocolError):
        client.next_event()


# === property-based: any split of a valid stream gives the same events =====================


@dataclass
class GenRequest:
    rid: int
    role: int
    keep_conn: bool
    pairs: List[Tuple[bytes, bytes]]
    stdin: List[bytes]       # non-empty chunks, one record each
    data: List[bytes]        # FILTER only
    params_cuts: List[int]   # where the PARAMS stream is cut into records
    paddings: List[int]      # padding for each record, cycled
    get_values_after: Optional[int]  # insert a GET_VALUES after this record index


names = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(120, 1024), st.integers(0x41, 0x5A)),
)
values = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(120, 70_000), st.integers(0, 255)),
)


mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "set"]), st.integers(0, 10**9),
                     st.integers(0, 255), st.integers(1, 16))


@st.composite
def gen_request(draw: st.DrawFn, rid: Optional[int] = None) -> GenRequest:
    pairs = draw(st.lists(st.tuples(names, values), max_size=6))
    encoded_len = len(encode_pairs(pairs))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(encoded_len - 1, 1)), max_size=4)))) \
        if encoded_len > 1 else []
    role = draw(st.sampled_from([FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER]))
    return GenRequest(
        rid=rid if rid is not None else draw(st.integers(1, 0xFFFF)),
        role=role,
        keep_conn=draw(st.booleans()),
        pairs=pairs,
        stdin=draw(st.lists(st.binary(min_size=1, max_size=300), max_size=4)),
        data=draw(st.lists(st.binary(min_size=1, max_size=100), max_size=3)) if role == FCGI_FILTER else [],
        params_cuts=[c for c in cuts if c < encoded_len],
        paddings=draw(st.lists(st.integers(0, 255), min_size=1, max_size=5)),
        get_values_after=draw(st.none() | st.integers(0, 12)),
    )


def wire_and_events(requests: Sequence[GenRequest]) -> Tuple[bytes, List[object], int]:
    """The byte stream for ``requests`` on one connection, the events it must produce,
    and how many GET_VALUES records it holds."""
    out: List[bytes] = []
    events: List[object] = []
    get_values = 0
    for r in requests:
        records: List[Tuple[int, bytes]] = [(FCGI_BEGIN_REQUEST, struct.pack("!HB5x", r.role, int(r.keep_conn)))]
        encoded = encode_pairs(r.pairs)
        bounds = [0, *r.params_cuts, len(encoded)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            records += [(FCGI_PARAMS, encoded[i:min(i + 0xFFFF, b)]) for i in range(a, b, 0xFFFF)]
        records.append((FCGI_PARAMS, b""))
        records += [(FCGI_STDIN, chunk) for chunk in r.stdin] + [(FCGI_STDIN, b"")]
        if r.role == FCGI_FILTER:
            records += [(FCGI_DATA, chunk) for chunk in r.data] + [(FCGI_DATA, b"")]
        for i, (rtype, content) in enumerate(records):
            out.append(rec(rtype, r.rid, content, r.paddings[i % len(r.paddings)]))
            if r.get_values_after == i:
                out.append(_get_values(b"FCGI_MAX_CONNS", b"NOPE"))
                get_values += 1
        events += [BeginRequest(r.rid, r.role, r.keep_conn), Params(r.rid, as_str(r.pairs))]
        events += [StdinData(r.rid, c) for c in r.stdin] + [StdinEnd(r.rid)]
        if r.role == FCGI_FILTER:
            events += [DataData(r.rid, c) for c in r.data] + [DataEnd(r.rid)]
    return b"".join(out), events, get_values


@dataclass(frozen=True)
class Collected:
    """A Params event's pairs as ``collect_pairs`` collects them (names in dict
    order), which is how the request-head fast path hands them out."""

    request_id: int
    params: List[Tuple[str, str]]
    replaced: List[Tuple[str, str]]

    @classmethod
    def of(cls, request_id: int, params: dict, replaced: List[Tuple[str, str]]) -> "Collected":
        return cls(request_id, list(params.items()), replaced)


def collected(events: List[object]) -> List[object]:
    """``events`` with each Params event in the fast path's form."""
    return [Collected.of(e.request_id, *p.collect_pairs(e.pairs)) if isinstance(e, Params) else e for e in events]


class Driver:
    """Feeds a ServerConnection the way a worker would; the request ends after its last stream.

    With ``fast``, it first offers the buffer to ``read_request_head`` whenever no
    request is active, and to ``read_stdin_chunk`` while one is, as the worker
    does, and takes what those return as events (the head's PARAMS as a
    ``Collected``).
    """

    def __init__(self, fast: bool = False) -> None:
        self.conn = ServerConnection(max_conns=3, max_reqs=4)
        self.events: List[object] = []
        self.sent = bytearray()
        self.role = FCGI_RESPONDER
        self.fast = fast
        self.fast_heads = 0  # requests whose head the fast path took
        self.fast_chunks = 0  # STDIN records the body's fast path took

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for _ in range(len(data) + 10):
            if self.fast and self.conn.active_request_id is None:
                head = self.conn.read_request_head()
                if head is not None:
                    self.fast_heads += 1
                    self.take(head.begin)
                    self.take(Collected.of(head.request_id, head.params, head.replaced))
                    if head.stdin_done:
                        self.take(StdinEnd(head.begin.request_id))
                    continue
            if self.fast and self.conn.active_request_id is not None:
                chunk = self.conn.read_stdin_chunk()
                if chunk is not None and chunk is not NEED_DATA:  # NEED_DATA: next_event says so too
                    self.fast_chunks += 1
                    self.take(StdinData(self.conn.active_request_id, chunk))
                    continue
            event = self.conn.next_event()
            self.sent += self.conn.data_to_send()
            if event is NEED_DATA:
                return
            self.take(event)
            if isinstance(event, ConnectionClosed):
                return
        raise AssertionError("next_event() did not settle")

    def take(self, event: object) -> None:
        self.events.append(event)
        if isinstance(event, BeginRequest):
            self.role = event.role
        done = (isinstance(event, StdinEnd) and self.role != FCGI_FILTER) or isinstance(
            event, (DataEnd, AbortRequest))
        if done:
            self.sent += self.conn.end_request(event.request_id)  # type: ignore[attr-defined]


def run_split(data: bytes, cuts: Iterable[int], fast: bool = False) -> Driver:
    driver = Driver(fast)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        driver.feed(data[a:b])
    driver.feed(b"")
    return driver


def outcome(data: bytes, cuts: Iterable[int], fast: bool) -> Tuple[List[object], bytes, Optional[str]]:
    """Events (PARAMS collected, fast or not), replies and the protocol error
    (if any) of driving ``data`` split at ``cuts``."""
    driver = Driver(fast)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data), len(data)]
    try:
        for a, b in zip(bounds, bounds[1:], strict=False):
            driver.feed(data[a:b])
    except ProtocolError as exc:
        return collected(driver.events), bytes(driver.sent), exc.reason
    return collected(driver.events), bytes(driver.sent), None


@given(st.lists(gen_request(), min_size=1, max_size=3), st.data())
@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_any_split_of_a_valid_stream_yields_the_same_events(requests: List[GenRequest], data: st.DataObject) -> None:
    assume(sum(len(encode_pairs(r.pairs)) for r in requests) < 200_000)
    wire, expected, get_values = wire_and_events(requests)
    expected = [*expected, ConnectionClosed()]
    whole = run_split(wire, [])
    assert whole.events == expected
    assert len(replies(bytes(whole.sent))) == get_values + len(requests)  # GET_VALUES results + END_REQUESTs
    cuts = data.draw(st.lists(st.integers(1, max(len(wire) - 1, 1)), max_size=30), label="cuts")
    split = run_split(wire, cuts)
    assert split.events == expected
    assert split.sent == whole.sent


@given(st.lists(gen_request(), min_size=1, max_size=2).filter(
    lambda rs: sum(len(encode_pairs(r.pairs)) for r in rs) < 4000))
@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_one_byte_chunks_yield_the_same_events(requests: List[GenRequest]) -> None:
    wire, expected, _ = wire_and_events(requests)
    assert run_split(wire, range(1, len(wire))).events == [*expected, ConnectionClosed()]


# --- the request-head fast path gives what the general path gives ---------------------------

@given(st.lists(gen_request(), min_size=1, max_size=3), st.data())
@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fast_request_head_yields_what_the_general_path_yields(
        requests: List[GenRequest], data: st.DataObject) -> None:
    assume(sum(len(encode_pairs(r.pairs)) for r in requests) < 200_000)
    wire, _, _ = wire_and_events(requests)
    cuts = data.draw(st.lists(st.integers(1, max(len(wire) - 1, 1)), max_size=10), label="cuts")
    assert outcome(wire, cuts, fast=True) == outcome(wire, cuts, fast=False)


@given(st.lists(gen_request(), min_size=1, max_size=2), st.lists(mutation, min_size=1, max_size=4), st.data())
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fast_request_head_on_mutated_streams_fails_like_the_general_path(
        requests: List[GenRequest], mutations: List[Tuple[str, int, int, int]], data: st.DataObject) -> None:
    wire = mutate(wire_and_events(requests)[0], mutations)
    cuts = data.draw(st.lists(st.integers(1, max(len(wire), 1)), max_size=4), label="cuts")
    assert outcome(wire, cuts, fast=True) == outcome(wire, cuts, fast=False)


def test_fast_request_head_takes_what_real_web_servers_send() -> None:
    from fixtures_params import load_forwarded, require_fixtures_dir

    fixtures = load_forwarded(require_fixtures_dir())
    assert fixtures
    for fixture in fixtures:
        pairs = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fixture.pairs]
        body = b"x" * fixture.stdin_length
        wire = (begin(1, FCGI_RESPONDER, 1) + params_stream(1, pairs)
                + b"".join(p.encode_stream(FCGI_STDIN, 1, body)) + rec(FCGI_STDIN, 1))
        fast = run_split(wire, [], fast=True)
        assert fast.fast_heads == 1, fixture.id  # one segment: the fast path takes it
        assert fast.fast_chunks == (len(body) + 65534) // 65535, fixture.id  # and every body record
        assert fast.events == collected(run_split(wire, [], fast=False).events), fixture.id
        assert fast.events[1] == Collected.of(1, *p.collect_pairs(fixture.pairs)), fixture.id
        for cut in range(1, len(wire), 97):  # split anywhere: fast or not, the same events
            assert collected(run_split(wire, [cut], fast=True).events) == fast.events, (fixture.id, cut)


@pytest.mark.parametrize("name, wire", [
    ("STDIN for another request id", begin(1) + params_stream(1, [(b"A", b"1")]) + rec(FCGI_STDIN, 2, b"other")
     + rec(FCGI_STDIN, 1, b"mine") + rec(FCGI_STDIN, 1)),
    ("STDIN before the end of PARAMS", begin(1) + rec(FCGI_PARAMS, 1, encode_pairs([(b"A", b"1")]))
     + rec(FCGI_STDIN, 1, b"early")),
    ("STDIN after its end", begin(1) + params_stream(1, [(b"A", b"1")]) + rec(FCGI_STDIN, 1)
     + rec(FCGI_STDIN, 1, b"late")),
    ("STDIN after its end, FILTER role", begin(1, FCGI_FILTER) + params_stream(1, [(b"A", b"1")])
     + rec(FCGI_STDIN, 1) + rec(FCGI_STDIN, 1, b"late")),
    ("DATA before the end of STDIN", begin(1, FCGI_FILTER) + params_stream(1, [(b"A", b"1")])
     + rec(FCGI_DATA, 1, b"early")),
    ("DATA in the FILTER role", begin(1, FCGI_FILTER) + params_stream(1, [(b"A", b"1")]) + rec(FCGI_STDIN, 1, b"in")
     + rec(FCGI_STDIN, 1) + rec(FCGI_DATA, 1, b"data") + rec(FCGI_DATA, 1)),
    ("padded STDIN and an abort", begin(1) + params_stream(1, [(b"A", b"1")]) + rec(FCGI_STDIN, 1, b"x" * 9, 7)
     + rec(FCGI_ABORT_REQUEST, 1)),
])
def test_fast_stdin_path_agrees_with_the_general_path_on_unusual_records(name: str, wire: bytes) -> None:
    # Records arriving one by one (as when nginx streams an upload) reach the body's
    # fast path while the request is in every state, not only right after its head.
    for cuts in ([], record_boundaries(wire), list(range(1, len(wire)))):
        assert outcome(wire, cuts, fast=True) == outcome(wire, cuts, fast=False), (name, cuts)


def record_boundaries(wire: bytes) -> List[int]:
    cuts, pos = [], 0
    while pos + 8 <= len(wire):
        pos += 8 + struct.unpack_from("!H", wire, pos + 4)[0] + wire[pos + 6]
        cuts.append(pos)
    return cuts


def test_fast_request_head_leaves_unusual_heads_to_the_general_path() -> None:
    request = begin(1) + params_stream(1, [(b"A", b"1")]) + rec(FCGI_STDIN, 1)
    unusual = [
        _get_values(b"FCGI_MAX_CONNS") + request,  # a management record first
        rec(FCGI_BEGIN_REQUEST, 1, struct.pack("!HB5x", 9, 0)) + request,  # unknown role
        request[:-8],  # the end of STDIN not here yet: taken, without stdin_done
        request[:20],  # PARAMS incomplete
    ]
    for wire in unusual:
        conn = ServerConnection()
        conn.receive_data(wire)
        head = conn.read_request_head()
        if wire == request[:-8]:
            assert head is not None and not head.stdin_done
        else:
            assert head is None
            assert conn.has_buffered_data  # nothing taken: next_event sees it all


def test_several_sequential_requests_with_the_same_id_split_everywhere() -> None:
    requests = [GenRequest(1, FCGI_RESPONDER, True, [(b"N" * 200, b"V" * 300), (b"X", b"")], [b"a" * 70, b"b"], [],
                           [3, 100, 400], [0, 255, 3], 2) for _ in range(3)]
    wire, expected, _ = wire_and_events(requests)
    for step in (1, 2, 3, 7, 8, 9, 64, 65535):
        assert run_split(wire, range(step, len(wire), step)).events == [*expected, ConnectionClosed()], step


# === property-based: hostile bytes raise ProtocolError, nothing else, and never hang ========


def survive(data: bytes, cuts: Iterable[int] = ()) -> None:
    """Drive a ServerConnection (and a ClientConnection) with ``data``: ProtocolError is fine,
    any other exception fails the test; the bounded loops inside prove it terminates."""
    try:
        run_split(data, cuts)
    except ProtocolError as exc:
        assert isinstance(exc.reason, str) and exc.reason
    client = ClientConnection()
    client.receive_data(data)
    client.receive_data(b"")
    try:
        for _ in range(len(data) // 8 + 2):
            if isinstance(client.next_event(), ConnectionClosed):
                break
        else:
            raise AssertionError("ClientConnection did not reach EOF")
    except ProtocolError:
        pass


@given(st.binary(max_size=3000))
@SETTINGS
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    survive(data)


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3), st.binary(max_size=64), st.integers(0, 20)),
                max_size=12))
@SETTINGS
def test_random_records_raise_only_protocol_error(items: List[Tuple[int, int, bytes, int]]) -> None:
    # Well-framed records of random types, ids and contents reach every branch of the state machine.
    survive(b"".join(rec(t, rid, content, pad) for t, rid, content, pad in items))



@given(st.lists(gen_request(), min_size=1, max_size=2), st.lists(mutation, min_size=1, max_size=6), st.data())
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_mutated_valid_streams_raise_only_protocol_error(
        requests: List[GenRequest], mutations: List[Tuple[str, int, int, int]], data: st.DataObject) -> None:
    wire = mutate(wire_and_events(requests)[0], mutations)
    cuts = data.draw(st.lists(st.integers(1, max(len(wire), 1)), max_size=10), label="cuts")
    survive(wire, cuts)


def mutate(data: bytes, mutations: List[Tuple[str, int, int, int]]) -> bytes:
    wire = bytearray(data)
    for kind, where, byte, count in mutations:
        pos = where % (len(wire) + 1)
        if kind == "flip" and pos < len(wire):
            wire[pos] ^= 1 << (byte % 8)
        elif kind == "set" and pos < len(wire):
            wire[pos] = byte
        elif kind == "insert":
            wire[pos:pos] = bytes([byte]) * count
        elif kind == "delete":
            del wire[pos:pos + count]
    return bytes(wire)


def test_flipping_each_header_byte_of_a_request_raises_only_protocol_error() -> None:
    wire = _full_request(1, b"x" * 20, flags=1) + _get_values(b"FCGI_MAX_CONNS")
    for pos in range(len(wire)):
        for bit in range(8):
            mutated = bytearray(wire)
            mutated[pos] ^= 1 << bit
            survive(bytes(mutated))


def test_unknown_record_type_for_an_inactive_id_is_ignored() -> None:
    conn = ServerConnection()
    assert feed(conn, rec(42, 5, b"future record type")) == []
    assert feed(conn, _full_request(), on_end=False) == _full_events()


def test_unknown_record_type_for_the_active_id_is_a_protocol_error() -> None:
    conn = ServerConnection()
    started(conn, 1)
    conn.receive_data(rec(42, 1, b"?"))
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_data_interleaved_with_stdin_is_a_protocol_error() -> None:
    conn = ServerConnection()
    started(conn, 4, FCGI_FILTER)
    conn.receive_data(rec(FCGI_STDIN, 4, b"in") + rec(FCGI_DATA, 4, b"too early"))
    assert conn.next_event() == StdinData(4, b"in")
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_end_of_an_answered_requests_body_is_noticed() -> None:
    # The app answered after reading CONTENT_LENGTH bytes, before the empty STDIN
    # record was read: the worker still learns that the whole body has arrived
    # (and can close without a lingering drain).
    conn = ServerConnection()
    started(conn, 1)
    assert feed(conn, rec(FCGI_STDIN, 1, b"body"), on_end=False) == [StdinData(1, b"body")]
    conn.end_request(1)
    assert not conn.ended_input_complete
    assert feed(conn, rec(FCGI_STDIN, 1, b"")) == []
    assert conn.ended_input_complete


def test_body_read_to_its_end_is_complete_at_end_request() -> None:
    conn = ServerConnection()
    started(conn, 1)
    feed(conn, rec(FCGI_STDIN, 1, b"x") + rec(FCGI_STDIN, 1, b""), on_end=False)
    conn.end_request(1)
    assert conn.ended_input_complete


def test_a_record_inside_one_received_chunk_is_handed_out_without_a_copy() -> None:
    chunk = rec(FCGI_STDIN, 1, b"a" * 100) + rec(FCGI_STDIN, 1, b"b" * 50)
    reader = RecordReader()
    reader.feed(chunk)
    first, second = reader.next_record(), reader.next_record()
    assert first is not None and second is not None
    assert isinstance(first.content, memoryview) and first.content.obj is chunk
    assert second.content.obj is chunk and bytes(second.content) == b"b" * 50


def test_a_record_across_chunks_is_joined_and_reading_goes_on_in_the_last_chunk() -> None:
    wire = rec(FCGI_STDIN, 1, b"a" * 100) + rec(FCGI_STDIN, 1, b"b" * 50) + rec(FCGI_STDIN, 1, b"c" * 10)
    head, tail = wire[:60], wire[60:]
    reader = RecordReader()
    reader.feed(head)
    assert reader.next_record() is None
    reader.feed(tail)
    first, second, third = reader.next_record(), reader.next_record(), reader.next_record()
    assert first is not None and bytes(first.content) == b"a" * 100
    assert first.content.obj is not tail  # joined: the one copy of those bytes
    assert second is not None and third is not None
    assert bytes(second.content) == b"b" * 50 and bytes(third.content) == b"c" * 10
    assert second.content.obj is third.content.obj  # the rest of the tail chunk, viewed in place
    assert reader.next_record() is None and reader.buffered == 0


# --- the request's state, and records that arrive while the app runs ------------------


@pytest.mark.parametrize("role, ends, states", [
    (FCGI_RESPONDER, [FCGI_STDIN], [p.RequestState.STDIN, p.RequestState.INPUT_COMPLETE]),
    (FCGI_AUTHORIZER, [FCGI_STDIN], [p.RequestState.STDIN, p.RequestState.INPUT_COMPLETE]),
    (FCGI_FILTER, [FCGI_STDIN, FCGI_DATA],
     [p.RequestState.STDIN, p.RequestState.DATA, p.RequestState.INPUT_COMPLETE]),
])
def test_each_empty_record_moves_the_request_to_its_next_state(role: int, ends: List[int],
                                                               states: List[p.RequestState]) -> None:
    conn = ServerConnection()
    assert conn.state is None
    conn.receive_data(begin(1, role))
    conn.next_event()
    assert conn.state is p.RequestState.PARAMS
    started_states = [conn.state]
    feed(conn, params_stream(1, [(b"A", b"1")]), on_end=False)
    started_states.append(conn.state)
    for stream in ends:
        assert conn.stream_open(stream)
        feed(conn, rec(stream, 1, b""), on_end=False)
        assert not conn.stream_open(stream)
        started_states.append(conn.state)
    assert started_states == [p.RequestState.PARAMS, *states]
    assert conn.input_complete
    conn.end_request(1)
    assert conn.state is None and conn.ended_input_complete


def test_an_authorizer_that_got_no_stdin_still_counts_as_complete_once_answered() -> None:
    # mod_authnz_fcgi sends no STDIN record at all: nothing is waited for after END_REQUEST.
    conn = ServerConnection()
    started(conn, 1, FCGI_AUTHORIZER)
    assert not conn.input_complete
    conn.end_request(1)
    assert conn.ended_input_complete


def test_the_fast_path_leaves_the_same_state_as_the_general_one() -> None:
    get = begin(1) + params_stream(1, [(b"REQUEST_METHOD", b"GET")]) + rec(FCGI_STDIN, 1, b"")
    for data in (get, get[:-8]):  # with and without the empty STDIN record
        fast, general = ServerConnection(), ServerConnection()
        fast.receive_data(data)
        assert fast.read_request_head() is not None
        feed(general, data, on_end=False)
        assert fast.state is general.state


def _responding(body_unread: bytes = b"") -> ServerConnection:
    """A request whose app is running: STDIN still open unless ``body_unread`` is None."""
    conn = ServerConnection()
    started(conn, 1)
    if body_unread:
        conn.receive_data(rec(FCGI_STDIN, 1, body_unread))
    return conn


def test_a_second_begin_request_while_the_app_runs_is_refused_at_once() -> None:
    conn = _responding()
    conn.receive_data(begin(2))
    assert conn.next_event_during_response() is NEED_DATA
    assert replies(conn.data_to_send()) == [EndRequest(2, 0, p.FCGI_CANT_MPX_CONN)]
    assert conn.active_request_id == 1


def test_get_values_while_the_app_runs_is_answered() -> None:
    conn = _responding()
    conn.receive_data(_get_values(b"FCGI_MPXS_CONNS"))
    assert conn.next_event_during_response() is NEED_DATA
    assert replies(conn.data_to_send()) == [p.GetValuesResult({"FCGI_MPXS_CONNS": "0"})]


def test_an_abort_while_the_app_runs_is_an_event() -> None:
    conn = _responding()
    conn.receive_data(rec(FCGI_STDIN, 1, b"") + rec(p.FCGI_ABORT_REQUEST, 1))
    assert conn.next_event_during_response() == AbortRequest(1)
    assert conn.input_complete  # the end of STDIN before it was taken on the way


def test_the_apps_unread_body_stays_for_wsgi_input() -> None:
    conn = _responding(body_unread=b"not read yet")
    conn.receive_data(rec(p.FCGI_ABORT_REQUEST, 1))
    assert conn.next_event_during_response() is NEED_DATA  # the abort waits behind the body
    assert conn.next_event() == StdinData(1, b"not read yet")
    assert conn.next_event() == AbortRequest(1)


def test_the_peer_closing_while_the_app_runs_is_an_event() -> None:
    conn = _responding()
    conn.receive_data(b"")
    assert conn.next_event_during_response() == ConnectionClosed()


def test_stdin_after_its_end_while_the_app_runs_is_a_protocol_error() -> None:
    conn = _responding()
    conn.receive_data(rec(FCGI_STDIN, 1, b"") + rec(FCGI_STDIN, 1, b"late"))
    with pytest.raises(ProtocolError, match="after the end of the STDIN stream"):
        conn.next_event_during_response()


def test_end_records_are_built_once_and_out_of_range_fields_still_raise() -> None:
    assert p.encode_end_request(1) is p.encode_end_request(1)  # cached: the same record each request
    assert p.encode_end_request(1, 0, 1) == rec(p.FCGI_END_REQUEST, 1, p.END_REQUEST_BODY.pack(0, 1))
    assert p.encode_end_of_stream(p.FCGI_STDOUT, 2) == rec(p.FCGI_STDOUT, 2)
    for bad in (lambda: p.encode_end_request(0x10001), lambda: p.encode_end_request(1, 0, 0x100),
                lambda: p.encode_end_of_stream(p.FCGI_STDOUT, 0x10001)):
        with pytest.raises(struct.error):  # never a cached record of other fields
            bad()
