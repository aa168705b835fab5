"""End to end through a real Apache httpd with mod_fcgid: Apache starts the
example app's dispatch.fcgi itself (a listening socket on fd 0, as www-data,
with only PATH in its environment), as on shared hosting.

Layouts (site files of examples/apache/, shown in docs/apache-mod_fcgid.md):
- ``htaccess``: the user's ~/public_html with examples/apache/htaccess
  (AddHandler fcgid-script .fcgi + a RewriteRule to dispatch.fcgi) and
  dispatch.fcgi from examples/flask_app with VIRTUALENV pointing at a
  virtualenv made with the system python, the app's code outside the
  document root. Apache reports SCRIPT_NAME=/dispatch.fcgi; wsgi_fcgi sees
  through the rewrite, so the app is at "/".
- ``scriptalias``: ScriptAlias /app .../dispatch.fcgi (server config).

What Apache/mod_fcgid does, asserted so that it stays documented: ``%2F`` is
Apache's own 404; request bodies are buffered and limited to
FcgidMaxRequestLen (131072 bytes by default: larger ones get a 500 from
Apache and never reach the app); the app's stderr (tracebacks) goes to
Apache's error log; FcgidMaxRequestsPerProcess recycles processes without a
failed request; stopping or gracefully restarting Apache leaves no app
process behind.

mod_fcgid's own authorizer roles (``fcgid-authorizer.conf``, shown in
docs/apache-authorizer.md): FcgidAccessChecker, FcgidAuthenticator and
FcgidAuthorizer pointing at examples/fcgid_authorizer/dispatch.fcgi, which
mod_fcgid spawns like the app; each decision, allowed and denied, with what
Apache logs and sends to the client. The Authorization header reaches the
app only with ``CGIPassAuth On`` or ``FcgidPassHeader Authorization``.

A request longer than every timeout (``fcgid-timeouts.conf``, the app
blocked at a FifoGate): whichever of FcgidIOTimeout and FcgidBusyTimeout is
shorter fires, with its 500 and log lines; wsgi_fcgi's --timeout never does
(no master on fd 0).
"""

from __future__ import annotations

import base64
import pwd
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import pytest

from support import EXAMPLES_DIR, FLASK_APP_DIR, REPO_ROOT
from support.gate import FifoGate
from support.httpclient import HashingPayload, HTTPClient, HTTPResult
from support.sites import BARE_APP, SLASH_404, HostingHome, Site, SiteChecks, hosting_home
from support.waiting import wait_for
from support.webservers import UNPRIVILEGED_USER, Apache, TLSCert, processes_running

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(90)]

# mod_fcgid's default FcgidMaxRequestLen
DEFAULT_MAX_REQUEST_LEN = 131072

# name -> (site file in examples/apache/, mount point)
LAYOUTS = {"htaccess": ("fcgid-htaccess.conf", ""), "scriptalias": ("fcgid-scriptalias.conf", "/app")}


def start_fcgid_site(
    base: Path, venv: Path, layout: str, *, max_requests: int = 1000, tls: Optional[TLSCert] = None,
    app_example: Path = FLASK_APP_DIR,
) -> tuple[Apache, HostingHome]:
    template, _ = LAYOUTS[layout]
    home = hosting_home(base, venv, app_example, htaccess=EXAMPLES_DIR / "apache" / "htaccess")
    values = {"docroot": home.public_html, "app_dir": home.fcgi_bin, "max_requests": max_requests}
    web = Apache(base / "apache", template, values, tls=tls)
    return web, home


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def site(request, shared_dirs, tls_cert, hosting_venv) -> Iterator[Site]:
    layout = request.param
    web, _ = start_fcgid_site(shared_dirs(f"wfcgi-fcgid-{layout}-"), hosting_venv, layout, tls=tls_cert)
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        yield Site(layout, web, LAYOUTS[layout][1], SLASH_404, BARE_APP, max_body=DEFAULT_MAX_REQUEST_LEN)


