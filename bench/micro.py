#!/usr/bin/env python3
"""In-process cost of wsgi_fcgi's per-request stages, no sockets.

    bench/.venv/bin/python bench/micro.py [--src DIR]

Times, in µs per request (best of 5 timeit repeats), what one worker does in
Python for the bench workloads: parsing nginx's request bytes into events,
decoding PARAMS, building the environ, running the handler (fake channel: the
send costs nothing), and pushing 1 MiB of STDIN (32 KiB records, received 64
KiB at a time) through the framing layer and wsgi.input. The "prototype" rows
are small stand-alone sketches of alternatives (see README.md), to show what
each change could save. They are not wsgi_fcgi code. The socket syscalls are
not here: see run.py --diag trace.

``--src DIR`` measures another copy of the package, for example
bench/results/<run>/src, the copy that a matrix run measured.
"""

from __future__ import annotations

import argparse
import struct
import sys
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

BENCH = Path(__file__).resolve().parent


def best_us(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


class FakeChannel:
    """The handler's Channel with a STDIN that is already complete."""

    def __init__(self, stdin_chunks: List[bytes]) -> None:
        self.chunks = stdin_chunks
        self.pos = 0
        self.sent = 0

    def read_stdin(self) -> bytes:
        if self.pos < len(self.chunks):
            self.pos += 1
            return self.chunks[self.pos - 1]
        return b""

    def read_data(self) -> bytes:
        return b""

    def send(self, buffers: List[Any]) -> None:
        self.sent += len(buffers)

    def end_request(self, app_status: int) -> bytes:
        return b"\x01\x03\x00\x01\x00\x08\x00\x00" + bytes(8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", help="directory holding the wsgi_fcgi package to measure")
    ap.add_argument("--cprofile", metavar="FILE", help="also cProfile 20,000 whole hello requests, print the top 25")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    sys.path.insert(1, str(BENCH))
    import apps
    import fcgiload
    import wsgi_fcgi
    from wsgi_fcgi import protocol as p
    from wsgi_fcgi.environ import build_environ
    from wsgi_fcgi.handler import InputStream, RequestHandler

    print(f"wsgi_fcgi from {Path(wsgi_fcgi.__file__).parent}", file=sys.stderr)
    rows: List[Tuple[str, float, str]] = []

    get = fcgiload.build_request("/hello")
    params_bytes = p.encode_pairs(fcgiload.nginx_params("/hello", 0))

    # 1. request bytes -> events (BEGIN_REQUEST, Params, StdinEnd), as the worker sees one recv
    def parse_get() -> None:
        conn = p.ServerConnection()
        conn.receive_data(get)
        while True:
            event = conn.next_event()
            if type(event) is p.StdinEnd:
                return

    rows.append(("parse 560-byte GET into events (ServerConnection, incl. decode_pairs)",
                 best_us(parse_get, 20000), "protocol.py"))

    # 1b. the same bytes through the request-head fast path the worker tries first
    def parse_get_fast() -> None:
        conn = p.ServerConnection()
        conn.receive_data(get)
        conn.read_request_head()

    if hasattr(p.ServerConnection, "read_request_head"):
        rows.append(("the same through ServerConnection.read_request_head (fast path)",
                     best_us(parse_get_fast, 20000), "protocol.py read_request_head"))

    # 2. PARAMS -> pairs
    rows.append(("decode_pairs (25 pairs, 3 repeated names)", best_us(lambda: p.decode_pairs(params_bytes), 20000),
                 "protocol.py decode_pairs"))
    pairs = p.decode_pairs(params_bytes)

    # 3. pairs -> environ
    rows.append(("build_environ", best_us(lambda: build_environ(pairs), 20000), "environ.py build_environ"))

    # prototype: decode straight into a dict, duplicates merged inline
    def decode_to_dict(content: bytes) -> Dict[str, str]:
        text = content.decode("latin-1")
        end = len(text)
        pos = 0
        env: Dict[str, str] = {}
        unpack = struct.unpack_from
        while pos < end:
            n = content[pos]
            if n & 0x80:
                n = unpack("!I", content, pos)[0] & 0x7FFFFFFF
                pos += 4
            else:
                pos += 1
            v = content[pos]
            if v & 0x80:
                v = unpack("!I", content, pos)[0] & 0x7FFFFFFF
                pos += 4
            else:
                pos += 1
            vs = pos + n
            ve = vs + v
            if ve > end:
                raise ValueError("truncated")
            name = text[pos:vs]
            if name in env and name[:5] == "HTTP_" and name != "HTTP_HOST":
                env[name] += ", " + text[vs:ve]
            else:
                env[name] = text[vs:ve]
            pos = ve
        return env

    rows.append(("prototype: decode straight into a dict, merge duplicates inline",
                 best_us(lambda: decode_to_dict(params_bytes), 20000), "sketch, not wsgi_fcgi code"))

    # 4. the handler, fake channel
    handler = RequestHandler(apps.application)

    def handle(path: str) -> Callable[[], None]:
        prs = p.decode_pairs(p.encode_pairs(fcgiload.nginx_params(path, 0)))
        return lambda: handler.handle(FakeChannel([]), 1, 1, prs)

    rows.append(("RequestHandler.handle, hello (environ + app + framing)", best_us(handle("/hello"), 20000),
                 "handler.py handle"))
    rows.append(("RequestHandler.handle, json_1k", best_us(handle("/json_1k"), 10000), "handler.py handle"))
    rows.append(("RequestHandler.handle, big_1m (16 x 64 KiB)", best_us(handle("/big_1m"), 2000),
                 "handler.py write/flush"))
    rows.append(("  of which the app alone, hello", best_us(
        lambda: apps.application({"PATH_INFO": "/hello"}, lambda s, h: None), 50000), "apps.py"))

    # 4b. the Flask app alone, with wsgi_fcgi's environ and with the empty values nginx sent kept
    try:
        import io

        import flaskapp
    except ImportError:
        flaskapp = None
    if flaskapp is not None:
        flask_env = build_environ(p.decode_pairs(p.encode_pairs(fcgiload.nginx_params("/", 0))))

        def flask_call(env: Dict[str, Any]) -> Callable[[], None]:
            def call() -> None:
                e = dict(env)
                e["wsgi.input"] = io.BytesIO()
                e["wsgi.errors"] = sys.stderr
                for _ in flaskapp.app(e, lambda s, h, x=None: None):
                    pass
            return call

        kept = dict(flask_env, CONTENT_TYPE="", CONTENT_LENGTH="")
        rows.append(("Flask app alone, wsgi_fcgi's environ (no CONTENT_TYPE/LENGTH)",
                     best_us(flask_call(flask_env), 5000), "environ.py:100-108"))
        rows.append(("Flask app alone, CONTENT_TYPE='' CONTENT_LENGTH='' kept as nginx sent them",
                     best_us(flask_call(kept), 5000), "environ.py: the empty values nginx sends"))

    # 5. 1 MiB of STDIN through framing + wsgi.input, as nginx sends it
    body = 1 << 20
    post = fcgiload.build_request("/post_1m", body)
    recvs = [post[i:i + 65536] for i in range(0, len(post), 65536)]

    def stdin_through_framing() -> int:
        conn = p.ServerConnection()
        it = iter(recvs)

        fast = getattr(conn, "read_stdin_chunk", None)  # the worker's body fast path, where there is one

        def read_chunk() -> bytes:
            while fast is not None:
                chunk = fast()
                if chunk is p.NEED_DATA:
                    conn.receive_data(next(it))
                elif chunk is not None:
                    return chunk  # type: ignore[no-any-return]
                else:
                    break
            while True:
                event = conn.next_event()
                if event is p.NEED_DATA:
                    conn.receive_data(next(it))
                    continue
                if type(event) is p.StdinData:
                    return event.data  # type: ignore[union-attr]
                if type(event) is p.StdinEnd:
                    return b""

        stream = InputStream(read_chunk, body)
        total = 0
        while True:
            data = stream.read(65536)
            if not data:
                return total
            total += len(data)

    rows.append(("1 MiB STDIN: ServerConnection + InputStream.read(64 KiB)", best_us(stdin_through_framing, 200),
                 "protocol.py RecordReader, handler.py InputStream"))

    # prototype: parse records out of one buffer with memoryviews, one copy per byte
    header = struct.Struct("!BBHHBx")

    def stdin_prototype() -> int:
        buf = bytearray(len(post))  # stands in for recv_into a reusable buffer
        view = memoryview(buf)
        filled = 0
        for piece in recvs:
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
        pos = 0
        total = 0
        unpack = header.unpack_from
        while pos + 8 <= filled:
            _, rtype, _, length, padding = unpack(buf, pos)
            if rtype == 5:
                if not length:
                    break
                data = bytes(view[pos + 8:pos + 8 + length])  # the one copy the app gets
                total += len(data)
            pos += 8 + length + padding
        return total

    rows.append(("prototype: recv_into one buffer, memoryview records, one copy per byte",
                 best_us(stdin_prototype, 200), "sketch, not wsgi_fcgi code"))

    # 6. one whole request in-process: accept, Connection, parse, handler, sendmsg, close
    #    (Worker._accept on a real unix socket; the client side is timed apart and subtracted)
    import os
    import socket
    import tempfile
    import time
    from wsgi_fcgi.worker import Worker

    path = os.path.join(tempfile.mkdtemp(prefix="wsgi_fcgi-micro-"), "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.setblocking(False)  # as in Worker.run: _accept serves what is queued, then returns
    worker = Worker(apps.application, [listener])

    def serve(n: int, *, accept: bool = True) -> float:
        """Seconds of worker time for n requests (the client's connect/send/recv outside the clock)."""
        spent = 0.0
        for _ in range(n):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            c.sendall(get)
            if accept:
                t0 = time.perf_counter()
                worker._accept(listener)
                spent += time.perf_counter() - t0
            c.recv(65536)
            c.close()
        return spent

    serve(500)
    rows.append(("whole hello request in one worker (Worker._accept: syscalls + Python)",
                 min(serve(3000) for _ in range(3)) / 3000 * 1e6, "worker.py _accept/_serve"))
    if args.cprofile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        serve(20000)
        prof.disable()
        out = Path(args.cprofile)
        prof.dump_stats(str(out))
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(25)

    width = max(len(r[0]) for r in rows)
    print(f"| {'stage'.ljust(width)} | µs/request | where |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, us, where in rows:
        print(f"| {name.ljust(width)} | {us:8.1f} | {where} |")


if __name__ == "__main__":
    main()
