"""End to end through a real nginx: HTTP(S) client -> nginx -> FastCGI ->
wsgi_fcgi -> the example Flask app (examples/flask_app).

nginx runs with the very location blocks the docs recommend
(examples/nginx/*.conf, shown in docs/nginx.md), so a test failure here
means a user copying the docs would hit it:
- app-root.conf / app-mounted.conf over a unix socket (the app at / and at
  /app/), app-keepalive.conf + upstream-keepalive.conf over TCP with
  ``fastcgi_keep_conn on`` (FCGI_KEEP_CONN, connections reused): each runs
  the common checks of support/sites.py over HTTP and HTTPS;
- app-streaming.conf (``fastcgi_request_buffering off``): the app reads the
  body while the client is still sending it;
- app-unbuffered.conf (``fastcgi_buffering off``), and app-root.conf with the
  app's ``X-Accel-Buffering: no``: a generator's first chunk reaches the
  client while the app is still blocked before its second;
- app-pool.conf + upstream-pool.conf: two instances over TCP, one stopped
  mid-run, ``fastcgi_next_upstream`` fails over with no failed request;
- 100 MiB up- and downloads, multipart, chunked bodies.

What nginx does on the way, asserted so that it stays documented:
- it percent-decodes and normalises the path it puts in SCRIPT_NAME /
  PATH_INFO: ``%2F`` becomes ``/`` (the app cannot tell it from a real slash;
  only REQUEST_URI keeps ``%2F``), ``%3F`` becomes a literal ``?``;
- it passes UTF-8 path bytes through undecoded (PEP 3333 latin-1 strings);
- it sends REQUEST_URI and QUERY_STRING raw;
- it buffers the whole request body (to a temp file past 16 KiB) before it
  connects to the app, also for chunked requests, and then sends
  CONTENT_LENGTH together with HTTP_TRANSFER_ENCODING: chunked (unless
  ``fastcgi_request_buffering off``);
- it forwards a client's ``Proxy:`` header as HTTP_PROXY: wsgi_fcgi drops it;
- for a location ending in ``/`` it answers ``GET /app`` itself (301).
"""

from __future__ import annotations

import re
import shlex
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, List

import pytest

from support import FLASK_APP_DIR, REPO_ROOT
from support.gate import FifoGate
from support.httpclient import MiB, HashingPayload, HTTPClient, multipart_file, pattern_chunks, sha256_of
from support.net import free_port, port_of
from support.processes import ManagedProcess, WsgiFcgiServer, can_connect, server_env
from support.sites import BARE_APP, BARE_REDIRECT, SLASH_DECODED, Site, SiteChecks, start_app_server
from support.units import unit_section
from support.waiting import wait_for
from support.webservers import Nginx

pytestmark = [pytest.mark.webserver, pytest.mark.timeout(60)]

# name -> (site template, http-level template, mount point, TCP?, GET /app)
SITES = {
    "root": ("app-root.conf", None, "", False, BARE_APP),
    "mounted": ("app-mounted.conf", None, "/app", False, BARE_REDIRECT),
    "keepalive-tcp": ("app-keepalive.conf", "upstream-keepalive.conf", "", True, BARE_APP),
}


def start_nginx_site(name: str, base: Path, stack: ExitStack, tls=None, **wsgi_options) -> Site:
    template, http_site, prefix, tcp, bare = SITES[name]
    args = ["--workers", "2"]
    if tcp:
        args += ["--bind", f"127.0.0.1:{free_port()}"]
    server = start_app_server(stack, base, *args, **wsgi_options)
    backend = server.address if tcp else f"unix:{server.socket_path}"
    web = Nginx(
        base / "nginx", template, {"socket": server.socket_path, "backend": backend}, http_site=http_site, tls=tls
    )
    stack.callback(web.stop)
    web.start()
    return Site(name, web, prefix, SLASH_DECODED, bare, server=server)


@pytest.fixture(scope="module", params=sorted(SITES))
def site(request, shared_dirs, tls_cert) -> Iterator[Site]:
    with ExitStack() as stack:
        yield start_nginx_site(request.param, shared_dirs(f"wfcgi-nginx-{request.param}-"), stack, tls=tls_cert)


@pytest.fixture(scope="module")
def root_site(shared_dirs) -> Iterator[Site]:
    with ExitStack() as stack:
        yield start_nginx_site("root", shared_dirs("wfcgi-nginx-big-"), stack)


