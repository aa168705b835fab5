"""A gunicorn worker class that speaks FastCGI: ``gunicorn -k wsgi_fcgi.gunicorn.FastCGIWorker``.

Strategy: gunicorn's arbiter keeps the processes (fork, --workers, --timeout
kills, --max-requests and jitter, signals, hooks, user switch, HUP/USR2);
the serving is all ours. ``FastCGIWorker.run()`` drives wsgi_fcgi's own
worker loop (``wsgi_fcgi.worker.Worker``: epoll over the listeners and the
idle FCGI_KEEP_CONN connections, the record protocol, ``RequestHandler``), so
a request is read, answered and its errors reported (a generic 500 on
STDOUT, the traceback on FCGI_STDERR, never an HTTP status line) exactly as
under ``python -m wsgi_fcgi``. The glue is a small subclass of that loop:
its ``alive`` flag and request count *are* the gunicorn worker's ``alive``
and ``nr`` (so TERM, the reloader and --max-requests stop it the same way),
its heartbeat hook calls gunicorn's ``notify()``, and gunicorn's signal
handlers and wakeup pipe stand in for the loop's own. gunicorn's
per-request parts (pre_request/post_request hooks, the access log and so
statsd's request metrics) get request and response objects from a thin WSGI
layer around the app, and run after our handler has sent the response.

gunicorn is imported only by this module (``pip install 'wsgi_fcgi[gunicorn]'``).
It ships no type information, so it is imported through importlib and is
``Any`` to mypy, installed or not.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from datetime import datetime
from types import FrameType
from typing import Any
from collections.abc import Callable, Iterable, Iterator

from .config import Config, ConfigError
from .handler import Channel, ClientDisconnected, RequestHandler, StartResponse, WSGIApp
from .hooks import Request as _Request  # the req of our own hooks: gunicorn's attributes
from .worker import Worker, allowed_networks

__all__ = ["FastCGIWorker"]

INSTALL_HINT = "pip install 'wsgi_fcgi[gunicorn]'"
DEFAULT_POLL = 1.0  # seconds between heartbeats while idle, at most


def _gunicorn_worker_class() -> Any:
    try:
        return importlib.import_module("gunicorn.workers.base").Worker
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "gunicorn":
            raise  # gunicorn is there but one of its own imports failed: that error says more
        raise ModuleNotFoundError(
            f"wsgi_fcgi.gunicorn.FastCGIWorker needs gunicorn, which is not installed: {INSTALL_HINT}",
            name="gunicorn") from exc


_GunicornWorker: Any = _gunicorn_worker_class()


class _Loop(Worker):
    """wsgi_fcgi's worker loop, run inside a gunicorn worker process."""

    def __init__(self, owner: FastCGIWorker, app: WSGIApp, listeners: list[socket.socket],
                 **options: Any) -> None:
        self.owner = owner
        hooks = _RequestHooks(owner)
        super().__init__(hooks.wrap(app), listeners, **options)
        plain = self.handler
        self.handler = _HookedHandler(hooks, plain.app, script_name=plain.script_name,
                                      multiprocess=plain.multiprocess,
                                      limit_request_body=plain.limit_request_body)

    # The loop's state is the gunicorn worker's: gunicorn's handle_exit (TERM),
    # its reloader and hooks set and read ``alive`` and ``nr`` there.
    @property
    def alive(self) -> bool:
        return bool(self.owner.alive)

    @alive.setter
    def alive(self, value: bool) -> None:
        self.owner.alive = value

    @property
    def requests(self) -> int:
        return int(self.owner.nr)

    @requests.setter
    def requests(self, value: int) -> None:
        self.owner.nr = value

    def heartbeat(self) -> None:
        self.owner.notify()

    def _install_signals(self) -> None:
        # gunicorn's init_process() has installed its handlers (TERM: finish the
        # current request; INT/QUIT: exit now; ABRT: exit 1; USR1: reopen logs)
        # and pointed the signal wakeup fd at PIPE[1].
        self._wakeup_r = self.owner.PIPE[0]

    def _poll_timeout(self) -> float:
        # gunicorn wants notify() at least every self.timeout (= --timeout / 2) seconds.
        interval = min(DEFAULT_POLL, float(self.owner.timeout or DEFAULT_POLL))
        timeout = super()._poll_timeout()
        return interval if timeout < 0 else min(timeout, interval)


