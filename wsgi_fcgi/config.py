"""Every setting, declared once.

Strategy: ``SETTINGS`` is the one table -- name, command-line flag, parser,
default, help. The command line (``cli.py``: its options, ``--help`` and its
groups), the config file's names, ``serve(app, **options)`` and
``--check-config``'s output are all generated from it, so a setting cannot
exist in one place and be missing in another. ``HOOKS``, its sibling, declares
the server hooks (functions, so a config file or ``serve`` only): each name,
its arguments and where it runs; a hook is checked as a callable that takes
exactly those arguments. The README's flag table is
written by hand, a summary of the most used; ``tests/test_config.py`` checks
that every flag it names is in the table. Parsers turn a string (from the command line or a config
file) or a Python value (from ``serve``) into the checked value, and raise
``ConfigError`` with a message that names the setting.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple
from collections.abc import Callable, Mapping, Sequence

from .logs import DEFAULT_ACCESS_FORMAT


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


Parser = Callable[[Any], Any]

MAX_THREADS = 1024  # per worker: far past any useful figure, and it bounds the scoreboard
MIN_NOFILE = 64  # below this the server's own descriptors (sockets, epoll, pipes, logs) leave the app none
UNLIMITED = "unlimited"  # a resource limit of RLIM_INFINITY, as ulimit and systemd spell it


def _int_at_least(minimum: int) -> Parser:
    def parse(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise ValueError(f"{number} is less than {minimum}")
        return number
    return parse


def _int_between(minimum: int, maximum: int) -> Parser:
    at_least = _int_at_least(minimum)

    def parse(value: Any) -> int:
        number: int = at_least(value)
        if number > maximum:
            raise ValueError(f"{number} is more than {maximum}")
        return number
    return parse


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if number < 0 or number != number:
        raise ValueError(f"{value!r} must be zero or more seconds")
    return number


def _size_or_unlimited(value: Any) -> int | str:
    """A resource limit: a whole number, or ``unlimited`` (also ``infinity``, systemd's word)."""
    if str(value).strip().lower() in (UNLIMITED, "infinity"):
        return UNLIMITED
    number: int = _int_at_least(0)(value)
    return number


def _octal_mode(value: Any) -> int:
    if isinstance(value, int):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a file mode between 000 and 777")
    return mode


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        text = str(value)
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text
    return parse


def _bind_list(value: Any) -> list[str]:
    from .sockets import parse_address

    specs = [value] if isinstance(value, str) else list(value)
    for spec in specs:
        parse_address(spec)  # raises AddressError (a ValueError) with the reason
    return specs


def _address_spec(value: Any) -> str | None:
    if value is None:
        return None
    return _bind_list(str(value))[0]


def parse_networks(value: Any) -> list[Any]:
    """IPv4/IPv6 addresses or CIDR networks, from a list or comma-separated strings."""
    import ipaddress

    items = [value] if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        for text in str(item).split(","):
            text = text.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address or network (e.g. 10.0.0.0/8, ::1)") from None
    return networks


def _script_name(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if text and not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/' (or be empty for the root)")
    return text.rstrip("/")


def _environment(value: Any) -> dict[str, str]:
    """--env: ``KEY=VALUE`` strings (repeated on the command line, a list in a
    config file) or a dict (``serve(app, env={...})``, a config file)."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = [_key_value(item) for item in ([value] if isinstance(value, str) else value)]
    for key, text in pairs:
        _check_variable(key, text)
    return dict(pairs)


def _key_value(item: Any) -> tuple[str, str]:
    if not isinstance(item, str):
        raise ValueError(f"{item!r} is not a KEY=VALUE string")
    key, equals, text = item.partition("=")
    if not equals:
        raise ValueError(f"{item!r} is not KEY=VALUE (no '=')")
    return key, text


def _check_variable(key: Any, text: Any) -> None:
    # What execve(2) and os.environ cannot carry: a name that is empty or holds
    # '=' (the separator), a NUL (the terminator) anywhere.
    if not isinstance(key, str) or not isinstance(text, str):
        raise ValueError(f"{key!r}: {text!r}: names and values must be strings")
    if not key:
        raise ValueError(f"'={text}': the name is empty")
    if "=" in key:
        raise ValueError(f"the name {key!r} contains '='")
    if "\0" in key or "\0" in text:
        raise ValueError(f"{key!r} contains a NUL character")


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _account(kind: str, lookup: Callable[[str], Any]) -> Parser:
    """A user or group: a name that must exist, or a numeric id (which need not)."""
    def parse(value: Any) -> str:
        text = str(value).strip()
        if not text.isdigit():
            try:
                lookup(text)
            except KeyError:
                raise ValueError(f"no {kind} named {text!r}") from None
        return text
    return parse


def _lookup_user(name: str) -> Any:
    import pwd

    return pwd.getpwnam(name)


def _lookup_group(name: str) -> Any:
    import grp

    return grp.getgrnam(name)


_user = _account("user", _lookup_user)
_group = _account("group", _lookup_group)


class Setting(NamedTuple):
    """One setting. A NamedTuple rather than a dataclass, as everywhere a worker
    runs (protocol.py, sockets.py, privileges.py, manager.py): dataclasses imports
    inspect, ast, dis and tokenize, about 0.7 MiB in every worker of an app that
    does not import them itself (bench/rss.py). Only client.py, which no worker
    imports, uses dataclasses."""

    name: str
    flags: Sequence[str]
    parse: Parser
    default: Any
    help: str
    metavar: str | None = None
    section: str = "server"
    is_flag: bool = False  # a switch without a value on the command line
    repeatable: bool = False


SETTINGS: list[Setting] = [
    # --- where to listen
    Setting("bind", ("-b", "--bind"), _bind_list, None,
            "Address to listen on: unix:PATH, HOST:PORT, [IPV6]:PORT or fd://N. Repeatable. "
            "Default: the listening socket on fd 0 when a web server spawned us, else 127.0.0.1:9000.",
            metavar="ADDRESS", repeatable=True),
    Setting("backlog", ("--backlog",), _int_at_least(1), 1024,
            "Listen queue length.", metavar="N"),
    Setting("socket_mode", ("--socket-mode",), _octal_mode, 0o660,
            "File mode of a unix socket we create (octal).", metavar="MODE"),
    Setting("socket_group", ("--socket-group",), _group, None,
            "Group of a unix socket we create, e.g. the web server's (www-data), so --socket-mode 0660 "
            "lets it connect while the workers run as their own --user/--group.",
            metavar="GROUP"),
    # --- who may connect
    Setting("allow_remote", ("--allow-remote",), _bool, False,
            "Allow listening on a TCP address that is not loopback. FastCGI has no authentication: "
            "whoever can connect controls every value the app sees (REMOTE_ADDR, REMOTE_USER, HTTPS, "
            "SCRIPT_NAME). Combine with --allowed-addr and a firewall.",
            section="security", is_flag=True),
    Setting("allowed_addr", ("--allowed-addr",), parse_networks, None,
            "Accept TCP connections only from these addresses: IPv4, IPv6 or CIDR, comma-separated or "
            "repeated. FCGI_WEB_SERVER_ADDRS in the environment (the spec's variable) adds to it. "
            "Connections over a unix socket are not checked (its file mode guards it).",
            metavar="ADDRS", section="security", repeatable=True),
    # --- the application
    Setting("script_name", ("--script-name",), _script_name, None,
            "The URL prefix the app is mounted at (e.g. /app). Overrides what the web server sends; "
            "needed behind Apache ProxyPass to a prefix and lighttpd \"/\" without fix-root-scriptname.",
            metavar="PREFIX", section="application"),
    Setting("chdir", ("--chdir",), _optional_str, None,
            "Change to this directory before loading the app.", metavar="DIR", section="application"),
    Setting("env", ("--env",), _environment, None,
            "Set an environment variable for the app, KEY=VALUE (repeatable), before it is imported: in the "
            "master and every worker, on fd 0 and under CGI (where the request's own variables keep the "
            "values the web server set). A config file may give a dict.",
            metavar="KEY=VALUE", section="application", repeatable=True),
    Setting("preload", ("--preload",), _bool, False,
            "Load the app in the master before forking workers (shared memory, slower reloads).",
            section="application", is_flag=True),
    # --- workers
    Setting("workers", ("-w", "--workers"), _int_at_least(1), None,
            "Number of worker processes (the maximum for dynamic and ondemand pools). "
            "Default: 1 when spawned by a web server on fd 0, else 2.",
            metavar="N", section="workers"),
    Setting("threads", ("--threads",), _int_between(1, MAX_THREADS), 1,
            "Threads per worker process: each worker serves up to N requests at once, for apps that "
            "spend their time waiting (a database, an HTTP API). 1: one request at a time per process, "
            "no thread started. Under Apache mod_fcgid (spawned on fd 0) threads bring nothing: it "
            "sends one request at a time per process.",
            metavar="N", section="workers"),
    Setting("pool", ("--pool",), _choice("static", "dynamic", "ondemand"), "static",
            "Pool sizing: static (always --workers), dynamic (keep --min-spare..--max-spare idle "
            "workers), ondemand (start workers when connections wait, stop them after --idle-timeout).",
            metavar="MODE", section="workers"),
    Setting("min_spare", ("--min-spare",), _int_at_least(0), 1,
            "dynamic pool: fewest idle workers to keep.", metavar="N", section="workers"),
    Setting("max_spare", ("--max-spare",), _int_at_least(1), 3,
            "dynamic pool: most idle workers to keep.", metavar="N", section="workers"),
    Setting("idle_timeout", ("--idle-timeout",), _seconds, 10.0,
            "ondemand and dynamic pools: seconds an idle surplus worker lives.",
            metavar="S", section="workers"),
    Setting("timeout", ("-t", "--timeout"), _seconds, 30.0,
            "Kill and replace a worker busy with one request for longer than this (0 = never). Not enforced "
            "in the single process a web server spawns on fd 0 (the master does that, and there is none): under "
            "Apache mod_fcgid use FcgidIOTimeout and FcgidBusyTimeout.",
            metavar="S", section="workers"),
    Setting("graceful_timeout", ("--graceful-timeout",), _seconds, 30.0,
            "On TERM and HUP, how long in-flight requests may take before workers are killed.",
            metavar="S", section="workers"),
    Setting("max_requests", ("--max-requests",), _int_at_least(0), 0,
            "Restart a worker after this many requests (0 = never).", metavar="N", section="workers"),
    Setting("max_requests_jitter", ("--max-requests-jitter",), _int_at_least(0), 0,
            "Add a random 0..J to --max-requests per worker, so workers do not restart together.",
            metavar="J", section="workers"),
    Setting("max_worker_memory", ("--max-worker-memory",), _int_at_least(0), 0,
            "Replace a worker whose resident memory (RSS) passes this many MiB, once it has finished the "
            "request in hand (0 = never); the master checks about once a second. RSS rather than USS: one "
            "cheap read of /proc/PID/statm however large the worker, and what uWSGI's reload-on-rss uses. "
            "It includes pages a worker shares with the master (--preload, libraries), so set it above an "
            "idle worker's RSS (the status page's memory_rss_bytes) by the growth you allow.",
            metavar="MIB", section="workers"),
    # --- connections and limits
    Setting("read_timeout", ("--read-timeout",), _seconds, 30.0,
            "Close a connection whose peer sends nothing, or takes none of the response, for this long in the "
            "middle of a request.",
            metavar="S", section="limits"),
    Setting("keepalive_timeout", ("--keepalive-timeout",), _seconds, 60.0,
            "Close a kept-alive (FCGI_KEEP_CONN) connection idle for this long.",
            metavar="S", section="limits"),
    Setting("limit_request_body", ("--limit-request-body",), _int_at_least(0), 0,
            "Largest request body accepted, in bytes; a larger one is answered 413 without calling "
            "the app (0 = no limit).", metavar="BYTES", section="limits"),
    Setting("max_idle_connections", ("--max-idle-connections",), _int_at_least(0), 32,
            "Idle kept-alive connections one worker holds open for the web server to reuse; beyond "
            "this the one idle longest is closed.", metavar="N", section="limits"),
    Setting("max_params_bytes", ("--limit-params-bytes",), _int_at_least(1024), 256 * 1024,
            "Largest PARAMS stream accepted, in bytes.", metavar="BYTES", section="limits"),
    Setting("max_params_count", ("--limit-params-count",), _int_at_least(16), 1000,
            "Most parameters accepted in one request.", metavar="N", section="limits"),
    # --- operations
    Setting("ping_path", ("--ping-path",), _script_name, None,
            "Answer this path with 200 and --ping-response, without calling the app (health checks).",
            metavar="PATH", section="operations"),
    Setting("ping_response", ("--ping-response",), str, "pong",
            "The body of the ping page.", metavar="TEXT", section="operations"),
    Setting("status_path", ("--status-path",), _script_name, None,
            "Answer this path with the pool's status (text; ?json, ?openmetrics, ?full), without calling "
            "the app. Expose it to internal addresses only.", metavar="PATH", section="operations"),
    Setting("status_bind", ("--status-bind",), _address_spec, None,
            "A FastCGI socket of the master's own (PHP-FPM's pm.status_listen) where it answers the ping "
            "and status pages itself (--ping-path, --status-path; /ping and /status if unset), so a "
            "monitor still gets an answer when every worker is busy. Same address forms, socket mode and "
            "--allowed-addr rules as --bind. Needs the master (not fd 0).", metavar="ADDRESS",
            section="operations"),
    Setting("slow_request_timeout", ("--slow-request-timeout",), _seconds, 0.0,
            "Log the stack of a request running longer than this, without stopping it (0 = never).",
            metavar="S", section="operations"),
    Setting("slow_log", ("--slow-log",), _optional_str, None,
            "Where slow-request stacks go. Default: the error log.", metavar="FILE", section="operations"),
    Setting("reload", ("--reload",), _bool, False,
            "Development only: restart workers when a source file of the app changes (polled each second).",
            section="operations", is_flag=True),
    Setting("reload_on_touch", ("--reload-on-touch",), _optional_str, None,
            "Reload gracefully, as on HUP, when FILE's modification time changes or it appears (polled "
            "each second; uWSGI's touch-reload): for shared hosting, where Apache's processes cannot be "
            "signalled. Without a master (fd 0, mod_fcgid) the process exits after its current request "
            "and the web server starts a fresh one.", metavar="FILE", section="operations"),
    # --- process
    Setting("pidfile", ("-p", "--pid"), _optional_str, None,
            "Write the master's process id to this file.", metavar="FILE", section="process"),
    Setting("log_level", ("--log-level",), _choice("debug", "info", "warning", "error", "critical"), "info",
            "Error log level.", metavar="LEVEL", section="logging"),
    Setting("error_logfile", ("--error-logfile",), _optional_str, "-",
            "Where the error log goes: a file, or - for stderr. Reopened on USR1.",
            metavar="FILE", section="logging"),
    Setting("access_logfile", ("--access-logfile",), _optional_str, None,
            "Write an access log line per request to this file (- for stderr). Off by default. "
            "Reopened on USR1.", metavar="FILE", section="logging"),
    Setting("access_logformat", ("--access-logformat",), str, DEFAULT_ACCESS_FORMAT,
            "Access log format with gunicorn's atoms (%(h)s remote address, %(r)s request line, %(s)s "
            "status, %(b)s bytes, %(D)s microseconds, %(p)s pid, %({header}i)s, %({header}o)s ...), "
            "or json.", metavar="FORMAT", section="logging"),
    # --- privileges (manager.py applies them; added with the prefork manager)
    Setting("user", ("-u", "--user"), _user, None,
            "Run the workers as this user (name or uid) when started as root; the master binds first. "
            "Without it the server refuses to run the app as root (see --allow-root).",
            metavar="USER", section="process"),
    Setting("group", ("-g", "--group"), _group, None,
            "Run the workers with this group (name or gid). Default with --user: that user's group. "
            "A unix socket we create is given this group, so --socket-mode 0660 lets it connect.",
            metavar="GROUP", section="process"),
    Setting("umask", ("--umask",), _octal_mode, None,
            "File mode mask (octal, e.g. 027) for the server and the files the app creates. "
            "Default: inherited.", metavar="MASK", section="process"),
    Setting("allow_root", ("--allow-root",), _bool, False,
            "Run the app as root (e.g. in a container whose only user is root). Without it, and without "
            "--user, a server started as root refuses to start.",
            section="process", is_flag=True),
    Setting("rlimit_nofile", ("--rlimit-nofile",), _int_at_least(MIN_NOFILE), None,
            "Open files the server and the app may hold (RLIMIT_NOFILE's soft limit), set in the master "
            "before it forks workers (on fd 0 and under CGI: before the app loads). Above the hard limit only "
            "a privileged server (root with CAP_SYS_RESOURCE) can go; otherwise it refuses to start. "
            "Default: inherited (ulimit -n).", metavar="N", section="process"),
    Setting("rlimit_core", ("--rlimit-core",), _size_or_unlimited, None,
            "Largest core dump in bytes, or unlimited (RLIMIT_CORE's soft limit), set as --rlimit-nofile. "
            "0 turns core dumps off. Default: inherited (ulimit -c).", metavar="BYTES", section="process"),
    # --- CGI (cgi.py)
    Setting("mode", ("--mode",), _choice("auto", "fastcgi", "cgi"), "auto",
            "How requests arrive. auto: FastCGI on --bind or on the listening socket a web server left "
            "on fd 0; else, started as a CGI script (REQUEST_METHOD or GATEWAY_INTERFACE set), serve that "
            "one request as CGI; else, from a terminal, say how to run it. fastcgi: never CGI (without "
            "--bind: fd 0, else 127.0.0.1:9000). cgi: serve one CGI request on stdin/stdout and exit.",
            metavar="MODE"),
]

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class Hook(NamedTuple):
    """One server hook: gunicorn's name and arguments, and which process calls it."""

    name: str
    params: tuple[str, ...]
    runs_in: str  # "master" or "worker"
    help: str

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.params)})"


