"""Logging setup: named loggers to stderr, never anything else on stdout.

Under Apache mod_fcgid stdout and stderr both go to Apache's error log, so
stdout must carry nothing but log lines; we write nothing there at all.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"

error_log = logging.getLogger("wsgi_fcgi.error")


def setup_logging(level: str = "info") -> None:
    logger = logging.getLogger("wsgi_fcgi")
    if not any(getattr(h, "_wsgi_fcgi", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._wsgi_fcgi = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
