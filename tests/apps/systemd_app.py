"""Fixture app for tests/test_systemd.py: what a worker's process environment holds.

- ``/``        "hello from <pid>"
- ``/environ`` the names in ``os.environ``, one per line (NOTIFY_SOCKET and
               LISTEN_* must not be among them)

Module-level ``IMPORT_ENVIRON`` keeps the names as they were when the module
was imported (with ``--preload``: in the master, before any fork).

With ``SYSTEMD_APP_GATE=PATH`` in the environment, importing it creates
``PATH.<pid>`` and then waits until PATH exists: a worker held at boot, so a
test can look at what the master says before any worker can serve.
"""

import os
import time

IMPORT_ENVIRON = sorted(os.environ)

_GATE = os.environ.get("SYSTEMD_APP_GATE")
if _GATE:
    open(f"{_GATE}.{os.getpid()}", "w").close()
    while not os.path.exists(_GATE):
        time.sleep(0.01)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/environ":
        body = "\n".join(sorted(set(os.environ) | set(IMPORT_ENVIRON)))
    else:
        body = f"hello from {os.getpid()}"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
