"""Fixture app for tests/test_manager.py (routes by PATH_INFO).

Imports only modules the server has already loaded, so it also loads in a
worker that dropped privileges (--user nobody) and cannot read the stdlib.

- ``/``              "hello from <pid>"
- ``/sleep?s=3``     sleeps, then answers; ``&mark=PATH`` creates PATH when the request starts
- ``/hang``          sleeps forever (for --timeout)
- ``/version``       the module-level VERSION
- ``/whoami``        "<uid> <gid>"
"""

import os
import time

VERSION = "fixture"


def _query(environ):
    pairs = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        name, _, value = part.partition("=")
        if name:
            pairs[name] = value
    return pairs


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = _query(environ)
    if path == "/sleep":
        if "mark" in query:
            with open(query["mark"], "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(query.get("s", "1")))
        body = f"slept {query.get('s', '1')} in {os.getpid()}"
    elif path == "/hang":
        while True:
            time.sleep(3600)
    elif path == "/version":
        body = VERSION
    elif path == "/whoami":
        body = f"{os.getuid()} {os.getgid()}"
    else:
        body = f"hello from {os.getpid()}"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
