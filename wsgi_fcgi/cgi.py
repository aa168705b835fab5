"""Serve one request as a CGI script (RFC 3875): the same ``dispatch.fcgi``
when a web server runs it with ``AddHandler cgi-script`` instead of FastCGI.

Strategy: CGI is FastCGI with one request per process and the streams on
fds 0 and 1, so this module is only an adapter around the same
``RequestHandler`` that serves FastCGI requests. The environ comes from
``build_environ`` fed the process environment as latin-1 pairs (the bytes
the server put there); ``CGIChannel`` implements the handler's ``Channel``
over stdin and stdout. The handler frames its output as FastCGI records; the
channel unwraps the STDOUT records back into bytes for stdout (the handler's
``Status:`` line and header block already are a CGI response) and drops the
STDERR copy of a traceback, which the error log on fd 2 already has. That
costs a copy per chunk -- nothing next to starting a process per request --
and keeps header validation, the 500 page, HEAD, Content-Length framing and
``close()`` in one place, with no CGI branch in the FastCGI hot path.

When it applies (``choose_mode``): never with ``--bind`` or a listening socket
on fd 0 (FastCGI); with ``REQUEST_METHOD`` or ``GATEWAY_INTERFACE`` in the
environment. Not "fd 0 is not a socket": Apache's mod_cgid hands the script a
*connected* unix socket as stdin and stdout. Neither, on a terminal: one line
saying how to run it, never a read from the terminal.

What a CGI script must get right, and how:

* the body: at most CONTENT_LENGTH bytes are read (RFC 3875 4.2); without a
  length, stdin is read to its end only when the server said the body is
  chunked (Apache passes it that way and closes the stream after it);
  otherwise there is no body.
* Apache writes the whole body before it reads the response, and a process
  that exits with input unread on mod_cgid's socket resets it under the
  response. So before the first byte of output the rest of the body is read
  into a spool, where the app can still read it (or, for a body refused by
  ``--limit-request-body``, read and dropped).
* the streams: the request's stdin and stdout move to private close-on-exec
  descriptors; fd 0 becomes /dev/null and fd 1 stderr, so a ``print()`` in
  the app lands in the error log (as under mod_fcgid) instead of in the
  response, and a process the app starts cannot hold the response open.
* httpoxy: a client's ``Proxy:`` header arrives as HTTP_PROXY in the process
  environment, where urllib, requests and child processes would take it for
  a proxy setting: it is dropped from the environ and deleted from
  ``os.environ`` before the app is loaded (unless the operator set
  HTTP_PROXY for the app with ``--env``, which overrides the client's).
* ``--env``: the app's variables go into ``os.environ``, not into the
  request's environ, which is the environment as the server set it.
* the exit status is FastCGI's appStatus, which the spec models on it: 0 for
  a complete response, 1 otherwise (the 500 page after an app error, a cut
  response, a client gone).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import IO, Any
from collections.abc import Callable, Mapping

from . import protocol as p
from .config import Config
from .environ import usable_content_length
from .handler import ERROR_500, SPOOL_THRESHOLD, ClientDisconnected, RequestHandler, WSGIApp
from .hooks import HookedHandler, WorkerHooks, WorkerInfo
from .errors import StartupError
from .loader import load_app_at_startup
from .privileges import identity_for, switch_to
from .sockets import fd0_is_listening

__all__ = ["CGIChannel", "ModeError", "choose_mode", "detect_mode", "environ_pairs", "is_cgi_environment",
           "serve_cgi", "serve_request"]

READ_SIZE = 65536
REQUEST_ID = 1  # the records the handler frames never leave this process

HOW_TO_RUN = (
    "started from a terminal, not by a web server: to serve FastCGI here pass --bind ADDRESS "
    "(serve(app, bind=ADDRESS)), or --mode fastcgi for 127.0.0.1:9000; to try one request as CGI, "
    "set REQUEST_METHOD=GET and PATH_INFO=/some/path"
)


class ModeError(Exception):
    """The options and the way we were started do not say how requests arrive."""


# --- which mode ---------------------------------------------------------------------

def is_cgi_environment(environ: Mapping[str, str]) -> bool:
    """Whether a web server started us as a CGI script (RFC 3875 requires both
    variables; either one is taken as the sign)."""
    return "REQUEST_METHOD" in environ or environ.get("GATEWAY_INTERFACE", "").startswith("CGI/")


def choose_mode(mode: str, bind: Any, environ: Mapping[str, str], *,
                fd0_listening: bool, on_terminal: bool) -> str:
    """``"fastcgi"`` or ``"cgi"`` for the ``--mode`` setting and how we were
    started; ModeError (one line for the user) when that makes no sense."""
    if mode == "cgi":
        if bind:
            raise ModeError("--mode cgi serves one request on stdin and stdout; it takes no --bind")
        if not is_cgi_environment(environ):
            raise ModeError("--mode cgi: no CGI request here (REQUEST_METHOD is not set); "
                            "a web server sets it when it runs this as a CGI script")
        return "cgi"
    if mode == "fastcgi" or bind or fd0_listening:
        return "fastcgi"
    if is_cgi_environment(environ):
        return "cgi"
    if on_terminal:
        raise ModeError(HOW_TO_RUN)
    return "fastcgi"


def detect_mode(config: Config, *, from_script: bool = False) -> str:
    """``choose_mode`` for this process (fd 0 is probed only when it matters).

    Only a script calling ``serve(app)`` (a dispatch.fcgi) tells a person at a
    terminal how to run it: ``python -m wsgi_fcgi`` there means "serve on the
    default address", as the command line documents."""
    probe = config.mode == "auto" and not config.bind
    return choose_mode(config.mode, config.bind, os.environ,
                       fd0_listening=probe and fd0_is_listening(),
                       on_terminal=probe and from_script and os.isatty(0))