class TestApacheFcgid(SiteChecks):
    def test_spawned_by_apache_as_www_data(self, site: Site) -> None:
        pid = site.http.get(f"{site.prefix}/env").json()["pid"]
        with open(f"/proc/{pid}/status") as f:
            uid = int(next(line.split()[1] for line in f if line.startswith("Uid:")))
        assert uid == pwd.getpwnam(UNPRIVILEGED_USER).pw_uid  # Apache's User, never root
        assert pid in processes_running("dispatch.fcgi")

    def test_app_error_goes_to_apache_error_log(self, site: Site) -> None:
        assert site.http.get(f"{site.prefix}/error").status == 500
        wait_for(
            lambda: "RuntimeError: example error from /error" in site.web.error_log_text(),
            timeout=10,
            what="the traceback in Apache's error log",
        )

    def test_body_limit_is_fcgid_max_request_len(self, site: Site) -> None:
        assert site.max_body is not None
        ok = HashingPayload(site.max_body, seed=8)
        r = site.http.post(f"{site.prefix}/echo-sha256", ok, {"Content-Length": str(ok.size)})
        assert r.status == 200, r.body
        assert r.json() == {"size": ok.size, "sha256": ok.sha256}
        too_big = b"x" * (site.max_body + 1)
        r = site.http.post(f"{site.prefix}/echo-sha256", too_big)
        assert r.status == 500  # Apache's, the app never sees it
        assert b"sha256" not in r.body
        assert "exceeds MaxRequestLen" in site.web.error_log_text()


def test_max_requests_per_process_recycles_without_a_failed_request(shared_dirs, hosting_venv) -> None:
    web, _ = start_fcgid_site(shared_dirs("wfcgi-fcgid-recycle-"), hosting_venv, "htaccess", max_requests=4)
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        site = Site("recycle", web, "", SLASH_404)
        pids = []
        for n in range(14):
            r = site.http.get(f"/env?n={n}")
            assert r.status == 200, (n, r.body, web.error_log_text())
            pids.append(r.json()["pid"])
        # at most 4 requests per process, so at least 4 processes served them
        assert len(set(pids)) >= 4, pids
        assert max(pids.count(p) for p in set(pids)) <= 4, pids


def test_graceful_restart_and_stop_leave_no_app_process(shared_dirs, hosting_venv) -> None:
    web, home = start_fcgid_site(shared_dirs("wfcgi-fcgid-lifecycle-"), hosting_venv, "htaccess")
    marker = str(home.public_html / "dispatch.fcgi")
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        site = Site("lifecycle", web, "", SLASH_404)
        first = site.http.get("/env").json()["pid"]
        assert processes_running(marker) == [first]

        web.graceful_restart()  # apachectl -k graceful
        # mod_fcgid stops its processes on a restart (TERM, KILL after ~8 s)
        wait_for(lambda: first not in processes_running(marker), timeout=15, what="the old app process to exit")
        wait_for(lambda: _get_ok(site), timeout=15, what="Apache to answer again after the restart")
        second = site.http.get("/env").json()["pid"]
        assert second != first
        assert processes_running(marker) == [second]

        assert web.stop() == 0, web.error_log_text()  # apachectl -k stop
        assert web.process is not None and web.process.leftover_pids == []
        assert processes_running(marker) == []


def _get_ok(site: Site) -> bool:
    try:
        return site.http.get("/hello/again").status == 200
    except OSError:
        return False


def test_deploy_takes_effect_when_dispatch_fcgi_is_replaced(shared_dirs, hosting_venv) -> None:
    """docs/apache-mod_fcgid.md's deploy step. mod_fcgid keeps the app's
    process running, so new code is not loaded by itself (nor by touching
    dispatch.fcgi); a new dispatch.fcgi file (new inode: cp + mv) makes
    mod_fcgid start a new process for the next request."""
    web, home = start_fcgid_site(shared_dirs("wfcgi-fcgid-deploy-"), hosting_venv, "htaccess")
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        site = Site("deploy", web, "", SLASH_404)
        assert site.http.get("/hello/x").text == "Hello, x!"
        app_py = home.app_dir / "app.py"
        code = app_py.read_text()
        assert code.count('f"Hello, {name}!"') == 1
        app_py.write_text(code.replace('f"Hello, {name}!"', 'f"Hi, {name}!"'))
        dispatch = home.public_html / "dispatch.fcgi"
        dispatch.touch()
        assert site.http.get("/hello/x").text == "Hello, x!"  # still the old process
        # the deploy step: cp dispatch.fcgi dispatch.fcgi.new && mv dispatch.fcgi.new dispatch.fcgi
        new = dispatch.with_name("dispatch.fcgi.new")
        shutil.copy2(dispatch, new)
        new.replace(dispatch)
        assert site.http.get("/hello/x").text == "Hi, x!"


