"""Tests for wsgi_fcgi.environ.build_environ (FastCGI PARAMS -> PEP 3333 environ).

Four layers:

1. every forwarded fixture captured from nginx, Apache, lighttpd and cgi-fcgi,
   with the mount the fixture states and in auto-detect mode;
2. a Flask app mounted where each fixture says: routing, ``url_for``, bodies;
3. a differential test against Werkzeug's ``EnvironBuilder`` for the PARAMS
   nginx sends with the recommended root config;
4. focused unit tests and a property test ("never raises, always PEP 3333").

No sockets anywhere.
"""

from __future__ import annotations

import io
import os
import string
import warnings
import wsgiref.validate
from typing import Any
from urllib.parse import quote, unquote, urlencode

import pytest
from flask import Flask, request, url_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Request

from wsgi_fcgi.environ import build_environ

try:
    from fixtures_params import (
        IN_REPO_DIR,
        SHARED_DIR,
        ParamsFixture,
        fixtures_dir,
        load_forwarded,
        require_fixtures_dir,
    )
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.fixtures_params import (
        IN_REPO_DIR,
        SHARED_DIR,
        ParamsFixture,
        fixtures_dir,
        load_forwarded,
        require_fixtures_dir,
    )

Environ = dict[str, Any]

REQUIRED_CGI_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
)


# --- helpers ---------------------------------------------------------------


def with_io(environ: Environ, body: bytes = b"") -> Environ:
    """A copy of ``environ`` with the keys the request handler adds."""
    result = dict(environ)
    result["wsgi.input"] = io.BytesIO(body)
    result["wsgi.errors"] = io.StringIO()
    return result


