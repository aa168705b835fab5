"""End to end through a real lighttpd (mod_fastcgi), with the site files of
examples/lighttpd/ that docs/lighttpd.md shows:

- external socket (wsgi_fcgi started by the test): the app at "/app", at "/"
  with ``fix-root-scriptname``, and at "/" without it plus
  ``--script-name /``;
- ``bin-path``: lighttpd starts examples/flask_app/dispatch.fcgi itself
  (``max-procs`` 2, a listening socket on fd 0 each, as www-data, with a
  virtualenv made by the system python), at "/app" and at "/".

What lighttpd does on the way, asserted so that it stays documented: it
decodes ``%2F`` to "/" in PATH_INFO (only REQUEST_URI keeps it); it
buffers request bodies and sends CONTENT_LENGTH; it drops the Proxy header.
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from typing import Iterator

import pytest

from support import FLASK_APP_DIR
from support.sites import (
    BARE_APP,
    SLASH_DECODED,
    Site,
    SiteChecks,
    hosting_home,
    start_app_server,
)
from support.waiting import wait_for
from support.webservers import Lighttpd, processes_running

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(60)]

# name -> (site file in examples/lighttpd/, mount point, wsgi_fcgi arguments or None for bin-path)
SITES = {
    "socket-mounted": ("app-mounted.conf", "/app", ()),
    "socket-root": ("app-root.conf", "", ()),
    "socket-root-nofix": ("app-root-nofix.conf", "", ("--script-name", "/")),
    "spawn-mounted": ("spawn-mounted.conf", "/app", None),
    "spawn-root": ("spawn-root.conf", "", None),
}


def start_lighttpd_site(name: str, base, tls_cert, venv) -> tuple[Lighttpd, Site, ExitStack]:
    template, prefix, args = SITES[name]
    stack = ExitStack()
    try:
        server = None
        if args is None:
            home = hosting_home(base, venv, FLASK_APP_DIR)
            values = {"app_dir": home.fcgi_bin, "run_dir": base / "lighttpd" / "run"}
        else:
            server = start_app_server(stack, base, "--workers", "2", *args)
            values = {"socket": server.socket_path}
        web = Lighttpd(base / "lighttpd", template, values, tls=tls_cert)
        stack.callback(web.stop)
        web.start()
    except BaseException:
        stack.close()
        raise
    return web, Site(name, web, prefix, SLASH_DECODED, BARE_APP, server=server), stack


@pytest.fixture(scope="module", params=sorted(SITES))
def site(request, shared_dirs, tls_cert, hosting_venv) -> Iterator[Site]:
    _, site, stack = start_lighttpd_site(
        request.param, shared_dirs(f"wfcgi-lighttpd-{request.param}-"), tls_cert, hosting_venv
    )
    with stack:
        yield site


class TestLighttpd(SiteChecks):
    def test_spawned_processes(self, site: Site) -> None:
        if site.server is not None:
            return
        # max-procs 2: two dispatch.fcgi processes, started with lighttpd
        marker = str(site.web.root.parent / "home" / "fcgi-bin" / "dispatch.fcgi")
        wait_for(lambda: len(processes_running(marker)) == 2, timeout=10, what="two dispatch.fcgi processes")
        pids = {site.http.get(f"{site.prefix}/env").json()["pid"] for _ in range(4)}
        assert pids <= set(processes_running(marker))


def test_root_without_fix_root_scriptname_needs_script_name(shared_dirs, tls_cert, hosting_venv) -> None:
    """What docs/troubleshooting.md describes: "/" without
    fix-root-scriptname and without --script-name. lighttpd sends the first
    segment as SCRIPT_NAME: /hello/x routes as /x (the app's 404), and links
    get the first segment in front."""
    base = shared_dirs("wfcgi-lighttpd-nofix-noarg-")
    with ExitStack() as stack:
        server = start_app_server(stack, base)
        web = Lighttpd(base / "lighttpd", "app-root-nofix.conf", {"socket": server.socket_path})
        stack.callback(web.stop)
        web.start()
        site = Site("nofix", web, "", SLASH_DECODED, server=server)
        assert site.http.get("/hello/x").status == 404, site.logs()  # routed as /x
        env = site.http.get("/anything/env").json()  # routed as /env
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/anything", "/env")
        assert env["url_for"] == "/anything/"


def test_stop_ends_spawned_processes(shared_dirs, tls_cert, hosting_venv) -> None:
    base = shared_dirs("wfcgi-lighttpd-stop-")
    web, site, stack = start_lighttpd_site("spawn-mounted", base, None, hosting_venv)
    with stack:
        marker = str(base / "home" / "fcgi-bin" / "dispatch.fcgi")
        assert site.http.get("/app/hello/x").status == 200
        assert len(processes_running(marker)) == 2
        # lighttpd sends SIGTERM to its apps and exits at once, without
        # waiting for them: they must go by themselves (the harness's
        # process-group kill in web.stop() would hide a stray one).
        assert web.process is not None
        web.process.send_signal(signal.SIGTERM)
        # (lighttpd 1.4.69 sometimes exits 1 here, after "server stopped by
        # UID = 0": its exit code is not what this test is about.)
        assert web.process.wait(10) is not None, web.error_log_text()
        wait_for(lambda: not processes_running(marker), timeout=10, what="lighttpd's apps to exit on SIGTERM")