# --- one request ----------------------------------------------------------------------

def environ_pairs(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The process environment as PARAMS-like pairs: the bytes the server set,
    as latin-1 strings (PEP 3333). ``os.environ`` decoded them with the file
    system encoding and surrogateescape; ``os.fsencode`` gives them back."""
    return [(os.fsencode(name).decode("latin-1"), os.fsencode(value).decode("latin-1"))
            for name, value in environ.items()]


class CGIChannel:
    """The handler's ``Channel`` over a CGI script's stdin and stdout.

    ``body_length`` is what may be read from stdin: CONTENT_LENGTH, ``None``
    for "to the end of the stream" (a chunked body), 0 for no body. A body
    over ``limit`` bytes (0: none) is one the handler refuses: what is left
    of it is dropped rather than spooled.
    """

    def __init__(self, stdin_fd: int, stdout_fd: int, body_length: int | None, limit: int = 0) -> None:
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self._unread = body_length  # body bytes still on stdin; None: up to EOF
        self._body_length = body_length
        self._missing = 0  # bytes of CONTENT_LENGTH that never came: stdin ended short
        self._keep_unread = not limit or (body_length is not None and body_length <= limit)
        self._spool: IO[bytes] | None = None
        self._records = p.RecordReader()
        self.app_status: int | None = None  # END_REQUEST's, once the whole response is written

    @property
    def body_unread(self) -> bool:
        return self._spool is None and self._unread != 0

    def read_stdin(self) -> bytes:
        if self._spool is not None:
            return self._spool.read(READ_SIZE)
        data = self._read_body()
        if not data and self._missing and self._body_length is not None:
            # Unlike FastCGI's empty STDIN record, the end of stdin short of the body
            # is the web server giving up on a client that went away: nobody to answer.
            raise ClientDisconnected(f"request body ended after {self._body_length - self._missing} of "
                                     f"{self._body_length} bytes: the web server closed stdin")
        return data

    def read_data(self) -> bytes:
        return b""  # no FILTER role under CGI

    def _read_body(self) -> bytes:
        if self._unread == 0:
            return b""
        size = READ_SIZE if self._unread is None else min(READ_SIZE, self._unread)
        try:
            data = os.read(self.stdin_fd, size)
        except OSError as exc:
            raise ClientDisconnected(f"reading the request body failed: {exc.strerror or exc}") from None
        if not data:
            self._missing = self._unread or 0
            self._unread = 0
        elif self._unread is not None:
            self._unread -= len(data)
        return data

    def _spool_rest_of_body(self) -> None:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_THRESHOLD)
        while True:
            chunk = self._read_body()
            if not chunk:
                break
            if self._keep_unread:
                spool.write(chunk)
        spool.seek(0)
        self._spool = spool

    def send(self, buffers: list[Any]) -> None:
        data = b"".join(buffers)
        if not data:
            return
        reader = self._records
        reader.feed(data)
        out = []
        app_status = None
        while True:
            record = reader.next_record()
            if record is None:
                break
            if record.type == p.FCGI_STDOUT:
                out.append(record.content)
            elif record.type == p.FCGI_END_REQUEST:
                app_status = p.END_REQUEST_BODY.unpack(record.content)[0]
            # FCGI_STDERR: the traceback, which the error log on stderr already has
        self.write(b"".join(out))
        if app_status is not None:
            self.app_status = app_status  # the whole response went out

    def write(self, data: bytes) -> None:
        """Write response bytes to stdout (the rest of the body is read first)."""
        if self.body_unread:
            self._spool_rest_of_body()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.stdout_fd, view)
            except OSError as exc:
                raise ClientDisconnected(f"writing the response failed: {exc.strerror or exc}") from None
            view = view[written:]

    def end_request(self, app_status: int) -> bytes:
        return p.encode_end_request(REQUEST_ID, app_status)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


def _channel(pairs: list[tuple[str, str]], stdin_fd: int, stdout_fd: int, limit: int = 0) -> CGIChannel:
    """The channel for a request, reading the body that the environ will say there
    is (the handler builds the environ itself, from the same pairs)."""
    variables = dict(pairs)  # the last pair wins, as in build_environ
    length = usable_content_length(variables.get("CONTENT_LENGTH"))
    if length is not None:
        return CGIChannel(stdin_fd, stdout_fd, length, limit)
    return CGIChannel(stdin_fd, stdout_fd, None if variables.get("HTTP_TRANSFER_ENCODING") else 0, limit)


def _run_once(app: WSGIApp) -> WSGIApp:
    def app_run_once(environ: Any, start_response: Any) -> Any:
        environ["wsgi.run_once"] = True  # PEP 3333: true under CGI
        return app(environ, start_response)
    return app_run_once


def serve_request(app: WSGIApp, environ: Mapping[str, str], *, stdin_fd: int, stdout_fd: int,
                  script_name: str | None = None, limit_request_body: int = 0,
                  hooks: WorkerHooks | None = None) -> int:
    """Run the one request described by ``environ`` (a CGI process
    environment): the body from ``stdin_fd``, the response to ``stdout_fd``.
    Returns the exit status (0: a complete response went out). ``hooks``:
    pre_request and post_request run around it."""
    pairs = environ_pairs(environ)
    channel = _channel(pairs, stdin_fd, stdout_fd, limit_request_body)
    options: dict[str, Any] = dict(script_name=script_name, multiprocess=True, limit_request_body=limit_request_body)
    handler = (HookedHandler(hooks, _run_once(app), **options) if hooks is not None and hooks.per_request
               else RequestHandler(_run_once(app), **options))
    try:
        handler.handle(channel, REQUEST_ID, p.FCGI_RESPONDER, pairs)
    finally:
        channel.close()
    return 0 if channel.app_status == 0 else 1


# --- start-up -----------------------------------------------------------------------

def _take_over_streams() -> tuple[int, int]:
    """(stdin, stdout) of the request on private close-on-exec descriptors;
    fd 0 becomes /dev/null and fd 1 a copy of stderr."""
    stdout_fd = os.dup(1)
    try:
        os.dup2(2, 1)
    except OSError:  # started with fd 2 closed
        os.dup2(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), 1)
    if sys.stdout is not None:
        sys.stdout.flush()  # whatever was printed before serve() goes to stderr, not ahead of the Status line
    try:
        stdin_fd = os.dup(0)
    except OSError:  # started with fd 0 closed: no body
        stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    return stdin_fd, stdout_fd


def serve_cgi(config: Config, app: Callable[..., Any] | None, app_spec: str | None,
              request: Mapping[str, str]) -> int:
    """Serve the one CGI request of this process; returns the exit status.
    ``request`` is the environment the web server set, taken before --env
    added the app's variables: those are the app's, not the request's, and a
    request variable keeps the server's value.
    A failure before the app runs (post_worker_init raising included) is the
    generic 500 for the client and a StartupError for the command line to
    print (one line on stderr). Hooks: post_worker_init, pre_request and
    post_request; there is no master, and no timeout to abort on."""
    stdin_fd, stdout_fd = _take_over_streams()
    if "HTTP_PROXY" not in (config.env or {}):  # httpoxy, before the app's own code runs
        os.environ.pop("HTTP_PROXY", None)  # (one the operator set with --env is the app's own)
    hooks = WorkerHooks.from_config(config, WorkerInfo(os.getpid()))
    try:
        switch_to(identity_for(config))
        if app is None:
            assert app_spec is not None
            app = load_app_at_startup(app_spec)
        if hooks is not None:
            hooks.initialized()
    except StartupError:
        _answer_500(request, stdin_fd, stdout_fd)
        raise
    return serve_request(app, request, stdin_fd=stdin_fd, stdout_fd=stdout_fd, script_name=config.script_name,
                         limit_request_body=config.limit_request_body, hooks=hooks)


def _answer_500(request: Mapping[str, str], stdin_fd: int, stdout_fd: int) -> None:
    channel = _channel(environ_pairs(request), stdin_fd, stdout_fd)
    try:
        channel.write(ERROR_500)
    except ClientDisconnected:
        pass
    finally:
        channel.close()