def assert_pep3333(environ: Environ, *, multiprocess: bool = True) -> None:
    """The environ is PEP 3333-shaped, whatever the PARAMS were."""
    assert type(environ) is dict
    for key in REQUIRED_CGI_KEYS:
        assert key in environ, key
    for key, value in environ.items():
        assert type(key) is str
        if not key.startswith("wsgi."):
            assert type(value) is str, (key, value)
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] in ("http", "https")
    assert environ["wsgi.multithread"] is False
    assert environ["wsgi.multiprocess"] is multiprocess
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    for key in ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper"):
        assert key not in environ
    for key in ("HTTP_PROXY", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
        assert key not in environ
    script_name, path_info = environ["SCRIPT_NAME"], environ["PATH_INFO"]
    assert script_name == "" or (script_name.startswith("/") and not script_name.endswith("/")), script_name
    assert path_info == "" or path_info.startswith("/"), path_info
    assert environ["REQUEST_METHOD"] != ""
    assert environ["SERVER_NAME"] != ""
    assert environ["SERVER_PORT"].isascii() and environ["SERVER_PORT"].isdigit()
    if "CONTENT_LENGTH" in environ:
        assert environ["CONTENT_LENGTH"].isascii() and environ["CONTENT_LENGTH"].isdigit()
        assert "HTTP_TRANSFER_ENCODING" not in environ
    if "CONTENT_TYPE" in environ:
        assert environ["CONTENT_TYPE"] != ""
    # The stdlib's own PEP 3333 checker agrees (its warnings are about odd methods).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wsgiref.validate.WSGIWarning)
        wsgiref.validate.check_environ(with_io(environ))


def has_no_path(fixture: ParamsFixture) -> bool:
    """cgi-fcgi run with a bare environment: no path variable at all."""
    params = fixture.params
    return not any(name in params for name in ("SCRIPT_NAME", "PATH_INFO", "REQUEST_URI"))


def expected_split(fixture: ParamsFixture) -> tuple[str, str]:
    """The right (SCRIPT_NAME, PATH_INFO) for the app at the fixture's mount."""
    mount = fixture.mount
    if has_no_path(fixture):
        return mount, ""
    path = fixture.decoded_path
    assert path == mount or path.startswith(mount + "/"), (path, mount)
    return mount, path[len(mount) :]


# Variants whose PARAMS cannot reveal the mount (docs/environ.md, rule 5.5).
PROXYPASS_VARIANTS = {
    "apache-proxypass",
    "apache-proxypass-generic",
    "apache-proxypass-enablereuse",
    "apache-proxypass-tls",
}
LIGHTTPD_ROOT_VARIANTS = {"lighttpd-socket-root", "lighttpd-binpath-root"}


def auto_exception(fixture: ParamsFixture) -> tuple[tuple[str, str], str] | None:
    """For a fixture auto mode cannot get right: (what auto mode gives, why)."""
    path = fixture.decoded_path
    if fixture.variant in PROXYPASS_VARIANTS:
        return ("", path), "Apache ProxyPass never sends the mount point"
    if fixture.variant in LIGHTTPD_ROOT_VARIANTS and path != "/":
        first_segment_end = path.find("/", 1)
        if first_segment_end < 0:
            return (path, ""), "lighttpd '/' key without fix-root-scriptname"
        return (path[:first_segment_end], path[first_segment_end:]), "lighttpd '/' key without fix-root-scriptname"
    if has_no_path(fixture):
        return ("", ""), "no path variable in the PARAMS at all"
    return None


def fixture_params() -> list[Any]:
    fixtures = load_forwarded()
    if not fixtures:
        return [pytest.param(None, id="no-fixtures")]
    return [pytest.param(fixture, id=fixture.id) for fixture in fixtures]


FORWARDED = fixture_params()


def routing_params() -> tuple[list[Any], dict[str, str]]:
    """The (fixture, mode) cases of test_flask_routing, and the fixtures left
    out of auto mode with the reason for each.

    Every fixture runs with the mount it states ("configured"). In auto mode
    only those whose PARAMS reveal the mount: for the others (Apache
    ProxyPass, lighttpd's "/" key without fix-root-scriptname, cgi-fcgi's bare
    environment; docs/environ.md, rule 5.5) auto mode gives a known wrong split, which
    test_fixture_auto_mode pins, and routing them could only fail. With the
    committed fixtures that leaves out 63."""
    cases: list[Any] = []
    excluded: dict[str, str] = {}
    for param in FORWARDED:
        (fixture,) = param.values
        cases.append(pytest.param(fixture, "configured", id=f"{param.id}-configured"))
        exception = auto_exception(fixture) if fixture is not None else None
        if exception is None:
            cases.append(pytest.param(fixture, "auto", id=f"{param.id}-auto"))
        else:
            excluded[fixture.id] = exception[1]
    return cases, excluded


ROUTING_CASES, AUTO_ROUTING_EXCLUDED = routing_params()


def need(fixture: ParamsFixture | None) -> ParamsFixture:
    if fixture is None:
        require_fixtures_dir()
        raise AssertionError("unreachable")
    return fixture


# --- 1. real server fixtures -------------------------------------------------


def check_fixture_environ(fixture: ParamsFixture, environ: Environ) -> None:
    """Everything but the SCRIPT_NAME/PATH_INFO split, which depends on the mode."""
    assert_pep3333(environ)
    params = fixture.params
    sent = {name: values[-1] for name, values in params.items()}

    assert environ["REQUEST_METHOD"] == fixture.method
    assert environ["QUERY_STRING"] == fixture.query
    assert environ["wsgi.url_scheme"] == ("https" if fixture.tls else "http")
    assert environ["FCGI_ROLE"] == "RESPONDER"
    for key in ("SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REQUEST_URI", "REMOTE_ADDR", "HTTP_HOST"):
        if key in sent:
            assert environ[key] == sent[key], key

    # Headers: repeated ones joined (nginx sends X-Dup twice), others as sent.
    if fixture.name == "dup-header":
        assert environ["HTTP_X_DUP"] == "one, two"
    if fixture.name == "httpoxy":
        assert "HTTP_PROXY" not in environ
        assert "HTTP_PROXY" not in os.environ

    # Body variables.
    content_length = sent.get("CONTENT_LENGTH", "")
    if content_length == "":
        assert "CONTENT_LENGTH" not in environ
    else:
        assert environ["CONTENT_LENGTH"] == content_length
        assert "HTTP_TRANSFER_ENCODING" not in environ
    if sent.get("CONTENT_TYPE", "") == "":
        assert "CONTENT_TYPE" not in environ
    if fixture.name == "post-chunked":
        if "CONTENT_LENGTH" in environ:  # nginx, mod_fcgid, lighttpd buffer the body
            assert environ["CONTENT_LENGTH"] == "18000"
        else:  # Apache mod_proxy_fcgi streams it; the handler spools it
            assert environ["HTTP_TRANSFER_ENCODING"] == "chunked"
            assert fixture.stdin_length == 18000
    if fixture.name == "post-upload-100k":
        assert environ["CONTENT_LENGTH"] == "102400"
    if fixture.method in ("GET", "HEAD") and sent.get("CONTENT_LENGTH") == "":
        assert "CONTENT_LENGTH" not in environ

    # Everything we do not normalise passes through untouched.
    normalised = {
        "SCRIPT_NAME",
        "PATH_INFO",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "HTTP_PROXY",
        "HTTP_CONTENT_LENGTH",
        "HTTP_CONTENT_TYPE",
        "HTTP_TRANSFER_ENCODING",
        "REMOTE_USER",
    }
    for name, values in params.items():
        if name in normalised:
            continue
        expected = ", ".join(values) if name.startswith("HTTP_") else values[-1]
        assert environ[name] == expected, name


@pytest.mark.parametrize("fixture", FORWARDED)
def test_fixture_with_configured_mount(fixture: ParamsFixture | None) -> None:
    fixture = need(fixture)
    environ = build_environ(fixture.pairs, script_name=fixture.app_mount)
    check_fixture_environ(fixture, environ)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == expected_split(fixture)


@pytest.mark.parametrize("fixture", FORWARDED)
def test_fixture_auto_mode(fixture: ParamsFixture | None) -> None:
    fixture = need(fixture)
    environ = build_environ(fixture.pairs)
    check_fixture_environ(fixture, environ)
    split = (environ["SCRIPT_NAME"], environ["PATH_INFO"])
    exception = auto_exception(fixture)
    if exception is None:
        assert split == expected_split(fixture)
    else:
        # Wrong, but predictably so; --mount fixes it (test above).
        assert split == exception[0], exception[1]
        assert split != expected_split(fixture)


def test_auto_mode_exceptions_are_exactly_the_documented_ones() -> None:
    require_fixtures_dir()
    fixtures = load_forwarded()
    wrong = set()
    for fixture in fixtures:
        environ = build_environ(fixture.pairs)
        if (environ["SCRIPT_NAME"], environ["PATH_INFO"]) != expected_split(fixture):
            wrong.add(fixture.id)
    documented = {fixture.id for fixture in fixtures if auto_exception(fixture) is not None}
    assert wrong == documented
    variants = {fixture.variant for fixture in fixtures if fixture.id in wrong}
    if fixtures_dir() in (IN_REPO_DIR, SHARED_DIR):
        assert variants == PROXYPASS_VARIANTS | LIGHTTPD_ROOT_VARIANTS | {"cgi-fcgi-bind-connect"}
        assert set(AUTO_ROUTING_EXCLUDED) == wrong and len(wrong) == 63  # not routed in auto mode
        # lighttpd's "/" key does give the right split for GET / itself.
        assert "lighttpd-socket-root/get-root" not in wrong


def test_fixture_set_is_complete() -> None:
    """The committed copy holds every server variant (a fresh clone has no ../shared)."""
    path = require_fixtures_dir()
    if path not in (IN_REPO_DIR, SHARED_DIR):
        pytest.skip(f"custom fixture directory {path}")
    fixtures = load_forwarded()
    variants = {fixture.variant for fixture in fixtures}
    assert {"nginx-root", "nginx-mounted", "apache-fcgid-htaccess", "lighttpd-socket-root-fixroot"} <= variants
    assert len(fixtures) >= 200


def test_in_repo_copy_matches_shared_capture() -> None:
    """tests/fixtures/params is a byte-identical copy of ../shared/fixtures/params."""
    if not SHARED_DIR.is_dir() or not IN_REPO_DIR.is_dir():
        pytest.skip("needs both tests/fixtures/params and ../shared/fixtures/params")
    copied = sorted(p.relative_to(IN_REPO_DIR) for p in IN_REPO_DIR.glob("*/*.json"))
    assert copied
    for relative in copied:
        assert (IN_REPO_DIR / relative).read_bytes() == (SHARED_DIR / relative).read_bytes(), relative
    originals = {p.relative_to(SHARED_DIR) for p in SHARED_DIR.glob("*/*.json") if not p.name.startswith("_")}
    assert originals <= set(copied), sorted(originals - set(copied))


# --- 2. Flask routing --------------------------------------------------------


def make_flask_app() -> tuple[Flask, list[dict[str, Any]]]:
    """An app that does not know its mount point and reports what it saw."""
    app = Flask(__name__)
    seen: list[dict[str, Any]] = []
    methods = ["GET", "POST", "PUT", "DELETE"]

    def report() -> str:
        data = request.get_data()
        seen.append(
            {
                "endpoint": request.endpoint,
                "path": request.path,
                "script_root": request.script_root,
                "url_index": url_for("index"),
                "url_index_external": url_for("index", _external=True),
                "url_self": url_for(request.endpoint or "index", **(request.view_args or {})),
                "body_length": len(data),
            }
        )
        return "ok"

    @app.route("/", methods=methods)
    def index() -> str:
        return report()

    @app.route("/sub/path", methods=methods)
    def sub_path() -> str:
        return report()

    @app.route("/<path:p>", methods=methods)
    def catchall(p: str) -> str:
        return report()

    return app, seen


@pytest.mark.parametrize(("fixture", "mode"), ROUTING_CASES)
def test_flask_routing(fixture: ParamsFixture | None, mode: str) -> None:
    fixture = need(fixture)
    app, seen = make_flask_app()
    environ = build_environ(fixture.pairs, script_name=fixture.app_mount if mode == "configured" else None)
    app_iter, status, headers = run_wsgi_app(app, with_io(environ, b"\0" * fixture.stdin_length))
    b"".join(app_iter)
    mount, path_info = expected_split(fixture)
    scheme = "https" if fixture.tls else "http"
    host = environ.get("HTTP_HOST") or environ["SERVER_NAME"]

    if path_info == "" and mount:
        # GET /app for an app at /app: PATH_INFO is "", and Werkzeug redirects to
        # the canonical /app/ as it does under any WSGI server.
        assert status.startswith("308"), status
        assert headers["Location"] in (mount + "/", f"{scheme}://{host}{mount}/")
        assert seen == []
        return
    assert status.startswith("200"), status
    (report,) = seen
    expected_path = "/" + path_info.encode("latin-1").decode("utf-8", "replace").lstrip("/")
    assert report["path"] == expected_path
    assert report["endpoint"] == {"/": "index", "/sub/path": "sub_path"}.get(expected_path, "catchall")
    assert report["script_root"] == mount
    assert report["url_index"] == mount + "/"
    assert report["url_index_external"] == f"{scheme}://{host}{mount}/"
    assert report["url_self"].startswith(mount + "/")
    assert report["body_length"] == fixture.stdin_length


# --- 3. differential against Werkzeug's EnvironBuilder ----------------------

# RFC 3986 pchar without "%" and "/": left unencoded in the request target.
PATH_SAFE = "!$&'()*+,;=:@-._~"
QUERY_RAW_CHARS = "/?:@!$'()*,;=-._~"
HOSTS = [
    ("localhost", "80", "http"),
    ("example.com", "8080", "http"),
    ("127.0.0.1", "443", "https"),
    ("a.test", "8443", "https"),
]

segment_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
header_name = st.from_regex(r"X-[A-Za-z][A-Za-z0-9]{0,8}(-[A-Za-z0-9]{1,6}){0,2}", fullmatch=True)
header_value = (
    st.text(
        alphabet=st.sampled_from(
            string.ascii_letters + string.digits + " !#$%&'()*+,-./:;<=>?@[]^_`{|}~" + "\xa0\xe9\xff"
        ),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)


@st.composite
def http_requests(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(["GET", "HEAD", "DELETE", "POST", "PUT"]))
    segments = draw(st.lists(segment_text, max_size=4))
    path = "/" + "/".join(quote(segment, safe=PATH_SAFE) for segment in segments)
    if segments and draw(st.booleans()):
        path += "/"
    query = draw(
        st.one_of(
            st.just(""),
            st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), min_size=1, max_size=3).map(
                lambda pairs: urlencode(pairs, quote_via=quote)
            ),
            st.text(alphabet=st.sampled_from(string.ascii_letters + QUERY_RAW_CHARS + "&"), max_size=12),
        )
    )
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=4))
    body = b""
    content_type = None
    if method in ("POST", "PUT"):
        body = draw(st.binary(min_size=1, max_size=64))
        content_type = draw(st.sampled_from([None, "application/octet-stream", "text/plain; charset=utf-8"]))
    host, port, scheme = draw(st.sampled_from(HOSTS))
    return {
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": body,
        "content_type": content_type,
        "host": host,
        "port": port,
        "scheme": scheme,
    }