class TestNginx(SiteChecks):
    def test_http_host_keeps_the_port(self, site: Site) -> None:
        # The templates add `fastcgi_param HTTP_HOST $host:$server_port;` after
        # Debian's `HTTP_HOST $host` (which drops the port): nginx sends both
        # pairs, and the later one must win.
        env = site.http.get(f"{site.prefix}/env").json()
        assert env["HTTP_HOST"] == f"127.0.0.1:{site.web.port}"

    def test_sequential_requests_on_one_client_connection(self, site: Site) -> None:
        conn = site.http.connection()
        try:
            for n in range(20):
                r = site.http.get(f"{site.prefix}/hello/n{n}", conn=conn)
                assert (r.status, r.text) == (200, f"Hello, n{n}!")
        finally:
            conn.close()

    def test_multipart_upload(self, site: Site) -> None:
        payload = HashingPayload(3 * MiB + 123, seed=7)
        headers, body = multipart_file("file", "data.bin", payload, payload.size)
        r = site.http.post(f"{site.prefix}/upload", body, headers)
        assert r.status == 200, r.body
        assert r.json() == {"filename": "data.bin", "size": payload.size, "sha256": payload.sha256}

    def test_keepalive_connections_are_reused(self, site: Site) -> None:
        if not site.name.startswith("keepalive"):
            return
        assert site.server is not None
        port = port_of(site.server.address)
        conn = site.http.connection()
        try:
            for n in range(30):
                assert site.http.get(f"/hello/n{n}", conn=conn).status == 200
            # nginx keeps its FastCGI connections open (FCGI_KEEP_CONN): a
            # few are established now, not one per request. (Counted before
            # the client closes: see the test below.)
            assert 1 <= _established_tcp_connections(port) <= 8
        finally:
            conn.close()


def _established_tcp_connections(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server
    side of connections to it), from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def test_keepalive_survives_clients_that_close_after_the_body(shared_dirs) -> None:
    """Most clients close (or reuse) their connection as soon as they have
    Content-Length bytes. If the end records came in a later write than the
    last body bytes, nginx would see the client go while the upstream
    response looked unfinished and close the kept-alive FastCGI connection
    ("client prematurely closed connection, so upstream connection is closed
    too"). wsgi_fcgi sends them with the chunk that completes Content-Length."""
    with ExitStack() as stack:
        site = start_nginx_site("keepalive-tcp", shared_dirs("wfcgi-nginx-keepalive-close-"), stack)
        for n in range(20):
            assert site.http.get(f"/hello/n{n}").status == 200  # a new client connection each time
        assert "upstream connection is closed too" not in site.web.error_log_text()


def test_nginx_harness_serves_static_file(nginx, tmp_path):
    """The nginx harness itself, without wsgi_fcgi: tells a broken harness
    from a broken server."""
    web = nginx(site_text="location / { try_files $uri =404; }")
    (web.root / "html" / "hello.txt").write_bytes(b"static\n")
    http = HTTPClient(web.url)
    assert http.get("/hello.txt").body == b"static\n"
    assert http.get("/missing").status == 404


# -- bodies ------------------------------------------------------------------


def test_chunked_request_body(root_site: Site):
    """nginx de-chunks and sends CONTENT_LENGTH plus HTTP_TRANSFER_ENCODING:
    chunked; the app must still see the whole body."""
    payload = HashingPayload(5 * MiB + 1, seed=3)
    r = root_site.http.post("/echo-sha256", payload)  # iterable, no length: chunked
    assert r.status == 200, r.body
    assert r.json() == {"size": payload.size, "sha256": payload.sha256}


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


