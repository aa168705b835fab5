"""``python -m wsgi_fcgi [OPTIONS] MODULE:APP`` and the start-up path ``serve()`` shares.

Strategy: options come from the settings table (config.py); start-up decides
where to listen (``--bind``, else the listening socket a web server left on
fd 0, else 127.0.0.1:9000) and whether a master is needed. Spawned on fd 0
with one worker -- Apache mod_fcgid, lighttpd ``bin-path`` -- the web server
is the process manager, so the process serves requests itself. Otherwise the
prefork master in manager.py runs the pool. Started as a CGI script, it
serves that one request instead (``--mode``, cgi.py).

Every error a user can cause ends with one line on stderr and an exit code
(errors.py): 2 bad option, 3 cannot listen / boot failure, 4 the app cannot
be loaded. Start-up steps anywhere raise ``StartupError``; ``run`` prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from collections.abc import Callable, Sequence

from . import __version__
from ._compiled import form
from .config import SETTINGS_BY_NAME, Config, ConfigError, add_arguments, default_workers, load_config_file
from .errors import EXIT_APP_LOAD_ERROR, EXIT_BOOT_ERROR, EXIT_USAGE, StartupError
from .limits import prepare_process
from .loader import AppLoadError, load_app, load_app_at_startup
from .logs import error_log, setup_logging
from .privileges import identity_for, root_refusal, socket_owner, switch_to
from .sockets import (DEFAULT_TCP_ADDRESS, Address, AddressError, adopt_activated, bind, inherited_listener,
                      is_loopback, parse_address)

__all__ = ["EXIT_APP_LOAD_ERROR", "EXIT_BOOT_ERROR", "EXIT_USAGE", "main", "run"]


def fail(message: str) -> None:
    print(f"wsgi_fcgi: error: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsgi_fcgi",
        description="Serve a WSGI application over FastCGI (nginx, Apache, lighttpd) with a prefork pool.",
        epilog="Settings come from, lowest first: defaults, the --config file, the WSGI_FCGI_ARGS "
               "environment variable (command-line syntax), the command line. "
               "Signals to the master: TERM graceful stop, INT/QUIT quick stop, HUP graceful reload, "
               "TTIN/TTOU one worker more/fewer, USR1 reopen log files.")
    parser.add_argument("app", metavar="MODULE:APP", nargs="?",
                        help="the WSGI app: pkg.mod:app, pkg.mod (finds application or app), pkg.mod:create_app(); "
                             "or wsgi_app in the config file")
    parser.add_argument("--version", action="version", version=f"wsgi_fcgi {__version__}")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="a Python file setting any option by its name (workers = 4, bind = ['unix:...'])")
    parser.add_argument("--check-config", action="store_true",
                        help="check the settings and that the app loads, print the effective settings, exit")
    add_arguments(parser)
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in SETTINGS_BY_NAME and value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    config, app_spec, check = read_settings(argv)
    if check:
        return check_config(config, app_spec)
    return run(config, app_spec=app_spec)


def read_settings(argv: Sequence[str] | None = None) -> tuple[Config, str, bool]:
    """(config, MODULE:APP, --check-config) from the defaults, the config file,
    WSGI_FCGI_ARGS and ``argv``; exits 2 with a usage line when they do not hold.
    The parser is gone once this returns, before the master starts serving and
    forks workers."""
    parser = build_parser()
    args = parser.parse_args(argv)
    env_args = parser.parse_args(_split_env_args(os.environ.get("WSGI_FCGI_ARGS", "")))
    config = Config()
    app_spec = args.app or env_args.app
    try:
        config_file = args.config or env_args.config
        if config_file:
            from_file = load_config_file(config_file)
            file_app = from_file.pop("wsgi_app", None)  # always: it is not a setting for update()
            app_spec = app_spec or file_app
            config.update(from_file)
        config.update(_given(env_args))
        config.update(_given(args))
    except ConfigError as exc:
        parser.error(str(exc))
    if not app_spec:
        parser.error("MODULE:APP is required (on the command line, or wsgi_app in the --config file)")
    return config, app_spec, bool(args.check_config or env_args.check_config)


def _split_env_args(text: str) -> list[str]:
    if not text.strip():
        return []  # the usual case: no shlex in the master
    import shlex

    return shlex.split(text)


def check_config(config: Config, app_spec: str) -> int:
    """Print the effective settings; 0 if they hold and the app loads. Sockets
    systemd passed are listed as ``# listen: ...`` comments (not settings: the
    .socket unit sets them), after the same checks a start makes."""
    for name, value in sorted(config.as_dict().items()):
        print(f"{name} = {value!r}")
    print(f"wsgi_app = {app_spec!r}")
    print(f"# form: {form()}")  # which form of the package runs: compiled or pure Python
    hooks = config.hooks_set()
    if hooks:
        print(f"# hooks: {', '.join(hooks)}")  # functions: named, not printed
    try:
        activated = activated_listeners(config)
    except (AddressError, StartupError) as exc:
        fail(str(exc))
        return exc.exit_code if isinstance(exc, StartupError) else EXIT_BOOT_ERROR
    for sock, address in activated:
        print(f"# listen: {address}")
        sock.detach()  # systemd's socket: leave the descriptor as it was passed
    try:
        prepare_process(config)  # what the app will be imported with, and whether it can be had
    except StartupError as exc:
        fail(exc.reason)
        return exc.exit_code
    try:
        load_app(app_spec)
    except AppLoadError as exc:
        fail(f"cannot load the app: {exc}")
        return EXIT_APP_LOAD_ERROR
    return 0


def open_listeners(config: Config) -> tuple[list[Any], list[Address], bool]:
    """(sockets, addresses, spawned_on_fd0): systemd's sockets, else --bind, else fd 0, else the default."""
    activated = activated_listeners(config)
    if activated:
        return [sock for sock, _ in activated], [address for _, address in activated], False
    if config.bind:
        addresses = [parse_address(spec) for spec in config.bind]
        _check_exposure(addresses, config.allow_remote)
        owner = socket_owner(config)
        sockets = [bind(a, backlog=config.backlog, socket_mode=config.socket_mode, owner=owner) for a in addresses]
        return sockets, addresses, False
    inherited = inherited_listener()
    if inherited is not None:
        return [inherited], [parse_address("fd://0")], True
    address = parse_address(DEFAULT_TCP_ADDRESS)
    return [bind(address, backlog=config.backlog)], [address], False