def test_touching_dispatch_fcgi_restarts_the_app_with_reload_on_touch(shared_dirs, hosting_venv) -> None:
    """Shared hosting, where the user cannot signal what Apache started: with
    ``serve(app, reload_on_touch=__file__)`` in dispatch.fcgi (the guide's
    step), ``touch dispatch.fcgi`` makes the process exit between requests and
    mod_fcgid start a fresh one, with the new code; no request fails."""
    web, home = start_fcgid_site(shared_dirs("wfcgi-fcgid-touch-"), hosting_venv, "htaccess")
    dispatch = home.public_html / "dispatch.fcgi"
    script = dispatch.read_text()
    assert script.count("\nserve(app)\n") == 1
    dispatch.write_text(script.replace("\nserve(app)\n", "\nserve(app, reload_on_touch=__file__)\n"))
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        site = Site("touch", web, "", SLASH_404)
        old_pid = site.http.get("/env").json()["pid"]
        app_py = home.app_dir / "app.py"
        app_py.write_text(app_py.read_text().replace('f"Hello, {name}!"', 'f"Hi, {name}!"'))
        dispatch.touch()
        wait_for(lambda: old_pid not in processes_running("dispatch.fcgi"), 20, "the touched process gone")
        answers = [site.http.get("/hello/x") for _ in range(3)]
        assert [(r.status, r.text) for r in answers] == [(200, "Hi, x!")] * 3
        assert "(--reload-on-touch)" in web.error_log_text()


def test_front_controller_rewrite_without_path(shared_dirs, hosting_venv) -> None:
    """The front-controller rule of many PHP guides, ``RewriteRule ^
    dispatch.fcgi [QSA,L]`` (no ``/$1``): Apache then sends
    SCRIPT_NAME=/dispatch.fcgi, no PATH_INFO, REQUEST_URI=/env/x?q=1, and
    the app must get SCRIPT_NAME "" and PATH_INFO /env/x (it once got the
    whole path as SCRIPT_NAME, and Flask redirected every URL to itself
    plus "/")."""
    web, home = start_fcgid_site(shared_dirs("wfcgi-fcgid-frontcontroller-"), hosting_venv, "htaccess")
    htaccess = (EXAMPLES_DIR / "apache" / "htaccess").read_text()
    rule = "RewriteRule ^(.*)$ dispatch.fcgi/$1 [B=?%,QSA,L]"
    assert htaccess.count(rule) == 1
    (home.public_html / ".htaccess").write_text(htaccess.replace(rule, "RewriteRule ^ dispatch.fcgi [QSA,L]"))
    with ExitStack() as stack:
        stack.callback(web.stop)
        web.start()
        r = Site("front-controller", web, "", SLASH_404).http.get("/env/x?q=1")
        assert r.status == 200, r.body
        assert (r.json()["SCRIPT_NAME"], r.json()["PATH_INFO"]) == ("", "/env/x")


# -- mod_fcgid's own authorizer roles (examples/apache/fcgid-authorizer.conf) -----


@dataclass
class FcgidProtected:
    """The example Flask app at /private, behind the three authorizer roles
    of examples/fcgid_authorizer, both started by Apache's mod_fcgid."""

    web: Apache

    def get(self, path: str, user: str = "", password: str = "") -> HTTPResult:
        headers = {"Authorization": basic_auth(user, password)} if user else {}
        return HTTPClient(self.web.url, timeout=30).get(path, headers=headers)

    def wait_for_log(self, line: str) -> None:
        try:
            wait_for(lambda: line in self.web.error_log_text(), timeout=10, what=f"{line!r} in Apache's error log")
        except AssertionError as exc:  # the module-scoped server's log is in no report otherwise
            raise AssertionError(f"{exc}\n--- Apache's logs ---\n{self.web.error_log_text()}") from None