def nginx_root_params(req: dict[str, Any]) -> list[tuple[str, str]]:
    """What nginx 1.22 sends for ``include fastcgi_params; fastcgi_param SCRIPT_NAME "";
    fastcgi_param PATH_INFO $fastcgi_script_name;`` (order as on the wire)."""
    target = req["path"] + ("?" + req["query"] if req["query"] else "")
    decoded = unquote(req["path"], encoding="latin-1")  # $uri: percent-decoded bytes
    default_port = {"http": "80", "https": "443"}[req["scheme"]]
    host_header = req["host"] if req["port"] == default_port else f"{req['host']}:{req['port']}"
    body = req["body"]
    pairs = [
        ("QUERY_STRING", req["query"]),
        ("REQUEST_METHOD", req["method"]),
        ("CONTENT_TYPE", req["content_type"] or ""),
        ("CONTENT_LENGTH", str(len(body)) if body else ""),
        ("SCRIPT_NAME", decoded),
        ("REQUEST_URI", target),
        ("DOCUMENT_URI", decoded),
        ("DOCUMENT_ROOT", "/srv/www"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", req["scheme"]),
    ]
    if req["scheme"] == "https":
        pairs.append(("HTTPS", "on"))
    pairs += [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("REMOTE_USER", ""),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", req["port"]),
        ("SERVER_NAME", req["host"]),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", host_header),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", decoded),
    ]
    if body:
        pairs.append(("HTTP_CONTENT_LENGTH", str(len(body))))
    if req["content_type"]:
        pairs.append(("HTTP_CONTENT_TYPE", req["content_type"]))
    for name, value in req["headers"]:
        pairs.append(("HTTP_" + name.upper().replace("-", "_"), value))
    return pairs