def activated_listeners(config: Config) -> list[tuple[Any, Address]]:
    """The sockets systemd passed (socket activation), checked like --bind's.
    They win over --bind: the .socket unit is where a systemd setup says where
    to listen, and binding the same address again would fail anyway."""
    from .systemd import listen_fds  # only when systemd passed sockets, or says it did

    fds = listen_fds() if "LISTEN_FDS" in os.environ or "LISTEN_PID" in os.environ else []
    activated = [adopt_activated(fd, name) for fd, name in fds]
    if activated and config.bind:
        error_log.warning("listening on the socket(s) systemd passed (LISTEN_FDS), not on --bind %s",
                          " ".join(config.bind))
    _check_exposure([address for _, address in activated], config.allow_remote)
    return activated


def _check_exposure(addresses: list[Address], allow_remote: bool) -> None:
    """A FastCGI port reachable from other machines is the classic hole (PHP-FPM on
    0.0.0.0:9000): it takes --allow-remote, and then a warning names the risk."""
    for address in addresses:
        if is_loopback(address):
            continue
        if not allow_remote:
            raise AddressError(f"refusing to listen on {address}, which other machines can reach: FastCGI has "
                               "no authentication. Bind 127.0.0.1 or a unix socket, or pass --allow-remote "
                               "(with --allowed-addr)")
        error_log.warning("listening on %s, reachable from other machines: anyone who can connect controls "
                          "REMOTE_ADDR, REMOTE_USER, HTTPS and every other value the app sees; restrict it "
                          "with --allowed-addr and a firewall", address)