# How mod_fcgid logs a role's refusal: "<what> failed, reason: script returned status <status>"
REFUSED = "failed, reason: script returned status"


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def fcgid_protected(shared_dirs, hosting_venv) -> Iterator[FcgidProtected]:
    base = shared_dirs("wfcgi-fcgid-authorizer-")
    app = hosting_home(base / "app", hosting_venv, FLASK_APP_DIR)
    authorizer = hosting_home(base / "authorizer", hosting_venv, EXAMPLES_DIR / "fcgid_authorizer")
    values = {"app_dir": app.fcgi_bin, "auth_dir": authorizer.fcgi_bin}
    web = Apache(base / "apache", "fcgid-authorizer.conf", values)
    try:
        web.start()
        yield FcgidProtected(web)
    finally:
        web.stop()


def test_fcgid_authorizer_roles_allow_and_pass_variables(fcgid_protected: FcgidProtected) -> None:
    r = fcgid_protected.get("/private/whoami", "alice", "alice-password")
    assert r.status == 200, (r.body, fcgid_protected.web.error_log_text())
    # Each role's Variable-* header became a CGI variable of the app behind.
    authz = {"AUTHZ_ACCESS": "open", "AUTHZ_ROLE": "editor", "AUTHZ_SCOPE": "write"}
    # The credentials themselves stay with Apache (no CGIPassAuth here).
    assert r.json() == {"REMOTE_USER": "alice", "authz": authz, "authorization": None}
    # mod_fcgid also copies them into the response; `Header always unset` removes them.
    assert [name for name, _ in r.headers if name.lower().startswith("variable-")] == []
    # All three were asked, in this order, each told its FCGI_APACHE_ROLE.
    for role, user in (("ACCESS_CHECKER", "-"), ("AUTHENTICATOR", "alice"), ("AUTHORIZER", "alice")):
        fcgid_protected.wait_for_log(f"authorizer: {role} user={user} /private/whoami: 200 OK")


def test_fcgid_access_checker_denies_before_sign_in(fcgid_protected: FcgidProtected) -> None:
    r = fcgid_protected.get("/private/closed/a", "alice", "alice-password")
    assert r.status == 401  # Apache's own page: the checker's 403 is not passed on
    assert b"Unauthorized" in r.body
    assert r.header("WWW-Authenticate") is None  # no password would help
    fcgid_protected.wait_for_log("authorizer: ACCESS_CHECKER user=- /private/closed/a: 403 Forbidden")
    fcgid_protected.wait_for_log(f"Access check to access /private/closed/a {REFUSED} 403")
    # The app writes its lines before it answers: by the 401, any would be there.
    assert "AUTHENTICATOR user=alice /private/closed/a" not in fcgid_protected.web.error_log_text()


def test_fcgid_authenticator_gets_remote_user_and_password(fcgid_protected: FcgidProtected) -> None:
    r = fcgid_protected.get("/private/hello/wrong-password", "alice", "wrong")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="private"'  # the browser asks again
    # The earlier roles' Variable-* headers reach the client with a denial:
    # `Header always unset` does not cover it. Keep secrets out of them.
    assert r.header("Variable-AUTHZ_ACCESS") == "open"
    fcgid_protected.wait_for_log("authorizer: AUTHENTICATOR user=alice /private/hello/wrong-password: 401 Unauthorized")
    fcgid_protected.wait_for_log(f"Authentication of user alice to access /private/hello/wrong-password {REFUSED} 401")
    # The right password for the same user: REMOTE_PASSWD is what was sent.
    assert fcgid_protected.get("/private/hello/x", "alice", "alice-password").text == "Hello, x!"


def test_fcgid_authenticator_not_asked_without_credentials(fcgid_protected: FcgidProtected) -> None:
    r = fcgid_protected.get("/private/hello/anonymous")
    assert r.status == 401  # mod_auth_basic's challenge, before mod_fcgid is involved
    assert r.header("WWW-Authenticate") == 'Basic realm="private"'
    fcgid_protected.wait_for_log("authorizer: ACCESS_CHECKER user=- /private/hello/anonymous: 200 OK")
    # The app writes its lines before it answers: by the 401, any would be there.
    assert "AUTHENTICATOR user=- /private/hello/anonymous" not in fcgid_protected.web.error_log_text()


# Requests Apache serves as /private/closed/a and /private/admin/x (%63 is
# "c", %61 is "a"), with the role that must refuse each and the line it logs.
DISGUISED = [
    *[(f"/private{d}closed/a", "alice", "ACCESS_CHECKER user=- /private/closed/a") for d in ("//", "/./", "/y/../")],
    ("/private/%63losed/a", "alice", "ACCESS_CHECKER user=- /private/closed/a"),
    *[(f"/private{d}admin/x", "bob", "AUTHORIZER user=bob /private/admin/x") for d in ("//", "/./", "/y/../")],
    ("/private/%61dmin/x", "bob", "AUTHORIZER user=bob /private/admin/x"),
]


