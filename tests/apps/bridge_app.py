"""A plain WSGI app for the functional tests of the bridge (no framework in the way).

Routes by PATH_INFO; markers are files whose path the test passes in the
query string, so a test can see from outside what happened inside the worker
(the app started, close() was called).
"""

import hashlib
import json
import os
import select
import time
from urllib.parse import parse_qs


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _touch(path, text=""):
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def _wait_at_gate(path, limit=30.0):
    """Block until the test writes to the FIFO at ``path`` (tests/support/gate.py),
    or ``limit`` seconds pass. O_NONBLOCK: the open does not wait for a writer,
    and Linux reports no end-of-file on a FIFO before a writer has come."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        select.select([fd], [], [], limit)
    finally:
        os.close(fd)


class ClosingBody:
    """A response iterable that records its close() call in a marker file."""

    def __init__(self, chunks, marker):
        self.chunks = chunks
        self.marker = marker

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        _touch(self.marker, "closed")


def _text(start_response, text, status="200 OK", headers=()):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/hello":
        return _text(start_response, "Hello, World!")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/environ":
        shown = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}
        shown["wsgi.version"] = list(environ["wsgi.version"])
        return _text(start_response, json.dumps(shown, sort_keys=True))
    if path == "/sha256":
        _touch(query.get("started"), "started")
        digest, size = hashlib.sha256(), 0
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        return _text(start_response, f"{size} {digest.hexdigest()} {environ.get('CONTENT_LENGTH')}")
    if path == "/read-then-close":
        _touch(query.get("started"), "started")

        def body():
            environ["wsgi.input"].read()  # blocks until the body ends, or the peer goes away
            yield b"read it all"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingBody(body(), query.get("closed"))
    if path == "/sleep":
        _touch(query.get("started"), "started")
        time.sleep(float(query.get("s", "1")))
        return _text(start_response, "slept")
    if path == "/stream-gated":
        # "chunk 1", then the gate ?fifo, then "chunk 2"; ?accel=no adds nginx's
        # X-Accel-Buffering: no.
        headers = [("Content-Type", "text/plain")]
        if query.get("accel") == "no":
            headers.append(("X-Accel-Buffering", "no"))

        def gated():
            yield b"chunk 1\n"
            _wait_at_gate(query["fifo"])
            yield b"chunk 2\n"
        start_response("200 OK", headers)
        return gated()
    if path == "/gated":
        # No answer before the gate ?fifo opens (a request that takes too long).
        _wait_at_gate(query["fifo"], float(query.get("limit", "30")))
        return _text(start_response, "released")
    if path == "/download":
        size = int(query.get("size", "0"))
        block = bytes(range(256)) * 256

        def chunks():
            left = size
            while left > 0:
                yield block[:min(left, len(block))]
                left -= len(block)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return chunks()
    if path == "/file":
        # wsgi.file_wrapper over a file the test wrote: from ?offset, ?length as Content-Length
        f = open(query["path"], "rb")
        f.seek(int(query.get("offset", "0")))
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in query:
            headers.append(("Content-Length", query["length"]))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f)
    if path == "/error-before":
        raise RuntimeError("deliberate failure with a secret /srv/app/settings.py")
    if path == "/error-after":
        def failing():
            yield b"first part"
            raise RuntimeError("deliberate failure after the headers")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return failing()
    if path == "/inject":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: session=stolen")])
        return [b"body"]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]
    if path == "/authorize":
        if environ.get("HTTP_AUTHORIZATION") == "Bearer good":
            return _text(start_response, "ok", headers=[("Variable-AUTH_USER", "alice")])
        return _text(start_response, "go away", "403 Forbidden")
    if path == "/filter":
        data = environ["wsgi_fcgi.data"].read()
        return _text(start_response, data.decode().upper())
    return _text(start_response, "not found", "404 Not Found")


application = app


def create_app(greeting="factory"):
    def factory_app(environ, start_response):
        return _text(start_response, greeting)
    return factory_app
