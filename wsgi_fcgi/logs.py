"""Logging: the error log, the access log, and reopening their files.

Strategy: two named loggers, ``wsgi_fcgi.error`` and ``wsgi_fcgi.access``, set
up once per process from the settings; an app or a deployment can add its own
handlers to them like to any logger. Files are reopened on USR1 (logrotate's
``postrotate``) between requests, never from inside a signal handler. Under
Apache mod_fcgid stdout and stderr both go to Apache's error log, so nothing
but log lines is ever written there -- and never to stdout at all.

The access log is off unless ``--access-logfile`` is given, so it costs
nothing by default. Its format takes gunicorn's atoms (``%(h)s``, ``%(r)s``,
``%({user-agent}i)s`` ...), or ``json`` for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

ERROR_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
# Apache's combined format, plus the request time in microseconds and the worker pid.
DEFAULT_ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s %(p)s'

error_log = logging.getLogger("wsgi_fcgi.error")
access_log = logging.getLogger("wsgi_fcgi.access")

_OURS = "_wsgi_fcgi"  # marks the handlers this module installed


def setup_logging(level: str = "info", error_logfile: str | None = "-",
                  access_logfile: str | None = None) -> None:
    """(Re)install our handlers: the error log at ``level``; the access log
    only when ``access_logfile`` is given (``-`` means stderr)."""
    _install(error_log, error_logfile or "-", ERROR_FORMAT)
    error_log.setLevel(level.upper())
    if access_logfile:
        _install(access_log, access_logfile, "%(message)s")
        access_log.setLevel(logging.INFO)
    else:
        _remove_ours(access_log)
        access_log.setLevel(logging.CRITICAL + 1)  # off: AccessLog.enabled is False


def _install(logger: logging.Logger, target: str, fmt: str) -> None:
    _remove_ours(logger)
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(target, delay=False)
    handler.setFormatter(logging.Formatter(fmt))
    setattr(handler, _OURS, True)
    logger.addHandler(handler)
    logger.propagate = False


def _remove_ours(logger: logging.Logger) -> None:
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()


def reopen_files() -> None:
    """After logrotate moved our files: the next line goes to a new file at the old path."""
    for logger in (error_log, access_log):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream:
                        handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()


# --- the access log ----------------------------------------------------------------

_HEADER_ATOM = re.compile(r"%\(\{([^}]+)\}([ioe])\)s")


class AccessLog:
    """Formats one line per request; ``enabled`` is False when there is no access log."""

    def __init__(self, fmt: str = DEFAULT_ACCESS_FORMAT) -> None:
        self.json = fmt.strip().lower() == "json"
        self.fmt = fmt
        self.extra_atoms: list[tuple[str, str, str]] = [
            (match.group(0)[2:-2], match.group(1), match.group(2)) for match in _HEADER_ATOM.finditer(fmt)]
        self.pid = os.getpid()

    @property
    def enabled(self) -> bool:
        return access_log.isEnabledFor(logging.INFO)

    def log(self, environ: dict[str, Any], status: str | None, headers: list[tuple[str, str]],
            sent: int, started: float) -> None:
        atoms = self.atoms(environ, status, headers, sent, time.monotonic() - started)
        if self.json:
            access_log.info("%s", json.dumps(_json_fields(atoms), ensure_ascii=False))
        else:
            access_log.info("%s", self.fmt % atoms)

    def atoms(self, environ: dict[str, Any], status: str | None, headers: list[tuple[str, str]],
              sent: int, seconds: float) -> dict[str, Any]:
        get = environ.get
        uri = get("REQUEST_URI") or _rebuild_uri(environ)
        atoms: dict[str, Any] = {
            "h": get("REMOTE_ADDR") or "-",
            "l": "-",
            "u": get("REMOTE_USER") or "-",
            "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            "r": f"{get('REQUEST_METHOD', '-')} {uri} {get('SERVER_PROTOCOL', '-')}",
            "m": get("REQUEST_METHOD", "-"),
            "U": f"{get('SCRIPT_NAME', '')}{get('PATH_INFO', '')}",
            "q": get("QUERY_STRING", ""),
            "H": get("SERVER_PROTOCOL", "-"),
            "s": status[:3] if status else "500",
            "B": sent,
            "b": sent or "-",
            "f": get("HTTP_REFERER") or "-",
            "a": get("HTTP_USER_AGENT") or "-",
            "T": int(seconds),
            "M": int(seconds * 1000),
            "D": int(seconds * 1_000_000),
            "L": f"{seconds:.6f}",
            "p": f"<{self.pid}>",
        }
        for key, name, kind in self.extra_atoms:
            atoms[key] = _extra(environ, headers, name, kind)
        return atoms


def request_line(environ: dict[str, Any]) -> tuple[str, str]:
    """(method, URI) of a request, for every log line and the scoreboard: the one
    place that says which request this is."""
    return environ.get("REQUEST_METHOD") or "?", environ.get("REQUEST_URI") or _rebuild_uri(environ) or "?"


def describe_request(environ: dict[str, Any]) -> str:
    return "%s %s" % request_line(environ)


def _rebuild_uri(environ: dict[str, Any]) -> str:
    query = environ.get("QUERY_STRING")
    path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    return f"{path}?{query}" if query else path


def _extra(environ: dict[str, Any], headers: list[tuple[str, str]], name: str, kind: str) -> str:
    if kind == "i":
        return str(environ.get("HTTP_" + name.upper().replace("-", "_")) or "-")
    if kind == "o":
        lowered = name.lower()
        return next((value for key, value in headers if key.lower() == lowered), "-")
    return str(environ.get(name) or "-")


def _json_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    return {"remote_addr": atoms["h"], "remote_user": atoms["u"], "time": atoms["t"][1:-1],
            "method": atoms["m"], "request": atoms["r"], "path": atoms["U"], "query": atoms["q"],
            "protocol": atoms["H"], "status": int(atoms["s"]), "bytes": atoms["B"],
            "referer": atoms["f"], "user_agent": atoms["a"], "duration_us": atoms["D"],
            "pid": int(atoms["p"][1:-1])}