HOOKS: list[Hook] = [
    Hook("on_starting", ("server",), "master",
         "The master starts: before --preload loads the app and before the first fork (sockets are open)."),
    Hook("when_ready", ("server",), "master", "The master is set up; the first workers are started next."),
    Hook("pre_fork", ("server", "worker"), "master", "Just before a worker is forked (worker.pid is None)."),
    Hook("post_fork", ("server", "worker"), "worker",
         "In the new worker, after fork and --user, before it loads the app (without --preload): close "
         "what it inherited (database connections opened at import with --preload). Raising: a boot failure."),
    Hook("post_worker_init", ("worker",), "worker",
         "In the worker, once the app is loaded, before it accepts connections. Raising: a boot failure."),
    Hook("pre_request", ("worker", "req"), "worker",
         "Before each request (ping and status pages too). Raising: that request is answered 500."),
    Hook("post_request", ("worker", "req", "environ", "resp"), "worker",
         "After each response went out (or failed). Raising: logged."),
    Hook("worker_abort", ("worker",), "worker",
         "The worker is killed for --timeout (SIGABRT), before it exits: flush telemetry. With --threads: "
         "in the worker's main thread, as it retires."),
    Hook("worker_exit", ("server", "worker"), "master",
         "A worker has exited and been reaped; worker.exit_code says how."),
    Hook("on_reload", ("server",), "master", "HUP: before the new generation of workers is started."),
    Hook("on_exit", ("server",), "master", "The master is about to exit, its workers gone."),
]

