"""Real web servers on 127.0.0.1, configured from the templates in
``examples/<server>/`` and rendered into the test's temp dir.

Template convention: ``{{name}}`` placeholders (spaces inside the braces
allowed). nginx, Apache and lighttpd configs are full of ``$var``, ``%{var}``
and ``{ }`` of their own, so neither ``string.Template`` nor ``str.format``
can be used on them; ``{{ }}`` appears in none of them. Rendering fails on a
placeholder without a value, so a template and its test cannot drift apart.

To add a server: subclass ``WebServer``, set ``name`` and ``executable``,
implement ``render()`` (write the config under ``self.root``) and
``command()``; the base class finds free ports (``port``, and ``tls_port``
when given a ``TLSCert``), starts the process in its own session, waits for
the ports, stops it by PID and shows its logs.

Apache and lighttpd refuse to run their children as root, so their configs
run them as ``www-data`` (``UNPRIVILEGED_USER``): everything those children
touch (config, document root, sockets, the app and its virtualenv) must live
in a directory that user can enter -- ``shared_temp_dir()`` makes one, since
pytest's own temp dirs are private (0700) -- and must not be under a
private home (here the test venv's interpreter is under /root, hence
``hosting_venv()``).
"""

from __future__ import annotations

import grp
import importlib.metadata
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from . import EXAMPLES_DIR, REPO_ROOT
from .ci import missing
from .net import free_port
from .processes import ManagedProcess, ProcessError, can_connect

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# The user Apache's and lighttpd's children run as (Debian's web server user).
UNPRIVILEGED_USER = "www-data"
# What a web server started by an init system has: no PYTHONPATH, no venv.
SERVER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def render(text: str, values: Mapping[str, object]) -> str:
    """Fill ``{{name}}`` placeholders; KeyError names any that have no value."""
    unfilled = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - set(values))
    if unfilled:
        raise KeyError(f"template placeholders without a value: {', '.join(unfilled)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render_file(template: Path, dest: Path, values: Mapping[str, object]) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render(template.read_text(), values))
    return dest


def require_executable(name: str, *, package: str = "") -> str:
    """Path of ``name`` (also looked up in the sbin dirs). If it is missing:
    skip the test, or fail it where CI=true (a missing server must not turn
    a CI run green)."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if path:
        return path
    hint = f" (Debian package {package}; tests/run.sh installs it)" if package else ""
    missing(f"{name} not found{hint}")


def require_file(path: str, *, package: str) -> Path:
    """Like ``require_executable`` for a module file (``mod_fcgid.so``...)."""
    if os.path.exists(path):
        return Path(path)
    missing(f"{path} not found (Debian package {package}; tests/run.sh installs it)")


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

    def __init__(self, root: Path, *, tls: Optional["TLSCert"] = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.binary = require_executable(self.executable, package=self.package)
        self.port = 0
        # With a certificate: a second listener with TLS, same site.
        self.tls = tls
        self.tls_port = 0
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
    def https_url(self) -> str:
        assert self.tls is not None, f"{self.name} has no TLS listener"
        return f"https://{self.host}:{self.tls_port}"

    def addresses(self) -> List[str]:
        ports = [self.port] + ([self.tls_port] if self.tls else [])
        return [f"{self.host}:{p}" for p in ports]

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> "WebServer":
        for attempt in range(1, self.start_attempts + 1):
            self.port = free_port(self.host)
            if self.tls:
                self.tls_port = free_port(self.host)
                while self.tls_port == self.port:
                    self.tls_port = free_port(self.host)
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
                    lambda: all(can_connect(a) for a in self.addresses()),
                    timeout=self.ready_timeout,
                    what=f"listening on {', '.join(self.addresses())}",
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
    ``http_site`` is a template for the ``http { }`` level (``upstream``
    blocks), rendered with the same values. With ``tls``, the same server
    also listens with TLS on ``tls_port``.
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
        http_site: Optional[str] = None,
        tls: Optional["TLSCert"] = None,
    ) -> None:
        super().__init__(root, tls=tls)
        self.site = site
        self.site_text = site_text
        self.http_site = http_site
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
        http_dest = self.conf_dir / "http-extra.conf"
        if self.http_site:
            render_file(self.template_dir / self.http_site, http_dest, self.values)
        else:
            http_dest.write_text("# (no http-level additions)\n")
        tls_lines = "# (no TLS listener)\n"
        if self.tls:
            tls_lines = (
                f"listen {self.host}:{self.tls_port} ssl;\n"
                f"ssl_certificate {self.tls.cert};\nssl_certificate_key {self.tls.key};\n"
            )
        (self.conf_dir / "tls.conf").write_text(tls_lines)
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


# -- TLS, shared temp dirs, the shared-hosting virtualenv ----------------------


@dataclass(frozen=True)
class TLSCert:
    """A throwaway self-signed certificate for ``localhost``/127.0.0.1."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> "TLSCert":
        openssl = require_executable("openssl", package="openssl")
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-days", "1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        key.chmod(0o644)  # read by servers after they drop root (lighttpd, Apache reload)
        return cls(cert, key)


def shared_temp_dir(prefix: str) -> Path:
    """A fresh temp dir (mode 0755) that the unprivileged web server user can
    enter; short enough for unix socket paths. The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def chown_to_server_user(*paths: Path) -> None:
    """Give directories to the web server user (mod_fcgid's IPC dir, logs a
    child writes)."""
    uid = pwd.getpwnam(UNPRIVILEGED_USER).pw_uid
    gid = grp.getgrnam(UNPRIVILEGED_USER).gr_gid
    for path in paths:
        os.chown(path, uid, gid)


def system_python() -> str:
    """A python3 that the web server user can run (not one under /root):
    what a shared-hosting user's ``#!/usr/bin/env python3`` finds."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            out = subprocess.run(
                ["runuser", "-u", UNPRIVILEGED_USER, "--", candidate, "-c", "import venv"],
                capture_output=True, timeout=30,
            )  # fmt: skip
            if out.returncode == 0:
                return candidate
    missing(f"no python3 with venv that {UNPRIVILEGED_USER} can run (Debian packages python3, python3-venv)")


