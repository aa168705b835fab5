"""End to end through a real Apache httpd with mod_proxy_fcgi: HTTP(S)
client -> Apache -> FastCGI over a unix socket -> wsgi_fcgi (started by the
test, as users start it from systemd) -> the example Flask app.

Apache runs the site files of examples/apache/ that docs/apache-mod_proxy_fcgi.md
shows: ProxyPass at "/" and at "/app/" (the latter needs ``--script-name
/app``: ProxyPass never tells the app its mount point), SetHandler in a
<Location> (Apache splits the path itself), each also with ``enablereuse=on``
(FCGI_KEEP_CONN). What Apache does on the way, asserted here so it stays
documented:
- ``%2F`` in a path: 404 from Apache (AllowEncodedSlashes Off), the app
  never sees the request;
- a chunked request body is streamed to the app with no CONTENT_LENGTH;
- the ``Proxy`` header is dropped (httpoxy) before it could become HTTP_PROXY;
- the app's Content-Length is not passed on: Apache sends the body chunked
  (HTTP/1.1) and a HEAD answer has no Content-Length;
- the Authorization header reaches the app only with ``CGIPassAuth On``
  (proxypass-passauth.conf).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterator

import pytest

from support.httpclient import HTTPClient
from support.sites import (
    BARE_APP,
    BARE_REDIRECT,
    SLASH_404,
    Site,
    SiteChecks,
    start_app_server,
    unix_connections,
)
from support.waiting import wait_for
from support.webservers import Apache

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(60)]

# name -> (site file in examples/apache/, mount point, wsgi_fcgi arguments, GET /app)
SITES = {
    "proxypass-root": ("proxypass-root.conf", "", (), BARE_APP),
    "proxypass-mounted": ("proxypass-mounted.conf", "/app", ("--script-name", "/app"), BARE_REDIRECT),
    "proxypass-mounted-reuse": ("proxypass-mounted-reuse.conf", "/app", ("--script-name", "/app"), BARE_REDIRECT),
    "sethandler": ("sethandler.conf", "/app", (), BARE_APP),
    "sethandler-reuse": ("sethandler-reuse.conf", "/app", (), BARE_APP),
}


@pytest.fixture(scope="module", params=sorted(SITES))
def site(request, shared_dirs, tls_cert) -> Iterator[Site]:
    template, prefix, args, bare = SITES[request.param]
    base = shared_dirs(f"wfcgi-{request.param}-")
    with ExitStack() as stack:
        server = start_app_server(stack, base, "--workers", "2", *args)
        web = Apache(base / "apache", template, {"socket": server.socket_path}, tls=tls_cert)
        stack.callback(web.stop)
        web.start()
        yield Site(request.param, web, prefix, SLASH_404, bare, server=server, keeps_content_length=False)


class TestApacheProxyFcgi(SiteChecks):
    def test_connections_reused_only_with_enablereuse(self, site: Site) -> None:
        for n in range(10):
            assert site.http.get(f"{site.prefix}/hello/n{n}").status == 200
        assert site.server is not None and site.server.socket_path is not None
        path = site.server.socket_path
        if site.name.endswith("-reuse"):
            # Apache keeps its connections (FCGI_KEEP_CONN): still open now,
            # and far fewer than the requests.
            assert 1 <= unix_connections(path) <= 5
        else:
            wait_for(lambda: unix_connections(path) == 0, timeout=5, what="Apache to close every connection")

    def test_app_error_reaches_wsgi_fcgi_log(self, site: Site) -> None:
        assert site.http.get(f"{site.prefix}/error").status == 500
        assert site.server is not None
        wait_for(
            lambda: "RuntimeError: example error from /error" in site.server.stderr_text(),
            timeout=5,
            what="the traceback in wsgi_fcgi's log",
        )


def test_wrong_script_name_symptom(shared_dirs) -> None:
    """What docs/troubleshooting.md describes: ProxyPass to /app/ without
    --script-name. The app sees the whole path (/app/hello/x) as its own
    route, so every page is the app's 404 (Werkzeug's text, not Apache's)."""
    base = shared_dirs("wfcgi-proxypass-noprefix-")
    with ExitStack() as stack:
        server = start_app_server(stack, base)
        web = Apache(base / "apache", "proxypass-mounted.conf", {"socket": server.socket_path})
        stack.callback(web.stop)
        web.start()
        r = HTTPClient(web.url).get("/app/hello/x")
        assert r.status == 404
        assert b"not found on the server" in r.body, r.body  # Werkzeug; Apache says "this server"


@pytest.mark.parametrize("template, passed", [("proxypass-root.conf", False), ("proxypass-passauth.conf", True)])
def test_authorization_header_reaches_app_only_with_cgipassauth(shared_dirs, template, passed) -> None:
    """mod_proxy_fcgi, like CGI, drops the Authorization header unless
    CGIPassAuth is on: an app doing its own Basic or bearer auth sees nothing."""
    base = shared_dirs("wfcgi-proxypass-passauth-")
    with ExitStack() as stack:
        server = start_app_server(stack, base)
        web = Apache(base / "apache", template, {"socket": server.socket_path})
        stack.callback(web.stop)
        web.start()
        for header, seen in (("Basic YWxpY2U6c2VjcmV0", {"type": "basic", "username": "alice"}),
                             ("Bearer some-token", {"type": "bearer", "username": None})):  # fmt: skip
            r = HTTPClient(web.url).get("/whoami", headers={"Authorization": header})
            assert r.status == 200, r.body
            assert r.json()["authorization"] == (seen if passed else None), header
