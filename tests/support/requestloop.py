"""A steady, bounded request loop in a thread, and an app whose answer is
its version: the tools of the reload and deploy tests (test_manager's HUP
tests over FastCGI, test_multihost's rolling deploy through nginx).

``RequestLoop(fetch)`` calls ``fetch()`` sequentially until it is finished,
at most ``limit`` times or ``seconds`` long, and keeps every outcome in
order. ``fetch`` returns ``(status, body text)``; a transport failure (no
connection, a reset, a FastCGI error) is recorded as a failed request, never
raised out of the thread. ``fastcgi_get`` and ``http_get`` make the two
fetches the tests use.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Callable, List, Tuple

from wsgi_fcgi.client import Client, FastCGIError

from .httpclient import HTTPClient
from .waiting import wait_for

Fetch = Callable[[], Tuple[int, str]]
# What a request can fail with before any status: recorded, not raised.
TRANSPORT_ERRORS = (FastCGIError, OSError, http.client.HTTPException)
PAUSE = 0.01  # between requests: steady, not a load test (the machine is shared)


def fastcgi_get(address: str, path: str = "/", timeout: float = 10) -> Fetch:
    """A GET straight to the FastCGI server at ``address``, a new connection each time."""
    def fetch() -> Tuple[int, str]:
        response = Client(address, timeout=timeout).request(path)
        return response.status, response.body.decode(errors="replace")
    return fetch


def http_get(client: HTTPClient, path: str = "/") -> Fetch:
    """A GET through a web server, a new HTTP connection each time."""
    def fetch() -> Tuple[int, str]:
        response = client.get(path)
        return response.status, response.text
    return fetch


class RequestLoop(threading.Thread):
    """Sequential requests until finished, at most ``limit`` of them or ``seconds`` long.

    ``results`` holds every outcome in order as ``(status, text)``, status 0
    for a transport failure; ``bodies`` the texts of the 200s, ``errors`` a
    description of every other outcome. ``pause`` between requests sets the
    pace, so that ``limit`` lasts through what a test waits for."""

    def __init__(self, fetch: Fetch, *, limit: int = 300, seconds: float = 10, pause: float = PAUSE) -> None:
        super().__init__(daemon=True)
        self.fetch = fetch
        self.limit = limit
        self.seconds = seconds
        self.pause = pause
        self.results: List[Tuple[int, str]] = []
        self.bodies: List[str] = []
        self.errors: List[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop_event.is_set() and len(self.results) < self.limit and time.monotonic() < deadline:
            self._one()
            time.sleep(self.pause)

    def _one(self) -> None:
        try:
            status, text = self.fetch()
        except TRANSPORT_ERRORS as exc:
            status, text = 0, f"{type(exc).__name__}: {exc}"
        # bodies/errors first: a reader that sees a result sees its category too.
        if status == 200:
            self.bodies.append(text)
        else:
            self.errors.append(f"status {status}: {text!r}" if status else text)
        self.results.append((status, text))

    def wait_ok(self, count: int, timeout: float = 10) -> None:
        """Wait for ``count`` more 200s; fail if the loop ends first."""
        target = len(self.bodies) + count
        wait_for(lambda: len(self.bodies) >= target or not self.is_alive(), timeout=timeout,
                 what=f"{count} more successful requests")
        assert len(self.bodies) >= target, f"the request loop ended early: {self.errors[-3:]}"

    def finish(self) -> None:
        self._stop_event.set()
        self.join(15)
        assert not self.is_alive()


def write_module(path: Path, version: str, extra: str = "") -> None:
    """A tiny app whose answer is its VERSION and the pid serving it.
    The size changes with the version, so a cached .pyc can never pass for it."""
    path.write_text(
        f"import os\n{extra}\nVERSION = {version!r}\n\n"
        "def app(environ, start_response):\n"
        "    data = f'{VERSION} {os.getpid()}'.encode()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [data]\n"
    )