def test_request_body_streamed_with_request_buffering_off(shared_dirs):
    """With ``fastcgi_request_buffering off`` nginx connects to the app as
    soon as the request head is in: the app starts (and reads) while the
    client still holds back most of the body."""
    base = shared_dirs("wfcgi-nginx-streaming-")
    started = base / "started"
    with ExitStack() as stack:
        server = start_app_server(
            stack, base, "--workers", "1", app="bridge_app:app", pythonpath=[REPO_ROOT / "tests" / "apps"]
        )
        web = Nginx(base / "nginx", "app-streaming.conf", {"socket": server.socket_path})
        stack.callback(web.stop)
        web.start()
        payload = HashingPayload(4 * MiB, seed=9)
        chunks = iter(payload)
        seen_start: List[bool] = []

        def body() -> Iterator[bytes]:
            yield next(chunks)  # 64 KiB, then wait until the app is running
            try:
                seen_start.append(wait_for(started.exists, timeout=10, what="the app to start"))
            except AssertionError:
                seen_start.append(False)
            yield from chunks

        r = HTTPClient(web.url).post(f"/sha256?started={started}", body(), {"Content-Length": str(payload.size)})
        assert seen_start == [True], "the app did not start before the body was complete"
        assert r.status == 200, r.body
        assert r.text == f"{payload.size} {payload.sha256} {payload.size}"

        # A chunked body (no length) also arrives whole: wsgi_fcgi reads it
        # to the end before calling the app, to set CONTENT_LENGTH.
        payload = HashingPayload(MiB + 1, seed=10)
        r = HTTPClient(web.url).post("/sha256", payload)
        assert r.status == 200, r.body
        assert r.text == f"{payload.size} {payload.sha256} {payload.size}"


# -- streamed responses --------------------------------------------------------


