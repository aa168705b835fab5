"""Fixture app for tests/test_threads.py (``--threads``), routed by PATH_INFO.

The test and the app meet in the directory ``$THREADS_APP_DIR``: a request
that must be in progress leaves a marker file there when it starts, and
waits for a file the test creates. Nothing here stands in for
synchronisation with a clock: the markers and the barrier are the events.

- ``/pid``          "<pid> <wsgi.multithread> <VERSION>"
- ``/hold?id=X``    marks ``arrived-X``, waits until ``release`` exists; "<pid> X <VERSION>"
- ``/barrier``      waits on one Barrier($THREADS_BARRIER) for every request; "<pid> passed"
- ``/stuck``        marks ``arrived-stuck``, then never returns (for --timeout)
- ``/stream?id=X``  one chunk, the barrier, then three more chunks
- ``/raise``        the barrier, then RuntimeError (before any output)
- ``/exit``         SystemExit(3) (before any output)
- ``/endless?id=X`` 64 KiB chunks until the server closes it; close() marks ``closed-X``
- ``/post``         reads the whole body; "<length>"

VERSION comes from ``$THREADS_APP_DIR/version`` at import, so a reload
that imports the app afresh shows a new one.
"""

import os
import threading
import time

from manager_app import _query  # the same QUERY_STRING reading as the other fixture app

DIR = os.environ["THREADS_APP_DIR"]
BARRIER = threading.Barrier(int(os.environ.get("THREADS_BARRIER", "2")),
                            timeout=float(os.environ.get("THREADS_BARRIER_TIMEOUT", "30")))
HOLD_LIMIT = 40.0  # a test that forgot its release file must still end


def _read_version():
    try:
        with open(os.path.join(DIR, "version")) as f:
            return f.read().strip()
    except OSError:
        return "1"


VERSION = _read_version()


def _mark(name):
    with open(os.path.join(DIR, name), "w") as f:
        f.write(str(os.getpid()))


def _wait_for_release():
    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(os.path.join(DIR, "release")) and time.monotonic() < deadline:
        time.sleep(0.01)


def stuck_forever():
    _mark("arrived-stuck")
    while True:
        time.sleep(0.05)


class Endless:
    def __init__(self, name):
        self.name = name

    def __iter__(self):
        chunk = b"x" * 65536
        while True:
            yield chunk

    def close(self):
        _mark(f"closed-{self.name}")


def _stream(name):
    yield f"{name} first\n".encode()
    BARRIER.wait()
    for n in range(3):
        yield f"{name} chunk {n}\n".encode()


def _text(start_response, body, status="200 OK"):
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = _query(environ)
    if path == "/hold":
        _mark(f"arrived-{query.get('id', 'x')}")
        _wait_for_release()
        return _text(start_response, f"{os.getpid()} {query.get('id', 'x')} {VERSION}")
    if path == "/barrier":
        BARRIER.wait()
        return _text(start_response, f"{os.getpid()} passed")
    if path == "/stuck":
        stuck_forever()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(query.get("id", "x"))
    if path == "/raise":
        BARRIER.wait()
        raise RuntimeError("this request fails on purpose")
    if path == "/exit":
        raise SystemExit(3)
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless(query.get("id", "x"))
    if path == "/post":
        body = environ["wsgi.input"].read()
        return _text(start_response, str(len(body)))
    return _text(start_response, f"{os.getpid()} {environ['wsgi.multithread']} {VERSION}")
