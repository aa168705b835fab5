"""A FastCGI load generator for run.py --direct: no web server, straight to
a backend's unix socket.

Each of N processes (multiprocessing, fork) loops: connect, send one
pre-encoded request (BEGIN_REQUEST without KEEP_CONN + PARAMS shaped like
nginx's + STDIN), read records until END_REQUEST, close -- what nginx does
with ``fastcgi_keep_conn off``, minus HTTP. The request bytes are built once
with wsgi_fcgi.protocol's encoders; the hot loop is raw socket calls.

    python fcgiload.py SOCKET PATH [--procs N] [--duration S] [--body BYTES]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import struct
import sys
import time
from typing import Dict, List, Tuple

from wsgi_fcgi import protocol as p

HEADER = struct.Struct("!BBHHBx")
RECV = 256 * 1024


def nginx_params(path: str, body: int) -> List[Tuple[bytes, bytes]]:
    """What nginx 1.22 sends for GET/POST ``path`` with fastcgi.conf's site block."""
    method = b"POST" if body else b"GET"
    pairs = [
        (b"QUERY_STRING", b""), (b"REQUEST_METHOD", method),
        (b"CONTENT_TYPE", b"application/octet-stream" if body else b""),
        (b"CONTENT_LENGTH", str(body).encode() if body else b""),
        (b"SCRIPT_NAME", path.encode()), (b"REQUEST_URI", path.encode()), (b"DOCUMENT_URI", path.encode()),
        (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"), (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REQUEST_SCHEME", b"http"), (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_SOFTWARE", b"nginx/1.22.1"), (b"REMOTE_ADDR", b"127.0.0.1"), (b"REMOTE_PORT", b"51234"),
        (b"REMOTE_USER", b""), (b"SERVER_ADDR", b"127.0.0.1"), (b"SERVER_PORT", b"8080"),
        (b"SERVER_NAME", b"localhost"), (b"REDIRECT_STATUS", b"200"), (b"HTTP_HOST", b"127.0.0.1"),
        (b"SCRIPT_NAME", b""), (b"PATH_INFO", path.encode()), (b"HTTP_HOST", b"127.0.0.1:8080"),
        (b"HTTP_USER_AGENT", b"fcgiload"), (b"HTTP_ACCEPT", b"*/*"),
    ]
    if body:
        pairs.append((b"HTTP_CONTENT_LENGTH", str(body).encode()))
        pairs.append((b"HTTP_CONTENT_TYPE", b"application/octet-stream"))
    return pairs


def build_request(path: str, body: int = 0, request_id: int = 1) -> bytes:
    """BEGIN_REQUEST + PARAMS + STDIN in 32 KiB records (nginx's size) + empty STDIN."""
    parts = [p.encode_begin_request(request_id, keep_conn=False), p.encode_params(request_id, nginx_params(path, body))]
    payload = bytes((32 + (i * 7) % 95) for i in range(251)) * (body // 251 + 1)
    for start in range(0, body, 32768):
        parts.append(p.encode_record(p.FCGI_STDIN, request_id, payload[start:min(start + 32768, body)]))
    parts.append(p.encode_record(p.FCGI_STDIN, request_id))
    return b"".join(parts)


def one_request(sock_path: str, request: bytes, timeout: float = 30.0) -> Tuple[bool, int, bytes]:
    """(status 200 seen, STDOUT bytes, the first 256 bytes of STDOUT)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sock_path)
        sock.sendall(request)
        return read_response(sock)
    finally:
        sock.close()


def read_response(sock: socket.socket) -> Tuple[bool, int, bytes]:
    """Walk the records in place (recv_into one buffer; content is skipped, not
    copied, except the first 256 bytes of STDOUT) until END_REQUEST: the client
    must cost little next to a 1 MiB response. Headers and content may arrive
    in separate segments (flup and uWSGI write them apart)."""
    view = memoryview(bytearray(RECV))
    recv_into = sock.recv_into
    unpack = HEADER.unpack_from
    header = bytearray()
    content_left = padding_left = 0
    rtype = 0
    stdout = 0
    head = bytearray()
    while True:
        n = recv_into(view)
        if not n:
            raise ConnectionError("connection closed before END_REQUEST")
        pos = 0
        while pos < n:
            if content_left:
                step = min(content_left, n - pos)
                if rtype == 6 and len(head) < 256:
                    head += view[pos:pos + min(step, 256 - len(head))]
                content_left -= step
                pos += step
                continue
            if padding_left:
                step = min(padding_left, n - pos)
                padding_left -= step
                pos += step
                continue
            need = 8 - len(header)
            header += view[pos:pos + need]
            pos += min(need, n - pos)
            if len(header) < 8:
                break
            _, rtype, _, content_left, padding_left = unpack(header)
            header = bytearray()
            if rtype == 6:
                stdout += content_left
            elif rtype == 3:
                first = bytes(head)
                return first.startswith(b"Status: 200") or b"\nStatus: 200" in first, stdout, first


def _loop(sock_path: str, request: bytes, deadline: float, out: "multiprocessing.Queue[Dict[str, float]]") -> None:
    ok = bad = errors = 0
    nbytes = 0
    cpu0 = time.process_time()
    while time.monotonic() < deadline:
        try:
            good, size, _ = one_request(sock_path, request)
        except OSError:
            errors += 1
            time.sleep(0.001)
            continue
        if good:
            ok += 1
        else:
            bad += 1
        nbytes += size
    out.put({"ok": ok, "bad": bad, "errors": errors, "bytes": nbytes, "cpu_s": time.process_time() - cpu0})


def run(sock_path: str, request: bytes, procs: int, duration: float) -> Dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    queue: "multiprocessing.Queue[Dict[str, float]]" = ctx.Queue()
    start = time.monotonic()
    deadline = start + duration
    workers = [ctx.Process(target=_loop, args=(sock_path, request, deadline, queue), daemon=True) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=duration + 60) for _ in workers]
    elapsed = time.monotonic() - start
    for w in workers:
        w.join(5)
    total = {k: sum(r[k] for r in results) for k in ("ok", "bad", "errors", "bytes", "cpu_s")}
    total["elapsed_s"] = elapsed
    total["requests"] = total["ok"] + total["bad"]
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("socket")
    ap.add_argument("path")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--body", type=int, default=0, help="POST a body of this many bytes")
    args = ap.parse_args()
    request = build_request(args.path, args.body)
    print(one_request(args.socket, request), file=sys.stderr)
    print(json.dumps(run(args.socket, request, args.procs, args.duration)))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
