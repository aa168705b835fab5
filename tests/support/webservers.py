"""Real web servers on 127.0.0.1, configured from the templates in
``examples/<server>/`` and rendered into the test's temp dir.

Template convention: ``{{name}}`` placeholders (spaces inside the braces
allowed). nginx, Apache and lighttpd configs are full of ``$var``, ``%{var}``
and ``{ }`` of their own, so neither ``string.Template`` nor ``str.format``
can be used on them; ``{{ }}`` appears in none of them. Rendering fails on a
placeholder without a value, so a template and its test cannot drift apart.

To add a server (Apache, lighttpd): subclass ``WebServer``, set ``name`` and
``executable``, implement ``render()`` (write the config under ``self.root``)
and ``command()``; the base class finds a free port, starts the process in
its own session, waits for the port, stops it by PID and shows its logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import pytest

from . import EXAMPLES_DIR
from .processes import ManagedProcess, ProcessError, can_connect

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def render(text: str, values: Mapping[str, object]) -> str:
    """Fill ``{{name}}`` placeholders; KeyError names any that have no value."""
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise KeyError(f"template placeholders without a value: {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render_file(template: Path, dest: Path, values: Mapping[str, object]) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render(template.read_text(), values))
    return dest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_executable(name: str, *, package: str = "") -> str:
    """Path of ``name`` (also looked up in the sbin dirs). If it is missing:
    skip the test, or fail it where CI=true (a missing server must not turn
    a CI run green)."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if path:
        return path
    hint = f" (Debian package {package}; tests/run.sh installs it)" if package else ""
    message = f"{name} not found{hint}"
    if in_ci():
        pytest.fail(f"{message}, and CI=true", pytrace=False)
    pytest.skip(message)
    raise AssertionError("unreachable")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class WebServer:
    """A web server process on ``127.0.0.1:<free port>``, its config and logs
    under ``root``."""

    name = "webserver"
    executable = ""
    package = ""
    host = "127.0.0.1"
    start_attempts = 3  # a new port each time, in case another process took ours
    ready_timeout = 20.0
    stop_timeout = 15.0

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.binary = require_executable(self.executable, package=self.package)
        self.port = 0
        self.process: Optional[ManagedProcess] = None

    # -- to implement --------------------------------------------------
    def render(self) -> None:
        """Write the config for ``self.port`` under ``self.root``."""
        raise NotImplementedError

    def command(self) -> List[str]:
        raise NotImplementedError

    def log_files(self) -> Sequence[Path]:
        """Files shown by ``error_log_text()`` and on failures."""
        return []

    # -- shared --------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> "WebServer":
        for attempt in range(1, self.start_attempts + 1):
            self.port = free_port(self.host)
            self.render()
            self.process = ManagedProcess(
                self.command(),
                name=self.name,
                log_path=self.root / f"{self.name}.output",
                cwd=self.root,
                env=self.environment(),
            )
            self.process.start()
            try:
                self.process.wait_until(
                    lambda: can_connect(f"{self.host}:{self.port}"),
                    timeout=self.ready_timeout,
                    what=f"listening on {self.url}",
                )
                return self
            except ProcessError as exc:
                self.process.stop(signal.SIGKILL)
                in_use = "in use" in self.process.output_text() + self.error_log_text()
                if not in_use or attempt == self.start_attempts:
                    raise ProcessError(f"{exc}\n--- logs ---\n{self.error_log_text()}") from None
        raise AssertionError("unreachable")

    def environment(self) -> Mapping[str, str]:
        return dict(os.environ)

    def stop(self) -> Optional[int]:
        if self.process is None:
            return None
        return self.process.stop(signal.SIGTERM, self.stop_timeout)

    def error_log_text(self) -> str:
        parts = []
        for path in self.log_files():
            try:
                parts.append(f"=== {path.name}\n{path.read_text(errors='replace')}")
            except FileNotFoundError:
                pass
        if self.process is not None and self.process.output_text():
            parts.append(f"=== {self.process.log_path.name}\n{self.process.output_text()}")
        return "\n".join(parts)

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Nginx(WebServer):
    """nginx with ``examples/nginx/nginx.conf`` around one site template.

    ``site`` is a template name in ``examples/nginx/`` (``app-root.conf``,
    ``app-mounted.conf``) or, with ``site_text``, literal location blocks for
    a harness check. ``values`` fills the site's placeholders (``socket``).
    Layout under ``root``: ``conf/`` (nginx.conf, the site, fastcgi_params),
    ``logs/`` (error.log, access.log, nginx.pid), ``tmp/`` (body and
    response buffers), ``html/`` (document root).
    """

    name = "nginx"
    executable = "nginx"
    package = "nginx"
    template_dir = EXAMPLES_DIR / "nginx"

    def __init__(
        self,
        root: Path,
        site: str = "app-root.conf",
        values: Optional[Mapping[str, object]] = None,
        *,
        site_text: Optional[str] = None,
    ) -> None:
        super().__init__(root)
        self.site = site
        self.site_text = site_text
        self.values = dict(values or {})
        self.conf_dir = self.root / "conf"
        for sub in ("conf", "logs", "tmp", "html"):
            (self.root / sub).mkdir(exist_ok=True)
        shutil.copyfile(self.fastcgi_params(), self.conf_dir / "fastcgi_params")

    def fastcgi_params(self) -> Path:
        """The distribution's fastcgi_params (next to its nginx.conf)."""
        candidates = [Path("/etc/nginx/fastcgi_params")]
        out = subprocess.run([self.binary, "-V"], capture_output=True, text=True).stderr
        match = re.search(r"--conf-path=(\S+)", out)
        if match:
            candidates.insert(0, Path(match.group(1)).parent / "fastcgi_params")
        for path in candidates:
            if path.is_file():
                return path
        raise ProcessError(f"no fastcgi_params found (looked at {', '.join(map(str, candidates))})")

    def render(self) -> None:
        site_dest = self.conf_dir / (self.site if self.site_text is None else "site.conf")
        if self.site_text is None:
            render_file(self.template_dir / self.site, site_dest, self.values)
        else:
            site_dest.write_text(render(self.site_text, self.values))
        render_file(
            self.template_dir / "nginx.conf",
            self.conf_dir / "nginx.conf",
            {"port": self.port, "site": site_dest.name},
        )
        (self.root / "logs" / "error.log").unlink(missing_ok=True)

    def command(self) -> List[str]:
        # -e: the error log before the config is read (else the compiled-in
        # /var/log/nginx/error.log is opened first).
        return [self.binary, "-p", f"{self.root}/", "-c", "conf/nginx.conf", "-e", "logs/error.log"]

    def log_files(self) -> Sequence[Path]:
        return [self.root / "logs" / "error.log"]

    def access_log_text(self) -> str:
        try:
            return (self.root / "logs" / "access.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
