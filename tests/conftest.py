"""Shared fixtures: the wsgi_fcgi server and web servers as subprocesses.

- ``wsgi_server(app="app:app", *args, **options)`` starts
  ``python -m wsgi_fcgi ARGS APP`` (default: ``--bind unix:<tmp>/wsgi_fcgi.sock``,
  the example Flask app importable as ``app``) and returns a
  ``support.processes.WsgiFcgiServer`` once its sockets accept connections:
  ``.address``, ``.addresses``, ``.socket_path``, ``.pid``, ``.stderr_text()``,
  ``.stop(sig, timeout)``, ``.returncode``, ``.leftover_pids``.
- ``nginx(site="app-root.conf", socket=...)`` starts nginx with a template of
  ``examples/nginx/`` (``http_site=`` adds an http-level one, such as an
  ``upstream``) and returns a ``support.webservers.Nginx``: ``.url``,
  ``.port``, ``.pid``, ``.error_log_text()``, ``.stop()``.
- ``tls_cert`` (session): a throwaway self-signed ``TLSCert`` for the HTTPS
  listeners.
- ``shared_dirs`` (session): ``shared_dirs("prefix-")`` makes a temp dir the
  web server user (www-data) can enter, removed at the end of the session.
- ``hosting_venv`` (session): a virtualenv made with the system python, with
  Flask (and Django when installed) and this checkout's wsgi_fcgi, for apps
  that Apache or lighttpd start as www-data.

Module-scoped ``site`` fixtures (``support.sites.Site``) share one web server
across a module's tests; when such a test fails, the site's logs are added
to its report.

Everything is stopped by PID at teardown, and a failed test gets the
server's stderr and the web server's logs in its report.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from support import held
from support.processes import WsgiFcgiServer, short_socket_dir
from support.webservers import Nginx, TLSCert, hosting_venv as make_hosting_venv, shared_temp_dir


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Keep each phase's report on the item, so fixtures can tell at teardown
    # whether the test failed (and then attach logs).
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


def _stop_all(request: pytest.FixtureRequest, servers: List[Any], logs: Callable[[Any], Tuple[str, str]]) -> None:
    """Stop every server a fixture started, newest first; a failed test gets their logs."""
    failed = _failed(request)
    for server in reversed(servers):
        server.stop()
        if failed:
            request.node.add_report_section("teardown", *logs(server))


@pytest.fixture
def wsgi_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., WsgiFcgiServer]]:
    servers: List[WsgiFcgiServer] = []
    cleanup: List[Path] = []

    def start(app: str = "app:app", *args: str, **options: Any) -> WsgiFcgiServer:
        workdir = tmp_path / f"wsgi_fcgi-{len(servers)}"
        workdir.mkdir()
        if "socket_dir" not in options:
            options["socket_dir"] = short_socket_dir(workdir)
            if options["socket_dir"] != workdir:
                cleanup.append(options["socket_dir"])
        server = WsgiFcgiServer(app, args, workdir=workdir, **options)
        servers.append(server)
        server.start()
        return server

    yield start

    _stop_all(request, servers, lambda s: (f"wsgi_fcgi pid {s.proc.pid if s.proc else '-'} stderr",
                                           s.stderr_text()))
    for path in cleanup:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nginx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    servers: List[Nginx] = []

    def start(site: str = "app-root.conf", *, site_text: Any = None, http_site: Any = None, **values: Any) -> Nginx:
        server = Nginx(tmp_path / f"nginx-{len(servers)}", site, values, site_text=site_text, http_site=http_site)
        servers.append(server)
        server.start()
        return server

    yield start

    _stop_all(request, servers, lambda s: (f"nginx ({s.site}) logs", s.error_log_text()))


@pytest.fixture(scope="session")
def shared_dirs() -> Iterator[Callable[[str], Path]]:
    made: List[Path] = []

    def make(prefix: str) -> Path:
        path = shared_temp_dir(prefix)
        made.append(path)
        return path

    yield make
    if os.environ.get("WSGI_FCGI_KEEP_TMP"):
        print(f"kept: {' '.join(map(str, made))}")
        return
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_cert(shared_dirs: Callable[[str], Path]) -> TLSCert:
    return TLSCert.create(shared_dirs("wfcgi-tls-"))


@pytest.fixture(scope="session")
def hosting_venv(shared_dirs: Callable[[str], Path]) -> Path:
    dists = ["flask"] + (["django"] if importlib.util.find_spec("django") else [])
    return make_hosting_venv(shared_dirs("wfcgi-venv-") / "venv", dists)


@pytest.fixture(autouse=True)
def _site_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "site" in request.fixturenames and _failed(request):
        try:
            site = request.getfixturevalue("site")
        except Exception:  # the fixture itself failed: its error says why
            return
        logs = getattr(site, "logs", None)
        if callable(logs):
            request.node.add_report_section("teardown", "site logs", logs())


@pytest.fixture
def threads_server(wsgi_server: Callable[..., WsgiFcgiServer], tmp_path: Path) -> Callable[..., held.ThreadsServer]:
    def start(*args: str, barrier: int = 2, barrier_timeout: float = 30.0, version: str = "1") -> held.ThreadsServer:
        app_dir = tmp_path / f"app-{len(list(tmp_path.glob('app-*')))}"
        app_dir.mkdir()
        (app_dir / "version").write_text(version)
        env = {"THREADS_APP_DIR": str(app_dir), "THREADS_BARRIER": str(barrier),
               "THREADS_BARRIER_TIMEOUT": str(barrier_timeout)}
        return held.ThreadsServer(wsgi_server(held.APP, *args, pythonpath=[held.APPS_DIR], env=env), app_dir)
    return start
