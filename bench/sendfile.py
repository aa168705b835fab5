#!/usr/bin/env python3
"""wsgi.file_wrapper in-process: os.sendfile against iterating the file.

    bench/.venv/bin/python bench/sendfile.py [-n 500] [--size 1048576]

One worker (``Worker._accept_one``) serves N requests for a file of --size bytes
over a unix socket to a client in a child process, first with the worker's
sendfile path, then with it disabled (the wrapper is iterated in 64 KiB reads,
as for a file-like object without a descriptor), alternating three times. It
prints the worker's user and sys CPU and wall time per response.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fcgiload  # noqa: E402
from wsgi_fcgi import worker as worker_module  # noqa: E402


def measure(mode: str, count: int, size: int, path: str) -> str:
    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](open(path, "rb"))  # type: ignore[no-any-return]

    saved = worker_module.Connection.send_file
    if mode == "iterate":
        del worker_module.Connection.send_file  # the handler then iterates the wrapper
    try:
        address = os.path.join(tempfile.mkdtemp(prefix="wsgi_fcgi-sendfile-"), "s")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(64)
        listener.setblocking(False)
        worker = worker_module.Worker(app, [listener])
        request = fcgiload.build_request("/file")
        warm = 20
        pid = os.fork()
        if pid == 0:  # the client: one connection per request, read to EOF
            for _ in range(count + warm):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(address)
                client.sendall(request)
                while client.recv(262144):
                    pass
                client.close()
            os._exit(0)

        def serve(n: int) -> None:
            for _ in range(n):
                select.select([listener], [], [])
                worker._accept_one(listener)

        serve(warm)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        serve(count)
        after, ended = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        os.waitpid(pid, 0)
        listener.close()
    finally:
        worker_module.Connection.send_file = saved  # type: ignore[method-assign]
    user = (after.ru_utime - before.ru_utime) / count * 1e6
    sys_ = (after.ru_stime - before.ru_stime) / count * 1e6
    return f"| {mode} | {user:.0f} | {sys_:.0f} | {(ended - started) / count * 1e6:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="responses per measurement")
    parser.add_argument("--size", type=int, default=1 << 20, help="file size in bytes")
    args = parser.parse_args()
    fd, path = tempfile.mkstemp(prefix="wsgi_fcgi-sendfile-")
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(args.size))
    rows: List[str] = []
    try:
        for _ in range(3):
            for mode in ("sendfile", "iterate"):
                rows.append(measure(mode, args.n, args.size, path))
    finally:
        os.unlink(path)
    print(f"| {args.size}-byte file via wsgi.file_wrapper | worker user µs | worker sys µs | wall µs per response |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