class _HookedHandler(RequestHandler):
    """Our request handler; when it is done with a request (response sent,
    or failed), the gunicorn bookkeeping for that request runs."""

    def __init__(self, hooks: _RequestHooks, app: WSGIApp, **options: Any) -> None:
        super().__init__(app, **options)
        self.hooks = hooks

    def handle_params(self, channel: Channel, request_id: int, role: int, params: dict[str, str],
                      replaced: list[tuple[str, str]], on_start: Callable[[str, str], None] | None = None) -> bool:
        try:
            return super().handle_params(channel, request_id, role, params, replaced, on_start)
        finally:
            self.hooks.request_done()


class _RequestHooks:
    """gunicorn's per-request parts, for one worker: the pre_request hook
    before the app; after the response, the access log (and with it statsd's
    request metrics) and the post_request hook. They read a request and a
    response object (``_Request``, ``_Response``), filled in here."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._done: Callable[[], None] | None = None

    def wrap(self, app: WSGIApp) -> WSGIApp:
        worker = self.worker
        cfg, log = worker.cfg, worker.log

        def hooked_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            started = datetime.now()
            req = _Request(environ)
            environ.setdefault("RAW_URI", req.uri)  # gunicorn's key, read by its access log (and some apps)
            resp = _Response(count_body=req.method != "HEAD")

            def done() -> None:
                if resp.status is None:
                    resp.failed()  # our handler answered 500 (e.g. no start_response before the body)
                try:
                    log.access(resp, req, environ, datetime.now() - started)
                except Exception:
                    log.exception("Exception in the access log")
                try:
                    cfg.post_request(worker, req, environ, resp)
                except Exception:
                    log.exception("Exception in post_request hook")

            def observed_start_response(status: str, headers: list[tuple[str, str]],
                                        exc_info: Any = None) -> Callable[[bytes], None]:
                write = start_response(status, headers, exc_info)
                resp.status, resp.headers = status, headers

                def counted_write(data: bytes) -> None:
                    resp.count(data)
                    write(data)
                return counted_write

            self._done = done
            try:
                cfg.pre_request(worker, req)
                result = app(environ, observed_start_response)
            except BaseException:
                resp.failed()
                raise
            if type(result) in (list, tuple):
                # Handed on as it is: the handler sends a list in one write,
                # end records included (nginx keeps its connection for that).
                for chunk in result:
                    resp.count(chunk)
                return result
            return _CountedBody(result, resp)

        return hooked_app

    def request_done(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()


class FastCGIWorker(_GunicornWorker):  # type: ignore[misc]  # gunicorn is untyped (Any)
    """A gunicorn worker that serves FastCGI (nginx ``fastcgi_pass``, Apache
    mod_proxy_fcgi, lighttpd, mod_fcgid with ``--bind fd://0``) instead of HTTP.

    Mapping of gunicorn settings: ``--max-requests`` (+ jitter) counts
    requests, kept connections included; ``--timeout`` is the heartbeat kill
    and also bounds a stalled read; ``--keep-alive`` is how long an idle
    FCGI_KEEP_CONN connection is kept; ``--workers`` is the FCGI_MAX_CONNS
    answer and sets ``wsgi.multiprocess``; ``SCRIPT_NAME`` in the environment
    (``-e SCRIPT_NAME=/app``) is wsgi_fcgi's ``--script-name``;
    ``FCGI_WEB_SERVER_ADDRS`` limits the TCP peers, as the FastCGI spec says.
    """

    _loop: _Loop | None = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Called by the arbiter before any worker starts: refuse what cannot work."""
        if cfg.is_ssl:
            raise RuntimeError("FastCGIWorker speaks plain FastCGI to the web server: terminate TLS there "
                               "and remove --certfile/--keyfile")
        protocol = getattr(cfg, "protocol", "http")  # gunicorn 27+
        if protocol not in (None, "http"):
            log.warning("FastCGIWorker speaks FastCGI; --protocol %s is ignored", protocol)
        if cfg.threads > 1:
            log.warning("FastCGIWorker serves one request at a time per process; --threads %s is ignored "
                        "(use more --workers, or python -m wsgi_fcgi --threads %s)", cfg.threads, cfg.threads)
        try:
            _script_name(cfg)
        except ConfigError as exc:
            raise RuntimeError(f"SCRIPT_NAME: {exc}") from None

    def init_process(self) -> None:
        _route_wsgi_fcgi_logs(self.log)
        super().init_process()  # last: it ends by calling run()

    def run(self) -> None:
        cfg = self.cfg
        options: dict[str, Any] = {}
        if not cfg.keepalive:
            options["max_idle_connections"] = 0  # --keep-alive 0: close even FCGI_KEEP_CONN connections
        self._loop = _Loop(
            self, self.wsgi, [getattr(s, "sock", s) for s in self.sockets],
            script_name=_script_name(cfg),
            max_requests=0 if self.max_requests >= sys.maxsize else int(self.max_requests),
            # --timeout / 2: a read that stalls mid-request ends that request
            # before the arbiter's kill would end the whole process.
            read_timeout=float(self.timeout) if self.timeout else 30.0,
            keepalive_timeout=float(cfg.keepalive),
            pool_size=max(1, int(cfg.workers)),
            parent_pid=self.ppid,
            multiprocess=int(cfg.workers) > 1,
            allowed_peers=allowed_networks(Config()),
            **options,
        )
        self._loop.run()

    def handle_abort(self, sig: int, frame: FrameType | None) -> None:
        """SIGABRT: the arbiter's --timeout kill. Name the request that hung, then
        do what gunicorn does (worker_abort hook, exit 1)."""
        loop = self._loop
        if loop is not None:
            state = loop.slot.read()
            if state.busy_since:
                self.log.error("Worker %s timed out while handling %s", os.getpid(), state.request or "a request")
        super().handle_abort(sig, frame)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's version writes an HTTP error page, which on a FastCGI
        connection would be garbage. The request handler answers app errors
        itself (a 500 on STDOUT, the traceback on FCGI_STDERR), so only log."""
        self.log.error("Error handling a FastCGI request", exc_info=(type(exc), exc, exc.__traceback__))


class _Response:
    """The response as gunicorn's hooks and access log read it."""

    __slots__ = ("status", "headers", "sent", "_count_body")

    def __init__(self, count_body: bool) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent: int | None = 0  # body bytes from the app (a HEAD response sends none); None: unknown
        self._count_body = count_body

    @property
    def status_code(self) -> int | None:
        code = (self.status or "")[:3]
        return int(code) if code.isdigit() else None

    def count(self, data: bytes) -> None:
        if self._count_body and self.sent is not None and isinstance(data, (bytes, bytearray, memoryview)):
            self.sent += len(data)

    def failed(self) -> None:
        """The app raised. Before any body byte our handler answers its own 500
        (its length is not the app's business: logged as "-"); after, the
        connection is cut and the status stays the app's."""
        if self.status is None or not self.sent:
            self.status = "500 Internal Server Error"
            self.headers = []
            self.sent = None


class _CountedBody:
    """The app's response iterable, its bytes counted for the access log."""

    __slots__ = ("_result", "_resp")

    def __init__(self, result: Iterable[bytes], resp: _Response) -> None:
        self._result = result
        self._resp = resp

    def __iter__(self) -> Iterator[bytes]:
        resp = self._resp
        try:
            for chunk in self._result:
                resp.count(chunk)
                yield chunk
        except ClientDisconnected:
            raise
        except Exception:
            resp.failed()
            raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


def _script_name(cfg: Any) -> str | None:
    """SCRIPT_NAME from the environment (``-e``/``raw_env`` first), gunicorn's
    way of setting the mount point; checked as wsgi_fcgi's --script-name."""
    env: dict[str, str] = dict(cfg.env or {})
    value = env.get("SCRIPT_NAME", os.environ.get("SCRIPT_NAME"))
    if value is None:
        return None
    checked = Config(script_name=value).script_name
    return None if checked is None else str(checked)


def _route_wsgi_fcgi_logs(glog: Any) -> None:
    """Our request handler logs through ``wsgi_fcgi.error`` (app tracebacks,
    protocol errors, recycling). Unless logging was configured for it (or for
    the root logger, e.g. by --log-config), send it where gunicorn's error log
    goes, at gunicorn's --log-level; USR1 reopens those same handlers."""
    ours = logging.getLogger("wsgi_fcgi")
    if ours.handlers or logging.getLogger().handlers:
        return
    error_log = getattr(glog, "error_log", None)
    if error_log is None or not error_log.handlers:
        return
    for handler in error_log.handlers:
        ours.addHandler(handler)
    ours.setLevel(error_log.level)
    ours.propagate = False
