"""The Django example (examples/django_app) end to end: through nginx
(app-root.conf, app-mounted.conf; wsgi_fcgi started with
``mysite.wsgi:application``) and through Apache mod_fcgid's shared-hosting
layout (examples/apache/htaccess + the project's own dispatch.fcgi, from a
virtualenv made with the system python). Every site also has an HTTPS
listener.

Django has had no FastCGI server of its own since 1.9 (``runfcgi``): this is
its users' way back. Checked: reverse() and build_absolute_uri() include the
mount point and the scheme, routing of UTF-8/space paths, raw query
strings, POST bodies (Django reads exactly CONTENT_LENGTH bytes: with none,
it would see an empty body), ALLOWED_HOSTS, httpoxy.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterator

import pytest

from support import EXAMPLES_DIR
from support.ci import require_module
from support.httpclient import HashingPayload
from support.sites import SLASH_404, SLASH_DECODED, Site, hosting_home, start_app_server
from support.webservers import Apache, Nginx

require_module("django", "it is in the test extra: pip install -e '.[test]'")

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(90)]

DJANGO_DIR = EXAMPLES_DIR / "django_app"

# name -> mount point
SITES = {"nginx-root": "", "nginx-mounted": "/app", "fcgid-htaccess": ""}


@pytest.fixture(scope="module", params=sorted(SITES))
def site(request, shared_dirs, tls_cert, hosting_venv) -> Iterator[Site]:
    name, prefix = request.param, SITES[request.param]
    base = shared_dirs(f"wfcgi-django-{name}-")
    with ExitStack() as stack:
        if name.startswith("nginx"):
            server = start_app_server(
                stack, base, "--workers", "2", app="mysite.wsgi:application", pythonpath=[DJANGO_DIR]
            )
            template = "app-root.conf" if name == "nginx-root" else "app-mounted.conf"
            web: object = Nginx(base / "nginx", template, {"socket": server.socket_path}, tls=tls_cert)
            site = Site(name, web, prefix, SLASH_DECODED, server=server)  # type: ignore[arg-type]
        else:
            home = hosting_home(base, hosting_venv, DJANGO_DIR, htaccess=EXAMPLES_DIR / "apache" / "htaccess")
            values = {"docroot": home.public_html, "max_requests": 1000}
            web = Apache(base / "apache", "fcgid-htaccess.conf", values, tls=tls_cert)
            site = Site(name, web, prefix, SLASH_404)  # type: ignore[arg-type]
        stack.callback(site.web.stop)
        site.web.start()
        yield site


def _json(site: Site, path: str, **kwargs) -> dict:
    r = site.http.get(path, **kwargs)
    assert r.status == 200, r.body
    return r.json()


def test_reverse_and_absolute_urls_include_mount_point(site: Site) -> None:
    r = site.http.get(f"{site.prefix}/")
    assert r.status == 200, r.body
    assert f'href="{site.prefix}/hello/caf%C3%A9"' in r.text
    assert f'href="{site.http.origin}{site.prefix}/hello/caf%C3%A9"' in r.text
    assert f'href="{site.prefix}/echo"' in r.text


def test_split_and_script_prefix(site: Site) -> None:
    env = _json(site, f"{site.prefix}/env?x=1&y=%20z")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (site.prefix, "/env")
    assert (env["path"], env["path_info"]) == (f"{site.prefix}/env", "/env")
    assert env["script_prefix"] == f"{site.prefix}/"
    assert env["reverse_index"] == f"{site.prefix}/"
    assert env["absolute_index"] == f"{site.http.origin}{site.prefix}/"
    assert env["QUERY_STRING"] == "x=1&y=%20z"
    assert env["GET"] == {"x": ["1"], "y": [" z"]}
    assert env["is_secure"] is False


def test_https(site: Site) -> None:
    r = site.https.get(f"{site.prefix}/env")
    assert r.status == 200, r.body
    env = r.json()
    assert env["is_secure"] is True
    assert env["absolute_index"] == f"{site.https.origin}{site.prefix}/"


def test_utf8_and_space_in_path(site: Site) -> None:
    r = site.http.get(f"{site.prefix}/hello/caf%C3%A9")
    assert (r.status, r.text) == (200, "Hello, café!")
    r = site.http.get(f"{site.prefix}/hello/a%20b")
    assert (r.status, r.text) == (200, "Hello, a b!")
    env = _json(site, f"{site.prefix}/env/two%20words/caf%C3%A9")
    assert env["path_info"] == "/env/two words/café"


def test_query_string_is_raw(site: Site) -> None:
    qs = "a=1&a=2&b=%26%3D&c=caf%C3%A9&d=+"
    env = _json(site, f"{site.prefix}/env?{qs}")
    assert env["QUERY_STRING"] == qs
    assert env["GET"] == {"a": ["1", "2"], "b": ["&="], "c": ["café"], "d": [" "]}


def test_post_body_with_length(site: Site) -> None:
    payload = HashingPayload(100 * 1024, seed=11)
    headers = {"Content-Length": str(payload.size), "Content-Type": "application/octet-stream"}
    r = site.http.post(f"{site.prefix}/echo", payload, headers)
    assert r.status == 200, r.body
    assert r.json()["size"] == payload.size
    assert r.json()["sha256"] == payload.sha256


def test_post_body_chunked(site: Site) -> None:
    payload = HashingPayload(18000, seed=12, chunk_size=1000)
    r = site.http.post(f"{site.prefix}/echo", payload, {"Content-Type": "application/json"})
    assert r.status == 200, r.body
    assert (r.json()["size"], r.json()["sha256"]) == (payload.size, payload.sha256)


def test_post_form(site: Site) -> None:
    r = site.http.post_form(f"{site.prefix}/echo", {"name": "café", "tags": ["a&b", "c=d"]})
    assert r.status == 200, r.body
    assert r.json()["POST"] == {"name": ["café"], "tags": ["a&b", "c=d"]}
    assert r.json()["content_type"] == "application/x-www-form-urlencoded"


def test_disallowed_host_is_rejected_by_django(site: Site) -> None:
    assert site.http.get(f"{site.prefix}/env", headers={"Host": "evil.example"}).status == 400


def test_proxy_header_never_becomes_http_proxy(site: Site) -> None:
    env = _json(site, f"{site.prefix}/env", headers={"Proxy": "http://evil.example:3128"})
    assert env["HTTP_PROXY"] is None


def test_unknown_url_is_djangos_404(site: Site) -> None:
    r = site.http.get(f"{site.prefix}/no/such/page")
    assert r.status == 404
    assert b"<h1>Not Found</h1>" in r.body
