"""Hardening: who may connect, limits, hostile input, live fuzzing, resource
stability. Each test runs the real server and checks what an operator would:
the connection that misbehaved is dropped, everything else carries on, the
master and the workers are the same processes afterwards.
"""

from __future__ import annotations

import os
import random
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import pytest

from wsgi_fcgi import protocol as p
from wsgi_fcgi.client import Client

from support.fastcgi import children_of, connect_from, raw_connect, read_events, request_bytes
from support.net import free_port
from support.procfs import asleep_in_epoll_wait, epoll_watched, listening_unix_inode
from support.waiting import wait_for
from test_server import APP, APPS_DIR, ROOT_FLAG

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(wsgi_server: Callable[..., Any]) -> Callable[..., Any]:
    def start(*args: str, env: Optional[dict] = None) -> Any:
        options: dict = {"pythonpath": [APPS_DIR]}
        if env is not None:
            options["env"] = env
        return wsgi_server(APP, *args, **options)
    return start


def closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def workers_of(srv: Any, count: int) -> List[int]:
    """The worker pids, once ``count`` of them are up (the socket accepts before they fork)."""
    wait_for(lambda: len(children_of(srv.pid)) == count, what=f"{count} worker(s)")
    return sorted(children_of(srv.pid))


def healthy(srv: Any) -> bool:
    return Client(srv.address, timeout=10).request("/hello").body == b"Hello, World!"


# --- who may connect ------------------------------------------------------------------

def test_public_tcp_address_needs_allow_remote(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(APPS_DIR)}
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, "--bind", f"0.0.0.0:{port}", APP],
                            capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 3
    assert f"refusing to listen on 0.0.0.0:{port}" in result.stderr and "--allow-remote" in result.stderr


def test_allow_remote_listens_and_names_the_risk(server: Any) -> None:
    srv = server("--bind", f"0.0.0.0:{free_port()}", "--allow-remote")
    assert Client(f"127.0.0.1:{srv.address.rpartition(':')[2]}", timeout=10).request("/hello").status == 200
    assert "reachable from other machines" in srv.stderr_text()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_allowed_addresses_refuse_other_peers(server: Any, how: str) -> None:
    port = free_port()
    if how == "flag":
        srv = server("--bind", f"127.0.0.1:{port}", "--workers", "2", "--allowed-addr", "127.0.0.1/32,::1")
    else:
        srv = server("--bind", f"127.0.0.1:{port}", "--workers", "2", env={"FCGI_WEB_SERVER_ADDRS": "127.0.0.1"})
    for _ in range(3):
        with connect_from("127.0.0.2", port) as sock:
            sock.sendall(request_bytes())
            assert closed_without_answer(sock)
    with connect_from("127.0.0.1", port) as sock:
        sock.sendall(request_bytes())
        assert isinstance(read_events(sock, lambda e: isinstance(e, p.EndRequest))[-1], p.EndRequest)
    wait_for(lambda: "refused a connection from 127.0.0.2" in srv.stderr_text(), what="the refusal log line")
    # Not a log flood: once a minute per address in each worker (2 workers here, 3 refusals).
    assert srv.stderr_text().count("refused a connection from 127.0.0.2") <= 2


def test_unix_socket_peers_are_not_subject_to_the_address_list(server: Any) -> None:
    srv = server("--allowed-addr", "10.9.8.7")
    assert healthy(srv)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_socket_group_lets_the_web_servers_group_in(server: Any) -> None:
    import grp
    group = grp.getgrnam("nogroup" if _group_exists("nogroup") else "nobody")
    srv = server("--socket-group", group.gr_name)
    info = os.stat(srv.socket_path)
    assert info.st_gid == group.gr_gid and stat.S_IMODE(info.st_mode) == 0o660


