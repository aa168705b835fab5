"""The benchmark's WSGI app: one module, every workload, dispatched on the
last segment of PATH_INFO (so /hello and /stream/hello are the same thing).

    hello     b"Hello, World!" (13 bytes)
    json_1k   json.dumps of a small dict, 1024 bytes (serialised per request)
    big_1m    1 MiB as 16 x 64 KiB chunks from a generator
    big_1g    1 GiB as 16384 x 64 KiB chunks from a generator (memory test)
    post_1m   the request body read in 64 KiB reads, answered "<length> <adler32>\n"
    post      the same, for any length (memory test)
    wait_50ms sleeps 50 ms (a database call, an HTTP API), then 13 bytes: what
              threads per worker are for (run.py --threads)

Standard library only. Flask lives in flaskapp.py, so the Python backends do
not all carry Flask's ~20 MiB in the RSS columns. bench/c/hello.c answers the
same paths with the same bytes, all but wait_50ms (run.py skips that one for it).
"""

import json
import time
import zlib

HELLO = b"Hello, World!"
CHUNK = b"x" * 65536
READ_SIZE = 65536
WAIT_S = 0.05
WAITED = b"Waited 50 ms."


def _json_doc():
    doc = {"items": [{"id": i, "name": "item-%03d" % i, "ok": True} for i in range(16)], "pad": ""}
    size = len(json.dumps(doc, separators=(",", ":")))
    doc["pad"] = "x" * (1024 - size)
    return doc


JSON_DOC = _json_doc()


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def json_1k(environ, start_response):
    body = json.dumps(JSON_DOC, separators=(",", ":")).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _chunks(count):
    for _ in range(count):
        yield CHUNK


def big_1m(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(16 * len(CHUNK)))])
    return _chunks(16)


def big_1g(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(16384 * len(CHUNK)))])
    return _chunks(16384)


def post(environ, start_response):
    stream = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    length = 0
    checksum = zlib.adler32(b"")
    while remaining > 0:
        data = stream.read(min(READ_SIZE, remaining))
        if not data:
            break
        length += len(data)
        remaining -= len(data)
        checksum = zlib.adler32(data, checksum)
    body = b"%d %d\n" % (length, checksum)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def wait_50ms(environ, start_response):
    # time.sleep releases the GIL, as a database driver does while it waits
    time.sleep(WAIT_S)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(WAITED)))])
    return [WAITED]


ROUTES = {"hello": hello, "json_1k": json_1k, "big_1m": big_1m, "big_1g": big_1g,
          "post_1m": post, "post": post, "wait_50ms": wait_50ms}


def application(environ, start_response):
    path = environ.get("PATH_INFO") or environ.get("SCRIPT_NAME") or "/"
    return ROUTES.get(path.rsplit("/", 1)[-1], hello)(environ, start_response)


app = application