@pytest.mark.parametrize("path, user, refusal", DISGUISED)
def test_fcgid_roles_see_the_path_apache_serves(fcgid_protected: FcgidProtected, path, user, refusal) -> None:
    """Apache serves "/private//closed/a" as /private/closed/a (the app would
    answer it: a 404 here), but tells the roles only the raw REQUEST_URI:
    their PATH_INFO must be the normalised path, or a prefix check is walked
    around."""
    line = f"authorizer: {refusal}: 403 Forbidden"
    before = fcgid_protected.web.error_log_text().count(line)
    assert fcgid_protected.get(path, user, f"{user}-password").status == 401
    wait_for(lambda: fcgid_protected.web.error_log_text().count(line) > before, timeout=10, what=f"{line!r}")


def test_fcgid_authorizer_sees_user_and_path(fcgid_protected: FcgidProtected) -> None:
    r = fcgid_protected.get("/private/admin/b", "bob", "bob-password")
    assert r.status == 401  # Apache's, for the authorizer's 403
    assert r.header("WWW-Authenticate") == 'Basic realm="private"'
    fcgid_protected.wait_for_log("authorizer: AUTHORIZER user=bob /private/admin/b: 403 Forbidden")
    fcgid_protected.wait_for_log(f"Authorization of user bob to access /private/admin/b {REFUSED} 403")
    # an editor may: the app's own 404 (Werkzeug's text)
    r = fcgid_protected.get("/private/admin/b", "alice", "alice-password")
    assert r.status == 404 and b"not found on the server" in r.body


# -- the Authorization header (CGIPassAuth, FcgidPassHeader) ----------------------

# Apache sends the Basic user only to show it arrived; Bearer: just the scheme.
CREDENTIALS = [
    (basic_auth("alice", "secret"), {"type": "basic", "username": "alice"}),
    ("Bearer some-token", {"type": "bearer", "username": None}),
]


@pytest.mark.parametrize(
    "template, passed",
    [("fcgid-scriptalias.conf", False), ("fcgid-passauth.conf", True), ("fcgid-passheader.conf", True)],
)
def test_authorization_header_reaches_app_only_when_passed(shared_dirs, hosting_venv, template, passed) -> None:
    """Apache keeps the Authorization header from FastCGI apps by default;
    CGIPassAuth On and FcgidPassHeader Authorization pass it on."""
    base = shared_dirs("wfcgi-fcgid-passauth-")
    home = hosting_home(base, hosting_venv, FLASK_APP_DIR)
    web = Apache(base / "apache", template, {"app_dir": home.fcgi_bin, "max_requests": 1000})
    try:
        web.start()
        for header, seen in CREDENTIALS:
            r = HTTPClient(web.url).get("/app/whoami", headers={"Authorization": header})
            assert r.status == 200, (r.body, web.error_log_text())
            assert r.json()["authorization"] == (seen if passed else None), header
    finally:
        web.stop()


def test_cgipassauth_in_htaccess(shared_dirs, hosting_venv) -> None:
    """Shared hosting: the user adds ``CGIPassAuth On`` to their .htaccess
    (the provider's AllowOverride has AuthConfig; without it Apache answers
    500, "CGIPassAuth not allowed here", observed by hand). Apache reads
    .htaccess on every request, so one server shows before and after."""
    web, home = start_fcgid_site(shared_dirs("wfcgi-fcgid-htaccess-passauth-"), hosting_venv, "htaccess")
    try:
        web.start()
        http = HTTPClient(web.url)
        bearer = {"Authorization": "Bearer some-token"}
        assert http.get("/whoami", headers=bearer).json()["authorization"] is None
        htaccess = home.public_html / ".htaccess"
        htaccess.write_text(htaccess.read_text() + "CGIPassAuth On\n")
        r = http.get("/whoami", headers=bearer)
        assert r.status == 200, (r.body, web.error_log_text())
        assert r.json()["authorization"] == {"type": "bearer", "username": None}
    finally:
        web.stop()