def _group_exists(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_unix_socket_mode_is_0660_by_default_and_settable(server: Any) -> None:
    srv = server()
    assert stat.S_IMODE(os.stat(srv.socket_path).st_mode) == 0o660
    strict = server("--socket-mode", "0600")
    assert stat.S_IMODE(os.stat(strict.socket_path).st_mode) == 0o600


# --- limits ------------------------------------------------------------------------------

def test_body_over_the_limit_is_413_and_the_connection_stays_usable(server: Any, tmp_path: Path) -> None:
    srv = server("--workers", "1", "--limit-request-body", "1000")
    started = tmp_path / "started"
    with raw_connect(srv.address) as sock:
        sock.sendall(request_bytes(path=f"/sha256?started={started}", body=b"x" * 5000, keep_conn=True))
        events = read_events(sock, lambda e: isinstance(e, p.EndRequest))
        out = b"".join(e.data for e in events if isinstance(e, p.Stdout))
        assert out.startswith(b"Status: 413 ")
        assert not started.exists()  # the app was never called
        # The rest of that body is skipped, never read as the next request.
        sock.sendall(request_bytes(path="/hello", keep_conn=True))
        events = read_events(sock, lambda e: isinstance(e, p.EndRequest))
        assert b"Hello, World!" in b"".join(e.data for e in events if isinstance(e, p.Stdout))
    assert "--limit-request-body" in srv.stderr_text()


def test_body_of_unknown_length_over_the_limit_is_413(server: Any) -> None:
    srv = server("--limit-request-body", "1000")
    response = Client(srv.address, timeout=10).request("/sha256", method="POST", body=iter([b"y" * 800] * 3),
                                                       headers={"Transfer-Encoding": "chunked"})
    assert response.status == 413
    assert Client(srv.address, timeout=10).request("/sha256", method="POST", body=iter([b"y" * 800])).status == 200


# --- hostile input -------------------------------------------------------------------------

def _params_record_claiming(length: int) -> bytes:
    pair = b"\x04" + struct.pack("!I", length | 0x80000000) + b"NAME"
    return p.encode_record(p.FCGI_PARAMS, 1, pair) + p.encode_record(p.FCGI_PARAMS, 1)


def _endless_params() -> bytes:
    pair = p.encode_pairs([(b"HTTP_X_FILLER", b"z" * 60000)])
    return p.encode_begin_request(1) + b"".join(p.encode_record(p.FCGI_PARAMS, 1, pair) for _ in range(10))


HOSTILE: List[Tuple[str, bytes, str]] = [
    # (name, bytes sent, expected outcome: "closed" = connection dropped, "answered" = a proper reply)
    ("garbage bytes", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "closed"),
    ("wrong version", b"\x02" + request_bytes()[1:], "closed"),
    ("record type sent by applications", p.encode_record(p.FCGI_STDOUT, 1, b"x"), "closed"),
    ("application record with id 0", p.encode_record(p.FCGI_BEGIN_REQUEST, 0, bytes(8)), "closed"),
    ("BEGIN_REQUEST body of 3 bytes", p.encode_record(p.FCGI_BEGIN_REQUEST, 1, b"abc"), "closed"),
    ("oversized params (a 4-byte length claims 2 GiB)", p.encode_begin_request(1) + _params_record_claiming(2**31 - 1),
     "closed"),
    ("endless PARAMS", _endless_params(), "closed"),
    ("STDIN before PARAMS end", p.encode_begin_request(1) + p.encode_record(p.FCGI_STDIN, 1, b"x"), "closed"),
    ("STDIN beyond CONTENT_LENGTH", request_bytes(body=b"abc")[:-8] + p.encode_record(p.FCGI_STDIN, 1, b"surplus")
     + p.encode_record(p.FCGI_STDIN, 1), "answered"),
    ("a second BEGIN_REQUEST mid-request", request_bytes(1, "/sha256", body=b"abc")[:-8] + request_bytes(2)
     + p.encode_record(p.FCGI_STDIN, 1), "answered"),
    ("truncated header, then the peer closes", b"\x01\x01\x00", "closed"),
]


@pytest.mark.parametrize("name, data, outcome", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input(server: Any, name: str, data: bytes, outcome: str) -> None:
    srv = server("--workers", "1")
    worker_pids = workers_of(srv, 1)
    with raw_connect(srv.address) as sock:
        try:
            sock.sendall(data)
            if name.startswith("truncated"):
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            assert outcome == "closed"  # the server hung up before we finished sending
        if outcome == "closed":
            try:
                events = read_events(sock, lambda e: False)
            except ConnectionResetError:
                events = [p.ConnectionClosed()]
            assert isinstance(events[-1], p.ConnectionClosed)
            assert not any(isinstance(e, p.Stdout) for e in events)
        else:
            events = read_events(sock, lambda e: isinstance(e, p.EndRequest) and e.request_id == 1)
            assert events[-1] == p.EndRequest(1, 0, p.FCGI_REQUEST_COMPLETE)
    assert healthy(srv)
    assert sorted(children_of(srv.pid)) == worker_pids  # the worker survived
    assert "Traceback" not in srv.stderr_text()


def test_a_peer_that_sends_nothing_is_dropped_after_the_read_timeout(server: Any) -> None:
    srv = server("--workers", "1", "--read-timeout", "1")
    with raw_connect(srv.address) as sock:
        sock.sendall(request_bytes()[:20])  # BEGIN_REQUEST and a little of PARAMS, then silence
        assert closed_without_answer(sock)
    assert healthy(srv)


def test_a_peer_that_stops_reading_the_response_is_dropped_after_the_read_timeout(server: Any) -> None:
    # Sends start without blocking; the first one that would block must still be bounded.
    srv = server("--workers", "1", "--read-timeout", "1")
    with raw_connect(srv.address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_bytes(path="/download?size=67108864"))  # 64 MiB, never read
        wait_for(lambda: "sending the response failed" in srv.stderr_text(), what="the stalled send to be given up",
                 timeout=20)
        assert healthy(srv)  # the only worker is free again
    assert "Traceback" not in srv.stderr_text()


def test_an_idle_kept_connection_is_closed_after_the_keepalive_timeout(server: Any) -> None:
    srv = server("--workers", "1", "--keepalive-timeout", "1")
    with raw_connect(srv.address) as sock:
        sock.sendall(request_bytes(keep_conn=True))
        read_events(sock, lambda e: isinstance(e, p.EndRequest))
        assert closed_without_answer(sock)  # within about a second, by the server


# --- live fuzzing --------------------------------------------------------------------------

def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "insert", "delete", "truncate", "length", "swap"])
        if not buf:
            break
        i = rng.randrange(len(buf))
        if kind == "flip":
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif kind == "delete":
            del buf[i:i + rng.randint(1, 16)]
        elif kind == "truncate":
            del buf[i:]
        elif kind == "length":  # rewrite a record header's content length
            j = i - i % 8
            if j + 6 <= len(buf):
                buf[j + 4:j + 6] = struct.pack("!H", rng.randrange(65536))
        else:  # swap two records' worth of bytes
            j = rng.randrange(len(buf))
            buf[i:i + 8], buf[j:j + 8] = buf[j:j + 8], buf[i:i + 8]
    return bytes(buf)