HOOKS_BY_NAME: dict[str, Hook] = {h.name: h for h in HOOKS}

# gunicorn hooks with no counterpart here (no exec on USR2, no SSL, no SIGINT
# hook in the worker): a config file ported from gunicorn that defines one is
# told so, rather than having it silently never run.
GUNICORN_ONLY_HOOKS = ("worker_int", "pre_exec", "child_exit", "nworkers_changed", "ssl_context")


def check_hook(hook: Hook, value: Any) -> Callable[..., Any]:
    """``value`` if it is a callable that takes the hook's arguments, else ConfigError naming the hook."""
    if not callable(value):
        raise ConfigError(f"hook {hook.name}: {value!r} is not callable; expected a function {hook.signature}")
    import inspect  # only when a hook is set: a worker without hooks never imports it

    try:
        inspect.signature(value).bind(*hook.params)
    except TypeError:
        raise ConfigError(f"hook {hook.name}: {_describe_callable(value)} cannot be called with "
                          f"{len(hook.params)} argument(s); expected {hook.signature}") from None
    except ValueError:
        pass  # no signature to read (some builtins): trust it
    return value  # type: ignore[no-any-return]


def _describe_callable(value: Any) -> str:
    import inspect

    name = getattr(value, "__qualname__", None) or type(value).__name__
    try:
        return f"{name}{inspect.signature(value)}"
    except (TypeError, ValueError):
        return str(name)