# -- a request longer than every timeout (FcgidIOTimeout, FcgidBusyTimeout, --timeout) --


def start_timeouts_site(base: Path, venv: Path, **timeouts: int) -> Apache:
    """fcgid-timeouts.conf with tests/apps/bridge_app.py as the app (its
    ``/gated`` route answers only once the test opens a FifoGate), and
    dispatch.fcgi calling ``serve(app, timeout=1, access_logfile="-")``: the
    access log shows the options were taken."""
    home = hosting_home(base, venv, FLASK_APP_DIR)
    shutil.copyfile(REPO_ROOT / "tests" / "apps" / "bridge_app.py", home.app_dir / "app.py")  # dispatch imports app
    dispatch = home.fcgi_bin / "dispatch.fcgi"
    text = dispatch.read_text()
    assert text.count("\nserve(app)\n") == 1, f"{dispatch} no longer ends with serve(app)"
    dispatch.write_text(text.replace("\nserve(app)\n", '\nserve(app, timeout=1, access_logfile="-")\n'))
    values = {"app_dir": home.fcgi_bin, **timeouts}
    return Apache(base / "apache", "fcgid-timeouts.conf", values)


def _pid(web: Apache) -> int:
    r = HTTPClient(web.url, timeout=30).get("/app/pid")
    assert r.status == 200, (r.body, web.error_log_text())
    return int(r.text)


@contextmanager
def gated_timeouts_site(shared_dirs: Any, venv: Path, prefix: str,
                        **timeouts: int) -> Iterator[Tuple[Apache, FifoGate, int]]:
    """A started timeouts site, its gate and the pid of the process serving it;
    at the end the gate opens (the held process finishes, so Apache stops at once)."""
    base = shared_dirs(prefix)
    gate = FifoGate(base / "gate")
    web = start_timeouts_site(base, venv, **timeouts)
    try:
        web.start()
        yield web, gate, _pid(web)
    finally:
        gate.open()
        web.stop()


@pytest.mark.timeout(30)
def test_fcgid_io_timeout_fires_first_and_the_process_stays_busy(shared_dirs, hosting_venv) -> None:
    """FcgidIOTimeout 3 with FcgidBusyTimeout at its default: Apache gives
    up on the request (500), wsgi_fcgi's --timeout 1 never fires (no master
    in fd-0 mode), and the app's process is still busy with it: the next
    request gets a new process."""
    with gated_timeouts_site(shared_dirs, hosting_venv, "wfcgi-fcgid-iotimeout-", io_timeout=3, busy_timeout=300,
                             busy_scan_interval=120) as (web, gate, first):
        wait_for(lambda: '"GET /app/pid HTTP/1.1" 200' in web.error_log_text(), timeout=10,
                 what="wsgi_fcgi's access log line: it got the options")  # fmt: skip
        r = HTTPClient(web.url, timeout=30).get(f"/app/gated?fifo={gate.path}")
        assert r.status == 500  # Apache's page
        assert b"Internal Server Error" in r.body
        log = web.error_log_text()
        assert "mod_fcgid: read data timeout in 3 seconds" in log
        assert "killed by the timeout" not in log  # --timeout 1 would have come first
        assert first in processes_running("dispatch.fcgi")  # still on the request
        assert _pid(web) != first


@pytest.mark.timeout(30)
def test_fcgid_busy_timeout_kills_the_process_before_io_timeout(shared_dirs, hosting_venv) -> None:
    """FcgidBusyTimeout 2 (scanned every second) under FcgidIOTimeout 20:
    mod_fcgid kills the busy process; the client gets a 500 and the next
    request a new process."""
    with gated_timeouts_site(shared_dirs, hosting_venv, "wfcgi-fcgid-busytimeout-", io_timeout=20, busy_timeout=2,
                             busy_scan_interval=1) as (web, gate, first):
        r = HTTPClient(web.url, timeout=30).get(f"/app/gated?fifo={gate.path}")
        assert r.status == 500
        log = web.error_log_text()
        assert "mod_fcgid: error reading data, FastCGI server closed connection" in log
        assert "mod_fcgid: /app/gated took longer than busy timeout (2 secs)" in log
        assert "read data timeout" not in log and "killed by the timeout" not in log
        wait_for(lambda: first not in processes_running("dispatch.fcgi"), timeout=10, what="the busy process gone")
        assert _pid(web) != first