def test_live_fuzzing_leaves_master_and_workers_standing(server: Any) -> None:
    srv = server("--workers", "2", "--read-timeout", "0.5")
    worker_pids = workers_of(srv, 2)
    rng = random.Random(20261125)
    seeds = [request_bytes(keep_conn=True), request_bytes(path="/sha256", body=b"b" * 3000),
             request_bytes(1, "/environ", keep_conn=True) + request_bytes(1, "/hello"),
             p.encode_record(p.FCGI_GET_VALUES, 0, p.encode_pairs([(b"FCGI_MAX_CONNS", b"")])) + request_bytes()]
    counts = {"streams": 0, "answered": 0, "closed": 0}
    for _ in range(400):
        data = _mutate(rng, rng.choice(seeds)) if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 300))
        with raw_connect(srv.address) as sock:
            sock.settimeout(5)
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                events = read_events(sock, lambda e: False)
            except (ConnectionResetError, BrokenPipeError):
                events = []
            except p.ProtocolError as exc:  # what the server sent must always be valid FastCGI
                raise AssertionError(f"the server answered invalid records to {data!r}: {exc}") from None
        counts["streams"] += 1
        counts["answered" if any(isinstance(e, p.EndRequest) for e in events) else "closed"] += 1
    print(f"live fuzzing: {counts}")
    assert counts["answered"] and counts["closed"]  # the mutations reached both outcomes
    assert healthy(srv)
    assert sorted(children_of(srv.pid)) == worker_pids  # no worker died
    assert "Traceback" not in srv.stderr_text()


# --- resource stability ----------------------------------------------------------------------

