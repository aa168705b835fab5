"""wsgi_fcgi as a FastCGI AUTHORIZER behind a real Apache (mod_authnz_fcgi),
with examples/apache/authorizer.conf and examples/authorizer/authorizer.py
(shown in docs/apache-authorizer.md).

Apache asks the authorizer (wsgi_fcgi over TCP: mod_authnz_fcgi has no unix
sockets) about each request for /protected/, which is the example Flask app
behind mod_proxy_fcgi. Checked: an allowed request reaches the app with the
authorizer's Variable-AUTHZ_* as CGI variables and its user as REMOTE_USER;
a denied one gets the authorizer's own status, headers and body; the
authorizer is asked again for every request, and sees the request's path.

Two things mod_authnz_fcgi needs from the bridge, each also pinned below at
the FastCGI level without Apache:
- it sends BEGIN_REQUEST(AUTHORIZER), PARAMS and the empty PARAMS record but
  never an FCGI_STDIN record, so the authorizer must not wait for one;
- for a denial it keeps only the body bytes in the same FCGI_STDOUT record
  as the end of the headers, so the head and the body share a record.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterator, List

import pytest

from wsgi_fcgi import protocol as p

from support import EXAMPLES_DIR
from support.fastcgi import is_end, read_events
from support.httpclient import HTTPClient
from support.net import connect, free_port
from support.processes import WsgiFcgiServer
from support.sites import start_app_server
from support.webservers import Apache

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(60)]

@dataclass
class Protected:
    web: Apache
    authorizer: WsgiFcgiServer
    app: WsgiFcgiServer

    @property
    def http(self) -> HTTPClient:
        return HTTPClient(self.web.url, timeout=30)

    def logs(self) -> str:
        return "\n".join(
            [
                f"### apache\n{self.web.error_log_text()}",
                f"### authorizer\n{self.authorizer.stderr_text()}",
                f"### app\n{self.app.stderr_text()}",
            ]
        )


@pytest.fixture(scope="module")
def site(shared_dirs) -> Iterator[Protected]:
    base = shared_dirs("wfcgi-authorizer-")
    with ExitStack() as stack:
        address = f"127.0.0.1:{free_port()}"
        authorizer = WsgiFcgiServer(
            "authorizer:app", ["--bind", address, "--workers", "2", "--allow-root", "--read-timeout", "1"],
            workdir=base / "authorizer", pythonpath=[EXAMPLES_DIR / "authorizer"],
        )  # fmt: skip
        stack.callback(authorizer.stop)
        authorizer.start()
        app = start_app_server(stack, base, "--script-name", "/protected")
        web = Apache(base / "apache", "authorizer.conf", {"authorizer": address, "socket": app.socket_path})
        stack.callback(web.stop)
        web.start()
        yield Protected(web, authorizer, app)


def test_allowed_request_reaches_app_with_variables(site: Protected) -> None:
    r = site.http.get("/protected/whoami", headers={"X-Api-Key": "alice-secret"})
    assert r.status == 200, r.body
    assert r.json() == {
        "REMOTE_USER": "alice", "authz": {"AUTHZ_USER": "alice", "AUTHZ_ROLE": "editor"}, "authorization": None}


def test_allowed_request_routes_in_the_app(site: Protected) -> None:
    r = site.http.get("/protected/env?x=1", headers={"X-Api-Key": "bob-secret"})
    assert r.status == 200, r.body
    env = r.json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/protected", "/env", "x=1")


@pytest.mark.parametrize("key", [None, "wrong"])
def test_denied_request_gets_the_authorizers_answer(site: Protected, key) -> None:
    headers = {"X-Api-Key": key} if key else {}
    r = site.http.get("/protected/whoami", headers=headers)
    assert r.status == 401
    assert r.json() == {"error": "missing or unknown API key"}
    assert r.header("WWW-Authenticate") == 'Bearer realm="protected"'


def test_authorizer_sees_the_path(site: Protected) -> None:
    r = site.http.get("/protected/admin/x", headers={"X-Api-Key": "bob-secret"})
    assert r.status == 403
    assert r.json() == {"error": "bob may not see /protected/admin/x"}
    # the same path is fine for another role (then the app's own 404)
    assert site.http.get("/protected/admin/x", headers={"X-Api-Key": "alice-secret"}).status == 404


# Paths Apache serves as /protected/admin/x: it merges slashes, resolves dot
# segments and decodes before routing, but tells the authorizer the raw REQUEST_URI.
DISGUISED_ADMIN_PATHS = [
    "/protected//admin/x", "/protected/./admin/x", "/protected/y/../admin/x", "/protected/%61dmin/x"]


@pytest.mark.parametrize("path", DISGUISED_ADMIN_PATHS)
def test_authorizer_sees_the_path_the_app_serves(site: Protected, path: str) -> None:
    """PATH_INFO of an authorizer is the normalised path, so a prefix check
    cannot be walked around with "//", "/./", "/../" or escapes."""
    r = site.http.get(path, headers={"X-Api-Key": "bob-secret"})
    assert r.status == 403, r.body
    assert r.json() == {"error": "bob may not see /protected/admin/x"}


def test_asked_for_every_request(site: Protected) -> None:
    for n in range(5):
        key = "alice-secret" if n % 2 else "nope"
        r = site.http.get(f"/protected/hello/n{n}", headers={"X-Api-Key": key})
        assert r.status == (200 if n % 2 else 401), (n, r.body)


def test_unprotected_paths_do_not_ask(site: Protected) -> None:
    assert site.http.get("/elsewhere").status == 404  # Apache's, no authorizer involved


# -- the two bugs at the FastCGI level, as mod_authnz_fcgi talks ------------------


def _authorizer_request(address: str, headers: dict, *, send_stdin: bool) -> List[Any]:
    """BEGIN_REQUEST(AUTHORIZER), PARAMS, empty PARAMS -- and, unlike
    mod_authnz_fcgi, an empty STDIN record if ``send_stdin``. Returns the
    events received until END_REQUEST or the peer closing; an authorizer that
    waits for STDIN never answers, and the 10 s socket deadline fails the test."""
    params = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/protected/whoami", "FCGI_APACHE_ROLE": "AUTHENTICATOR"}
    params.update(headers)
    data = p.encode_begin_request(1, p.FCGI_AUTHORIZER) + p.encode_params(
        1, [(name.encode(), value.encode()) for name, value in params.items()])
    if send_stdin:
        data += p.encode_end_of_stream(p.FCGI_STDIN, 1)
    with connect(address, timeout=10) as sock:
        sock.sendall(data)
        try:
            return read_events(sock, is_end)
        except socket.timeout:
            raise AssertionError("no answer from the authorizer within 10 s (waiting for FCGI_STDIN?)") from None


def _stdout(events: List[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, p.Stdout))


def _stdout_records(events: List[Any]) -> List[bytes]:
    """The content of each non-empty STDOUT record, in order."""
    return [e.data for e in events if isinstance(e, p.Stdout) and e.data]


@pytest.fixture(scope="module")
def authorizer_alone(shared_dirs) -> Iterator[str]:
    base = shared_dirs("wfcgi-authorizer-alone-")
    address = f"127.0.0.1:{free_port()}"
    server = WsgiFcgiServer(
        "authorizer:app", ["--bind", address, "--workers", "1", "--allow-root"],
        workdir=base, pythonpath=[EXAMPLES_DIR / "authorizer"],
    )  # fmt: skip
    try:
        server.start()
        yield address
    finally:
        server.stop()


def test_authorizer_answers_once_params_end_with_stdin(authorizer_alone: str) -> None:
    """Control: with an empty STDIN record (not what Apache sends) it answers."""
    out = _stdout(_authorizer_request(authorizer_alone, {"HTTP_X_API_KEY": "alice-secret"}, send_stdin=True))
    assert b"Status: 200 OK\r\nVariable-AUTHZ_USER: alice\r\n" in out


def test_authorizer_answers_without_stdin(authorizer_alone: str) -> None:
    out = _stdout(_authorizer_request(authorizer_alone, {"HTTP_X_API_KEY": "alice-secret"}, send_stdin=False))
    assert b"Status: 200 OK\r\nVariable-AUTHZ_USER: alice\r\n" in out


def test_denial_headers_and_body_in_one_stdout_record(authorizer_alone: str) -> None:
    out = _authorizer_request(authorizer_alone, {}, send_stdin=True)
    first = _stdout_records(out)[0]
    assert first.startswith(b"Status: 401 Unauthorized\r\n")
    assert first.endswith(b'\r\n\r\n{"error": "missing or unknown API key"}')
