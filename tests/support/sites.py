"""One set of end-to-end checks, run against every web server and mount.

A test module builds ``Site`` objects (a web server in front of the example
Flask app, ``examples/flask_app``, at some mount point) in a module-scoped,
parametrized ``site`` fixture, and subclasses ``SiteChecks``:

    class TestApacheProxy(SiteChecks):
        pass

Each ``test_*`` method below then runs once per site. What differs between
servers is data on the ``Site`` (how it treats ``%2F``, what it does with a
request for the bare mount point, how large a body it accepts), so the
checks themselves stay identical and every difference is written down in
one place per server.
"""

from __future__ import annotations

import grp
import re
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from .httpclient import HashingPayload, HTTPClient, pattern_chunks, sha256_of
from .net import unix_path
from .processes import WsgiFcgiServer
from .webservers import UNPRIVILEGED_USER, WebServer

# How a server treats "%2F" in the path.
SLASH_DECODED = "decoded"  # nginx, lighttpd: becomes "/", only REQUEST_URI keeps it
SLASH_404 = "404"  # Apache (AllowEncodedSlashes Off): answers 404 itself

# What "GET /app" (the mount point without its slash) does.
BARE_REDIRECT = "redirect"  # the server answers 301 -> /app/
BARE_APP = "app"  # it reaches the app (PATH_INFO ""), which redirects to /app/


@dataclass
class Site:
    """The example Flask app behind ``web`` at ``prefix`` ("" = site root)."""

    name: str
    web: WebServer
    prefix: str
    encoded_slash: str
    bare_prefix: str = BARE_APP
    # wsgi_fcgi started by the test (None: the web server spawns the app)
    server: Optional[WsgiFcgiServer] = None
    # largest request body the server forwards by default (mod_fcgid: 128 KiB)
    max_body: Optional[int] = None
    # False: the server drops the app's Content-Length and sends the body
    # chunked (Apache mod_proxy_fcgi)
    keeps_content_length: bool = True
    extra_logs: List[Callable[[], str]] = field(default_factory=list)

    @property
    def http(self) -> HTTPClient:
        return HTTPClient(self.web.url, timeout=30)

    @property
    def https(self) -> HTTPClient:
        return HTTPClient(self.web.https_url, timeout=30)

    def logs(self) -> str:
        parts = [f"### {self.name}: {self.web.name} logs\n{self.web.error_log_text()}"]
        if self.server is not None:
            parts.append(f"### wsgi_fcgi stderr\n{self.server.stderr_text()}")
        parts.extend(f() for f in self.extra_logs)
        return "\n".join(parts)


def unix_connections(path: Path) -> int:
    """Open (accepted) connections on the unix socket at ``path``, from
    /proc/net/unix: state 03 = connected; the listener itself is 01."""
    count = 0
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path) and fields[5] == "03":
                count += 1
    return count