def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _serve_many(address: str, count: int, keep_conn: bool) -> None:
    one = request_bytes(path="/hello", keep_conn=keep_conn)
    sock = raw_connect(address) if keep_conn else None
    try:
        for _ in range(count):
            conn = sock or raw_connect(address)
            conn.sendall(one)
            events = read_events(conn, lambda e: isinstance(e, p.EndRequest))
            assert isinstance(events[-1], p.EndRequest)
            if not keep_conn:
                # Wait for the server's close: counting its descriptors before that races with it.
                assert conn.recv(65536) == b""
                conn.close()
    finally:
        if sock is not None:
            sock.close()


def test_20000_requests_leave_descriptors_and_memory_flat(server: Any) -> None:
    srv = server("--workers", "1")
    (worker,) = workers_of(srv, 1)
    _serve_many(srv.address, 500, keep_conn=False)  # warm up: imports, caches, allocator arenas
    fds, rss = _fd_count(worker), _rss_kib(worker)
    _serve_many(srv.address, 10000, keep_conn=True)
    _serve_many(srv.address, 10000, keep_conn=False)
    assert children_of(srv.pid) == [worker]
    # The worker closes the last kept connection once it sees our close: poll for it.
    wait_for(lambda: _fd_count(worker) == fds, timeout=5, what=f"the worker back at {fds} descriptors")
    # Nothing is kept per request; what moves is allocator noise. 4 MiB over
    # 20,000 requests would be a leak of over 200 bytes per request.
    assert _rss_kib(worker) - rss < 4096


def _readable(sock: socket.socket) -> bool:
    import select
    return bool(select.select([sock], [], [], 0)[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering another process's descriptor limit needs root")
def test_out_of_descriptors_backs_off_and_recovers(server: Any) -> None:
    import resource
    srv = server("--workers", "1", "--max-idle-connections", "200")
    (worker,) = workers_of(srv, 1)
    wait_for(lambda: asleep_in_epoll_wait(worker), what="the worker waiting for connections")
    watched_before = epoll_watched(worker)
    limit = _fd_count(worker) + 5
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (limit, limit))
    kept: List[socket.socket] = []
    waiting: Optional[socket.socket] = None
    try:
        # Fill the worker's descriptors with idle kept-alive connections until
        # one connection is not answered because the worker cannot accept it.
        for _ in range(20):
            sock = raw_connect(srv.address)
            sock.sendall(request_bytes(keep_conn=True))
            wait_for(lambda sock=sock: _readable(sock) or "cannot accept connections" in srv.stderr_text(),
                     what="an answer or the EMFILE log line")
            if not _readable(sock):
                waiting = sock
                break
            read_events(sock, lambda e: isinstance(e, p.EndRequest))
            kept.append(sock)
        assert waiting is not None, "the worker never ran out of descriptors"
        wait_for(lambda: "cannot accept connections" in srv.stderr_text(), what="the EMFILE log line")
        listener = listening_unix_inode(srv.socket_path)
        assert listener is not None and listener in watched_before
        # Not spinning: the listener, whose queued connection cannot be accepted,
        # is out of the (level-triggered) epoll set, and the worker sleeps in epoll_wait.
        wait_for(lambda: listener not in epoll_watched(worker) and asleep_in_epoll_wait(worker),
                 what="the worker asleep with its listener out of the epoll set")
        for sock in kept:  # descriptors free up: the listener is re-armed, the waiting connection served
            sock.close()
        events = read_events(waiting, lambda e: isinstance(e, p.EndRequest))
        assert isinstance(events[-1], p.EndRequest)
        waiting.close()
        wait_for(lambda: listener in epoll_watched(worker), what="the listener back in the epoll set")
    finally:
        for sock in kept + ([waiting] if waiting else []):
            sock.close()
    assert healthy(srv)
    assert srv.stderr_text().count("cannot accept connections") == 1  # rate-limited, not a flood


def test_peer_closing_mid_response_is_one_info_line_and_the_worker_carries_on(server: Any) -> None:
    srv = server("--workers", "1")
    (worker,) = workers_of(srv, 1)
    with raw_connect(srv.address) as sock:
        sock.sendall(request_bytes(path="/download?size=50000000"))
        assert sock.recv(65536)  # the response has started
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    wait_for(lambda: "client went away" in srv.stderr_text(), what="the info line")
    assert healthy(srv)
    assert children_of(srv.pid) == [worker]
    log = srv.stderr_text()
    assert "[INFO] client went away during GET /download" in log and "Traceback" not in log
