"""The one way tests wait: poll an observable state until a deadline.

No test sleeps for a fixed time to let something happen; it names the state
it needs (a worker's PID, a log line, a file, a counter) and waits for that.
The deadline only turns a hang into a failure with a message: it is never
what a test asserts.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

FIRST_INTERVAL = 0.005
MAX_INTERVAL = 0.1


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Call ``predicate`` until it returns a true value, and return that value.

    Raises AssertionError naming ``what`` once ``timeout`` seconds have
    passed; an exception from ``predicate`` propagates at once (a probe can
    fail fast, e.g. when the process it watches has exited). Polls quickly
    at first, then every 0.1 s at most.
    """
    deadline = time.monotonic() + timeout
    interval = FIRST_INTERVAL
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 2, MAX_INTERVAL)
