"""--status-bind: the master answers ping and status on a FastCGI socket of its
own (PHP-FPM's pm.status_listen), so a monitor gets an answer while every
worker is busy. Real server processes; requests are held in the app by the
threads fixture app's marker and release files, never by a clock."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from wsgi_fcgi import protocol as p
from wsgi_fcgi.client import Client

from support.fastcgi import raw_connect, read_events, request_bytes, server_closed
from support.net import free_port
from support.processes import can_connect, server_env
from support.waiting import wait_for
from test_hardening import APP, APPS_DIR, ROOT_FLAG
from support.held import Background, ThreadsServer

pytestmark = pytest.mark.timeout(60)


def status_socket(tmp_path: Path) -> str:
    return f"unix:{tmp_path / 'status.sock'}"


def started(threads_server: Callable[..., ThreadsServer], status_at: str, *args: str) -> ThreadsServer:
    """The server, once its status socket takes connections too (it is bound just after --bind's)."""
    srv = threads_server(*args, "--status-bind", status_at)
    wait_for(lambda: can_connect(status_at), timeout=20, what="the status socket")
    return srv


def test_status_answers_while_every_worker_is_busy(threads_server: Callable[..., ThreadsServer],
                                                   tmp_path: Path) -> None:
    status_at = status_socket(tmp_path)
    srv = started(threads_server, status_at, "--workers", "2", "--status-path", "/status")
    held = Background([lambda n=n: srv.get(f"/hold?id={n}") for n in ("a", "b")])
    srv.arrived("a", "b")  # both workers are in a request now
    try:
        report = json.loads(Client(status_at, timeout=10).request("/status?json&full").body)
        assert (report["active_workers"], report["idle_workers"], report["total_workers"]) == (2, 0, 2)
        assert sorted(w["request_uri"] for w in report["workers"]) == ["/hold?id=a", "/hold?id=b"]
        ping = Client(status_at, timeout=10).request("/ping")
        assert (ping.status, ping.body) == (200, b"pong")
        metrics = Client(status_at, timeout=10).request("/status?openmetrics&full").body.decode()
        assert len(re.findall(r'^wsgi_fcgi_worker_busy\{pid="\d+",thread="0"\} 1$', metrics, re.M)) == 2
        assert "# TYPE wsgi_fcgi_worker_memory_rss_bytes gauge" in metrics and metrics.endswith("# EOF\n")
        assert Client(status_at, timeout=10).request("/anything-else").status == 404  # never the app
    finally:
        srv.release()
    assert [r.status for r in held.results()] == [200, 200]


def test_the_status_socket_has_the_socket_mode_and_goes_with_the_master(threads_server: Callable[..., ThreadsServer],
                                                                       tmp_path: Path) -> None:
    status_at = status_socket(tmp_path)
    srv = started(threads_server, status_at, "--workers", "1", "--socket-mode", "0600")
    path = status_at[len("unix:"):]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Client(status_at, timeout=10).request("/status").status == 200  # the default path, text
    srv.server.stop()
    assert not os.path.exists(path)


def test_a_status_client_that_stalls_does_not_stall_the_master(threads_server: Callable[..., ThreadsServer],
                                                                tmp_path: Path) -> None:
    status_at = status_socket(tmp_path)
    srv = started(threads_server, status_at, "--workers", "1")
    stalled = raw_connect(status_at)
    try:
        stalled.sendall(p.encode_begin_request(1))  # and never the PARAMS
        assert Client(status_at, timeout=10).request("/ping").body == b"pong"  # answered meanwhile
        assert srv.get("/pid").status == 200  # and the pool serves as usual
        values = raw_connect(status_at)
        values.sendall(p.encode_record(p.FCGI_GET_VALUES, 0, p.encode_pairs([(b"FCGI_MPXS_CONNS", b"")])))
        values.sendall(request_bytes(1, "/ping"))
        events = read_events(values, lambda e: isinstance(e, p.EndRequest))
        assert p.GetValuesResult({"FCGI_MPXS_CONNS": "0"}) in events
        assert server_closed(values)  # one request per status connection
        values.close()
    finally:
        stalled.close()


def test_a_tcp_status_socket_follows_allowed_addr(threads_server: Callable[..., ThreadsServer]) -> None:
    port = free_port()
    srv = started(threads_server, f"127.0.0.1:{port}", "--workers", "1", "--allowed-addr", "10.0.0.0/8")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(request_bytes(1, "/ping"))
        assert server_closed(sock)  # refused: 127.0.0.1 is not in --allowed-addr
    finally:
        sock.close()
    assert srv.server.is_running()


def test_status_bind_beyond_loopback_needs_allow_remote() -> None:
    port = free_port()
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, "--bind", "127.0.0.1:0",
                             "--status-bind", f"0.0.0.0:{port}", APP], capture_output=True, text=True, timeout=30,
                            env=server_env([APPS_DIR]), stdin=subprocess.DEVNULL)
    assert result.returncode == 3
    assert f"--status-bind: refusing to listen on 0.0.0.0:{port}" in result.stderr
