#!/usr/bin/env python3
"""wsgi_fcgi benchmark: real nginx in front of each backend, driven by wrk.

    bench/.venv/bin/python bench/run.py                      # the full matrix (see README.md)
    bench/.venv/bin/python bench/run.py -d 2 -r 1 --cells hello:16 --backends wsgi_fcgi,flup
    bench/.venv/bin/python bench/run.py --direct             # FastCGI straight to the socket, no nginx
    bench/.venv/bin/python bench/run.py --memory             # RSS during a 1 GiB download and upload
    bench/.venv/bin/python bench/run.py --diag trace         # strace -c: syscalls per request
    bench/.venv/bin/python bench/run.py --diag profile       # py-spy on one wsgi_fcgi worker
    # threads per worker: 2 processes x 16 threads each, wsgi_fcgi prefork (2 x 1) beside them
    bench/.venv/bin/python bench/run.py --threads 16 --cells wait_50ms:64 --backends wsgi_fcgi,wsgi_fcgi:1,uwsgi

Every run starts a fresh backend and a fresh nginx (config rendered from
bench/nginx/ into a temp dir), warms up with complete requests (nothing is
aborted, see perf.md 5.1), snapshots CPU time of both process trees, runs wrk,
snapshots again, asks the backend for one more page (is it still alive?),
reads memory, and stops everything by PID: SIGTERM to the process group and
every process of the tree, SIGKILL after --grace seconds. Ctrl-C and errors
go through the same stop path.

Backends are interleaved run by run (rep 1: A B C, rep 2: A B C, ...) so slow
drifts of a shared machine hit every backend alike; medians are reported.
Standard library only, plus the backends it starts (bench/setup.sh).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
PYTHON = str(VENV / "bin" / "python") if (VENV / "bin" / "python").exists() else sys.executable
VENV_BIN = Path(PYTHON).parent
C_HELLO = BENCH / "c" / "hello"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20

# ---------------------------------------------------------------------------
# workloads


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    app: str = "apps:application"
    body: int = 0                     # POST body bytes
    warm_requests: int = 20           # per warm-up thread
    check: Callable[[int, bytes], bool] = lambda status, body: status == 200
    wait_s: float = 0.0               # the app's wait per request: such cells get their own table


def _check_hello(status: int, body: bytes) -> bool:
    return status == 200 and body == b"Hello, World!"


def _check_json(status: int, body: bytes) -> bool:
    return status == 200 and len(body) == 1024 and json.loads(body)["items"][3]["id"] == 3


def _check_wait(status: int, body: bytes) -> bool:
    return status == 200 and body == b"Waited 50 ms."


def _check_big(status: int, body: bytes) -> bool:
    return status == 200 and len(body) == MiB and body[:4] == b"xxxx"


def post_body(size: int) -> bytes:
    """Same bytes as wrk/bench.lua's body: a 251-byte pattern repeated."""
    pattern = bytes(32 + (i * 7) % 95 for i in range(251))
    return (pattern * (size // 251 + 1))[:size]


POST_1M = post_body(MiB)
POST_1M_ANSWER = b"%d %d\n" % (MiB, zlib.adler32(POST_1M))

WORKLOADS: Dict[str, Workload] = {w.name: w for w in [
    Workload("hello", "/hello", check=_check_hello),
    Workload("json_1k", "/json_1k", check=_check_json),
    Workload("big_1m", "/big_1m", warm_requests=3, check=_check_big),
    Workload("post_1m", "/post_1m", body=MiB, warm_requests=3,
             check=lambda status, body: status == 200 and body == POST_1M_ANSWER),
    Workload("flask", "/", app="flaskapp:app", check=_check_hello),
    # 5 sequential requests per warm-up client, 0.25 s: the wait, not the code, is the point
    Workload("wait_50ms", "/wait_50ms", warm_requests=5, check=_check_wait, wait_s=0.05),
]}

DEFAULT_CELLS = "hello:16,hello:64,json_1k:16,big_1m:16,post_1m:16,flask:16,flask:64"

# ---------------------------------------------------------------------------
# process bookkeeping: /proc, trees, CPU, memory


def set_child_subreaper() -> None:
    """spawn-fcgi forks the C responders and exits: as a subreaper we become
    their parent, so they are ours to stop and to reap, never init's."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


@dataclass
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    state: str
    comm: str
    own: int      # utime + stime, ticks
    reaped: int   # cutime + cstime: children it has waited for
    sys: int = 0  # stime + cstime


def read_stat(pid: int) -> Optional[ProcStat]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except OSError:
        return None
    lpar, rpar = raw.index("("), raw.rindex(")")
    rest = raw[rpar + 2:].split()
    # rest[0] = state (field 3); utime is field 14 -> rest[11]
    return ProcStat(pid, int(rest[1]), int(rest[2]), rest[0], raw[lpar + 1:rpar],
                    int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]), int(rest[12]) + int(rest[14]))


def proc_table() -> Dict[int, ProcStat]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(int(entry))
            if st is not None:
                table[st.pid] = st
    return table


def tree(roots: Iterable[int], table: Optional[Dict[int, ProcStat]] = None) -> List[int]:
    """The roots that still exist and all their descendants."""
    table = table if table is not None else proc_table()
    children: Dict[int, List[int]] = {}
    for st in table.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: List[int] = []
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_split(roots: Iterable[int], master: Optional[int]) -> Dict[str, int]:
    """Ticks of the tree split three ways: kernel time, and the master's own share."""
    table = proc_table()
    pids = tree(roots, table)
    return {"total": sum(table[p].own + table[p].reaped for p in pids),
            "sys": sum(table[p].sys for p in pids),
            "master_own": table[master].own if master in table else 0}


def cpu_ticks(roots: Iterable[int]) -> Tuple[int, int]:
    """(ticks, processes): user+sys of the tree, including what its members reaped."""
    table = proc_table()
    pids = tree(roots, table)
    return sum(table[p].own + table[p].reaped for p in pids), len(pids)


def memory(pid: int) -> Optional[Dict[str, float]]:
    """RSS and PSS in MiB from smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for key in ("Rss", "Pss"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        values[key.lower()] = int(m.group(1)) / 1024 if m else 0.0
    return values


def rss_mib(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / MiB
    except OSError:
        return None


def wait_booted(proc: "Proc", timeout: float = 30.0, samples: int = 6, every: float = 0.05) -> float:
    """Wait until the tree's processes stay the same and none of their RSS moves over
    ``samples`` readings. Workers import the app after the fork: 32 Flask workers on 2
    cores take seconds, and one still booting during the run would serve nothing and show
    half its memory. Returns the seconds waited (at most ``timeout``, then it goes on)."""
    started = time.monotonic()
    history: List[Dict[int, Optional[float]]] = []
    while time.monotonic() - started < timeout:
        history.append({pid: rss_mib(pid) for pid in proc.pids()})
        recent = history[-samples:]
        if len(recent) == samples and all(snap == recent[0] for snap in recent):
            break
        time.sleep(every)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state != "Z"


def reap_orphans(keep: Iterable[int] = ()) -> None:
    """Zombies that were reparented to us (we are a subreaper)."""
    me, keep = os.getpid(), set(keep)
    for st in proc_table().values():
        if st.ppid == me and st.state == "Z" and st.pid not in keep:
            try:
                os.waitpid(st.pid, os.WNOHANG)
            except ChildProcessError:
                pass


class Proc:
    """A started process group we own: stopped by PID, never by name."""

    registry: List["Proc"] = []

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, cwd: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.logf = open(log, "ab")
        self.popen = subprocess.Popen(self.argv, cwd=str(cwd) if cwd else None, env=env, stdin=subprocess.DEVNULL,
                                      stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.extra_roots: List[int] = []  # e.g. spawn-fcgi's children, reparented to us
        self.stopped_by = ""
        self.stop_seconds = 0.0
        Proc.registry.append(self)

    @property
    def roots(self) -> List[int]:
        return [self.popen.pid] + self.extra_roots

    def pids(self) -> List[int]:
        return tree(self.roots)

    def stop(self, grace: float) -> None:
        """SIGTERM to the group and the tree, SIGKILL to whatever is left after ``grace``."""
        if self in Proc.registry:
            Proc.registry.remove(self)
        started = time.monotonic()
        pids = self.pids()
        groups = {self.popen.pid} | {os.getpgid(p) for p in pids if _pgid(p) is not None}
        self._signal(pids, groups, signal.SIGTERM)
        deadline = started + grace
        self.stopped_by = "TERM"
        while time.monotonic() < deadline:
            self.popen.poll()
            if not any(alive(p) for p in pids):
                break
            time.sleep(0.02)
        else:
            self.stopped_by = "KILL"
            self._signal(self.pids() or pids, groups, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while any(alive(p) for p in pids) and time.monotonic() < kill_deadline:
                time.sleep(0.02)
        self.stop_seconds = time.monotonic() - started
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.extra_roots:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        reap_orphans(p.popen.pid for p in Proc.registry)
        self.logf.close()

    @staticmethod
    def _signal(pids: Iterable[int], groups: Iterable[int], sig: int) -> None:
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    @classmethod
    def stop_all(cls, grace: float = 2.0) -> None:
        for proc in list(cls.registry)[::-1]:
            try:
                proc.stop(grace)
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name}: {exc}", file=sys.stderr)


def _pgid(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# ---------------------------------------------------------------------------
# backends


SNAPSHOT: Optional[Path] = None  # a copy of wsgi_fcgi/ taken at start, so commits made meanwhile change nothing


def snapshot_source(results: Path, src: Optional[str] = None) -> str:
    """Copy wsgi_fcgi/ into the results directory and run every backend from
    that copy: other people commit to the tree while a 20-minute matrix runs.
    ``src`` reuses the copy an earlier run made (so several modes measure the
    same code)."""
    global SNAPSHOT
    if src:
        SNAPSHOT = Path(src).resolve()
        if not (SNAPSHOT / "wsgi_fcgi" / "__init__.py").exists():
            raise SystemExit(f"--src {src}: no wsgi_fcgi package there")
    else:
        SNAPSHOT = results / "src"
        shutil.copytree(REPO / "wsgi_fcgi", SNAPSHOT / "wsgi_fcgi", ignore=shutil.ignore_patterns("__pycache__"))
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "wsgi_fcgi"],
                               capture_output=True, text=True).stdout.strip()
        changes = " + uncommitted changes in wsgi_fcgi/" if dirty else ""
        (SNAPSHOT / "COMMIT").write_text(f"last commit to wsgi_fcgi/ {git_rev()}{changes}\n")
    sys.path.insert(0, str(SNAPSHOT))
    try:
        commit = (SNAPSHOT / "COMMIT").read_text().strip()
    except OSError:
        commit = "unknown commit"
    return f"wsgi_fcgi: {commit}, run from the copy in {SNAPSHOT}"


def bench_env(src: Optional[Path] = None) -> Dict[str, str]:
    """The backends' environment; ``src`` (a directory holding wsgi_fcgi/) overrides the snapshot."""
    env = dict(os.environ)
    first = src or SNAPSHOT
    env["PYTHONPATH"] = os.pathsep.join(([str(first)] if first else []) + [str(BENCH), str(REPO)])
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass
class Backend:
    name: str
    upstream: str               # fastcgi | proxy | uwsgi  (which nginx block)
    has_master: bool
    command: Callable[[str, str, int, int], List[str]]  # (socket, app spec, workers, threads) -> argv
    apps: Tuple[str, ...] = ("apps:application", "flaskapp:app")
    extra_args: List[str] = field(default_factory=list)
    src: Optional[Path] = None  # wsgi_fcgi-base: the package copy to run (--baseline)
    threaded: bool = True       # False: one request at a time per process, whatever --threads says
    skip_workloads: Tuple[str, ...] = ()  # workloads it has no answer for

    def serves(self, workload: Workload) -> bool:
        return workload.app in self.apps and workload.name not in self.skip_workloads

    def start(self, sock: str, app: str, workers: int, threads: int, log: Path) -> Proc:
        argv = self.command(sock, app, workers, threads) + self.extra_args
        proc = Proc(self.name, argv, log, cwd=BENCH, env=bench_env(self.src))
        if self.name == "libfcgi-c":
            # spawn-fcgi forks the children and exits; their PIDs are on its output.
            proc.popen.wait(10)
            proc.extra_roots = [int(x) for x in re.findall(r"PID: (\d+)", log.read_text())]
        return proc


# With threads == 1 every command is exactly what it was before --threads existed,
# so a baseline without the option (--baseline) runs, and old figures stay comparable.


def _wsgi_fcgi(sock: str, app: str, workers: int, threads: int) -> List[str]:
    # --allow-root: the bench runs as root like the other backends (nginx's `user root`)
    threading_args = ["--threads", str(threads)] if threads > 1 else []
    return [PYTHON, "-m", "wsgi_fcgi", "--bind", f"unix:{sock}", "--workers", str(workers), *threading_args,
            "--log-level", "warning", "--allow-root", app]


def _flup(sock: str, app: str, workers: int, threads: int) -> List[str]:
    # threads > 1: `workers` copies of flup's threaded server on one socket (see flup_server.py)
    return [PYTHON, str(BENCH / "flup_server.py"), sock, app, str(workers)] + ([str(threads)] if threads > 1 else [])


def _uwsgi(sock: str, app: str, workers: int, threads: int) -> List[str]:
    # --threads implies --enable-threads; spelt out so the command says what it gets (the GIL released)
    threading_args = ["--threads", str(threads), "--enable-threads"] if threads > 1 else []
    return [str(VENV_BIN / "uwsgi"), "--fastcgi-socket", sock, "--processes", str(workers), *threading_args,
            "--master", "--disable-logging", "--die-on-term", "--need-app", "--home", str(VENV),
            "--pythonpath", str(BENCH), "--module", app]


def _gunicorn(protocol: str) -> Callable[[str, str, int, int], List[str]]:
    def command(sock: str, app: str, workers: int, threads: int) -> List[str]:
        # gthread is gunicorn's threaded worker (it would switch to it by itself for --threads > 1)
        worker_class = ["--worker-class", "gthread", "--threads", str(threads)] if threads > 1 else \
            ["--worker-class", "sync"]
        argv = [PYTHON, "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", str(workers), *worker_class,
                "--log-level", "warning", "--chdir", str(BENCH)]
        if protocol != "http":
            argv += ["--protocol", protocol]
        return argv + [app]
    return command


def _libfcgi_c(sock: str, app: str, workers: int, threads: int) -> List[str]:
    return ["spawn-fcgi", "-s", sock, "-M", "0600", "-F", str(workers), "--", str(C_HELLO)]


BACKENDS: Dict[str, Backend] = {b.name: b for b in [
    Backend("wsgi_fcgi", "fastcgi", True, _wsgi_fcgi),
    Backend("flup", "fastcgi", True, _flup),
    Backend("uwsgi", "fastcgi", True, _uwsgi),
    Backend("gunicorn-http", "proxy", True, _gunicorn("http")),
    Backend("gunicorn-uwsgi", "uwsgi", True, _gunicorn("uwsgi")),
    # one request at a time per process; wait_50ms would get hello.c's default answer
    Backend("libfcgi-c", "fastcgi", False, _libfcgi_c, apps=("apps:application",), threaded=False,
            skip_workloads=("wait_50ms",)),
]}
FASTCGI_BACKENDS = [name for name, b in BACKENDS.items() if b.upstream == "fastcgi"]


@dataclass(frozen=True)
class Pool:
    """One row of a run: a backend and its processes x threads. On the command line
    `NAME` (the -w and --threads defaults), `NAME:T` or `NAME:WxT`, so one
    interleaved run can hold e.g. wsgi_fcgi:2x16 next to wsgi_fcgi:2x1."""
    label: str
    backend: Backend
    workers: int
    threads: int

    @property
    def shape(self) -> str:
        return f"{self.workers} × {self.threads}"

    @property
    def slots(self) -> int:
        """Requests it serves at once."""
        return self.workers * self.threads

    def start(self, sock: str, app: str, log: Path) -> Proc:
        return self.backend.start(sock, app, self.workers, self.threads, log)


def parse_pool(spec: str, workers: int, threads: int) -> Pool:
    name, _, shape = spec.strip().partition(":")
    if name not in BACKENDS:
        raise SystemExit(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if shape:
        m = re.fullmatch(r"(?:(\d+)x)?(\d+)", shape)
        if not m or int(m.group(2)) < 1 or (m.group(1) and int(m.group(1)) < 1):
            raise SystemExit(f"backend {spec!r}: expected NAME, NAME:THREADS or NAME:WORKERSxTHREADS")
        workers, threads = int(m.group(1) or workers), int(m.group(2))
        if threads > 1 and not backend.threaded:
            raise SystemExit(f"backend {spec!r}: {name} serves one request at a time per process")
    elif not backend.threaded:
        threads = 1  # the C responder under a run-wide --threads: its row says 1
    label = f"{name}:{workers}x{threads}" if shape else name
    return Pool(label, backend, workers, threads)


def parse_pools(specs: str, workers: int, threads: int) -> List[Pool]:
    pools = [parse_pool(spec, workers, threads) for spec in specs.split(",") if spec.strip()]
    labels = [p.label for p in pools]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"--backends names a pool twice: {', '.join(labels)}")
    return pools


def wait_unix_socket(path: str, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        if proc.popen.poll() is not None and not proc.extra_roots:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {_tail(proc.log)}")
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not listen on {path} within {timeout}s: {_tail(proc.log)}")


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# nginx


def render(text: str, values: Dict[str, Any]) -> str:
    missing = sorted({m.group(1) for m in re.finditer(r"\{\{(\w+)\}\}", text)} - set(values))
    if missing:
        raise KeyError(f"template placeholders without a value: {missing}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BIG_BUFFERS = "fastcgi_buffers 16 64k; proxy_buffers 16 64k; uwsgi_buffers 16 64k;"


class Nginx:
    def __init__(self, tmp: Path, sock: str, upstream: str, keep_conn: bool, nginx_bin: str,
                 big_buffers: bool = False) -> None:
        self.dir = tmp / "nginx"
        (self.dir / "tmp").mkdir(parents=True)
        for name in ("fastcgi_params", "uwsgi_params"):
            shutil.copy(f"/etc/nginx/{name}", self.dir / name)
        self.port = free_port()
        keepalive = ""
        if keep_conn and upstream == "fastcgi":
            keepalive = "keepalive 32;"
        location = render((BENCH / "nginx" / f"{upstream}.conf").read_text(),
                          {"keep_conn": "on" if keep_conn else "off"})
        conf = render((BENCH / "nginx" / "nginx.conf").read_text(),
                      {"port": self.port, "socket": sock, "upstream_keepalive": keepalive, "location": location,
                       "buffers": BIG_BUFFERS if big_buffers else ""})
        (self.dir / "nginx.conf").write_text(conf)
        self.error_log = self.dir / "error.log"
        self.proc = Proc("nginx", [nginx_bin, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                   "-e", str(self.error_log)], self.dir / "stdout.log")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.popen.poll() is not None:
                    raise RuntimeError(f"nginx exited: {_tail(self.error_log)} {_tail(self.proc.log)}") from None
                time.sleep(0.02)
        raise RuntimeError("nginx did not start")

    def error_lines(self) -> List[str]:
        try:
            return [line for line in self.error_log.read_text(errors="replace").splitlines()
                    if "[warn]" not in line and "[notice]" not in line]
        except OSError:
            return []


def http_request(port: int, path: str, body: Optional[bytes] = None, timeout: float = 10.0,
                 conn: Optional[http.client.HTTPConnection] = None) -> Tuple[int, bytes]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        c.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            c.close()


def warm_up(port: int, workload: Workload, threads: int) -> Optional[str]:
    """Complete requests only (an aborted POST kills flup's workers, perf.md 5.1).
    Returns an error message, or None when every answer was right."""
    errors: List[str] = []
    body = POST_1M if workload.body else None

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            for _ in range(workload.warm_requests):
                status, data = http_request(port, workload.path, body, conn=conn)
                if not workload.check(status, data):
                    errors.append(f"wrong answer: {status} {data[:80]!r}")
                    return
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    pool = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    if any(t.is_alive() for t in pool):
        return "warm-up hung"
    return errors[0] if errors else None


def health(port: int, workload: Workload, timeout: float = 3.0) -> bool:
    """Does the backend still answer a simple GET after the run?"""
    path = "/" if workload.app.startswith("flaskapp") else "/hello"
    for _ in range(2):
        try:
            status, data = http_request(port, path, timeout=timeout)
            if status == 200 and data == b"Hello, World!":
                return True
        except OSError:
            pass
    return False


# ---------------------------------------------------------------------------
# wrk


def run_wrk(port: int, workload: Workload, conns: int, duration: float, threads: int = 1) -> Dict[str, Any]:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
            "-s", str(BENCH / "wrk" / "bench.lua"), f"http://127.0.0.1:{port}{workload.path}"]
    env = dict(os.environ, WRK_BODY_BYTES=str(workload.body))
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = popen.stdout.read().decode(errors="replace") if popen.stdout else ""
    _, status, rusage = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk failed ({popen.returncode}): {out[-500:]}")
    result = json.loads(m.group(1))
    result["cpu_s"] = rusage.ru_utime + rusage.ru_stime
    result["text"] = out
    return result


# ---------------------------------------------------------------------------
# one run


@dataclass
class Options:
    duration: float
    workers: int
    keep_conn: bool
    grace: float
    nginx: str
    results: Path
    verbose: bool
    big_buffers: bool = False


def backend_memory(proc: Proc, backend: Backend) -> Dict[str, Any]:
    pids = proc.pids()
    masters = [proc.popen.pid] if backend.has_master and proc.popen.pid in pids else []
    workers = [p for p in pids if p not in masters]
    out: Dict[str, Any] = {"master": None, "workers": []}
    if masters:
        out["master"] = memory(masters[0])
    out["workers"] = [m for m in (memory(p) for p in workers) if m]
    return out


def one_run(pool: Pool, workload: Workload, conns: int, rep: int, opts: Options) -> Dict[str, Any]:
    """Fresh backend + fresh nginx, warm up, measure, check, stop."""
    backend = pool.backend
    rec: Dict[str, Any] = {"backend": pool.label, "server": backend.name, "workers": pool.workers,
                           "threads": pool.threads, "workload": workload.name, "conns": conns, "rep": rep,
                           "keep_conn": opts.keep_conn, "started": time.time()}
    tmp = Path(tempfile.mkdtemp(prefix="wsgi_fcgi-bench-"))
    sock = str(tmp / "backend.sock")
    proc: Optional[Proc] = None
    nginx: Optional[Nginx] = None
    try:
        proc = pool.start(sock, workload.app, tmp / "backend.log")
        rec["argv"] = proc.argv
        wait_unix_socket(sock, proc)
        nginx = Nginx(tmp, sock, backend.upstream, opts.keep_conn, opts.nginx, opts.big_buffers)
        rec["boot_wait_s"] = round(wait_booted(proc), 2)
        if rep == 0:
            # idle memory: every worker booted (gunicorn and wsgi_fcgi import the app after fork)
            time.sleep(1.0)
            rec["memory_idle"] = backend_memory(proc, backend)
        # 2 clients per process, as before --threads: not every thread of a threaded pool has
        # served yet, but every process has, and flup's threaded copies (they answer 502 beyond
        # their thread count) are never asked for more than they have
        error = warm_up(nginx.port, workload, threads=2 * pool.workers)
        if error:
            rec["error"] = f"warm-up: {error}"
            rec["alive"] = health(nginx.port, workload)
            return rec
        master = proc.popen.pid if backend.has_master else None
        s0 = cpu_split(proc.roots, master)
        b0, n0 = cpu_ticks(proc.roots)[0], cpu_ticks(nginx.proc.roots)[0]
        wrk = run_wrk(nginx.port, workload, conns, opts.duration)
        b1, nprocs = cpu_ticks(proc.roots)
        s1 = cpu_split(proc.roots, master)
        n1 = cpu_ticks(nginx.proc.roots)[0]
        requests = max(wrk["requests"], 1)
        seconds = wrk["duration_us"] / 1e6
        errors = wrk["errors"]
        rec.update({
            "requests": wrk["requests"], "rps": wrk["requests"] / seconds,
            # non-2xx answers are requests to wrk: a pool that answers 502 fast would look fast
            "ok_rps": (wrk["requests"] - errors["status"]) / seconds,
            "p50_ms": wrk["latency_us"]["p50"] / 1000, "p99_ms": wrk["latency_us"]["p99"] / 1000,
            "non2xx": errors["status"],
            "sock_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
            "wrk_errors": errors,
            "backend_cpu_us": (b1 - b0) / CLK_TCK / requests * 1e6,
            "backend_sys_us": (s1["sys"] - s0["sys"]) / CLK_TCK / requests * 1e6,
            "master_cpu_us": (s1["master_own"] - s0["master_own"]) / CLK_TCK / requests * 1e6,
            "nginx_cpu_us": (n1 - n0) / CLK_TCK / requests * 1e6,
            "wrk_cpu_us": wrk["cpu_s"] / requests * 1e6,
            "backend_procs": nprocs,
        })
        rec["alive"] = health(nginx.port, workload)
        rec["memory_after"] = backend_memory(proc, backend)
        rec["nginx_errors"] = len(nginx.error_lines())
        rec["nginx_error_sample"] = nginx.error_lines()[:3]
        (opts.results / "wrk").mkdir(exist_ok=True)
        (opts.results / "wrk" / f"{workload.name}-c{conns}-{pool.label}-r{rep}.txt").write_text(wrk["text"])
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if nginx is not None:
            nginx.proc.stop(opts.grace)
        if proc is not None:
            proc.stop(opts.grace)
            rec["stopped_by"] = proc.stopped_by
            rec["stop_seconds"] = round(proc.stop_seconds, 2)
            rec["backend_log_tail"] = _tail(proc.log, 5)
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


# ---------------------------------------------------------------------------
# tables


def fmt_int(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:,.0f}".replace(",", " ")


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def _cpu_cell(ok: List[Dict[str, Any]]) -> str:
    """'78 (sys 30)': median backend CPU per request and its kernel part."""
    total = median([r["backend_cpu_us"] for r in ok])
    sys_part = median([r["backend_sys_us"] for r in ok if "backend_sys_us" in r])
    return fmt(total, 0) + (f" (sys {sys_part:.0f})" if sys_part is not None and total is not None else "")


def _alive_cell(runs: List[Dict[str, Any]]) -> str:
    """'3/3', or '2/3 ⚠' when the backend stopped answering, plus the first failure."""
    dead = sum(1 for r in runs if not r.get("alive", True))
    errs = [r["error"] for r in runs if "error" in r]
    text = f"{len(runs) - dead}/{len(runs)}" + (" ⚠" if dead else "")
    if errs:
        text += f" ({len(errs)} failed: {errs[0][:60]})"
    return text


def _rows(cell: List[Dict[str, Any]], pools: List[Pool], rps_key: str = "rps") -> List[Dict[str, Any]]:
    """One row per pool that ran in this cell, fastest first."""
    rows = []
    for pool in pools:
        runs = [r for r in cell if r["backend"] == pool.label]
        if runs:
            ok = [r for r in runs if rps_key in r]
            rows.append({"pool": pool, "name": pool.label, "rps": median([r[rps_key] for r in ok]),
                         "runs": runs, "ok": ok})
    rows.sort(key=lambda row: -(row["rps"] or 0))
    return rows


def _rps_cell(row: Dict[str, Any]) -> str:
    text = fmt_int(row["rps"])
    return f"**{text}**" if row["pool"].backend.name == "wsgi_fcgi" else text


def _range_cell(ok: List[Dict[str, Any]], key: str = "rps") -> str:
    return f"{fmt_int(min(r[key] for r in ok))}–{fmt_int(max(r[key] for r in ok))}" if ok else "–"


def summarise(records: List[Dict[str, Any]], cells: List[Tuple[str, int]], pools: List[Pool]) -> str:
    """The CPU-bound cells: req/s, latency and CPU per request, ratios to flup and the C floor."""
    lines = ["| workload | backend | procs × threads | req/s | min–max | p50 ms | p99 ms | non-2xx | sock err | "
             "backend CPU µs/req (kernel part) | nginx CPU µs/req | wrk CPU µs/req | vs flup (per-rep range) | "
             "vs libfcgi-c | alive after run |",
             "|" + "---|" * 15]
    for wname, conns in cells:
        cell = [r for r in records if r["workload"] == wname and r["conns"] == conns]
        reps = sorted({r["rep"] for r in cell})

        def rps_by_rep(name: str, cell: List[Dict[str, Any]] = cell) -> Dict[int, float]:
            return {r["rep"]: r["rps"] for r in cell if r["backend"] == name and "rps" in r}

        rows = _rows(cell, pools)
        first = True
        for row in rows:
            ok, runs = row["ok"], row["runs"]
            ratios = []
            for other in ("flup", "libfcgi-c"):
                mine, theirs = rps_by_rep(row["name"]), rps_by_rep(other)
                per_rep = [mine[k] / theirs[k] for k in reps if k in mine and k in theirs and theirs[k]]
                med_other = next((r["rps"] for r in rows if r["name"] == other), None)
                if row["rps"] and med_other:
                    text = fmt(row["rps"] / med_other)
                    if other == "flup" and len(per_rep) > 1:
                        text += f" ({min(per_rep):.2f}–{max(per_rep):.2f})"
                    ratios.append(text)
                else:
                    ratios.append("–")
            lines.append("| " + " | ".join([
                f"{wname} c{conns}" if first else "", row["name"], row["pool"].shape, _rps_cell(row),
                _range_cell(ok), fmt(median([r["p50_ms"] for r in ok])), fmt(median([r["p99_ms"] for r in ok])),
                str(sum(r["non2xx"] for r in ok)), str(sum(r["sock_errors"] for r in ok)),
                _cpu_cell(ok), fmt(median([r["nginx_cpu_us"] for r in ok]), 0),
                fmt(median([r["wrk_cpu_us"] for r in ok]), 0), ratios[0], ratios[1], _alive_cell(runs)]) + " |")
            first = False
    return "\n".join(lines)


def summarise_wait(records: List[Dict[str, Any]], cells: List[Tuple[str, int]], pools: List[Pool]) -> str:
    """The waiting cells (wait_50ms): what counts is how close a pool comes to the most its
    processes × threads can serve, ideal = workers × threads / wait, and the latency it adds
    to the wait. req/s counts 2xx answers only: flup's threaded server answers 502 at once
    when its threads are busy, and those would count as fast requests."""
    lines = ["| workload | backend | procs × threads | 2xx req/s | min–max | ideal req/s | ÷ ideal | p50 ms | "
             "p99 ms | p99 ÷ wait | latency floor ms | non-2xx | sock err | "
             "backend CPU µs per 2xx (kernel part) | alive after run |",
             "|" + "---|" * 15]
    for wname, conns in cells:
        wait_ms = WORKLOADS[wname].wait_s * 1000
        cell = [r for r in records if r["workload"] == wname and r["conns"] == conns]
        for i, row in enumerate(_rows(cell, pools, "ok_rps")):
            ok, pool = row["ok"], row["pool"]
            ideal = pool.slots / WORKLOADS[wname].wait_s
            # more connections than slots queue: every request also waits for a slot (Little's law)
            floor_ms = wait_ms * max(1.0, conns / pool.slots)
            p99 = median([r["p99_ms"] for r in ok])
            lines.append("| " + " | ".join([
                f"{wname} c{conns}" if i == 0 else "", row["name"], pool.shape, _rps_cell(row),
                _range_cell(ok, "ok_rps"), fmt_int(ideal), fmt(row["rps"] / ideal) if row["rps"] else "–",
                fmt(median([r["p50_ms"] for r in ok]), 1), fmt(p99, 1), fmt(p99 / wait_ms) if p99 else "–",
                fmt(floor_ms, 0), str(sum(r["non2xx"] for r in ok)), str(sum(r["sock_errors"] for r in ok)),
                _cpu_cell([_per_2xx(r) for r in ok]), _alive_cell(row["runs"])]) + " |")
    return "\n".join(lines)


def _per_2xx(rec: Dict[str, Any]) -> Dict[str, Any]:
    """The record with its backend CPU spread over the 2xx answers only (flup's instant 502s
    would otherwise halve its CPU per request)."""
    scale = rec["requests"] / max(rec["requests"] - rec["non2xx"], 1)
    return dict(rec, backend_cpu_us=rec["backend_cpu_us"] * scale, backend_sys_us=rec["backend_sys_us"] * scale)


def _procs_cell(memory: Dict[str, Any], threads: int) -> str:
    """'1+2', or '1+2 × 16' for a threaded pool: master + workers as found in /proc."""
    text = f"{1 if memory['master'] else 0}+{len(memory['workers'])}"
    return text + (f" × {threads}" if threads > 1 else "")


def pool_pss(memory: Dict[str, Any]) -> float:
    """Total PSS of a pool, master + every worker (MiB): what the pool costs the machine,
    shared pages counted once."""
    return sum(w["pss"] for w in memory["workers"]) + (memory["master"]["pss"] if memory["master"] else 0)


def memory_table(records: List[Dict[str, Any]], pools: List[Pool]) -> str:
    workloads = sorted({r["workload"] for r in records}, key=list(WORKLOADS).index)
    head = ["backend", "procs", "master RSS", "worker RSS idle", "worker PSS idle", "total PSS idle"]
    head += [f"worker RSS after {w} (max)" for w in workloads]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    header_only = len(lines)
    for pool in pools:
        runs = [r for r in records if r["backend"] == pool.label]
        idle = next((r["memory_idle"] for r in runs if r.get("memory_idle") and r["workload"] != "flask"), None)
        if idle is None:
            continue
        workers = idle["workers"]
        master = idle["master"]
        row = [pool.label, _procs_cell(idle, pool.threads), fmt(master["rss"], 1) if master else "–",
               fmt(max(w["rss"] for w in workers), 1) if workers else "–",
               fmt(statistics.mean(w["pss"] for w in workers), 1) if workers else "–", fmt(pool_pss(idle), 1)]
        for w in workloads:
            after = [x["rss"] for r in runs if r["workload"] == w and r.get("memory_after")
                     for x in r["memory_after"]["workers"]]
            row.append(fmt(max(after), 1) if after else "–")
        lines.append("| " + " | ".join(row) + " |")
    if len(lines) == header_only:
        lines = []  # Flask cells only: their idle line below says it
    flask_idle = {r["backend"]: r["memory_idle"] for r in records
                  if r["workload"] == "flask" and r.get("memory_idle")}
    if flask_idle:
        lines += [""] if lines else []
        lines.append("Idle with the Flask app loaded (flaskapp:app): " + "; ".join(
            f"{name} worker RSS {fmt(max(w['rss'] for w in m['workers']), 1)} / PSS "
            f"{fmt(statistics.mean(w['pss'] for w in m['workers']), 1)}"
            for name, m in flask_idle.items() if m["workers"]))
    lines += ["", pool_memory_table(records, pools)]
    return "\n".join(lines)


def pool_memory_table(records: List[Dict[str, Any]], pools: List[Pool]) -> str:
    """Total PSS of each pool after each cell's run: idle again, and the run has had every
    process and every thread serve (the booted figures above are before any request)."""
    cells = sorted({(r["workload"], r["conns"]) for r in records if r.get("memory_after")},
                   key=lambda c: (list(WORKLOADS).index(c[0]), c[1]))
    head = ["backend", "procs"] + [f"pool PSS after {w} c{c}" for w, c in cells]
    lines = ["Whole pool (master + every worker), PSS in MiB, median over the repetitions, read once the "
             "run is over and the pool idle:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pool in pools:
        runs = [r for r in records if r["backend"] == pool.label and r.get("memory_after")]
        if not runs:
            continue
        row = [pool.label, _procs_cell(runs[-1]["memory_after"], pool.threads)]
        for w, c in cells:
            row.append(fmt(median([pool_pss(r["memory_after"]) for r in runs
                                   if r["workload"] == w and r["conns"] == c]), 1))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# modes


def machine_info() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    keep = [line for line in lscpu if line.split(":")[0] in ("Architecture", "CPU(s)", "Model name",
                                                              "Thread(s) per core", "Hypervisor vendor")]
    versions = []
    for argv in (["nginx", "-v"], ["wrk", "-v"], [str(VENV_BIN / "uwsgi"), "--version"]):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()[0]
            versions.append(f"uWSGI {text}" if "uwsgi" in argv[0] else text)
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    pyver = subprocess.run([PYTHON, "-c", "import sys, flup, gunicorn, flask; "
                            "print('Python', sys.version.split()[0], '| gunicorn', gunicorn.__version__, "
                            "'| flask', flask.__version__)"], capture_output=True, text=True).stdout.strip()
    return "\n".join([f"nproc: {os.cpu_count()}", *keep, f"loadavg: {Path('/proc/loadavg').read_text().strip()}",
                      *versions, pyver])


def git_rev() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s", "--", "wsgi_fcgi"],
                       capture_output=True, text=True)
    return r.stdout.strip()


def wait_for_load(threshold: float, max_wait: float) -> str:
    start = time.monotonic()
    while True:
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
        waited = time.monotonic() - start
        if load1 < threshold:
            return f"1-min load {load1:.2f} (< {threshold}) after waiting {waited:.0f}s"
        if waited >= max_wait:
            return f"1-min load still {load1:.2f} after waiting {waited:.0f}s: ran anyway"
        print(f"bench: load {load1:.2f} >= {threshold}, waiting…", file=sys.stderr, flush=True)
        time.sleep(30)


def parse_cells(text: str) -> List[Tuple[str, int]]:
    cells = []
    for item in text.split(","):
        name, _, conns = item.strip().partition(":")
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
        cells.append((name, int(conns or 16)))
    return cells


def mode_matrix(args: argparse.Namespace, opts: Options) -> Dict[str, Any]:
    cells = parse_cells(args.cells)
    pools = args.pools
    records: List[Dict[str, Any]] = []
    total = sum(1 for w, _ in cells for p in pools if p.backend.serves(WORKLOADS[w])) * args.reps
    done = 0
    t0 = time.monotonic()
    for rep in range(args.reps):
        for wname, conns in cells:
            workload = WORKLOADS[wname]
            for pool in pools:
                if not pool.backend.serves(workload):
                    continue
                rec = one_run(pool, workload, conns, rep, opts)
                records.append(rec)
                done += 1
                status = (f"{rec['rps']:8.0f} req/s  backend {rec['backend_cpu_us']:6.0f} µs/req  "
                          f"nginx {rec['nginx_cpu_us']:5.0f}" if "rps" in rec else rec.get("error", "?"))
                flag = "" if rec.get("alive", True) else "  ⚠ DEAD after the run"
                print(f"[{done}/{total} {time.monotonic() - t0:5.0f}s] rep {rep + 1} {wname} c{conns} "
                      f"{pool.label:15s} {status}{flag}", file=sys.stderr, flush=True)
                (opts.results / "runs.json").write_text(json.dumps(records, indent=1))
    busy = [c for c in cells if not WORKLOADS[c[0]].wait_s]
    waiting = [c for c in cells if WORKLOADS[c[0]].wait_s]
    tables = ([summarise(records, busy, pools)] if busy else []) + \
        ([summarise_wait(records, waiting, pools)] if waiting else [])
    skipped = [f"{p.label} ({w})" for w, _ in cells for p in pools if not p.backend.serves(WORKLOADS[w])]
    if skipped:
        tables.append("Not run, the backend has no such workload: " + ", ".join(dict.fromkeys(skipped)))
    mem = memory_table(records, pools)
    return {"records": records, "table": "\n\n".join(tables), "memory": mem}


# --- direct mode: FastCGI straight to the backend socket


def mode_direct(args: argparse.Namespace, opts: Options) -> Dict[str, Any]:
    sys.path[1:1] = [str(BENCH), str(REPO)]  # after the snapshot
    import fcgiload

    workloads = [w for w in args.direct_workloads.split(",")]
    pools = [p for p in args.pools if p.backend.upstream == "fastcgi"]
    backends = [p.label for p in pools]
    records = []
    for rep in range(args.reps):
        for wname in workloads:
            workload = WORKLOADS[wname]
            request = fcgiload.build_request(workload.path, workload.body)
            for pool in pools:
                name = pool.label
                if not pool.backend.serves(workload):
                    continue
                rec: Dict[str, Any] = {"backend": name, "workload": wname, "rep": rep, "procs": args.direct_procs}
                tmp = Path(tempfile.mkdtemp(prefix="wsgi_fcgi-bench-"))
                sock = str(tmp / "backend.sock")
                proc = None
                try:
                    proc = pool.start(sock, workload.app, tmp / "backend.log")
                    wait_unix_socket(sock, proc)
                    for _ in range(10 * pool.workers):
                        good, _, head = fcgiload.one_request(sock, request)
                        if not good:
                            raise RuntimeError(f"bad answer {head[:80]!r}")
                    b0 = cpu_ticks(proc.roots)[0]
                    res = fcgiload.run(sock, request, args.direct_procs, opts.duration)
                    b1 = cpu_ticks(proc.roots)[0]
                    n = max(res["requests"], 1)
                    rec.update({"rps": res["requests"] / res["elapsed_s"], "requests": res["requests"],
                                "bad": res["bad"], "errors": res["errors"],
                                "backend_cpu_us": (b1 - b0) / CLK_TCK / n * 1e6,
                                "client_cpu_us": res["cpu_s"] / n * 1e6})
                    try:
                        rec["alive"] = fcgiload.one_request(sock, request, timeout=3)[0]
                    except OSError:
                        rec["alive"] = False
                except Exception as exc:
                    rec["error"] = f"{type(exc).__name__}: {exc}"
                finally:
                    if proc is not None:
                        proc.stop(opts.grace)
                    shutil.rmtree(tmp, ignore_errors=True)
                records.append(rec)
                status = (f"{rec['rps']:8.0f} req/s  backend {rec['backend_cpu_us']:6.0f} µs/req  "
                          f"client {rec['client_cpu_us']:5.0f}" if "rps" in rec else rec.get("error"))
                print(f"direct rep {rep + 1} {wname:8s} {name:12s} {status}", file=sys.stderr, flush=True)
    lines = ["| workload | backend | req/s | min–max | backend CPU µs/req | client CPU µs/req | "
             "errors | vs flup (CPU) | alive |", "|" + "---|" * 9]
    for wname in workloads:
        rows = []
        for name in backends:
            runs = [r for r in records if r["backend"] == name and r["workload"] == wname]
            ok = [r for r in runs if "rps" in r]
            if runs:
                rows.append((name, ok, runs))
        flup_cpu = next((median([r["backend_cpu_us"] for r in ok]) for n, ok, _ in rows if n == "flup" and ok), None)
        rows.sort(key=lambda x: -(median([r["rps"] for r in x[1]]) or 0))
        for i, (name, ok, runs) in enumerate(rows):
            cpu = median([r["backend_cpu_us"] for r in ok])
            lines.append("| " + " | ".join([
                wname if i == 0 else "", name, fmt_int(median([r["rps"] for r in ok])),
                f"{fmt_int(min(r['rps'] for r in ok))}–{fmt_int(max(r['rps'] for r in ok))}" if ok else "–",
                fmt(cpu, 1), fmt(median([r["client_cpu_us"] for r in ok]), 1),
                str(sum(r["bad"] + r["errors"] for r in ok)) + (f" ({runs[0].get('error', '')[:50]})"
                                                                 if len(ok) < len(runs) else ""),
                fmt(cpu / flup_cpu) if cpu and flup_cpu else "–",
                f"{sum(1 for r in runs if r.get('alive'))}/{len(runs)}"]) + " |")
    return {"records": records, "table": "\n".join(lines)}


# --- memory mode: 1 GiB through nginx


def sample_rss(proc: Proc, stop: threading.Event, samples: List[Tuple[float, Dict[int, float]]]) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        snap = {}
        for pid in proc.pids():
            rss = rss_mib(pid)
            if rss is not None:
                snap[pid] = rss
        samples.append((time.monotonic() - t0, snap))
        time.sleep(0.05)


def mode_memory(args: argparse.Namespace, opts: Options) -> Dict[str, Any]:
    records = []
    gib = 1 << 30
    for pool in args.pools:
        name, backend = pool.label, pool.backend
        tmp = Path(tempfile.mkdtemp(prefix="wsgi_fcgi-bench-"))
        sock = str(tmp / "backend.sock")
        upload = tmp / "upload.bin"
        with open(upload, "wb") as f:
            f.truncate(gib)  # sparse: reads as zeros, costs no disk
        proc = nginx = None
        rec: Dict[str, Any] = {"backend": name}
        try:
            proc = pool.start(sock, "apps:application", tmp / "backend.log")
            wait_unix_socket(sock, proc)
            nginx = Nginx(tmp, sock, backend.upstream, opts.keep_conn, opts.nginx, opts.big_buffers)
            warm_up(nginx.port, WORKLOADS["hello"], 2 * pool.workers)
            time.sleep(0.5)
            rec["idle"] = backend_memory(proc, backend)
            master = proc.popen.pid if backend.has_master else None
            for kind, argv in (
                ("download", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                              f"http://127.0.0.1:{nginx.port}/stream/big_1g"]),
                ("upload", ["curl", "-sS", "-T", str(upload), "-X", "POST", "-H",
                            "Content-Type: application/octet-stream", "-w", " %{http_code}",
                            f"http://127.0.0.1:{nginx.port}/stream/post"]),
            ):
                samples: List[Tuple[float, Dict[int, float]]] = []
                stop = threading.Event()
                sampler = threading.Thread(target=sample_rss, args=(proc, stop, samples), daemon=True)
                before = {pid: rss_mib(pid) for pid in proc.pids()}
                sampler.start()
                t0 = time.monotonic()
                r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
                elapsed = time.monotonic() - t0
                stop.set()
                sampler.join()
                worker_max = max((rss for _, snap in samples for pid, rss in snap.items() if pid != master),
                                 default=None)
                worker_before = max((v for pid, v in before.items() if pid != master and v), default=None)
                after = {pid: rss_mib(pid) for pid in proc.pids()}
                worker_after = max((v for pid, v in after.items() if pid != master and v), default=None)
                ok = (r.stdout.strip() == f"200 {gib}" if kind == "download"
                      else r.stdout.strip().startswith(f"{gib} ") and r.stdout.strip().endswith(" 200"))
                rec[kind] = {"ok": ok, "answer": r.stdout.strip()[:80], "stderr": r.stderr.strip()[:200],
                             "seconds": round(elapsed, 2), "MiB_per_s": round(1024 / elapsed, 1),
                             "worker_rss_before": worker_before, "worker_rss_max": worker_max,
                             "worker_rss_after": worker_after, "samples": len(samples)}
            rec["alive"] = health(nginx.port, WORKLOADS["hello"])
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if nginx is not None:
                nginx.proc.stop(opts.grace)
            if proc is not None:
                proc.stop(opts.grace)
            shutil.rmtree(tmp, ignore_errors=True)
        records.append(rec)
        print(f"memory {name}: {json.dumps({k: v for k, v in rec.items() if k != 'idle'})}", file=sys.stderr,
              flush=True)
    lines = ["| backend | worker RSS idle | 1 GiB download: RSS before → max during → after | MiB/s | "
             "1 GiB upload: RSS before → max during → after | MiB/s | alive |", "|" + "---|" * 7]
    for rec in records:
        cells = [rec["backend"]]
        idle = rec.get("idle")
        cells.append(fmt(max(w["rss"] for w in idle["workers"]), 1) if idle and idle["workers"] else "–")
        for kind in ("download", "upload"):
            d = rec.get(kind)
            if not d:
                cells += [rec.get("error", "–")[:60], "–"]
                continue
            text = f"{fmt(d['worker_rss_before'], 1)} → {fmt(d['worker_rss_max'], 1)} → {fmt(d['worker_rss_after'], 1)}"
            if not d["ok"]:
                text += f" ⚠ {d['answer'] or d['stderr']}"
            cells += [text, fmt(d["MiB_per_s"], 0)]
        cells.append(str(rec.get("alive", "–")))
        lines.append("| " + " | ".join(cells) + " |")
    return {"records": records, "table": "\n".join(lines)}


# --- diagnostics: strace -c and py-spy


def parse_strace_c(text: str) -> Dict[str, int]:
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
            # % time, seconds, usecs/call, calls, [errors], syscall
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                pass
    return calls


def sequential(port: int, workload: Workload, count: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    body = POST_1M if workload.body else None
    good = 0
    try:
        for _ in range(count):
            status, data = http_request(port, workload.path, body, conn=conn)
            good += workload.check(status, data)
    finally:
        conn.close()
    return good


def mode_trace(args: argparse.Namespace, opts: Options) -> Dict[str, Any]:
    workloads = args.diag_workloads.split(",")
    records = []
    n = args.trace_requests
    for pool in args.pools:
        name, backend = pool.label, pool.backend
        for wname in workloads:
            workload = WORKLOADS[wname]
            if not backend.serves(workload):
                continue
            tmp = Path(tempfile.mkdtemp(prefix="wsgi_fcgi-bench-"))
            sock = str(tmp / "backend.sock")
            proc = nginx = strace = None
            rec: Dict[str, Any] = {"backend": name, "workload": wname, "requests": n}
            try:
                proc = pool.start(sock, workload.app, tmp / "backend.log")
                wait_unix_socket(sock, proc)
                nginx = Nginx(tmp, sock, backend.upstream, opts.keep_conn, opts.nginx, opts.big_buffers)
                warm_up(nginx.port, workload, 2 * pool.workers)
                time.sleep(0.3)
                # 1. one request, every syscall (the shape of a request)
                out1 = opts.results / f"strace-{name}-{wname}-one.txt"
                argv = ["strace", "-f", "-s", "48", "-o", str(out1)]
                for pid in proc.pids():
                    argv += ["-p", str(pid)]
                strace = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                sequential(nginx.port, workload, 1)
                time.sleep(0.2)
                strace.send_signal(signal.SIGINT)
                strace.wait(10)
                # 2. strace -c over n sequential requests
                out2 = opts.results / f"strace-{name}-{wname}-c.txt"
                argv = ["strace", "-f", "-c", "-o", str(out2)]
                for pid in proc.pids():
                    argv += ["-p", str(pid)]
                strace = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                rec["good"] = sequential(nginx.port, workload, n)
                time.sleep(0.2)
                strace.send_signal(signal.SIGINT)
                strace.wait(10)
                strace = None
                calls = parse_strace_c(out2.read_text())
                rec["per_request"] = {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
                rec["total_per_request"] = sum(calls.values()) / n
                rec["alive"] = health(nginx.port, workload)
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                if strace is not None and strace.poll() is None:
                    strace.send_signal(signal.SIGINT)
                    strace.wait(10)
                if nginx is not None:
                    nginx.proc.stop(opts.grace)
                if proc is not None:
                    proc.stop(opts.grace)
                shutil.rmtree(tmp, ignore_errors=True)
            records.append(rec)
            print(f"trace {name} {wname}: {rec.get('total_per_request', rec.get('error'))}", file=sys.stderr,
                  flush=True)
    lines = [f"Syscalls per request, whole backend process tree, strace -f -c over {n} sequential requests "
             "through nginx (calls with count/request ≥ 0.5 listed):", "",
             "| backend | " + " | ".join(workloads) + " |", "|" + "---|" * (len(workloads) + 1)]
    for name in (p.label for p in args.pools):
        row = [name]
        for wname in workloads:
            rec = next((r for r in records if r["backend"] == name and r["workload"] == wname), None)
            if rec is None or "per_request" not in rec:
                row.append("–" if rec is None else rec.get("error", "–")[:50])
                continue
            top = ", ".join(f"{k} {v:.1f}" for k, v in rec["per_request"].items() if v >= 0.5)
            row.append(f"**{rec['total_per_request']:.1f}**: {top}")
        lines.append("| " + " | ".join(row) + " |")
    return {"records": records, "table": "\n".join(lines)}


def aggregate_pyspy(raw: str, top: int = 25) -> Dict[str, Any]:
    """py-spy --format raw: 'frame;frame;... count' with frames 'func (file:line)'."""
    self_fn: Dict[str, int] = {}
    total_fn: Dict[str, int] = {}
    self_line: Dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        # skip the process/thread label frames py-spy may prepend
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        seen = set()
        for frame in frames:
            fn = _function_of(frame)
            if fn not in seen:
                total_fn[fn] = total_fn.get(fn, 0) + count
                seen.add(fn)
        leaf = frames[-1]
        self_fn[_function_of(leaf)] = self_fn.get(_function_of(leaf), 0) + count
        self_line[_short(leaf)] = self_line.get(_short(leaf), 0) + count

    def topn(d: Dict[str, int]) -> List[Tuple[str, float]]:
        return [(k, 100 * v / samples) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]] if samples else []

    # inclusive: leave out the frames every sample goes through (runpy, cli, the master's spawn path)
    inner = {k: v for k, v in total_fn.items() if v < 0.97 * samples}
    return {"samples": samples, "self": topn(self_fn), "total": topn(inner), "lines": topn(self_line)}


def _short(frame: str) -> str:
    """'func (/long/path/wsgi_fcgi/worker.py:123)' -> 'func (wsgi_fcgi/worker.py:123)'."""
    m = re.match(r"(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, where = m.groups()
    for prefix in (str(REPO) + "/", str(VENV) + "/lib/python3.11/site-packages/"):
        where = where.replace(prefix, "")
    where = re.sub(r"^.*/lib/python3\.\d+/", "stdlib/", where)
    return f"{func} ({where})"


def _function_of(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", _short(frame))


def mode_profile(args: argparse.Namespace, opts: Options) -> Dict[str, Any]:
    pyspy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if not pyspy:
        raise SystemExit("py-spy not found: bench/setup.sh installs it into bench/.venv")
    workloads = args.diag_workloads.split(",")
    pool = parse_pool(args.profile_backend, opts.workers, args.threads)
    name, backend = pool.label, pool.backend
    sections = []
    records = []
    for wname in workloads:
        workload = WORKLOADS[wname]
        tmp = Path(tempfile.mkdtemp(prefix="wsgi_fcgi-bench-"))
        sock = str(tmp / "backend.sock")
        proc = nginx = None
        rec: Dict[str, Any] = {"backend": name, "workload": wname}
        try:
            proc = pool.start(sock, workload.app, tmp / "backend.log")
            wait_unix_socket(sock, proc)
            nginx = Nginx(tmp, sock, backend.upstream, opts.keep_conn, opts.nginx, opts.big_buffers)
            warm_up(nginx.port, workload, 2 * pool.workers)
            workers = [p for p in proc.pids() if p != proc.popen.pid] if backend.has_master else proc.pids()
            target = workers[0]
            for gil in (False, True):
                out = opts.results / f"pyspy-{name}-{wname}{'-gil' if gil else ''}.txt"
                argv = [pyspy, "record", "--pid", str(target), "--duration", str(int(opts.duration)),
                        "--rate", "250", "--format", "raw", "--output", str(out)]
                if gil:
                    argv.append("--gil")
                spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(0.5)
                wrk = run_wrk(nginx.port, workload, 16, opts.duration + 1)
                err = spy.communicate(timeout=60)[1].decode(errors="replace")
                if not out.exists():
                    raise RuntimeError(f"py-spy wrote nothing: {err[-300:]}")
                agg = aggregate_pyspy(out.read_text())
                agg["rps_under_profiler"] = wrk["requests"] / (wrk["duration_us"] / 1e6)
                rec["gil" if gil else "wall"] = agg
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if nginx is not None:
                nginx.proc.stop(opts.grace)
            if proc is not None:
                proc.stop(opts.grace)
            shutil.rmtree(tmp, ignore_errors=True)
        records.append(rec)
        if "error" in rec:
            sections.append(f"### {name} {wname}: {rec['error']}")
            continue
        for kind, title in (("gil", "GIL-holding samples (Python CPU)"), ("wall", "non-idle wall-clock samples")):
            agg = rec[kind]
            sections.append(f"### py-spy, {name} worker, {wname} c16: {title}, {agg['samples']} samples")
            sections.append("")
            sections.append("| self % | function | | total % | function (inclusive) | | self % | line |")
            sections.append("|---|---|---|---|---|---|---|---|")
            for i in range(min(15, len(agg["self"]))):
                s = agg["self"][i]
                t = agg["total"][i] if i < len(agg["total"]) else ("", 0)
                ln = agg["lines"][i] if i < len(agg["lines"]) else ("", 0)
                sections.append(f"| {s[1]:.1f} | `{s[0]}` | | {t[1]:.1f} | `{t[0]}` | | {ln[1]:.1f} | `{ln[0]}` |")
            sections.append("")
    return {"records": records, "table": "\n".join(sections)}


# ---------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("-w", "--workers", type=int, default=2, help="worker processes per backend (default 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads per worker process for every backend (default 1: each backend's plain "
                         "prefork command, no thread option); libfcgi-c stays at 1")
    ap.add_argument("--cells", default=DEFAULT_CELLS, help=f"workload:connections,… (default {DEFAULT_CELLS}); "
                    f"workloads: {', '.join(WORKLOADS)}")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help=f"comma-separated, in run order (default {','.join(BACKENDS)}); NAME:THREADS or "
                         "NAME:WORKERSxTHREADS overrides -w/--threads for that row, e.g. "
                         "wsgi_fcgi:16,wsgi_fcgi:1 or wsgi_fcgi:2x16,wsgi_fcgi:32x1")
    ap.add_argument("--keep-conn", action="store_true", help="fastcgi_keep_conn on + upstream keepalive 32")
    ap.add_argument("--big-buffers", action="store_true",
                    help="nginx fastcgi/proxy/uwsgi_buffers 16 64k instead of the default 8 4k")
    ap.add_argument("--wsgi-fcgi-args", default="", help="extra arguments for python -m wsgi_fcgi (e.g. --preload)")
    ap.add_argument("--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL (default 3)")
    ap.add_argument("--nginx", default=shutil.which("nginx", path="/usr/sbin:/usr/bin") or "nginx")
    ap.add_argument("--wait-load", type=float, default=None, metavar="L",
                    help="first wait (polling every 30 s) until the 1-minute load is below L")
    ap.add_argument("--wait-max", type=float, default=900, help="…for at most this many seconds (default 900)")
    ap.add_argument("--src", default=None, metavar="DIR",
                    help="run wsgi_fcgi from DIR/wsgi_fcgi (e.g. an earlier run's results/…/src) instead of a new copy")
    ap.add_argument("--out", default=None, help="results directory (default bench/results/<timestamp>)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--direct", action="store_true", help="no web server: fcgiload.py straight to the socket")
    mode.add_argument("--memory", action="store_true", help="RSS during a 1 GiB download and a 1 GiB upload")
    mode.add_argument("--diag", choices=("trace", "profile"), help="strace -c per workload / py-spy profile")
    ap.add_argument("--direct-procs", type=int, default=2, help="load generator processes (default 2)")
    ap.add_argument("--direct-workloads", default="hello,json_1k,big_1m,post_1m,flask")
    ap.add_argument("--diag-workloads", default=None,
                    help="default: hello,json_1k,big_1m,post_1m,flask (trace), hello,big_1m (profile)")
    ap.add_argument("--trace-requests", type=int, default=200)
    ap.add_argument("--profile-backend", default="wsgi_fcgi", help="NAME[:THREADS | :WORKERSxTHREADS]")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run DIR/wsgi_fcgi as backend wsgi_fcgi-base, interleaved with the others, to "
                         "compare two versions (e.g. a `git worktree` of an earlier commit); it runs with 1 "
                         "thread unless --backends names it (wsgi_fcgi-base:4)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.workers < 1:
        raise SystemExit("-w and --threads are at least 1")
    if args.diag_workloads is None:
        args.diag_workloads = "hello,json_1k,big_1m,post_1m,flask" if args.diag == "trace" else "hello,big_1m"
    if args.wsgi_fcgi_args:
        BACKENDS["wsgi_fcgi"].extra_args = args.wsgi_fcgi_args.split()
    if args.baseline:
        base = Path(args.baseline).resolve()
        if not (base / "wsgi_fcgi" / "__init__.py").exists():
            raise SystemExit(f"--baseline {args.baseline}: no wsgi_fcgi package there")
        BACKENDS["wsgi_fcgi-base"] = Backend("wsgi_fcgi-base", "fastcgi", True, _wsgi_fcgi, src=base,
                                             extra_args=BACKENDS["wsgi_fcgi"].extra_args)
        FASTCGI_BACKENDS.append("wsgi_fcgi-base")
    args.pools = parse_pools(args.backends, args.workers, args.threads)
    if args.baseline and not any(p.backend.name == "wsgi_fcgi-base" for p in args.pools):
        # after the last wsgi_fcgi row; 1 thread, since a baseline is usually code from before --threads
        after = [i for i, p in enumerate(args.pools) if p.backend.name == "wsgi_fcgi"]
        args.pools.insert(after[-1] + 1 if after else 0, Pool("wsgi_fcgi-base", BACKENDS["wsgi_fcgi-base"],
                                                              args.workers, 1))
    if any(p.backend.name == "libfcgi-c" for p in args.pools) and not C_HELLO.exists():
        raise SystemExit(f"{C_HELLO} is missing: run bash bench/setup.sh (or gcc -O2 -o {C_HELLO} "
                         f"{C_HELLO}.c -lfcgi -lz)")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode_name = "direct" if args.direct else "memory" if args.memory else f"diag-{args.diag}" if args.diag else "matrix"
    results = Path(args.out) if args.out else BENCH / "results" / f"{stamp}-{mode_name}"
    results.mkdir(parents=True, exist_ok=True)
    opts = Options(args.duration, args.workers, args.keep_conn, args.grace, args.nginx, results, args.verbose,
                   args.big_buffers)

    set_child_subreaper()
    source = snapshot_source(results, args.src)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    load_note = wait_for_load(args.wait_load, args.wait_max) if args.wait_load else ""
    load_start = Path("/proc/loadavg").read_text().strip()
    command = " ".join(["bench/.venv/bin/python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    info = machine_info() + "\n" + source
    started = time.monotonic()
    try:
        if args.direct:
            result = mode_direct(args, opts)
        elif args.memory:
            result = mode_memory(args, opts)
        elif args.diag == "trace":
            result = mode_trace(args, opts)
        elif args.diag == "profile":
            result = mode_profile(args, opts)
        else:
            result = mode_matrix(args, opts)
    except KeyboardInterrupt:
        print("bench: interrupted, stopping everything", file=sys.stderr)
        return 130
    finally:
        Proc.stop_all(grace=1.0)
    elapsed = time.monotonic() - started
    summary = [f"# wsgi_fcgi bench: {mode_name}, {stamp}", "", "```", f"$ {command}", info,
               f"loadavg at start: {load_start}" + (f" ({load_note})" if load_note else ""),
               f"loadavg at end:   {Path('/proc/loadavg').read_text().strip()}",
               f"wall time: {elapsed:.0f}s", "```", "", result["table"], ""]
    if result.get("memory"):
        summary += ["### Memory (MiB; idle = booted, before any request)", "", result["memory"], ""]
    text = "\n".join(summary)
    (results / "summary.md").write_text(text)
    (results / "results.json").write_text(json.dumps({"command": command, "machine": info, "load_start": load_start,
                                                      "load_note": load_note, **result}, indent=1, default=str))
    print(text)
    print(f"\nraw results: {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
