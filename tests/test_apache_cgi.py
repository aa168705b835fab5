"""End to end through a real Apache httpd running the example app's
dispatch.fcgi as a plain CGI script (mod_cgid): a new process per request,
as www-data, the request in its environment and on stdin.

Layouts (site files of examples/apache/, shown in docs/apache-cgi.md):
- ``htaccess``: the shared-hosting home of test_apache_fcgid.py -- the same
  dispatch.fcgi, the same .htaccess (examples/apache/htaccess) with the one
  line a host without mod_fcgid needs, ``AddHandler cgi-script .fcgi``;
  server config cgi-htaccess.conf. The app is at "/" through the rewrite.
- ``scriptalias``: ScriptAlias /app .../dispatch.fcgi (server config).

Every check of support.sites.SiteChecks runs against both (routing,
url_for, UTF-8 paths, HTTPS, form and streamed POST bodies, downloads,
HEAD, errors), plus what is particular to CGI. The shared httpd.conf loads
no CGI module, so ``ApacheCGI`` adds mod_cgid to the rendered config.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from support import EXAMPLES_DIR, FLASK_APP_DIR
from support.httpclient import HashingPayload
from support.sites import BARE_APP, SLASH_404, HostingHome, Site, SiteChecks, hosting_home
from support.waiting import wait_for
from support.webservers import Apache, TLSCert, processes_running, require_file

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(120)]

# name -> (site file in examples/apache/, mount point)
LAYOUTS = {"htaccess": ("cgi-htaccess.conf", ""), "scriptalias": ("cgi-scriptalias.conf", "/app")}

FCGID_HANDLER = "AddHandler fcgid-script .fcgi"
CGI_HANDLER = "AddHandler cgi-script .fcgi"


class ApacheCGI(Apache):
    """examples/apache/httpd.conf plus ``LoadModule cgid_module`` (what
    ``a2enmod cgid`` does on Debian). mod_cgid's daemon puts its socket in
    the DefaultRuntimeDir (``root/run``)."""

    def __init__(self, root: Path, site: str, values: Optional[dict] = None, *,  # type: ignore[type-arg]
                 tls: Optional[TLSCert] = None) -> None:
        super().__init__(root, site, values, tls=tls)
        require_file(str(self.modules_dir / "mod_cgid.so"), package="apache2")

    def render(self) -> None:
        super().render()
        conf = self.conf_dir / "httpd.conf"
        text = conf.read_text()
        anchor = "Include conf/site.conf"
        assert text.count(anchor) == 1, f"{conf}: no single {anchor!r} to load mod_cgid before"
        conf.write_text(text.replace(anchor, f"LoadModule cgid_module {self.modules_dir}/mod_cgid.so\n{anchor}"))


def htaccess(handler: str) -> str:
    """examples/apache/htaccess with ``handler`` as its AddHandler line."""
    text = (EXAMPLES_DIR / "apache" / "htaccess").read_text()
    assert text.count(FCGID_HANDLER) == 1, f"examples/apache/htaccess has no single {FCGID_HANDLER!r}"
    return text.replace(FCGID_HANDLER, handler)


def start_cgi_site(base: Path, venv: Path, layout: str, *, tls: Optional[TLSCert] = None,
                   site_file: Optional[str] = None) -> Tuple[ApacheCGI, HostingHome]:
    template, _ = LAYOUTS[layout]
    home = hosting_home(base, venv, FLASK_APP_DIR)
    (home.public_html / ".htaccess").write_text(htaccess(CGI_HANDLER))
    values = {"docroot": home.public_html, "app_dir": home.fcgi_bin, "max_requests": 1000}
    return ApacheCGI(base / "apache", site_file or template, values, tls=tls), home


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def site(request, shared_dirs, tls_cert, hosting_venv) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    layout = request.param
    web, _ = start_cgi_site(shared_dirs(f"wfcgi-cgi-{layout}-"), hosting_venv, layout, tls=tls_cert)
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        # keeps_content_length=False: mod_cgid keeps a script's Content-Length
        # only when the whole body comes with the headers (a small response);
        # otherwise it sends the body chunked, and a HEAD response (no body,
        # RFC 3875 4.3.2) without it. A shell script does the same.
        yield Site(f"cgi-{layout}", web, LAYOUTS[layout][1], SLASH_404, BARE_APP, keeps_content_length=False)


def _app_processes(site: Site) -> List[int]:
    """This site's dispatch.fcgi processes (its user's home is in their command line)."""
    assert isinstance(site.web, Apache)
    home = Path(site.web.values["docroot"]).parent
    return processes_running(f"{home}/")


class TestApacheCGI(SiteChecks):
    def test_each_request_is_a_process_of_its_own(self, site: Site) -> None:
        pids = [site.http.get(f"{site.prefix}/env").json()["pid"] for _ in range(3)]
        assert len(set(pids)) == 3, pids
        wait_for(lambda: _app_processes(site) == [], timeout=10, what="the CGI processes to exit")

    def test_app_error_goes_to_apache_error_log_once(self, site: Site) -> None:
        line = "RuntimeError: example error from /error"
        before = site.web.error_log_text().count(line)
        r = site.http.get(f"{site.prefix}/error")
        assert r.status == 500
        assert b"example error" not in r.body
        wait_for(lambda: site.web.error_log_text().count(line) > before, timeout=10,
                 what="the traceback in Apache's error log")
        assert site.web.error_log_text().count(line) == before + 1

    def test_large_post_body_without_fcgid_limit(self, site: Site) -> None:
        # mod_fcgid refuses more than FcgidMaxRequestLen (128 KiB); CGI passes it all
        payload = HashingPayload(3 * 1024 * 1024 + 5, seed=9)
        r = site.http.post(f"{site.prefix}/echo-sha256", payload, {"Content-Length": str(payload.size)})
        assert r.status == 200, r.body
        assert r.json() == {"size": payload.size, "sha256": payload.sha256}

    def test_unread_body_costs_no_reset(self, site: Site) -> None:
        """The app answers without reading a 1 MiB body (405 from Flask): the
        script still takes the body off its socket, so mod_cgid gets the whole
        response and logs no reset ("AH00574 ... Connection reset by peer")."""
        body = b"u" * (1024 * 1024)
        r = site.http.post(f"{site.prefix}/hello/x", body, {"Content-Length": str(len(body))})
        assert r.status == 405, r.body
        r = site.http.get(f"{site.prefix}/hello/after")
        assert r.text == "Hello, after!"
        assert "Connection reset by peer" not in site.web.error_log_text()


def test_same_dispatch_fcgi_as_fastcgi_then_as_cgi(shared_dirs, hosting_venv) -> None:  # type: ignore[no-untyped-def]
    """One Apache (mod_fcgid and mod_cgid loaded), one user's home: the
    .htaccess of the mod_fcgid guide serves the app over FastCGI from one
    persistent process; change its AddHandler line to cgi-script and the very
    same dispatch.fcgi answers the next requests as CGI, a process each."""
    web, home = start_cgi_site(shared_dirs("wfcgi-cgi-switch-"), hosting_venv, "htaccess",
                               site_file="fcgid-htaccess.conf")
    (home.public_html / ".htaccess").write_text(htaccess(FCGID_HANDLER))
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        http = Site("switch", web, "", SLASH_404).http
        fastcgi = [http.get("/env/a?x=1").json() for _ in range(3)]
        assert len({r["pid"] for r in fastcgi}) == 1, fastcgi  # one FastCGI process served them all

        (home.public_html / ".htaccess").write_text(htaccess(CGI_HANDLER))  # read per request
        cgi = [http.get("/env/a?x=1").json() for _ in range(3)]
        assert len({r["pid"] for r in cgi}) == 3, cgi
        assert fastcgi[0]["pid"] not in {r["pid"] for r in cgi}
        for r in (*fastcgi, *cgi):
            del r["pid"]
        assert cgi == fastcgi  # the app cannot tell the difference
        assert http.get("/hello/caf%C3%A9").text == "Hello, café!"