@pytest.mark.parametrize(
    "template, query",
    [("app-root.conf", "&accel=no"), ("app-unbuffered.conf", "")],
    ids=["x-accel-buffering", "fastcgi-buffering-off"],
)
@pytest.mark.timeout(30)
def test_first_chunk_reaches_client_while_app_still_produces(shared_dirs, template, query):
    """nginx buffers FastCGI responses by default; with the app's
    ``X-Accel-Buffering: no`` header, or ``fastcgi_buffering off``, a
    generator's first chunk reaches the client while the app is still blocked
    before its second: the gate opens only once the client has chunk 1."""
    base = shared_dirs("wfcgi-nginx-unbuffered-")
    gate = FifoGate(base / "gate")
    with ExitStack() as stack:
        stack.callback(gate.open)  # a failed test must not leave the app blocked
        server = start_app_server(
            stack, base, "--workers", "1", app="bridge_app:app", pythonpath=[REPO_ROOT / "tests" / "apps"]
        )
        web = Nginx(base / "nginx", template, {"socket": server.socket_path})
        stack.callback(web.stop)
        web.start()
        conn = HTTPClient(web.url, timeout=20).connection()
        stack.callback(conn.close)
        conn.request("GET", f"/stream-gated?fifo={gate.path}{query}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("X-Accel-Buffering") is None  # read by nginx, not passed on
        assert response.readline() == b"chunk 1\n"  # the app is now waiting at the gate
        wait_for(gate.open, timeout=10, what="the app to wait at the gate")
        assert response.read() == b"chunk 2\n"


# -- two instances, one stopped ----------------------------------------------


@pytest.mark.timeout(120)
def test_upstream_failover_when_one_instance_stops(shared_dirs):
    base = shared_dirs("wfcgi-nginx-pool-")
    with ExitStack() as stack:
        one = start_app_server(stack, base / "one", "--workers", "2", "--bind", f"127.0.0.1:{free_port()}")
        two = start_app_server(stack, base / "two", "--workers", "2", "--bind", f"127.0.0.1:{free_port()}")
        web = Nginx(base / "nginx", "app-pool.conf", {"backend1": one.address, "backend2": two.address},
                    http_site="upstream-pool.conf")  # fmt: skip
        stack.callback(web.stop)
        web.start()
        http = HTTPClient(web.url, timeout=30)
        results: List[tuple] = []  # (sent after the stop, status, pid)
        errors: List[BaseException] = []
        done = threading.Event()
        stopped = threading.Event()  # set once instance one has stopped

        def client(max_requests: int, tag: str) -> None:
            try:
                for n in range(max_requests):
                    if done.is_set():
                        return
                    after_stop = stopped.is_set()
                    r = http.get(f"/env?c={tag}&n={n}")
                    results.append((after_stop, r.status, r.json()["pid"] if r.status == 200 else r.body))
            except BaseException as exc:  # noqa: B036 -- reported below
                errors.append(exc)

        # Two clients, at most 2 x 200 requests: 40 before the stop, the stop
        # (graceful, while requests are in flight), then 40 more.
        threads = [threading.Thread(target=client, args=(200, tag)) for tag in "ab"]
        for t in threads:
            t.start()
        clients_busy = lambda: not errors and any(t.is_alive() for t in threads)  # noqa: E731
        wait_for(lambda: len(results) >= 40 or not clients_busy(), timeout=30, what="40 requests before the stop")
        assert one.stop() == 0, one.stderr_text()  # SIGTERM, mid-run
        stopped.set()
        wait_for(lambda: sum(1 for r in results if r[0]) >= 40 or not clients_busy(),
                 timeout=30, what="40 requests after the stop")  # fmt: skip
        done.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        failed = [r for r in results if r[1] != 200]
        assert failed == [], failed
        pids_one = _worker_pids(one)
        assert any(pid in pids_one for _, _, pid in results), "instance one served nothing before the stop"
        after = [pid for after_stop, _, pid in results if after_stop]
        assert len(after) >= 40, len(after)
        assert not any(pid in pids_one for pid in after)  # from then on: only instance two


def _worker_pids(server: WsgiFcgiServer) -> set:
    """Worker PIDs from the master's log ("started worker N")."""
    return {int(m) for m in re.findall(r"started worker (\d+)", server.stderr_text())}


# -- stopping -----------------------------------------------------------------


def test_graceful_stop_after_traffic(wsgi_server, nginx):
    server = wsgi_server("app:app", "--workers", "2", "--log-level", "debug")
    web = nginx("app-root.conf", socket=server.socket_path)
    http = HTTPClient(web.url)
    assert http.get("/hello/x").status == 200
    socket_path = server.socket_path
    assert socket_path is not None and socket_path.exists()
    assert server.stop() == 0, server.stderr_text()
    assert not socket_path.exists()
    assert server.leftover_pids == []
    # nginx now reports the backend as unavailable
    assert http.get("/hello/x").status == 502


# -- the systemd unit of docs/systemd.md ------------------------------------------


def test_systemd_unit_exec_start_serves_behind_nginx(shared_dirs):
    """examples/systemd/flask_app.service as systemd would run it, with its
    install paths mapped to this checkout: ExecStart from WorkingDirectory,
    the socket in RuntimeDirectory; nginx in front; ExecReload's HUP keeps
    serving; KillSignal stops it cleanly within TimeoutStopSec."""
    unit = unit_section(REPO_ROOT / "examples" / "systemd" / "flask_app.service", "Service")
    base = shared_dirs("wfcgi-systemd-")
    runtime_dir = base / "run" / unit["RuntimeDirectory"][0]
    runtime_dir.mkdir(parents=True)
    mapping = {
        "/srv/flask_app/venv/bin/python": sys.executable,
        f"/run/{unit['RuntimeDirectory'][0]}": str(runtime_dir),
    }
    argv = shlex.split(unit["ExecStart"][0])
    argv = [mapping.get(a, a) for a in argv]
    argv = [a.replace(f"/run/{unit['RuntimeDirectory'][0]}/", f"{runtime_dir}/") for a in argv]
    assert argv[0] == sys.executable, "ExecStart no longer starts with the venv's python"
    assert unit["WorkingDirectory"] == ["/srv/flask_app/app"]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    socket_path = runtime_dir / "app.sock"
    assert f"unix:{socket_path}" in argv
    service = ManagedProcess(
        [*argv, "--allow-root"], name="flask_app.service", log_path=base / "service.log",
        cwd=FLASK_APP_DIR, env=server_env(),
    )  # fmt: skip
    with ExitStack() as stack:
        stack.callback(service.stop)
        service.start()
        service.wait_until(lambda: can_connect(f"unix:{socket_path}"), timeout=20, what="listening")
        web = Nginx(base / "nginx", "app-root.conf", {"socket": socket_path})
        stack.callback(web.stop)
        web.start()
        http = HTTPClient(web.url)
        assert http.get("/hello/systemd").text == "Hello, systemd!"
        started = re.compile(r"started worker (\d+)")
        wait_for(lambda: len(started.findall(service.output_text())) == 4, timeout=20, what="4 workers")
        old = set(started.findall(service.output_text()))
        service.send_signal(signal.SIGHUP)  # systemctl reload
        wait_for(lambda: len(started.findall(service.output_text())) >= 8, timeout=20, what="new workers after HUP")
        new = set(started.findall(service.output_text())) - old
        wait_for(lambda: str(http.get("/env").json()["pid"]) in new, timeout=20, what="a new worker answering")
        timeout = float(unit["TimeoutStopSec"][0])
        assert service.stop(signal.SIGTERM, timeout) == 0, service.output_text()  # systemctl stop
        assert service.leftover_pids == []
        assert not socket_path.exists()