def run(config: Config, *, app: Callable[..., Any] | None = None, app_spec: str | None = None) -> int:
    """Listen, then serve until stopped. Returns the process exit code; a
    StartupError from any mode is printed here, and only here."""
    try:
        return _start(config, app, app_spec)
    except StartupError as exc:
        fail(exc.reason)
        return exc.exit_code


def _start(config: Config, app: Callable[..., Any] | None, app_spec: str | None) -> int:
    """Every mode's start-up, in order: logs, the mode, the root rule, umask,
    --chdir, --env and --rlimit-*; then CGI, the single process on fd 0, or the master."""
    try:
        setup_logging(config.log_level, config.error_logfile, config.access_logfile)
    except OSError as exc:
        raise StartupError(f"cannot open a log file: {exc.filename}: {exc.strerror}", EXIT_USAGE) from None
    if config.mode == "fastcgi" or (config.mode == "auto" and (config.bind or "LISTEN_FDS" in os.environ)):
        mode = "fastcgi"  # choose_mode's first answer, without loading cgi.py into the master and its workers
    else:
        from .cgi import ModeError, detect_mode

        try:
            mode = detect_mode(config, from_script=app is not None)
        except ModeError as exc:
            raise StartupError(str(exc), EXIT_USAGE) from None
    refusal = root_refusal(config)
    if refusal:
        raise StartupError(refusal, EXIT_USAGE)
    if config.umask is not None:
        os.umask(config.umask)  # before binding: it covers the socket file and everything the app creates
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise StartupError(f"--chdir {config.chdir}: {exc.strerror}", EXIT_BOOT_ERROR) from None
    request = dict(os.environ) if mode == "cgi" else {}  # a CGI request's variables, before --env adds the app's
    prepare_process(config)  # before the app is imported and before any fork: every mode, every worker
    if mode == "cgi":
        from .cgi import serve_cgi

        return serve_cgi(config, app, app_spec, request)
    try:
        listeners, addresses, on_fd0 = open_listeners(config)
    except AddressError as exc:
        raise StartupError(str(exc), EXIT_BOOT_ERROR) from None
    workers = config.workers or default_workers(on_fd0)
    if on_fd0 and workers == 1 and config.pool == "static":
        if config.status_bind:
            error_log.warning("--status-bind needs the master; on the socket a web server left on fd 0 "
                              "there is none (use --status-path on the app's own socket)")
        return _serve_in_process(config, listeners, app, app_spec)
    from .manager import Arbiter
    return Arbiter(config, listeners, addresses, workers=workers, app=app, app_spec=app_spec,
                   status=open_status_socket(config)).run()


def open_status_socket(config: Config) -> tuple[Any, Address] | None:
    """--status-bind's socket, opened (like --bind's) before any privilege is dropped."""
    if not config.status_bind:
        return None
    address = parse_address(config.status_bind)
    try:
        _check_exposure([address], config.allow_remote)
        return bind(address, backlog=64, socket_mode=config.socket_mode, owner=socket_owner(config)), address
    except AddressError as exc:
        raise StartupError(f"--status-bind: {exc}", EXIT_BOOT_ERROR) from None


def _serve_in_process(config: Config, listeners: list[Any], app: Callable[..., Any] | None,
                      app_spec: str | None) -> int:
    """One process, spawned by the web server, which manages processes itself.
    No master, so of the hooks only the worker's run: post_worker_init (raising:
    exit 3), pre_request, post_request."""
    from .worker import Worker

    switch_to(identity_for(config))  # the inherited socket is already open
    if app is None:
        assert app_spec is not None
        app = load_app_at_startup(app_spec)
    if config.max_worker_memory:
        error_log.warning("--max-worker-memory is the master's: spawned on fd 0 there is none, the web server "
                          "manages the processes (mod_fcgid: FcgidMaxRequestsPerProcess); ignored")
    if config.threads > 1:
        error_log.info("--threads %d on the socket a web server left on fd 0: Apache mod_fcgid sends one "
                       "request at a time to each process it spawns, so there threads bring nothing "
                       "(raise FcgidMaxProcesses instead); lighttpd and spawn-fcgi may send several",
                       config.threads)
    Worker.from_config(app, listeners, config, max_requests=config.max_requests, pool_size=1).run()
    return 0
