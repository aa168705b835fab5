"""Server hooks at run time: what they are given, and how a failing one is contained.

Strategy: the hooks are declared in config.py (``HOOKS``: gunicorn's names and
arguments) and are plain settings of ``Config``; this module is what calls
them. Three ways, by what a failure may cost:

- ``call_hook``: an exception is logged with its traceback and goes no
  further. The master's hooks, worker_abort and post_request: none of them
  may take down the master or change a response already sent.
- ``boot_hook``: post_fork and post_worker_init. An exception is logged and
  raised as ``BootHookFailed``, a StartupError with the boot-failure exit
  code (3): the worker exits before it counts as booted, and the master's
  crash-storm logic counts it like any other boot failure.
- ``HookedHandler``: pre_request and post_request around the request. A
  subclass of the request handler, used only when one of the two is set, so a
  worker without them runs exactly the handler it always ran: no call added
  per request. pre_request failing answers that request 500 (nothing has been
  sent yet); post_request runs after the response and can only be logged.

The objects the hooks get are ours, not gunicorn's classes, with the
attributes of gunicorn's that make sense here: ``server`` is the master
(``manager.Arbiter``: ``pid``, ``config``, ``addresses``, ``num_workers``,
``worker_pids``), ``worker`` a ``WorkerInfo``, ``req`` a ``Request`` and
``resp`` a ``ResponseInfo``.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any
from collections.abc import Callable

from .config import Config
from .errors import EXIT_BOOT_ERROR, StartupError
from .handler import Channel, ClientDisconnected, RequestHandler, Response, WSGIApp
from .logs import describe_request, request_line

error_log = logging.getLogger("wsgi_fcgi.error")

HookFunction = Callable[..., Any]  # a hook as the config holds it


class BootHookFailed(StartupError):
    """post_fork or post_worker_init raised: this worker cannot boot (exit 3)."""


class WorkerInfo:
    """The ``worker`` a hook gets: ``pid`` (None in pre_fork: not forked yet),
    ``index`` (its scoreboard slot, reused by the worker that replaces it),
    ``age`` (the master's spawn count, 1 for its first worker, as gunicorn's
    ``worker.age``), ``requests`` (served so far, read live in the worker) and
    ``exit_code`` (in worker_exit: what ``os.waitstatus_to_exitcode`` gives,
    negative for a signal; None before)."""

    __slots__ = ("pid", "index", "age", "exit_code", "_loop")

    def __init__(self, pid: int | None, index: int = 0, age: int = 1) -> None:
        self.pid = pid
        self.index = index
        self.age = age
        self.exit_code: int | None = None
        self._loop: Any = None  # the serving Worker, once there is one in this process

    @property
    def requests(self) -> int:
        return int(self._loop.requests) if self._loop is not None else 0

    def attach(self, loop: Any) -> None:
        self._loop = loop

    def __repr__(self) -> str:
        return f"<worker pid={self.pid} index={self.index} age={self.age}>"


class Request:
    """The ``req`` of pre_request and post_request (and gunicorn's access log in
    wsgi_fcgi.gunicorn): ``method``, ``path`` (SCRIPT_NAME + PATH_INFO),
    ``query``, ``uri``, ``version``, ``scheme``, ``headers`` as (NAME, value)
    pairs, and the WSGI ``environ`` itself."""

    __slots__ = ("method", "path", "query", "uri", "version", "headers", "scheme", "environ")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method, self.uri = request_line(environ)  # what our own logs call this request
        self.path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
        self.query = str(environ.get("QUERY_STRING", ""))
        self.scheme = str(environ.get("wsgi.url_scheme", "http"))
        protocol = str(environ.get("SERVER_PROTOCOL", "HTTP/1.0"))
        major, _, minor = protocol.partition("/")[2].partition(".")
        self.version = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (1, 0)
        self.headers = [(name[5:].replace("_", "-"), str(value)) for name, value in environ.items()
                        if name.startswith("HTTP_")]
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if name in environ:
                self.headers.append((name.replace("_", "-"), str(environ[name])))


class ResponseInfo:
    """The ``resp`` of post_request: ``status`` ("200 OK"; None when the request
    ended before the app chose one), ``status_code``, ``headers`` as the app gave
    them, ``sent`` (body bytes sent)."""

    __slots__ = ("status", "headers", "sent")

    def __init__(self, response: Response) -> None:
        self.status = response.status
        self.headers = list(response.headers)
        self.sent = response.sent

    @property
    def status_code(self) -> int | None:
        code = (self.status or "")[:3]
        return int(code) if code.isdigit() else None


def call_hook(name: str, hook: HookFunction, *args: Any) -> bool:
    """Run a hook whose failure must go no further; False if it raised (logged)."""
    try:
        hook(*args)
    except Exception:
        error_log.exception("the %s hook failed (pid %d)", name, os.getpid())
        return False
    return True


def boot_hook(name: str, hook: HookFunction, *args: Any) -> None:
    """Run post_fork or post_worker_init; BootHookFailed if it raised (logged)."""
    if not call_hook(name, hook, *args):
        raise BootHookFailed(f"the {name} hook failed (traceback above): the worker cannot boot",
                             EXIT_BOOT_ERROR)


class WorkerHooks:
    """The hooks a worker process runs, with the ``worker`` they are given.
    ``from_config`` gives None when none is set: the worker then checks nothing."""

    __slots__ = ("info", "post_worker_init", "pre_request", "post_request", "worker_abort")

    def __init__(self, info: WorkerInfo, config: Config) -> None:
        self.info = info
        self.post_worker_init: HookFunction | None = config.post_worker_init
        self.pre_request: HookFunction | None = config.pre_request
        self.post_request: HookFunction | None = config.post_request
        self.worker_abort: HookFunction | None = config.worker_abort

    @classmethod
    def from_config(cls, config: Config, info: WorkerInfo) -> WorkerHooks | None:
        names = ("post_worker_init", "pre_request", "post_request", "worker_abort")
        if all(getattr(config, name) is None for name in names):
            return None
        return cls(info, config)

    @property
    def per_request(self) -> bool:
        return self.pre_request is not None or self.post_request is not None

    def initialized(self) -> None:
        if self.post_worker_init is not None:
            boot_hook("post_worker_init", self.post_worker_init, self.info)

    def aborted(self) -> None:
        if self.worker_abort is not None:
            call_hook("worker_abort", self.worker_abort, self.info)


class HookedHandler(RequestHandler):
    """The request handler with pre_request before and post_request after each
    request (pages of our own included: they are requests the server answers)."""

    def __init__(self, hooks: WorkerHooks, app: WSGIApp, **options: Any) -> None:
        super().__init__(app, **options)
        self.hooks = hooks

    def _run(self, channel: Channel, role: int, environ: dict[str, Any], response: Response) -> bool:
        req = Request(environ)
        try:
            if not self._pre_request(req, response):
                return not response.cut
            return super()._run(channel, role, environ, response)
        except ClientDisconnected:
            return False
        finally:
            post_request = self.hooks.post_request
            if post_request is not None:
                call_hook("post_request", post_request, self.hooks.info, req, environ, ResponseInfo(response))

    def _pre_request(self, req: Request, response: Response) -> bool:
        """False when pre_request raised: the request has been answered 500."""
        pre_request = self.hooks.pre_request
        if pre_request is None:
            return True
        try:
            pre_request(self.hooks.info, req)
        except self._app_failures:
            text = "".join(traceback.format_exception(*sys.exc_info()))
            error_log.error("the pre_request hook failed for %s; answering 500\n%s", describe_request(req.environ),
                            text.rstrip())
            response.send_error_500(text)
            return False
        return True
