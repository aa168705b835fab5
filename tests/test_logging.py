"""Error and access logs as an operator sees them: the files, the line
format, JSON for log shippers, and reopening after logrotate (USR1)."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from wsgi_fcgi.client import Client

from support.waiting import wait_for
from test_server import APP, APPS_DIR

pytestmark = pytest.mark.timeout(60)

COMBINED = re.compile(
    r'^(?P<h>\S+) - (?P<u>\S+) \[(?P<t>[^\]]+)\] "(?P<r>[^"]*)" (?P<s>\d{3}) (?P<b>\S+) '
    r'"(?P<f>[^"]*)" "(?P<a>[^"]*)" (?P<D>\d+) <(?P<p>\d+)>$')


@pytest.fixture
def server(wsgi_server: Callable[..., Any]) -> Callable[..., Any]:
    def start(*args: str) -> Any:
        return wsgi_server(APP, *args, pythonpath=[APPS_DIR])
    return start


def lines(path: Path) -> list:
    return path.read_text().splitlines() if path.exists() else []


def test_access_log_is_off_by_default(server: Any) -> None:
    srv = server()
    Client(srv.address, timeout=10).request("/hello")
    assert '"GET /hello' not in srv.stderr_text()


def test_access_log_default_format_is_combined_plus_microseconds_and_pid(server: Any, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    srv = server("--access-logfile", str(log), "--workers", "1")
    Client(srv.address, timeout=10).request(
        "/hello?x=1", headers={"Referer": "http://example.com/", "User-Agent": "tester/1.0"})
    Client(srv.address, timeout=10).request("/no-such-page")
    wait_for(lambda: len(lines(log)) == 2, what="two access log lines")
    first, second = (COMBINED.match(line) for line in lines(log))
    assert first and second, lines(log)
    assert first["r"] == "GET /hello?x=1 HTTP/1.1" and first["s"] == "200" and first["b"] == "13"
    assert first["f"] == "http://example.com/" and first["a"] == "tester/1.0" and first["h"] == "127.0.0.1"
    assert int(first["p"]) != srv.pid  # the worker's pid, not the master's
    assert second["s"] == "404"


def test_access_log_json_and_custom_atoms(server: Any, tmp_path: Path) -> None:
    log = tmp_path / "access.json"
    srv = server("--access-logfile", str(log), "--access-logformat", "json")
    Client(srv.address, timeout=10).request("/error-before")
    wait_for(lambda: len(lines(log)) == 1, what="a JSON access line")
    record = json.loads(lines(log)[0])
    assert record["status"] == 500 and record["method"] == "GET" and record["path"] == "/error-before"
    assert isinstance(record["duration_us"], int) and isinstance(record["pid"], int)

    custom = tmp_path / "custom.log"
    srv2 = server("--access-logfile", str(custom), "--access-logformat", "%(s)s %({x-trace}i)s %({content-type}o)s")
    Client(srv2.address, timeout=10).request("/hello", headers={"X-Trace": "abc123"})
    wait_for(lambda: len(lines(custom)) == 1, what="a custom access line")
    assert lines(custom) == ["200 abc123 text/plain; charset=utf-8"]


def test_error_log_file_and_usr1_reopens_both_logs(server: Any, tmp_path: Path) -> None:
    error, access = tmp_path / "error.log", tmp_path / "access.log"
    srv = server("--error-logfile", str(error), "--access-logfile", str(access), "--workers", "1")
    Client(srv.address, timeout=10).request("/hello")
    wait_for(lambda: len(lines(access)) == 1, what="the first access line")
    assert "started worker" in error.read_text()
    # logrotate: move the files away, then USR1 to the master
    os.rename(error, tmp_path / "error.log.1")
    os.rename(access, tmp_path / "access.log.1")
    os.kill(srv.pid, signal.SIGUSR1)
    wait_for(lambda: error.exists() and "reopened log files" in error.read_text(), what="a new error log")

    def served_into_new_file() -> bool:  # the worker reopens between requests
        Client(srv.address, timeout=10).request("/hello")
        return access.exists() and len(lines(access)) >= 1
    wait_for(served_into_new_file, what="access lines in the new file")
    assert len(lines(tmp_path / "access.log.1")) >= 1
    assert srv.stderr_text() == ""  # everything went to the files


def test_unwritable_log_file_is_one_clear_line(tmp_path: Path) -> None:
    import subprocess
    import sys
    from test_server import ROOT_FLAG
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, "--bind", f"unix:{tmp_path}/s.sock",
                             "--access-logfile", str(tmp_path / "missing-dir" / "a.log"), APP],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(APPS_DIR)})
    assert result.returncode == 2
    assert "cannot open a log file" in result.stderr and "Traceback" not in result.stderr