class SiteChecks:
    """The checks every server and mount must pass (see the module docstring).

    Subclasses get a ``site`` fixture (a ``Site``) from their module."""

    # -- paths, mount point, URL building ------------------------------------

    def test_env_split_and_url_for(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/env?x=1&y=%20z")
        assert r.status == 200, r.body
        env = r.json()
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (site.prefix, "/env")
        assert env["REQUEST_URI"] == f"{site.prefix}/env?x=1&y=%20z"
        assert env["QUERY_STRING"] == "x=1&y=%20z"
        assert env["args"] == {"x": ["1"], "y": [" z"]}
        assert (env["path"], env["full_path"]) == ("/env", "/env?x=1&y=%20z")
        assert env["url_scheme"] == "http"
        assert env["url_for"] == f"{site.prefix}/"
        assert env["url_for_external"] == f"{site.http.origin}{site.prefix}/"

    def test_https_reaches_app_as_https(self, site: Site) -> None:
        r = site.https.get(f"{site.prefix}/env/tls?q=1")
        assert r.status == 200, r.body
        env = r.json()
        assert env["url_scheme"] == "https"
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (site.prefix, "/env/tls")
        assert env["url_for_external"] == f"{site.https.origin}{site.prefix}/"

    def test_index_links_include_mount_point(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/")
        assert r.status == 200, r.body
        assert f'href="{site.prefix}/hello/caf%C3%A9"' in r.text
        assert f'href="{site.http.origin}{site.prefix}/hello/caf%C3%A9"' in r.text
        assert f'href="{site.prefix}/env?q=a+b"' in r.text
        r = site.http.get(f"{site.prefix}/form")
        assert f'action="{site.prefix}/form"' in r.text

    def test_bare_mount_point(self, site: Site) -> None:
        if not site.prefix:
            return
        r = site.http.get(site.prefix)
        if site.bare_prefix == BARE_REDIRECT:
            assert r.status == 301, r.body
            assert r.header("Location") in (f"{site.http.origin}{site.prefix}/", f"{site.prefix}/")
        else:
            # Werkzeug's own redirect (PATH_INFO "" -> "/"), keeping the prefix.
            assert r.status == 308, r.body
            assert r.header("Location") in (f"{site.http.origin}{site.prefix}/", f"{site.prefix}/")

    def test_utf8_path(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/hello/caf%C3%A9")
        assert r.status == 200, r.body
        assert r.text == "Hello, café!"
        env = site.http.get(f"{site.prefix}/env/caf%C3%A9").json()
        assert env["path"] == "/env/café"
        assert env["PATH_INFO"] == "/env/caf\xc3\xa9"  # PEP 3333: raw bytes as latin-1
        assert env["SCRIPT_NAME"] == site.prefix

    def test_space_in_path(self, site: Site) -> None:
        assert site.http.get(f"{site.prefix}/hello/a%20b").text == "Hello, a b!"
        env = site.http.get(f"{site.prefix}/env/two%20words/x").json()
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (site.prefix, "/env/two words/x")

    def test_encoded_slash(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/env/a%2Fb")
        if site.encoded_slash == SLASH_404:
            # Apache's own 404 (AllowEncodedSlashes Off): the app never sees it.
            assert r.status == 404
            assert b"SCRIPT_NAME" not in r.body
        else:
            assert r.status == 200, r.body
            env = r.json()
            assert env["PATH_INFO"] == "/env/a/b"  # indistinguishable from a real "/"
            assert env["REQUEST_URI"] == f"{site.prefix}/env/a%2Fb"  # only here it survives
            assert site.http.get(f"{site.prefix}/hello/a%2Fb").status == 404  # <name> has no "/"

    def test_encoded_question_mark_and_percent_stay_in_path(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/env/a%3Fb?q=1")
        assert r.status == 200, r.body
        env = r.json()
        assert env["PATH_INFO"] == "/env/a?b"
        assert env["QUERY_STRING"] == "q=1"
        assert env["args"] == {"q": ["1"]}
        r = site.http.get(f"{site.prefix}/env/100%25/a%2523")
        assert r.status == 200, r.body
        assert r.json()["PATH_INFO"] == "/env/100%/a%23"

    def test_query_string_is_raw(self, site: Site) -> None:
        qs = "a=1&a=2&b=%26%3D&c=caf%C3%A9&d=+&e"
        env = site.http.get(f"{site.prefix}/env?{qs}").json()
        assert env["QUERY_STRING"] == qs
        assert env["args"] == {"a": ["1", "2"], "b": ["&="], "c": ["café"], "d": [" "], "e": [""]}

    def test_proxy_header_never_becomes_http_proxy(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/env", headers={"Proxy": "http://evil.example:3128"})
        assert r.status == 200, r.body
        assert r.json()["HTTP_PROXY"] is None

    # -- bodies ----------------------------------------------------------------

    def test_post_form(self, site: Site) -> None:
        fields = {"name": "café", "comment": ["a&b=c", "second line\nthird"], "empty": ""}
        r = site.http.post_form(f"{site.prefix}/form", fields)
        assert r.status == 200, r.body
        assert r.json() == {"name": ["café"], "comment": ["a&b=c", "second line\nthird"], "empty": [""]}

    def test_post_body_with_length(self, site: Site) -> None:
        payload = HashingPayload(100 * 1024, seed=5)  # under mod_fcgid's default 128 KiB
        r = site.http.post(f"{site.prefix}/echo-sha256", payload, {"Content-Length": str(payload.size)})
        assert r.status == 200, r.body
        assert r.json() == {"size": payload.size, "sha256": payload.sha256}

    def test_post_body_chunked(self, site: Site) -> None:
        # Apache mod_proxy_fcgi streams it with no CONTENT_LENGTH; the others
        # buffer it and send the length.
        payload = HashingPayload(18000, seed=6, chunk_size=1000)
        r = site.http.post(f"{site.prefix}/echo-sha256", payload)
        assert r.status == 200, r.body
        assert r.json() == {"size": payload.size, "sha256": payload.sha256}

    def test_empty_post_body(self, site: Site) -> None:
        r = site.http.post(f"{site.prefix}/echo-sha256", b"")
        assert r.status == 200, r.body
        assert r.json() == {"size": 0, "sha256": sha256_of([])[1]}

    # -- responses, methods, connections ----------------------------------------

    def test_head_then_get_on_one_connection(self, site: Site) -> None:
        conn = site.http.connection()
        try:
            r = site.http.head(f"{site.prefix}/download/1000", conn=conn)
            assert r.status == 200
            assert r.body == b""
            if site.keeps_content_length:
                assert r.header("Content-Length") == "1000"
            # Stray body bytes after a HEAD response would corrupt the next
            # response on the same keep-alive connection.
            r = site.http.get(f"{site.prefix}/hello/next", conn=conn)
            assert (r.status, r.text) == (200, "Hello, next!")
        finally:
            conn.close()

    def test_download_with_length(self, site: Site) -> None:
        size = 300 * 1024 + 7
        r = site.http.get(f"{site.prefix}/download/{size}", stream=True)
        assert r.status == 200
        assert (r.size, r.sha256) == sha256_of(pattern_chunks(size))
        if site.keeps_content_length:
            assert r.header("Content-Length") == str(size)

    def test_streamed_response(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/stream")
        assert r.status == 200
        assert r.body == b"".join(b"chunk %d\n" % n for n in range(5))

    def test_app_error_is_a_500(self, site: Site) -> None:
        r = site.http.get(f"{site.prefix}/error")
        assert r.status == 500
        assert b"example error" not in r.body  # no traceback for the client


def error_log_has(text: str, pattern: str) -> bool:
    return re.search(pattern, text) is not None


def start_app_server(
    stack: ExitStack, base: Path, *args: str, app: str = "app:app", **options: object
) -> WsgiFcgiServer:
    """wsgi_fcgi serving ``app`` for a web server that runs as www-data: its
    socket in ``base/sock`` (enterable by everyone) with the documented mode
    0660 and ``--socket-group www-data`` (the app itself runs as root with
    ``--allow-root``: the test venv's interpreter is under /root). Stopped
    when ``stack`` closes."""
    sock_dir = base / "sock"
    sock_dir.mkdir(parents=True, exist_ok=True)
    sock_dir.chmod(0o755)
    if not any(a == "--bind" or a.startswith("--bind=") for a in args):
        args = ("--bind", f"unix:{sock_dir / 'app.sock'}", *args)
    server = WsgiFcgiServer(
        app, ["--socket-group", UNPRIVILEGED_USER, "--allow-root", *args], workdir=base / "wsgi_fcgi", **options
    )  # type: ignore[arg-type]
    stack.callback(server.stop)
    server.start()
    # Ready for www-data only once the master has given the socket its group:
    # wsgi_fcgi binds (and root can connect) a moment before that.
    gid = grp.getgrnam(UNPRIVILEGED_USER).gr_gid
    for path in [Path(p) for p in map(unix_path, server.addresses) if p is not None]:
        server.wait_until(
            lambda p=path: p.stat().st_gid == gid, timeout=10, what=f"{path} in group {UNPRIVILEGED_USER}"  # type: ignore[misc]
        )
    return server


def install_dispatch(example: Path, dest: Path, *, virtualenv: Path, app_dir: Path) -> Path:
    """Copy an example ``dispatch.fcgi`` to ``dest`` and fill in its
    ``VIRTUALENV = ""`` and ``APP_DIR = ""`` lines, as the docs tell a user
    to; fails if the example no longer has those lines."""
    text = example.read_text()
    for name, value in (("VIRTUALENV", virtualenv), ("APP_DIR", app_dir)):
        line = f'{name} = ""'
        assert text.count(line) == 1, f"{example} has no single line {line!r} to edit"
        text = text.replace(line, f'{name} = "{value}"')
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    dest.chmod(0o755)
    return dest


@dataclass
class HostingHome:
    """A shared-hosting user's files: ``public_html`` (document root),
    ``app_dir`` (the app's code), ``fcgi_bin`` (for ScriptAlias)."""

    root: Path
    public_html: Path
    app_dir: Path
    fcgi_bin: Path


def hosting_home(base: Path, venv: Path, app_example: Path, *, htaccess: Optional[Path] = None) -> HostingHome:
    """Lay out a user's home under ``base``: the example app's ``*.py``
    files (and packages) in ``~/<app>``, its dispatch.fcgi (VIRTUALENV and
    APP_DIR filled in) in ``~/public_html`` and ``~/fcgi-bin``, and
    ``htaccess`` as ``~/public_html/.htaccess``."""
    root = base / "home"
    home = HostingHome(root, root / "public_html", root / app_example.name, root / "fcgi-bin")
    shutil.copytree(app_example, home.app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.fcgi", "*.md"))
    for target in (home.public_html, home.fcgi_bin):
        install_dispatch(app_example / "dispatch.fcgi", target / "dispatch.fcgi", virtualenv=venv, app_dir=home.app_dir)
    if htaccess is not None:
        shutil.copyfile(htaccess, home.public_html / ".htaccess")
    return home
