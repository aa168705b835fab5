"""Fixture app for tests/test_limits.py (routes by PATH_INFO).

- ``/env?name=X``      X as os.environ had it when this module was imported
                       (``-`` if unset), then as the request's environ has it
- ``/env-now?name=X``  X as os.environ has it now
- ``/rlimits``         "nofile SOFT HARD core SOFT HARD" of the serving process
- ``/leak?mib=N``      keeps N MiB more for good (a leak, on purpose); answers
                       "<pid> <RSS MiB>"; ``&hold=DIR`` then creates DIR/started and
                       waits (at most 60 s) for DIR/go before answering
- ``/``                "hello from <pid>"
"""

import os
import resource
import time

IMPORTED_WITH = dict(os.environ)
LEAKED = []
MIB = 1024 * 1024


def _query(environ):
    return dict(part.partition("=")[::2] for part in environ.get("QUERY_STRING", "").split("&") if part)


def _rss_mib():
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // MIB


def _hold(directory):
    open(os.path.join(directory, "started"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(directory, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)


def _answer(environ, query):
    path = environ.get("PATH_INFO", "/")
    if path == "/env":
        name = query["name"]
        return f"{IMPORTED_WITH.get(name, '-')} {environ.get(name, '-')}"
    if path == "/env-now":
        return os.environ.get(query["name"], "-")
    if path == "/rlimits":
        return " ".join(f"{label} {soft} {hard}" for label, (soft, hard) in (
            ("nofile", resource.getrlimit(resource.RLIMIT_NOFILE)),
            ("core", resource.getrlimit(resource.RLIMIT_CORE))))
    if path == "/leak":
        LEAKED.append(b"\x01" * (int(query.get("mib", "8")) * MIB))  # written, so resident
        if "hold" in query:
            _hold(query["hold"])
        return f"{os.getpid()} {_rss_mib()}"
    return f"hello from {os.getpid()}"


def app(environ, start_response):
    data = _answer(environ, _query(environ)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