class Config:
    """Checked settings, read by attribute (``config.workers``)."""

    def __init__(self, **values: Any) -> None:
        self._values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
        self._values.update((h.name, None) for h in HOOKS)
        self.update(values)

    def update(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            hook = HOOKS_BY_NAME.get(name)
            if hook is not None:
                self._values[name] = None if value is None else check_hook(hook, value)
                continue
            setting = SETTINGS_BY_NAME.get(name)
            if setting is None:
                raise ConfigError(f"unknown setting {name!r}")
            if value is None:
                self._values[name] = setting.default
                continue
            try:
                self._values[name] = setting.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{setting.flags[-1]}: {exc}") from None
        self._check_together()

    def _check_together(self) -> None:
        v = self._values
        if v["min_spare"] > v["max_spare"]:
            raise ConfigError(f"--min-spare ({v['min_spare']}) is more than --max-spare ({v['max_spare']})")

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        """The settings (not the hooks) by name."""
        return {name: value for name, value in self._values.items() if name not in HOOKS_BY_NAME}

    def hooks_set(self) -> list[str]:
        """The names of the hooks that are set, in HOOKS order."""
        return [hook.name for hook in HOOKS if self._values[hook.name] is not None]


def default_workers(spawned_on_fd0: bool) -> int:
    """One process when a web server manages processes for us (mod_fcgid sends
    one request at a time to each process it spawns), else two."""
    return 1 if spawned_on_fd0 else 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options generated from ``SETTINGS``, grouped by section."""
    groups: dict[str, Any] = {}
    for setting in SETTINGS:
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(setting.section)
        kwargs: dict[str, Any] = {"dest": setting.name, "default": None, "help": _help(setting)}
        if setting.is_flag:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["metavar"] = setting.metavar
            if setting.repeatable:
                kwargs["action"] = "append"
        group.add_argument(*setting.flags, **kwargs)


def _help(setting: Setting) -> str:
    default = setting.default
    if default is None or setting.is_flag:
        return setting.help.replace("%", "%%")
    if setting.parse is _octal_mode:
        default = f"{default:04o}"
    return f"{setting.help} Default: {default}.".replace("%", "%%")


CONFIG_FILE_EXTRAS = ("wsgi_app",)  # names a config file may set besides the settings


def load_config_file(path: str) -> dict[str, Any]:
    """The settings a Python config file assigns (``workers = 4``), by name.

    A Python file rather than TOML: the standard library reads TOML only from
    Python 3.11 on, and gunicorn's users already write their config this way.
    Names starting with ``_``, imported modules and functions are helpers, not
    settings -- except a function named as a hook (``def post_fork(server,
    worker)``), which is that hook; any other unknown name is an error, with a
    suggestion.
    """
    import difflib
    import types

    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    namespace: dict[str, Any] = {"__file__": path, "__name__": "__wsgi_fcgi_config__"}
    try:
        exec(compile(source, path, "exec"), namespace)  # noqa: S102 - the operator's own config file
    except Exception as exc:
        line = getattr(exc, "lineno", None)
        where = f", line {line}" if line else ""
        raise ConfigError(f"--config {path}{where}: {type(exc).__name__}: {exc}") from None
    for name in GUNICORN_ONLY_HOOKS:
        if callable(namespace.get(name)):
            raise ConfigError(f"--config {path}: {name} is a gunicorn hook that wsgi_fcgi does not run "
                              f"(its hooks: {', '.join(HOOKS_BY_NAME)})")
    values = {name: value for name, value in namespace.items()
              if name in HOOKS_BY_NAME or (not name.startswith("_") and not isinstance(
                  value, (types.ModuleType, types.FunctionType, type)))}
    known = set(SETTINGS_BY_NAME) | set(HOOKS_BY_NAME) | set(CONFIG_FILE_EXTRAS)
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--config {path}: unknown setting {name!r}{hint}")
    return values