def werkzeug_environ(req: dict[str, Any]) -> Environ:
    default_port = {"http": "80", "https": "443"}[req["scheme"]]
    netloc = req["host"] if req["port"] == default_port else f"{req['host']}:{req['port']}"
    target = req["path"] + ("?" + req["query"] if req["query"] else "")
    builder = EnvironBuilder(
        path=target,
        base_url=f"{req['scheme']}://{netloc}/",
        method=req["method"],
        headers=req["headers"],
        data=req["body"] or None,
        content_type=req["content_type"],
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


DIFF_IGNORED = {"wsgi.input", "wsgi.errors", "wsgi.run_once", "wsgi.multithread", "wsgi.multiprocess"}


def assert_same_as_werkzeug(req: dict[str, Any]) -> None:
    ours = build_environ(nginx_root_params(req))
    theirs = werkzeug_environ(req)
    assert_pep3333(ours)
    for key in (theirs.keys() & ours.keys()) - DIFF_IGNORED:
        assert ours[key] == theirs[key], key
    # Werkzeug defines nothing we lack, except gunicorn's RAW_URI.
    assert theirs.keys() - ours.keys() - DIFF_IGNORED <= {"RAW_URI"}

    # And a request object sees the same request.
    ours_req = Request(with_io(ours, req["body"]))
    theirs_req = Request(theirs)
    assert ours_req.url == theirs_req.url
    assert ours_req.path == theirs_req.path
    assert ours_req.script_root == theirs_req.script_root
    assert ours_req.args == theirs_req.args
    assert ours_req.get_data() == theirs_req.get_data() == req["body"]
    assert dict(ours_req.headers) == dict(theirs_req.headers)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(http_requests())
@example(
    {
        "method": "GET",
        "path": "/caf%C3%A9/a%20b/%E2%82%AC",
        "query": "x=1&y=%20z&q=a%2Fb+c",
        "headers": [("X-Dup", "one"), ("X-Dup", "two"), ("X-Custom-Thing", "v\xe9")],
        "body": b"",
        "content_type": None,
        "host": "example.com",
        "port": "8080",
        "scheme": "http",
    }
)
@example(
    {
        "method": "POST",
        "path": "/upload/",
        "query": "",
        "headers": [],
        "body": b"\0\xff" * 10,
        "content_type": "application/octet-stream",
        "host": "a.test",
        "port": "8443",
        "scheme": "https",
    }
)
def test_differential_against_werkzeug(req: dict[str, Any]) -> None:
    assert_same_as_werkzeug(req)


# --- 4. focused unit tests ---------------------------------------------------


def nginx_root(path: str, uri: str | None = None, **extra: str) -> list[tuple[str, str]]:
    """nginx `location /` with Debian's fastcgi_params: the whole path in SCRIPT_NAME."""
    pairs = [
        ("QUERY_STRING", ""),
        ("REQUEST_METHOD", "GET"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""),
        ("SCRIPT_NAME", path),
        ("REQUEST_URI", uri if uri is not None else path),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost"),
    ]
    pairs += list(extra.items())
    return pairs


def split(environ: Environ) -> tuple[str, str]:
    return environ["SCRIPT_NAME"], environ["PATH_INFO"]


def test_httpoxy_dropped_and_os_environ_untouched() -> None:
    before = dict(os.environ)
    pairs = [*nginx_root("/x"), ("HTTP_PROXY", "http://evil:8080"), ("PATH", "/evil/bin"), ("HOME", "/evil")]
    environ = build_environ(pairs)
    assert "HTTP_PROXY" not in environ
    assert environ["PATH"] == "/evil/bin"  # server extras stay in the environ dict...
    assert dict(os.environ) == before  # ...and never reach the process environment
    assert "HTTP_PROXY" not in os.environ or before.get("HTTP_PROXY") == os.environ["HTTP_PROXY"]


def test_httpoxy_dropped_even_when_repeated() -> None:
    environ = build_environ([("HTTP_PROXY", "a"), ("HTTP_PROXY", "b"), ("REQUEST_METHOD", "GET")])
    assert "HTTP_PROXY" not in environ


@pytest.mark.parametrize("value", ["", "-1", "abc", " 5", "5 ", "1e3", "0x10", "+5", "\uff11\uff12", "\xb2", "9" * 19])
def test_bad_content_length_dropped(value: str) -> None:
    environ = build_environ([("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", value)])
    assert "CONTENT_LENGTH" not in environ
    assert_pep3333(environ)


@pytest.mark.parametrize("value", ["0", "18000", "007", "9" * 18])
def test_good_content_length_kept(value: str) -> None:
    environ = build_environ([("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", value)])
    assert environ["CONTENT_LENGTH"] == value


def test_empty_content_type_dropped_and_real_one_kept() -> None:
    assert "CONTENT_TYPE" not in build_environ([("CONTENT_TYPE", "")])
    assert build_environ([("CONTENT_TYPE", "text/plain")])["CONTENT_TYPE"] == "text/plain"


def test_transfer_encoding_dropped_only_with_content_length() -> None:
    te = ("HTTP_TRANSFER_ENCODING", "chunked")
    # nginx: buffered, de-chunked, length known.
    environ = build_environ([("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "18000"), te])
    assert environ["CONTENT_LENGTH"] == "18000"
    assert "HTTP_TRANSFER_ENCODING" not in environ
    # Apache mod_proxy_fcgi: streamed, no length; the handler spools and removes it.
    environ = build_environ([("REQUEST_METHOD", "POST"), te])
    assert environ["HTTP_TRANSFER_ENCODING"] == "chunked"
    # An unusable length counts as absent.
    environ = build_environ([("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "-1"), te])
    assert "CONTENT_LENGTH" not in environ
    assert environ["HTTP_TRANSFER_ENCODING"] == "chunked"


def test_shadow_content_headers_dropped() -> None:
    environ = build_environ(
        [("CONTENT_LENGTH", "5"), ("HTTP_CONTENT_LENGTH", "5"), ("HTTP_CONTENT_TYPE", "a/b"), ("CONTENT_TYPE", "a/b")]
    )
    assert "HTTP_CONTENT_LENGTH" not in environ and "HTTP_CONTENT_TYPE" not in environ
    assert environ["CONTENT_LENGTH"] == "5" and environ["CONTENT_TYPE"] == "a/b"


def test_empty_remote_user_dropped() -> None:
    assert "REMOTE_USER" not in build_environ([("REMOTE_USER", "")])
    assert build_environ([("REMOTE_USER", "bob")])["REMOTE_USER"] == "bob"


@pytest.mark.parametrize(
    ("pairs", "scheme"),
    [
        ([("HTTPS", "on")], "https"),
        ([("HTTPS", "ON")], "https"),
        ([("HTTPS", "1")], "https"),
        ([("HTTPS", "yes")], "https"),
        ([("HTTPS", "True")], "https"),
        ([("REQUEST_SCHEME", "https")], "https"),
        ([("REQUEST_SCHEME", "HTTPS")], "https"),
        ([("HTTPS", "off"), ("REQUEST_SCHEME", "https")], "https"),
        ([("HTTPS", "off")], "http"),
        ([("HTTPS", "0")], "http"),
        ([("HTTPS", "")], "http"),
        ([("REQUEST_SCHEME", "http")], "http"),
        ([], "http"),
    ],
)
def test_url_scheme(pairs: list[tuple[str, str]], scheme: str) -> None:
    environ = build_environ(pairs)
    assert environ["wsgi.url_scheme"] == scheme
    assert environ["SERVER_PORT"] == ("443" if scheme == "https" else "80")


@pytest.mark.parametrize(
    ("mount", "expected"),
    [
        ("/app", ("/app", "/x/y")),
        ("/app/", ("/app", "/x/y")),
        ("app", ("/app", "/x/y")),
        ("/app/x", ("/app/x", "/y")),
        ("/", ("", "/app/x/y")),
        ("", ("", "/app/x/y")),
        ("/ap", ("", "/app/x/y")),  # not a segment prefix: auto result kept
        ("/other", ("", "/app/x/y")),
        ("/app/x/y", ("/app/x/y", "")),
        ("/app/x/y/z", ("", "/app/x/y")),
    ],
)
def test_script_name_override(mount: str, expected: tuple[str, str]) -> None:
    environ = build_environ(nginx_root("/app/x/y"), script_name=mount)
    assert split(environ) == expected


def test_script_name_override_on_a_correct_split() -> None:
    # lighttpd "/app" key: the server's split is right already.
    pairs = [("SCRIPT_NAME", "/app"), ("PATH_INFO", "/x"), ("REQUEST_URI", "/app/x")]
    assert split(build_environ(pairs)) == ("/app", "/x")
    assert split(build_environ(pairs, script_name="/app")) == ("/app", "/x")
    assert split(build_environ(pairs, script_name="/")) == ("", "/app/x")
    assert split(build_environ(pairs, script_name="/apple")) == ("/app", "/x")


def test_mount_with_no_path_at_all() -> None:
    assert split(build_environ([("REQUEST_METHOD", "GET")])) == ("", "")
    assert split(build_environ([("REQUEST_METHOD", "GET")], script_name="/app")) == ("/app", "")
    assert split(build_environ([("REQUEST_METHOD", "GET")], script_name="/")) == ("", "")


def test_duplicates() -> None:
    environ = build_environ(
        [
            ("SCRIPT_NAME", "/stale"),
            ("HTTP_X_DUP", "one"),
            ("HTTP_COOKIE", "a=1"),
            ("QUERY_STRING", "old"),
            ("HTTP_X_DUP", "two"),
            ("HTTP_COOKIE", "b=2"),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", "/p"),
            ("HTTP_X_DUP", "three"),
            ("QUERY_STRING", "new"),
            ("HTTP_ACCEPT", "*/*"),
        ]
    )
    assert environ["HTTP_X_DUP"] == "one, two, three"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["QUERY_STRING"] == "new"
    assert environ["HTTP_ACCEPT"] == "*/*"
    assert split(environ) == ("", "/p")
    # Wire order of first appearance is kept.
    assert list(environ)[:3] == ["SCRIPT_NAME", "HTTP_X_DUP", "HTTP_COOKIE"]


@pytest.mark.parametrize(
    ("host", "https", "name", "port"),
    [
        ("example.com:8080", False, "example.com", "8080"),
        ("example.com", False, "example.com", "80"),
        ("example.com", True, "example.com", "443"),
        ("[::1]:8443", True, "[::1]", "8443"),
        ("[::1]", False, "[::1]", "80"),
        ("[2001:db8::1]:81", False, "[2001:db8::1]", "81"),
        ("[::1", False, "[::1", "80"),
        ("[::1]junk", False, "[::1]", "80"),
        ("::1", False, "::1", "80"),
        ("host:abc", False, "host", "80"),
        ("host:", False, "host", "80"),
        (":8080", False, "localhost", "8080"),
        (None, False, "localhost", "80"),
        (None, True, "localhost", "443"),
        ("", False, "localhost", "80"),
    ],
)
def test_server_name_port_fallback(host: str | None, https: bool, name: str, port: str) -> None:
    pairs = [("REQUEST_METHOD", "GET")]
    if host is not None:
        pairs.append(("HTTP_HOST", host))
    if https:
        pairs.append(("HTTPS", "on"))
    environ = build_environ(pairs)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == (name, port)
    assert environ.get("HTTP_HOST") == host  # never "fixed"


def test_server_name_port_kept_as_sent() -> None:
    base = [("HTTP_HOST", "example.com:8080")]
    environ = build_environ([*base, ("SERVER_NAME", "localhost"), ("SERVER_PORT", "18100")])
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "18100")
    environ = build_environ([*base, ("SERVER_NAME", "localhost")])
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "8080")
    environ = build_environ([*base, ("SERVER_PORT", "18100")])
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "18100")
    environ = build_environ([*base, ("SERVER_NAME", ""), ("SERVER_PORT", "nope")])
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.com", "8080")


def test_defaults_for_missing_required_keys() -> None:
    environ = build_environ([])
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert environ["QUERY_STRING"] == ""
    assert split(environ) == ("", "")
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    assert_pep3333(environ)
    sent = build_environ([("REQUEST_METHOD", "PATCH"), ("SERVER_PROTOCOL", "HTTP/2.0"), ("QUERY_STRING", "a=b")])
    assert (sent["REQUEST_METHOD"], sent["SERVER_PROTOCOL"], sent["QUERY_STRING"]) == ("PATCH", "HTTP/2.0", "a=b")


@pytest.mark.parametrize(("role", "name"), [(1, "RESPONDER"), (2, "AUTHORIZER"), (3, "FILTER"), (9, "9")])
def test_fcgi_role(role: int, name: str) -> None:
    assert build_environ([], role=role)["FCGI_ROLE"] == name


def test_fcgi_role_sent_by_server_is_kept() -> None:
    environ = build_environ([("FCGI_ROLE", "AUTHORIZER"), ("FCGI_APACHE_ROLE", "AUTHENTICATOR")], role=2)
    assert environ["FCGI_ROLE"] == "AUTHORIZER"
    assert environ["FCGI_APACHE_ROLE"] == "AUTHENTICATOR"


@pytest.mark.parametrize(
    ("uri", "path_info"),
    [
        ("/protected/admin/x?q=1", "/protected/admin/x"),
        ("/protected//admin/x", "/protected/admin/x"),
        ("/protected/./admin/x", "/protected/admin/x"),
        ("/protected/y/../admin/x", "/protected/admin/x"),
        ("/protected/%2e%2e/admin/", "/admin/"),
        ("/protected/%61dmin/x", "/protected/admin/x"),
        ("/../../admin", "/admin"),
        ("/a/.", "/a/"),
        ("/.well-known/x/..y", "/.well-known/x/..y"),
    ],
)
def test_authorizer_path_is_normalised_like_the_servers(uri: str, path_info: str) -> None:
    """An authorizer gets no SCRIPT_NAME/PATH_INFO, only the raw REQUEST_URI
    (mod_authnz_fcgi, mod_fcgid): its PATH_INFO is the path the server will
    route, or "//admin" walks around a check for "/admin"."""
    environ = build_environ([("REQUEST_URI", uri), ("FCGI_APACHE_ROLE", "AUTHORIZER")], role=2)
    assert split(environ) == ("", path_info)


def test_wsgi_keys_and_multiprocess() -> None:
    environ = build_environ([], multiprocess=False)
    assert environ["wsgi.multiprocess"] is False
    assert_pep3333(environ, multiprocess=False)


def test_params_cannot_set_wsgi_keys() -> None:
    environ = build_environ(
        [
            ("wsgi.url_scheme", "gopher"),
            ("wsgi.input", "x"),
            ("wsgi.errors", "x"),
            ("wsgi.file_wrapper", "x"),
            ("wsgi.multithread", "yes"),
            ("wsgi.version", "9"),
            ("wsgi.input_terminated", ""),
        ]
    )
    assert_pep3333(environ)
    assert environ["wsgi.url_scheme"] == "http"


def test_returns_a_new_dict_and_leaves_the_input_alone() -> None:
    pairs = nginx_root("/a", HTTP_X="1")
    snapshot = list(pairs)
    first = build_environ(pairs)
    second = build_environ(pairs)
    assert first == second and first is not second
    first["PATH_INFO"] = "/changed"
    assert build_environ(pairs)["PATH_INFO"] == "/a"
    assert pairs == snapshot


# Path repairs, one per server behaviour (docs/environ.md, rule 5).


def test_nginx_root_whole_path_in_script_name() -> None:
    assert split(build_environ(nginx_root("/app/sub/path", "/app/sub/path?x=1"))) == ("", "/app/sub/path")
    assert split(build_environ(nginx_root("/"))) == ("", "/")
    assert split(build_environ(nginx_root("/app/"))) == ("", "/app/")
    # nginx normalised the path (merged slashes); its value wins over the raw URI.
    assert split(build_environ(nginx_root("/app/x", "/app//x"))) == ("", "/app/x")


def test_apache_proxypass_needs_the_mount() -> None:
    pairs = [
        ("SERVER_SOFTWARE", "Apache/2.4.71 (Debian)"),
        ("DOCUMENT_ROOT", "/srv/htdocs"),
        ("CONTEXT_DOCUMENT_ROOT", "/srv/htdocs"),
        ("SCRIPT_FILENAME", "proxy:fcgi://localhost//sub/path"),
        ("REQUEST_URI", "/app/sub/path?x=1"),
        ("SCRIPT_NAME", "/app/sub/path"),
    ]
    assert split(build_environ(pairs)) == ("", "/app/sub/path")
    assert split(build_environ(pairs, script_name="/app")) == ("/app", "/sub/path")
    # GENERIC backend type, and a host:port worker.
    generic = [(k, "//sub/path" if k == "SCRIPT_FILENAME" else v) for k, v in pairs]
    assert split(build_environ(generic)) == ("", "/app/sub/path")
    tcp = [(k, "proxy:fcgi://127.0.0.1:9000/x" if k == "SCRIPT_FILENAME" else v) for k, v in pairs]
    assert split(build_environ(tcp)) == ("", "/app/sub/path")


def test_apache_sethandler_and_fcgid_splits_are_trusted() -> None:
    sethandler = [
        ("SERVER_SOFTWARE", "Apache/2.4.71 (Debian)"),
        ("DOCUMENT_ROOT", "/srv/htdocs"),
        ("SCRIPT_FILENAME", "proxy:fcgi://localhost/srv/htdocs/app"),
        ("REQUEST_URI", "/app"),
        ("SCRIPT_NAME", "/app"),
    ]
    assert split(build_environ(sethandler)) == ("/app", "")
    scriptalias = [
        ("SERVER_SOFTWARE", "Apache/2.4.71 (Debian) mod_fcgid/2.3.9"),
        ("DOCUMENT_ROOT", "/srv/htdocs"),
        ("CONTEXT_DOCUMENT_ROOT", "/srv/app/dispatch.fcgi"),
        ("SCRIPT_FILENAME", "/srv/app/dispatch.fcgi"),
        ("REQUEST_URI", "/app"),
        ("SCRIPT_NAME", "/app"),
    ]
    assert split(build_environ(scriptalias)) == ("/app", "")


def test_apache_proxy_fcgi_pathinfo_double_slash_repaired() -> None:
    def pathinfo(uri: str, path_info: str) -> tuple[str, str]:
        return split(build_environ([("REQUEST_URI", uri), ("SCRIPT_NAME", "/app"), ("PATH_INFO", path_info)]))

    assert pathinfo("/app", "/") == ("/app", "")
    assert pathinfo("/app/", "//") == ("/app", "/")
    assert pathinfo("/app/sub/path?x=1", "//sub/path") == ("/app", "/sub/path")
    assert pathinfo("/app//sub", "//sub") == ("/app", "//sub")  # the client really sent two slashes


def test_mod_fcgid_rewrite_repaired() -> None:
    def rewrite(uri: str, path_info: str) -> tuple[str, str]:
        pairs = [("REQUEST_URI", uri), ("SCRIPT_NAME", "/dispatch.fcgi"), ("PATH_INFO", path_info)]
        return split(build_environ(pairs))

    assert rewrite("/app/sub/path?x=1", "/app/sub/path") == ("", "/app/sub/path")
    assert rewrite("/", "/") == ("", "/")
    assert rewrite("/blog/app/x", "/app/x") == ("/blog", "/app/x")  # .htaccess in a subdirectory
    assert rewrite("/other", "/app/x") == ("", "/other")  # PATH_INFO is not a suffix: use the URI


def test_lighttpd_root_key() -> None:
    # GET / with a "/" key: SCRIPT_NAME "/" and no PATH_INFO.
    assert split(build_environ([("REQUEST_URI", "/"), ("SCRIPT_NAME", "/")])) == ("", "/")
    # fix-root-scriptname.
    pairs = [("REQUEST_URI", "/app/x"), ("SCRIPT_NAME", ""), ("PATH_INFO", "/app/x")]
    assert split(build_environ(pairs)) == ("", "/app/x")
    # Without it, only a configured mount helps.
    pairs = [("REQUEST_URI", "/app/x"), ("SCRIPT_NAME", "/app"), ("PATH_INFO", "/x")]
    assert split(build_environ(pairs, script_name="/")) == ("", "/app/x")


def test_encoded_slash_and_question_mark() -> None:
    # nginx and lighttpd decode %2F and %3F into the path; only REQUEST_URI keeps them.
    pairs = [("REQUEST_URI", "/app/a%2Fb/c%3Fd?q=1"), ("SCRIPT_NAME", "/app"), ("PATH_INFO", "/a/b/c?d")]
    environ = build_environ(pairs)
    assert split(environ) == ("/app", "/a/b/c?d")
    assert environ["REQUEST_URI"] == "/app/a%2Fb/c%3Fd?q=1"
    assert split(build_environ(nginx_root("/app/a/b/c?d", "/app/a%2Fb/c%3Fd"))) == ("", "/app/a/b/c?d")


def test_request_uri_decoding_is_bytewise_latin1() -> None:
    # %C3%A9 and a raw 0xE9 byte sent unencoded both arrive as latin-1 code points.
    pairs = [
        ("REQUEST_URI", "/x/caf%C3%A9/\xe9"),
        ("SCRIPT_NAME", "/dispatch.fcgi"),
        ("PATH_INFO", "/caf\xc3\xa9/\xe9"),
    ]
    assert split(build_environ(pairs)) == ("/x", "/caf\xc3\xa9/\xe9")
    pairs = [("REQUEST_URI", "/%ff%FF%"), ("SCRIPT_NAME", "/nope"), ("PATH_INFO", "/\xff\xff%")]
    assert split(build_environ(pairs)) == ("", "/\xff\xff%")


@pytest.mark.parametrize("uri", ["*", "", "?", "garbage", "http://example.com", "//x", "\u20ac/%zz", "/\u20ac%41"])
def test_odd_request_uris(uri: str) -> None:
    environ = build_environ([("REQUEST_URI", uri), ("SCRIPT_NAME", "/s"), ("PATH_INFO", "/p")])
    assert_pep3333(environ)
    assert environ["REQUEST_URI"] == uri


def test_absolute_form_request_uri() -> None:
    pairs = [("REQUEST_URI", "http://example.com/app/x?y"), ("SCRIPT_NAME", "/dispatch.fcgi"), ("PATH_INFO", "/app/x")]
    assert split(build_environ(pairs)) == ("", "/app/x")


def test_cve_2019_11043_shapes() -> None:
    # fastcgi_split_path_info failed on %0a: PATH_INFO empty, SCRIPT_NAME the whole path.
    pairs = [
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REQUEST_URI", "/app/x%0ay.php"),
        ("SCRIPT_NAME", "/app/x\ny.php"),
        ("PATH_INFO", ""),
    ]
    assert split(build_environ(pairs)) == ("/app/x\ny.php", "")
    assert split(build_environ(pairs, script_name="/app")) == ("/app", "/x\ny.php")
    # PATH_INFO longer than anything else; not a suffix of the URI.
    pairs = [("REQUEST_URI", "/a"), ("SCRIPT_NAME", "/a"), ("PATH_INFO", "/" + "b" * 10000)]
    assert split(build_environ(pairs)) == ("/a", "/" + "b" * 10000)
    pairs = [("REQUEST_URI", "/a"), ("SCRIPT_NAME", "/zz"), ("PATH_INFO", "/" + "b" * 10000)]
    assert split(build_environ(pairs)) == ("", "/a")


def test_relative_and_slashy_values_made_absolute() -> None:
    assert split(build_environ([("SCRIPT_NAME", "app"), ("PATH_INFO", "x")])) == ("/app", "/x")
    assert split(build_environ([("SCRIPT_NAME", "/app/"), ("PATH_INFO", "x")])) == ("/app", "/x")
    assert split(build_environ([("SCRIPT_NAME", "///"), ("PATH_INFO", "")])) == ("", "///")


def test_huge_and_weird_values_do_not_raise() -> None:
    big = "x" * 1_000_000
    pairs = [
        ("REQUEST_URI", "/" + big + "?" + big),
        ("SCRIPT_NAME", "/" + big),
        ("PATH_INFO", "\n\r\0"),
        ("HTTP_HOST", "[" + big),
        ("CONTENT_LENGTH", "9" * 100_000),
        ("HTTPS", big),
        ("SERVER_SOFTWARE", "nginx/" + big),
        (big, big),
    ]
    assert_pep3333(build_environ(pairs, script_name=big))


PARAM_NAMES = [
    "SCRIPT_NAME",
    "PATH_INFO",
    "REQUEST_URI",
    "QUERY_STRING",
    "REQUEST_METHOD",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "SCRIPT_FILENAME",
    "DOCUMENT_ROOT",
    "CONTEXT_DOCUMENT_ROOT",
    "HTTPS",
    "REQUEST_SCHEME",
    "HTTP_HOST",
    "HTTP_PROXY",
    "HTTP_COOKIE",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_CONTENT_LENGTH",
    "FCGI_ROLE",
    "REMOTE_USER",
    "wsgi.input",
    "wsgi.url_scheme",
    "",
]
INTERESTING_VALUES = [
    "",
    "/",
    "//",
    "///x",
    "/app",
    "/app/",
    "app",
    "%",
    "%2F",
    "/%ff",
    "/a%2Fb%3F?",
    "*",
    "\n",
    "[::1]:80",
    "[",
    ":",
    "-1",
    "0",
    "on",
    "https",
    "nginx/1.22.1",
    "Apache/2.4",
    "proxy:fcgi://localhost/x",
    "proxy:",
    "proxy:fcgi://",
    "http://h/app/x",
]
names = st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=8))
values = st.one_of(st.sampled_from(INTERESTING_VALUES), st.text(max_size=12), st.text(alphabet="/%.?a2F", max_size=12))


@settings(max_examples=1500, deadline=None)
@given(
    pairs=st.lists(st.tuples(names, values), max_size=20),
    script_name=st.one_of(st.none(), st.sampled_from(INTERESTING_VALUES), st.text(max_size=8)),
    role=st.integers(min_value=-5, max_value=2**16),
    multiprocess=st.booleans(),
)
def test_never_raises_always_pep3333(
    pairs: list[tuple[str, str]], script_name: str | None, role: int, multiprocess: bool
) -> None:
    before = dict(os.environ)
    snapshot = list(pairs)
    environ = build_environ(pairs, script_name=script_name, role=role, multiprocess=multiprocess)
    assert_pep3333(environ, multiprocess=multiprocess)
    assert pairs == snapshot
    assert dict(os.environ) == before
    if script_name is not None:
        mount = script_name.rstrip("/")
        mount = mount if not mount or mount.startswith("/") else "/" + mount
        full = environ["SCRIPT_NAME"] + environ["PATH_INFO"]
        if full == mount or full.startswith(mount + "/") or not mount:
            # A mount that fits the path always wins.
            assert environ["SCRIPT_NAME"] == mount


def test_fixture_json_round_trip_is_latin1() -> None:
    """The fixture helper yields PEP 3333 native strings (latin-1 code points only)."""
    require_fixtures_dir()
    for fixture in load_forwarded():
        for name, value in fixture.pairs:
            name.encode("latin-1")
            value.encode("latin-1")


def test_repeated_http_host_keeps_the_last_value() -> None:
    # Debian's fastcgi_params sends HTTP_HOST $host; the documented override
    # HTTP_HOST $host:$server_port follows it. Joining them would give Werkzeug
    # an invalid host and break url_for(_external=True).
    pairs = [("HTTP_HOST", "example.com"), ("HTTP_HOST", "example.com:8080"), ("HTTP_X_DUP", "one"),
             ("HTTP_X_DUP", "two")]
    environ = build_environ(pairs)
    assert environ["HTTP_HOST"] == "example.com:8080"
    assert environ["HTTP_X_DUP"] == "one, two"


def test_front_controller_rewrite_without_path_info() -> None:
    # Apache mod_fcgid with "RewriteRule ^ dispatch.fcgi": SCRIPT_NAME is the
    # rewrite target and no PATH_INFO is sent; the request path is the app's.
    pairs = [("SERVER_SOFTWARE", "Apache/2.4.71 (Debian)"), ("DOCUMENT_ROOT", "/srv/www"),
             ("SCRIPT_FILENAME", "/srv/www/dispatch.fcgi"), ("SCRIPT_NAME", "/dispatch.fcgi"),
             ("REQUEST_URI", "/sub/path?x=1"), ("QUERY_STRING", "x=1")]
    environ = build_environ(pairs)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/sub/path")
