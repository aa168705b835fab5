"""Operating it like PHP-FPM: ping and status pages, the slow-request log,
and --reload for development. Real server processes, our client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from wsgi_fcgi.client import Client

from support.waiting import wait_for
from test_server import APP, APPS_DIR

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(wsgi_server: Callable[..., Any]) -> Callable[..., Any]:
    def start(*args: str, app: str = APP, pythonpath: Any = None) -> Any:
        return wsgi_server(app, *args, pythonpath=pythonpath or [APPS_DIR])
    return start


def status(srv: Any, query: str = "json") -> Dict[str, Any]:
    response = Client(srv.address, timeout=10).request(f"/status?{query}")
    assert response.status == 200 and response.header("Content-Type") == "application/json"
    return json.loads(response.body)  # type: ignore[no-any-return]


def test_ping_answers_pong_without_the_app(server: Any) -> None:
    srv = server("--ping-path", "/ping")
    response = Client(srv.address, timeout=10).request("/ping")
    assert (response.status, response.body) == (200, b"pong")  # the app has no /ping: it would say 404
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi.client", srv.address, "/ping", "-b"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "pong"  # a one-line container health check


def test_pages_are_off_by_default(server: Any) -> None:
    srv = server()
    assert Client(srv.address, timeout=10).request("/status").status == 404
    assert Client(srv.address, timeout=10).request("/ping").status == 404


def test_status_json_counts_the_pool_and_its_requests(server: Any) -> None:
    srv = server("--status-path", "/status", "--workers", "2")
    made = 0

    def report() -> Dict[str, Any]:
        nonlocal made
        made += 1
        return status(srv)

    wait_for(lambda: report()["total_workers"] == 2, what="both workers up")
    before = report()["accepted_requests"]
    for _ in range(5):
        Client(srv.address, timeout=10).request("/hello")
        made += 1
    # A request counts once it is done, so the figure may trail the last
    # request or two; it never exceeds what was sent.
    wait_for(lambda: report()["accepted_requests"] >= before + 5, what="the five requests counted")
    last = report()
    assert last["accepted_requests"] <= made
    for key in ("pool", "start_time", "accepted_requests", "active_workers", "idle_workers", "total_workers",
                "max_active_workers", "max_workers_reached", "slow_requests"):
        assert key in last, key
    assert last["pool"] == "static" and last["total_workers"] == 2 and last["max_workers"] == 2
    assert last["active_workers"] >= 1  # at least the one answering
    assert last["active_workers"] + last["idle_workers"] == 2
    assert last["listen_queue"] is None  # a unix socket does not tell


def test_status_full_lists_each_worker(server: Any) -> None:
    srv = server("--status-path", "/status", "--workers", "2")
    wait_for(lambda: status(srv)["total_workers"] == 2, what="both workers up")
    workers = status(srv, "json&full")["workers"]
    assert len(workers) == 2
    for worker in workers:
        assert set(worker) >= {"pid", "state", "requests", "request_uri", "request_duration_ms"}
        assert worker["state"] in ("idle", "busy") and worker["memory_rss_bytes"] > 0
    assert any(w["state"] == "busy" and w["request_uri"] == "/status?json&full" for w in workers)


def test_status_text_and_openmetrics(server: Any) -> None:
    srv = server("--status-path", "/status")
    text = Client(srv.address, timeout=10).request("/status").body.decode()
    assert "accepted requests:" in text and "total workers:" in text
    metrics = Client(srv.address, timeout=10).request("/status?openmetrics")
    assert (metrics.header("Content-Type") or "").startswith("application/openmetrics-text")
    body = metrics.body.decode()
    assert "wsgi_fcgi_accepted_requests_total " in body and body.endswith("# EOF\n")


def test_requests_of_recycled_workers_still_count(server: Any) -> None:
    srv = server("--status-path", "/status", "--workers", "1", "--max-requests", "3")
    for _ in range(7):
        Client(srv.address, timeout=10).request("/hello")
    wait_for(lambda: status(srv)["accepted_requests"] >= 8, what="the total over recycled workers")


def test_slow_request_stack_is_logged_and_the_request_goes_on(server: Any, tmp_path: Path) -> None:
    slow_log = tmp_path / "slow.log"
    srv = server("--status-path", "/status", "--slow-request-timeout", "1", "--slow-log", str(slow_log))
    result: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=Client(srv.address, timeout=20).request("/sleep?s=3")))
    thread.start()
    wait_for(lambda: slow_log.exists() and "bridge_app.py" in slow_log.read_text(), timeout=15,
             what="the stack in the slow log")
    thread.join(20)
    assert result["r"].body == b"slept"  # not stopped
    text = slow_log.read_text()
    assert "[SLOW] GET /sleep?s=3" in text and "time.sleep" in text
    assert status(srv)["slow_requests"] == 1


def test_reload_restarts_workers_when_the_source_changes(server: Any, tmp_path: Path) -> None:
    module = tmp_path / "reloading_app.py"
    module.write_text("def app(environ, start_response):\n"
                      "    start_response('200 OK', [])\n"
                      "    return [b'version 1']\n")
    srv = server("--reload", "--workers", "1", app="reloading_app:app", pythonpath=[tmp_path])
    assert Client(srv.address, timeout=10).request("/").body == b"version 1"
    module.write_text(module.read_text().replace("version 1", "version 2"))
    wait_for(lambda: Client(srv.address, timeout=10).request("/").body == b"version 2", timeout=20,
             what="the changed source served")
    assert "changed, restarting (--reload)" in srv.stderr_text()
