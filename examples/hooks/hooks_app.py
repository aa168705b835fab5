"""The app that examples/hooks/wsgi_fcgi.conf.py serves: the two things server
hooks are most often for, in a few lines.

- A database connection opened when the module is imported. With --preload
  that happens in the master, before any fork: every worker would inherit the
  same connection (one socket, or one SQLite file handle, shared by several
  processes), which corrupts it. ``post_fork`` closes the inherited one and
  opens the worker's own (``connect``).
- Telemetry buffered in memory and written in batches. A worker killed for
  --timeout would lose what is buffered; ``worker_abort`` flushes it first.

``/`` answers which process opened the connection it uses; ``/hang`` waits
for an event that never fires (what --timeout is for).
"""

import json
import os
import sqlite3
import threading
import time

DATABASE = os.environ.get("HOOKS_DB", "/tmp/hooks-example.sqlite3")
TELEMETRY = os.environ.get("HOOKS_TELEMETRY", "/tmp/hooks-example-telemetry.jsonl")
BATCH = 100  # events kept in memory before they are written

db = None
db_opened_in = 0


def connect():
    """(Re)open this process's database connection."""
    global db, db_opened_in
    db = sqlite3.connect(DATABASE, check_same_thread=False)
    db_opened_in = os.getpid()


class Telemetry:
    """Events in memory, appended to TELEMETRY as JSON lines every BATCH events."""

    def __init__(self):
        self.pending = []
        self.lock = threading.Lock()

    def record(self, **event):
        with self.lock:
            self.pending.append(dict(event, pid=os.getpid(), at=time.time()))
            full = len(self.pending) >= BATCH
        if full:
            self.flush()

    def flush(self, reason="batch"):
        with self.lock:
            events, self.pending = self.pending, []
        if events:
            with open(TELEMETRY, "a") as f:
                f.writelines(json.dumps(dict(event, flushed=reason)) + "\n" for event in events)


telemetry = Telemetry()
connect()  # at import: with --preload, in the master


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    telemetry.record(path=path)
    if path == "/hang":
        threading.Event().wait()  # never set: the request runs until --timeout kills the worker
    (one,) = db.execute("select 1").fetchone()
    data = json.dumps({"pid": os.getpid(), "db_opened_in": db_opened_in, "query": one}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
