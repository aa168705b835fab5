"""Requests held in the app: tests/apps/threads_app.py and the server that runs it.

The test and the app meet in a directory: a request that must be in progress
leaves a marker file when it starts and waits for a release file the test
creates, so concurrency is shown by events, never by a clock. The
``threads_server`` fixture (conftest.py) starts the server.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional

from wsgi_fcgi.client import Client, Response

from . import REPO_ROOT
from .fastcgi import children_of
from .processes import WsgiFcgiServer
from .waiting import wait_for

APPS_DIR = REPO_ROOT / "tests" / "apps"
APP = "threads_app:app"


class ThreadsServer:
    """A started server with the fixture app and its meeting directory."""

    def __init__(self, server: WsgiFcgiServer, app_dir: Path) -> None:
        self.server = server
        self.dir = app_dir

    @property
    def address(self) -> str:
        return self.server.address

    def get(self, path: str, timeout: float = 30.0) -> Response:
        return Client(self.address, timeout=timeout).request(path)

    def arrived(self, *names: str) -> None:
        """Wait until each named request has started in the app."""
        for name in names:
            wait_for((self.dir / f"arrived-{name}").exists, timeout=30, what=f"request {name} to start")

    def release(self) -> None:
        (self.dir / "release").write_text("go")

    def workers(self) -> List[int]:
        return children_of(self.server.pid)

    def log_matches(self, pattern: str) -> Optional[re.Match[str]]:
        return re.search(pattern, self.server.stderr_text(), re.S)


def in_parallel(jobs: List[Callable[[], Any]], timeout: float = 60.0) -> List[Any]:
    """Run every job on its own client thread; their results (or exceptions), in order."""
    results: List[Any] = [None] * len(jobs)

    def run(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except BaseException as exc:  # noqa: B036 - handed back to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client is still waiting for its response"
    return results


class Background:
    """Requests started now, their results collected later."""

    def __init__(self, jobs: List[Callable[[], Any]]) -> None:
        self._results: List[Any] = []
        self._thread = threading.Thread(target=lambda: self._results.extend(in_parallel(jobs)), daemon=True)
        self._thread.start()

    def results(self) -> List[Any]:
        self._thread.join(70)
        assert not self._thread.is_alive(), "the background requests did not end"
        return self._results
