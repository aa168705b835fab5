"""End to end through a real nginx: HTTP client -> nginx -> FastCGI over a
unix socket -> wsgi_fcgi -> the example Flask app (examples/flask_app).

nginx runs with the very location blocks the docs recommend
(examples/nginx/app-root.conf and app-mounted.conf), so a test failure here
means a user copying the docs would hit it.

What nginx does on the way, asserted below so that it stays documented:
- it percent-decodes and normalises the path it puts in SCRIPT_NAME /
  PATH_INFO: ``%2F`` becomes ``/`` (the app cannot tell it from a real slash;
  only REQUEST_URI keeps ``%2F``), ``%3F`` becomes a literal ``?``;
- it passes UTF-8 path bytes through undecoded (PEP 3333 latin-1 strings);
- it sends REQUEST_URI and QUERY_STRING raw;
- it buffers the whole request body (to a temp file past 16 KiB) before it
  connects to the app, also for chunked requests, and then sends
  CONTENT_LENGTH together with HTTP_TRANSFER_ENCODING: chunked;
- for a location ending in ``/`` it answers ``GET /app`` itself (301).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from support.httpclient import MiB, HashingPayload, HTTPClient, multipart_file, pattern_chunks, sha256_of
from support.processes import WsgiFcgiServer
from support.webservers import Nginx, require_executable

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(60)]

# template in examples/nginx/ -> the mount point it configures
SITES = {"root": ("app-root.conf", ""), "mounted": ("app-mounted.conf", "/app")}


@dataclass
class Site:
    server: WsgiFcgiServer
    web: Nginx
    prefix: str
    http: HTTPClient

    @property
    def origin(self) -> str:
        return self.web.url


def start_site(kind: str, wsgi_server, nginx) -> Site:
    require_executable("nginx", package="nginx")  # skip/fail before starting anything
    template, prefix = SITES[kind]
    server = wsgi_server("app:app", "--workers", "2", "--log-level", "debug")
    web = nginx(template, socket=server.socket_path)
    return Site(server, web, prefix, HTTPClient(web.url))


@pytest.fixture(params=sorted(SITES))
def site(request, wsgi_server, nginx) -> Site:
    return start_site(request.param, wsgi_server, nginx)


@pytest.fixture
def root_site(wsgi_server, nginx) -> Site:
    return start_site("root", wsgi_server, nginx)


def test_nginx_harness_serves_static_file(nginx, tmp_path):
    """The nginx harness itself, without wsgi_fcgi: tells a broken harness
    from a broken server."""
    web = nginx(site_text="location / { try_files $uri =404; }")
    (web.root / "html" / "hello.txt").write_bytes(b"static\n")
    http = HTTPClient(web.url)
    assert http.get("/hello.txt").body == b"static\n"
    assert http.get("/missing").status == 404


# -- paths, mount point, URL building ----------------------------------------


def test_env_split_and_url_for(site: Site):
    r = site.http.get(f"{site.prefix}/env?x=1&y=%20z")
    assert r.status == 200, r.body
    env = r.json()
    assert env["SCRIPT_NAME"] == site.prefix
    assert env["PATH_INFO"] == "/env"
    assert env["REQUEST_URI"] == f"{site.prefix}/env?x=1&y=%20z"
    assert env["QUERY_STRING"] == "x=1&y=%20z"
    assert env["args"] == {"x": ["1"], "y": [" z"]}
    assert env["path"] == "/env"
    assert env["full_path"] == "/env?x=1&y=%20z"
    assert env["url_scheme"] == "http"
    assert env["url_for"] == f"{site.prefix}/"
    # The templates add `fastcgi_param HTTP_HOST $host:$server_port;` after
    # Debian's `HTTP_HOST $host` (which drops the port): nginx sends both
    # pairs, and the later one must win. Host is a single-valued header
    # (nginx answers 400 to a request with two), so it is never a list.
    assert env["HTTP_HOST"] == f"127.0.0.1:{site.web.port}"
    assert env["url_for_external"] == f"{site.origin}{site.prefix}/"


def test_index_links_include_mount_point(site: Site):
    r = site.http.get(f"{site.prefix}/")
    assert r.status == 200, r.body
    assert f'href="{site.prefix}/hello/caf%C3%A9"' in r.text
    assert f'href="{site.origin}{site.prefix}/hello/caf%C3%A9"' in r.text
    assert f'href="{site.prefix}/env?q=a+b"' in r.text


def test_mount_point_without_slash_is_redirected_by_nginx(wsgi_server, nginx):
    site = start_site("mounted", wsgi_server, nginx)
    r = site.http.get("/app")
    assert r.status == 301
    assert r.header("Location") == f"{site.origin}/app/"
    assert site.http.get("/elsewhere").status == 404  # not the app's


def test_utf8_path(site: Site):
    r = site.http.get(f"{site.prefix}/hello/caf%C3%A9")
    assert r.status == 200, r.body
    assert r.text == "Hello, café!"
    env = site.http.get(f"{site.prefix}/env/caf%C3%A9").json()
    assert env["path"] == "/env/café"
    # PEP 3333: the raw UTF-8 bytes as a latin-1 string
    assert env["PATH_INFO"] == "/env/caf\xc3\xa9"
    assert env["REQUEST_URI"] == f"{site.prefix}/env/caf%C3%A9"


def test_space_in_path(site: Site):
    assert site.http.get(f"{site.prefix}/hello/a%20b").text == "Hello, a b!"
    env = site.http.get(f"{site.prefix}/env/two%20words/x").json()
    assert env["PATH_INFO"] == "/env/two words/x"
    assert env["SCRIPT_NAME"] == site.prefix


def test_encoded_slash_is_decoded_by_nginx(site: Site):
    env = site.http.get(f"{site.prefix}/env/a%2Fb").json()
    assert env["PATH_INFO"] == "/env/a/b"  # nginx decoded %2F: indistinguishable from /
    assert env["REQUEST_URI"] == f"{site.prefix}/env/a%2Fb"  # only here it survives
    # so <name> (no slashes) does not match a%2Fb
    assert site.http.get(f"{site.prefix}/hello/a%2Fb").status == 404


def test_encoded_question_mark_stays_in_path(site: Site):
    env = site.http.get(f"{site.prefix}/env/a%3Fb?q=1").json()
    assert env["PATH_INFO"] == "/env/a?b"
    assert env["QUERY_STRING"] == "q=1"
    assert env["args"] == {"q": ["1"]}


def test_query_string_is_raw(site: Site):
    qs = "a=1&a=2&b=%26%3D&c=caf%C3%A9&d=+&e"
    env = site.http.get(f"{site.prefix}/env?{qs}").json()
    assert env["QUERY_STRING"] == qs
    assert env["args"] == {"a": ["1", "2"], "b": ["&="], "c": ["café"], "d": [" "], "e": [""]}


# -- bodies ------------------------------------------------------------------


def test_post_form(site: Site):
    fields = {"name": "café", "comment": ["a&b=c", "second line\nthird"], "empty": ""}
    r = site.http.post_form(f"{site.prefix}/form", fields)
    assert r.status == 200, r.body
    assert r.json() == {"name": ["café"], "comment": ["a&b=c", "second line\nthird"], "empty": [""]}


def test_form_page(site: Site):
    r = site.http.get(f"{site.prefix}/form")
    assert r.status == 200
    assert f'action="{site.prefix}/form"' in r.text
    assert f'action="{site.prefix}/upload"' in r.text


def test_multipart_upload(site: Site):
    payload = HashingPayload(3 * MiB + 123, seed=7)
    headers, body = multipart_file("file", "data.bin", payload, payload.size)
    r = site.http.post(f"{site.prefix}/upload", body, headers)
    assert r.status == 200, r.body
    assert r.json() == {"filename": "data.bin", "size": payload.size, "sha256": payload.sha256}


def test_chunked_request_body(root_site: Site):
    """nginx de-chunks and sends CONTENT_LENGTH plus HTTP_TRANSFER_ENCODING:
    chunked; the app must still see the whole body."""
    payload = HashingPayload(5 * MiB + 1, seed=3)
    r = root_site.http.post("/echo-sha256", payload)  # iterable, no length: chunked
    assert r.status == 200, r.body
    assert r.json() == {"size": payload.size, "sha256": payload.sha256}


def test_empty_post_body(root_site: Site):
    r = root_site.http.post("/echo-sha256", b"")
    assert r.status == 200, r.body
    assert r.json() == {"size": 0, "sha256": sha256_of([])[1]}


@pytest.mark.timeout(120)
def test_upload_100_mib(root_site: Site):
    payload = HashingPayload(100 * MiB, seed=42)
    r = root_site.http.post("/echo-sha256", payload, {"Content-Length": str(payload.size)})
    assert r.status == 200, r.body
    assert payload.sent == payload.size
    assert r.json() == {"size": payload.size, "sha256": payload.sha256}


@pytest.mark.timeout(120)
def test_download_100_mib(root_site: Site):
    size = 100 * MiB + 7
    r = root_site.http.get(f"/download/{size}", stream=True)
    assert r.status == 200
    assert r.header("Content-Length") == str(size)
    assert (r.size, r.sha256) == sha256_of(pattern_chunks(size))


def test_streamed_response(site: Site):
    r = site.http.get(f"{site.prefix}/stream")
    assert r.status == 200
    assert r.body == b"".join(b"chunk %d\n" % n for n in range(5))


# -- methods, connections ----------------------------------------------------


def test_head_has_no_body(site: Site):
    conn = site.http.connection()
    try:
        r = site.http.head(f"{site.prefix}/download/1000", conn=conn)
        assert r.status == 200
        assert r.body == b""
        assert r.header("Content-Length") == "1000"
        # Stray body bytes after a HEAD response would corrupt the next
        # response on the same keep-alive connection.
        r = site.http.get(f"{site.prefix}/hello/next", conn=conn)
        assert (r.status, r.text) == (200, "Hello, next!")
    finally:
        conn.close()


def test_sequential_requests_on_one_client_connection(site: Site):
    conn = site.http.connection()
    try:
        for n in range(20):
            r = site.http.get(f"{site.prefix}/hello/n{n}", conn=conn)
            assert (r.status, r.text) == (200, f"Hello, n{n}!")
    finally:
        conn.close()


def test_graceful_stop_after_traffic(root_site: Site):
    assert root_site.http.get("/hello/x").status == 200
    socket_path = root_site.server.socket_path
    assert socket_path is not None and socket_path.exists()
    assert root_site.server.stop() == 0, root_site.server.stderr_text()
    assert not socket_path.exists()
    assert root_site.server.leftover_pids == []
    # nginx now reports the backend as unavailable
    assert root_site.http.get("/hello/x").status == 502
