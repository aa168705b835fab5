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
"""

from __future__ import annotations

import pwd
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, Optional

import pytest

from support import EXAMPLES_DIR, FLASK_APP_DIR
from support.httpclient import HashingPayload
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