def _requirement_names(dist: importlib.metadata.Distribution) -> Iterable[str]:
    for req in dist.requires or ():
        if "extra ==" in req:
            continue
        if ";" in req:
            marker = req.split(";", 1)[1]
            try:
                from packaging.markers import Marker  # type: ignore[import-not-found]

                if not Marker(marker).evaluate():
                    continue
            except ImportError:
                if "python_version" in marker:  # backports for old Pythons
                    continue
        yield re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)  # same file system: instant (and nothing writes to these files)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def hosting_venv(dest: Path, distributions: Sequence[str]) -> Path:
    """A virtualenv like the one a shared-hosting user makes in their home
    (``python3 -m venv ~/venv; ~/venv/bin/pip install flask wsgi_fcgi``),
    built offline in well under a second: the system python's venv, with the
    named distributions and their requirements copied from the environment
    running the tests, and wsgi_fcgi copied from this checkout. Returns the
    venv's path; its site-packages is precompiled (the user running the app
    cannot write there)."""
    python = system_python()
    subprocess.run([python, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=60)
    site = Path(
        subprocess.run(
            [str(dest / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()
    )  # fmt: skip
    seen: Dict[str, bool] = {}
    todo = list(distributions)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or key == "wsgi-fcgi":
            continue
        seen[key] = True
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if name in distributions:
                raise
            continue  # a requirement for another platform or Python (its marker said so)
        # Whole top-level entries (package dirs, .dist-info, modules), linked
        # file by file: much faster than walking the RECORD.
        for top in sorted({f.parts[0] for f in dist.files or () if f.parts[0] != ".."}):
            src = Path(str(dist.locate_file(top)))
            if src.is_dir():
                shutil.copytree(src, site / top, copy_function=_link_or_copy, dirs_exist_ok=True)
            elif src.is_file():
                _link_or_copy(str(src), str(site / top))
        todo.extend(_requirement_names(dist))
    shutil.copytree(REPO_ROOT / "wsgi_fcgi", site / "wsgi_fcgi", ignore=shutil.ignore_patterns("__pycache__"))
    for shared in REPO_ROOT.glob("*__mypyc.*.so"):  # the compiled form's shared library (README: Install)
        shutil.copy2(shared, site / shared.name)
    subprocess.run(
        [str(dest / "bin" / "python"), "-m", "compileall", "-q", "-j", "0", str(site)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return dest


def processes_running(needle: str) -> List[int]:
    """PIDs of live (non-zombie) processes whose command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if needle in cmdline and stat[stat.rfind(b")") + 2 :][:1] != b"Z":
            found.append(int(entry))
    return found


# -- Apache httpd ----------------------------------------------------------------


class Apache(WebServer):
    """Apache httpd (Debian's ``apache2`` binary, no apache2ctl/envvars) with
    ``examples/apache/httpd.conf`` around one site template of
    ``examples/apache/``.

    ``values`` fill the site's placeholders; ``root``, ``docroot`` (default
    ``root/htdocs``) are always available to the site. Layout under ``root``
    (which must be a ``shared_temp_dir``): ``conf/`` (httpd.conf, site.conf),
    ``logs/`` (error.log, access.log), ``run/`` (pid file, mutexes,
    ``run/fcgid`` for mod_fcgid's sockets, owned by www-data), ``htdocs/``.
    Started with a bare environment (PATH and LANG), as an init system
    would, so nothing of the test's environment leaks into spawned apps.
    """

    name = "apache2"
    executable = "apache2"
    package = "apache2"
    template_dir = EXAMPLES_DIR / "apache"
    modules_dir = Path("/usr/lib/apache2/modules")

    def __init__(
        self,
        root: Path,
        site: str,
        values: Optional[Mapping[str, object]] = None,
        *,
        tls: Optional[TLSCert] = None,
    ) -> None:
        super().__init__(root, tls=tls)
        require_file(str(self.modules_dir / "mod_fcgid.so"), package="libapache2-mod-fcgid")
        self.site = site
        self.conf_dir = self.root / "conf"
        self.values = {"root": self.root, "docroot": self.root / "htdocs", **(values or {})}
        for sub in ("conf", "logs", "run", "run/fcgid", "htdocs"):
            (self.root / sub).mkdir(exist_ok=True)
        chown_to_server_user(self.root / "run" / "fcgid")

    def render(self) -> None:
        render_file(self.template_dir / self.site, self.conf_dir / "site.conf", self.values)
        if self.tls:
            tls = (
                f"Listen {self.host}:{self.tls_port}\n"
                f"<VirtualHost {self.host}:{self.tls_port}>\n"
                "    SSLEngine on\n"
                f"    SSLCertificateFile {self.tls.cert}\n"
                f"    SSLCertificateKeyFile {self.tls.key}\n"
                "    Include conf/site.conf\n"
                "</VirtualHost>\n"
            )
        else:
            tls = "# (no TLS listener)\n"
        (self.conf_dir / "tls.conf").write_text(tls)
        render_file(
            self.template_dir / "httpd.conf",
            self.conf_dir / "httpd.conf",
            {"root": self.root, "port": self.port, "modules": self.modules_dir, "user": UNPRIVILEGED_USER},
        )
        (self.root / "logs" / "error.log").unlink(missing_ok=True)

    def command(self) -> List[str]:
        return [self.binary, "-d", str(self.root), "-f", str(self.conf_dir / "httpd.conf"), "-DFOREGROUND"]

    def environment(self) -> Mapping[str, str]:
        return {"PATH": SERVER_PATH, "LANG": "C"}

    def log_files(self) -> Sequence[Path]:
        return [self.root / "logs" / "error.log"]

    def graceful_restart(self) -> None:
        """``apachectl -k graceful``: SIGUSR1 to the parent."""
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)


# -- lighttpd ------------------------------------------------------------------


class Lighttpd(WebServer):
    """lighttpd with ``examples/lighttpd/lighttpd.conf`` around one site
    template of ``examples/lighttpd/`` (a ``fastcgi.server`` block).

    Layout under ``root`` (a ``shared_temp_dir``): ``conf/``, ``logs/``
    (error.log owned by www-data: lighttpd opens it after dropping root),
    ``run/`` (pid file, bin-path sockets: lighttpd creates them as www-data),
    ``htdocs/``. Started with a bare environment like Apache: with bin-path
    lighttpd hands its whole environment to the app.
    """

    name = "lighttpd"
    executable = "lighttpd"
    package = "lighttpd"
    template_dir = EXAMPLES_DIR / "lighttpd"

    def __init__(
        self,
        root: Path,
        site: str,
        values: Optional[Mapping[str, object]] = None,
        *,
        tls: Optional[TLSCert] = None,
    ) -> None:
        super().__init__(root, tls=tls)
        if tls:
            require_file("/usr/lib/lighttpd/mod_openssl.so", package="lighttpd-mod-openssl")
        self.site = site
        self.conf_dir = self.root / "conf"
        self.values = {"root": self.root, **(values or {})}
        for sub in ("conf", "logs", "run", "htdocs"):
            (self.root / sub).mkdir(exist_ok=True)
        chown_to_server_user(self.root / "logs", self.root / "run")

    def render(self) -> None:
        render_file(self.template_dir / self.site, self.conf_dir / "site.conf", self.values)
        if self.tls:
            tls = (
                'server.modules += ("mod_openssl")\n'
                f'$SERVER["socket"] == "{self.host}:{self.tls_port}" {{\n'
                '    ssl.engine = "enable"\n'
                f'    ssl.pemfile = "{self.tls.cert}"\n'
                f'    ssl.privkey = "{self.tls.key}"\n'
                "}\n"
            )
        else:
            tls = "# (no TLS listener)\n"
        (self.conf_dir / "tls.conf").write_text(tls)
        render_file(
            self.template_dir / "lighttpd.conf",
            self.conf_dir / "lighttpd.conf",
            {"root": self.root, "port": self.port, "user": UNPRIVILEGED_USER},
        )
        (self.root / "logs" / "error.log").unlink(missing_ok=True)

    def command(self) -> List[str]:
        return [self.binary, "-D", "-f", str(self.conf_dir / "lighttpd.conf")]

    def environment(self) -> Mapping[str, str]:
        return {"PATH": SERVER_PATH, "LANG": "C"}

    def log_files(self) -> Sequence[Path]:
        return [self.root / "logs" / "error.log"]
