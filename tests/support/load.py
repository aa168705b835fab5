"""Bounded load runs for the kept-alive connection tests (tests/test_keepalive.py).

- ``KeepaliveNginx``: nginx with the documented sites, either
  ``app-keepalive.conf`` + ``upstream-keepalive.conf`` (``fastcgi_keep_conn
  on``, an upstream ``keepalive`` pool whose size the test chooses) or
  ``app-root.conf`` (a new connection per request), with room for the
  load's connections and an access log of what happened upstream
  (``$upstream_status`` lists every attempt: a request nginx retried after
  a cached connection failed shows two).
- ``ReuseApache``: Apache with the documented ``enablereuse=on`` site and
  several child processes (mpm_event or mpm_prefork), each with its own
  pool of kept connections; its access log names the child (``%P``).
- ``Wrk`` / ``run_wrk``: wrk with ``wrk_summary.lua``, parsed into a
  ``WrkResult`` (requests, non-2xx, socket errors, latency percentiles).
  Started in its own session and stopped by PID like every test process.
- ``machine_load`` / ``wait_until_not_pegged``: the machine is shared;
  failure counts do not depend on its load, latencies do, so the tests
  record it next to every latency they report.
- ``connections_of``, ``stopped``: how many connections
  on the app's socket each worker holds, counted while the worker is
  stopped (SIGSTOP) so the count is one instant, not a smear.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from .processes import ManagedProcess, ProcessError
from .waiting import wait_for
from .webservers import Apache, Nginx, require_executable

WRK_SCRIPT = Path(__file__).with_name("wrk_summary.lua")
UPSTREAM_LOG_FORMAT = "keepalive_test"
# One line per request: status to the client, every upstream attempt's status
# and address (comma-separated when nginx retried), times.
UPSTREAM_LOG = (
    f"log_format {UPSTREAM_LOG_FORMAT} '$status|$upstream_status|$upstream_addr|$request_time';\n"
    f"access_log logs/upstream.log {UPSTREAM_LOG_FORMAT};\n"
)
# nginx.conf (the test wrapper) allows 64 connections per nginx worker: the
# load's 64 clients plus as many upstream connections need more.
WORKER_CONNECTIONS = 1024


class KeepaliveNginx(Nginx):
    """nginx in front of wsgi_fcgi on the unix socket ``socket``.

    ``keepalive=N``: the documented kept-alive setup (app-keepalive.conf,
    upstream-keepalive.conf) with ``keepalive N;`` in the upstream block.
    ``keepalive=None``: app-root.conf, one connection per request.
    """

    def __init__(self, root: Path, socket: Path, keepalive: Optional[int]) -> None:
        if keepalive is None:
            super().__init__(root, "app-root.conf", {"socket": socket})
        else:
            super().__init__(root, "app-keepalive.conf", {"backend": f"unix:{socket}"},
                             http_site="upstream-keepalive.conf")  # fmt: skip
        self.keepalive = keepalive

    def render(self) -> None:
        super().render()
        http_extra = self.conf_dir / "http-extra.conf"
        text = http_extra.read_text()
        if self.keepalive is not None:
            text, count = re.subn(r"(?m)^(\s*keepalive\s+)\d+;", rf"\g<1>{self.keepalive};", text)
            assert count == 1, f"no single `keepalive N;` line in upstream-keepalive.conf:\n{text}"
        http_extra.write_text(text + UPSTREAM_LOG)
        conf = self.conf_dir / "nginx.conf"
        text, count = re.subn(r"worker_connections\s+\d+;", f"worker_connections {WORKER_CONNECTIONS};",
                              conf.read_text())  # fmt: skip
        assert count == 1, "no `worker_connections N;` in examples/nginx/nginx.conf"
        conf.write_text(text)
        (self.root / "logs" / "upstream.log").unlink(missing_ok=True)

    def upstream_log(self) -> List["UpstreamEntry"]:
        path = self.root / "logs" / "upstream.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [UpstreamEntry.parse(line) for line in lines if line.strip()]

    def error_lines(self, level_pattern: str = r"\[(error|crit|alert|emerg)\]") -> List[str]:
        """Error-log lines at level error or worse."""
        try:
            text = (self.root / "logs" / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if re.search(level_pattern, line)]


@dataclass
class UpstreamEntry:
    status: int
    upstream_statuses: List[str]
    upstream_addrs: List[str]
    request_time: float

    @classmethod
    def parse(cls, line: str) -> "UpstreamEntry":
        status, upstream_status, addrs, request_time = line.split("|")
        # "502, 200" (two attempts) or "502 : 200" (two upstream groups)
        split = lambda s: [p.strip() for p in re.split(r"[,:]\s", s) if p.strip()]  # noqa: E731
        return cls(int(status), split(upstream_status), split(addrs), float(request_time))

    @property
    def attempts(self) -> int:
        return len(self.upstream_statuses)


# Several Apache children, each with its own pool of kept FastCGI
# connections: the setup that hangs a FastCGI server whose worker blocks on
# one kept connection. The directives go at server level (the site file is
# included there); ServerLimit/MaxRequestWorkers pin the number of children.
APACHE_MPM = {
    "event": (
        "StartServers 4\nServerLimit 4\nThreadsPerChild 8\nThreadLimit 8\nMaxRequestWorkers 32\n"
        "MinSpareThreads 32\nMaxSpareThreads 40\n"
    ),
    "prefork": (
        "StartServers 8\nServerLimit 8\nMinSpareServers 8\nMaxSpareServers 8\nMaxRequestWorkers 8\n"
    ),
}
APACHE_CHILD_LOG = (
    'LogFormat "%P %>s %D %r" keepalive_test\n'
    'CustomLog "{{root}}/logs/children.log" keepalive_test\n'
)


class ReuseApache(Apache):
    """Apache with ``site`` (proxypass-mounted-reuse.conf: the app at /app/)
    and ``mpm`` ("event": 4 children x 8 threads; "prefork": 8 children)."""

    def __init__(self, root: Path, site: str, values: Mapping[str, object], *, mpm: str = "event") -> None:
        super().__init__(root, site, values)
        self.mpm = mpm

    def render(self) -> None:
        super().render()
        site = self.conf_dir / "site.conf"
        site.write_text(site.read_text() + APACHE_MPM[self.mpm] + APACHE_CHILD_LOG.replace("{{root}}", str(self.root)))
        if self.mpm != "event":
            conf = self.conf_dir / "httpd.conf"
            text, count = re.subn(r"(?m)^LoadModule mpm_event_module .*$",
                                  f"LoadModule mpm_{self.mpm}_module {self.modules_dir}/mod_mpm_{self.mpm}.so",
                                  conf.read_text())  # fmt: skip
            assert count == 1, "no `LoadModule mpm_event_module` line in examples/apache/httpd.conf"
            conf.write_text(text)

    def children_log(self) -> List[Tuple[int, int, float, str]]:
        """(child pid, status, seconds, request line) per request."""
        try:
            lines = (self.root / "logs" / "children.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            pid, status, micros, request = line.split(" ", 3)
            entries.append((int(pid), int(status), int(micros) / 1e6, request))
        return entries


# -- wrk -------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    errors: Dict[str, int]  # connect, read, write, timeout (socket errors), status (>= 400)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    text: str = field(repr=False, default="")

    @property
    def socket_errors(self) -> int:
        return sum(self.errors[k] for k in ("connect", "read", "write", "timeout"))

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def summary(self) -> str:
        return (f"{self.requests} requests in {self.duration_s:.1f} s ({self.rps:.0f}/s), "
                f"non-2xx {self.non_2xx}, socket errors {self.socket_errors} {self.errors}, "
                f"latency p50 {self.p50_ms:.1f} ms, p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
                f"max {self.max_ms:.1f} ms")  # fmt: skip

    @classmethod
    def parse(cls, text: str) -> "WrkResult":
        match = re.search(r"^WRKJSON (.*)$", text, re.M)
        if not match:
            raise ProcessError(f"wrk printed no summary line:\n{text}")
        data = json.loads(match.group(1))
        lat = data["latency_us"]
        return cls(data["requests"], data["duration_us"] / 1e6, data["non2xx"], data["errors"],
                   lat["p50"] / 1000, lat["p90"] / 1000, lat["p99"] / 1000, lat["max"] / 1000, text)  # fmt: skip


class Wrk(ManagedProcess):
    """``wrk -tT -cC -dDs --latency --timeout S -s wrk_summary.lua URL`` as a
    managed process: ``start()``, then ``result()`` waits for it (bounded)."""

    def __init__(self, url: str, log_path: Path, *, connections: int, duration: float, threads: int = 2,
                 timeout: float = 5.0, body_bytes: int = 0) -> None:
        binary = require_executable("wrk", package="wrk")
        self.duration = duration
        self.argv_summary = f"wrk -t{threads} -c{connections} -d{duration:g}s --latency --timeout {timeout:g}s"
        super().__init__(
            [binary, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
             "--timeout", f"{timeout:g}s", "-s", str(WRK_SCRIPT), url],
            name="wrk", log_path=log_path, env={**os.environ, "WRK_BODY_BYTES": str(body_bytes)},
        )  # fmt: skip

    def result(self) -> WrkResult:
        code = self.wait(self.duration + 30)
        if code is None:
            self.stop()
            raise ProcessError(f"{self.describe()} still running {self.duration + 30:g} s after its start")
        if code != 0:
            raise ProcessError(f"{self.describe()} exited with {code}:\n{self.output_text()}")
        return WrkResult.parse(self.output_text())


def run_wrk(url: str, log_path: Path, **options: object) -> WrkResult:
    wrk = Wrk(url, log_path, **options)  # type: ignore[arg-type]
    wrk.start()
    try:
        return wrk.result()
    finally:
        wrk.stop()


# -- the shared machine ----------------------------------------------------------------


def _cpu_times() -> Tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def machine_load(sample: float = 0.5) -> Dict[str, float]:
    """1-minute load average, CPUs, and the share of CPU time busy over ``sample`` s."""
    total0, idle0 = _cpu_times()
    time.sleep(sample)
    total1, idle1 = _cpu_times()
    with open("/proc/loadavg") as f:
        load1 = float(f.read().split()[0])
    busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    return {"loadavg1": load1, "cpus": float(os.cpu_count() or 1), "busy": round(busy, 2)}


def describe_load(load: Mapping[str, float]) -> str:
    return f"loadavg {load['loadavg1']:.2f} on {load['cpus']:.0f} CPUs, {load['busy']:.0%} busy"


def wait_until_not_pegged(timeout: float = 20.0, busy_limit: float = 0.9) -> Dict[str, float]:
    """Wait (up to ``timeout``) until the CPUs are not all busy with someone
    else's work; return the last sample either way. Only latencies suffer
    from a loaded machine, and the tests assert on failure counts."""
    deadline = time.monotonic() + timeout
    while True:
        load = machine_load()
        if load["busy"] < busy_limit or time.monotonic() >= deadline:
            return load


# -- connections per worker ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connected_inodes(path: Path) -> Set[str]:
    """Inodes of the accepted (state 03: connected) sockets on the unix socket at ``path``."""
    inodes = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path) and fields[5] == "03":
                inodes.add(fields[6])
    return inodes


def _socket_inodes(pid: int) -> Set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def connections_of(pids: Sequence[int], path: Path) -> Dict[int, int]:
    """pid -> connections on the socket at ``path`` that the process holds open."""
    accepted = _connected_inodes(path)
    return {pid: len(_socket_inodes(pid) & accepted) for pid in pids}


@contextmanager
def stopped(pids: Sequence[int]) -> Iterator[List[int]]:
    """SIGSTOP ``pids`` (those still there), SIGCONT them on the way out, always."""
    held: List[int] = []
    try:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                held.append(pid)
            except ProcessLookupError:
                pass
        for pid in held:  # wait until each is really stopped (state T), or gone
            wait_for(lambda pid=pid: _state(pid) in ("T", "t", "", "Z"), 5, f"process {pid} to stop")
        yield held
    finally:
        for pid in held:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2 :][:1].decode()
