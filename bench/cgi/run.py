#!/usr/bin/env python3
"""CGI vs FastCGI for the same Flask app: what switching the handler gains.

    .venv/bin/python bench/cgi/run.py                  # 3 rounds, wrk -t1 -c4 -d5s, GET /hello/bench
    .venv/bin/python bench/cgi/run.py --rounds 1 --duration 3 --setups cgi,fcgid

Setups, all serving examples/flask_app with the configs the tests run
(tests/test_apache_cgi.py, test_apache_fcgid.py, test_nginx.py):

- ``cgi``:   Apache (event MPM) + mod_cgid runs dispatch.fcgi as CGI,
             examples/apache/cgi-scriptalias.conf -- a process per request;
- ``fcgid``: Apache + mod_fcgid spawns the same dispatch.fcgi,
             examples/apache/fcgid-scriptalias.conf (FcgidMaxRequestsPerProcess 0);
- ``nginx``: nginx -> ``python -m wsgi_fcgi --workers 2`` on a unix socket,
             examples/nginx/app-root.conf.

The app runs as www-data from a virtualenv of the system python3 (what a
shared-hosting user has) in all three. Each round starts the setup afresh,
warms it up (mod_fcgid: until it has spawned its processes), snapshots the
CPU time of the server's whole process tree, runs wrk, waits for the tree
to be idle again, snapshots, and stops everything by PID. Rounds are
interleaved (cgi fcgid nginx, cgi fcgid nginx, ...) and medians reported.

CPU accounting: a process tree's CPU is each member's utime+stime plus the
cutime+cstime of the children it reaped (read from /proc when no short-lived
child is running). That misses the CGI processes: mod_cgid's daemon ignores
SIGCHLD, so the kernel reaps them and their CPU reaches no parent. So each
Python process of the bench's virtualenv reports its own ``os.times()`` at
exit (a ``.pth`` hook installed in that virtualenv only, appending one line
to a log), which covers both interpreters a CGI request runs (dispatch.fcgi
re-executes itself with the virtualenv's python; CPU time survives exec).
Interpreter teardown after atexit is not counted: the CGI figures are a
lower bound.

Shared machine: before every run the 1-minute load average must be below
--max-load, polled every 30 s; waits add up to --max-wait seconds at most,
after which runs start anyway and are marked with "!" in the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import FLASK_APP_DIR  # noqa: E402
from support.processes import WsgiFcgiServer  # noqa: E402
from support.sites import hosting_home  # noqa: E402
from support.webservers import (UNPRIVILEGED_USER, Apache, Nginx, hosting_venv,  # noqa: E402
                                shared_temp_dir)
from test_apache_cgi import ApacheCGI  # noqa: E402  (httpd.conf + mod_cgid, as the tests run it)

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETUPS = ("cgi", "fcgid", "nginx")
PATH = "/hello/bench"
EXPECTED = b"Hello, bench!"


# --- measuring --------------------------------------------------------------------------

def _stat(pid: int) -> Optional[Tuple[int, float]]:
    """(ppid, utime+stime+cutime+cstime in seconds) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    ppid = int(fields[1])
    ticks = sum(int(x) for x in fields[11:15])
    return ppid, ticks / CLK_TCK


def tree(root: int) -> Dict[int, float]:
    """pid -> CPU seconds (own + reaped children) of ``root`` and its descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    members = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return {pid: stats[pid][1] for pid in members if pid in stats}


def idle_cpu(roots: List[int], steady: Callable[[], bool], cpu_log: Optional[Path], timeout: float = 30.0) -> float:
    """Total CPU seconds of the trees under ``roots``, plus what exited
    processes reported in ``cpu_log`` if given (only for processes nobody
    reaps: anything else would be counted twice), read once ``steady()`` says
    no short-lived child is running (so none is counted twice or lost)."""
    deadline = time.monotonic() + timeout
    while not steady() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    total = sum(sum(tree(r).values()) for r in roots)
    if cpu_log is not None:
        total += sum(float(line.split()[1]) for line in cpu_log.read_text().splitlines())
    return total


CPU_HOOK = """\
import atexit, os


def _report():
    t = os.times()
    try:
        with open({log!r}, "a") as f:
            f.write("%d %.6f\\n" % (os.getpid(), t.user + t.system + t.children_user + t.children_system))
    except OSError:
        pass


atexit.register(_report)
"""


def install_cpu_hook(venv: Path, log: Path) -> None:
    """Every python of ``venv`` appends its pid and CPU seconds to ``log`` at exit."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "_wfcgi_bench_cpu.py").write_text(CPU_HOOK.format(log=str(log)))
    (site / "_wfcgi_bench_cpu.pth").write_text("import _wfcgi_bench_cpu\n")
    log.write_text("")
    log.chmod(0o666)  # written by the app as www-data


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_quiet(max_load: float, deadline: float) -> float:
    """The 1-minute load once it is below ``max_load`` (polled every 30 s), or
    whatever it is at ``deadline`` (time.monotonic())."""
    load = load1()
    while load >= max_load and time.monotonic() < deadline:
        print(f"  load {load:.2f} >= {max_load}: waiting 30 s", flush=True)
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
        load = load1()
    return load


@dataclass
class Run:
    setup: str
    round: int
    load_before: float
    requests: int
    seconds: float
    rps: float
    latency_avg_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    errors: int
    cpu_seconds: float
    cpu_ms_per_request: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> Dict[str, float]:
    m = re.search(r"(\d+) requests in ([\d.]+)(s|m)", out)
    assert m, out
    seconds = float(m.group(2)) * (60 if m.group(3) == "m" else 1)
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                    r"timeout (\d+)"):
        found = re.search(pattern, out)
        if found:
            errors += sum(int(g) for g in found.groups())
    return {
        "requests": int(m.group(1)),
        "seconds": seconds,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "latency_avg_ms": _ms(re.search(r"Latency\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "latency_p50_ms": _ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "latency_p99_ms": _ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "errors": errors,
    }


def wrk(url: str, threads: int, connections: int, duration: float) -> str:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s", url]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60).stdout


def get(url: str) -> bytes:
    out = subprocess.run(["curl", "-sf", "--max-time", "20", url], capture_output=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"GET {url} failed (curl exit {out.returncode})")
    return out.stdout


# --- setups ---------------------------------------------------------------------------------

class Setup:
    """A running server for one round: ``url``, ``roots`` (process trees to
    count), ``steady()`` (no short-lived child running)."""

    def __init__(self, name: str, base: Path, venv: Path, stack: ExitStack) -> None:
        self.name = name
        home = hosting_home(base, venv, FLASK_APP_DIR)
        self.marker = f"{home.root}/"
        self.roots: List[int] = []
        if name == "nginx":
            sock_dir = base / "sock"
            sock_dir.mkdir()
            sock_dir.chmod(0o755)
            server = WsgiFcgiServer(
                "app:app", ["--bind", f"unix:{sock_dir / 'app.sock'}", "--workers", "2", "--user", UNPRIVILEGED_USER,
                            "--chdir", str(home.app_dir)],
                workdir=base / "wsgi_fcgi", python=str(venv / "bin" / "python"))
            stack.callback(server.stop)
            server.start()
            web: Apache | Nginx = Nginx(base / "nginx", "app-root.conf", {"socket": sock_dir / "app.sock"})
            self.prefix = ""
            self.roots.append(server.pid)
        else:
            values = {"app_dir": home.fcgi_bin, "max_requests": 0}
            if name == "cgi":
                web = ApacheCGI(base / "apache", "cgi-scriptalias.conf", values)
            else:
                web = Apache(base / "apache", "fcgid-scriptalias.conf", values)
            self.prefix = "/app"
        stack.callback(web.stop)
        web.start()
        self.web = web
        self.roots.insert(0, web.pid)
        self.url = f"{web.url}{self.prefix}{PATH}"

    def app_pids(self) -> List[int]:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if self.marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
        return found

    def steady(self) -> bool:
        # CGI: no script process alive. The others keep theirs: nothing to wait for.
        return self.name != "cgi" or not self.app_pids()

    def warm_up(self) -> None:
        for _ in range(5):
            body = get(self.url)
            if body != EXPECTED:
                raise RuntimeError(f"{self.name}: unexpected body {body[:200]!r}")
        if self.name == "fcgid":
            # mod_fcgid spawns processes as requests queue, a few per second at
            # most: load it until the count stops growing.
            previous = -1
            for _ in range(10):
                wrk(self.url, 1, 4, 2)
                count = len(self.app_pids())
                if count == previous:
                    break
                previous = count
        else:
            wrk(self.url, 1, 4, 1)


def one_run(name: str, rnd: int, venv: Path, cpu_log: Path, args: argparse.Namespace) -> Run:
    load = wait_for_quiet(args.max_load, args.wait_until)
    base = shared_temp_dir(f"wfcgi-bench-{name}-")
    try:
        with ExitStack() as stack:
            setup = Setup(name, base, venv, stack)
            setup.warm_up()
            exited = cpu_log if name == "cgi" else None  # the CGI processes mod_cgid does not reap
            before = idle_cpu(setup.roots, setup.steady, exited)
            result = parse_wrk(wrk(setup.url, args.threads, args.connections, args.duration))
            after = idle_cpu(setup.roots, setup.steady, exited)
            if get(setup.url) != EXPECTED:
                raise RuntimeError(f"{name}: wrong answer after the run")
            cpu = after - before
            return Run(name, rnd, load, int(result["requests"]), result["seconds"], result["rps"],
                       result["latency_avg_ms"], result["latency_p50_ms"], result["latency_p99_ms"],
                       int(result["errors"]), cpu, 1000 * cpu / max(1, int(result["requests"])))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def summary(runs: List[Run], args: argparse.Namespace) -> str:
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, GET {PATH}; "
        f"median of {args.rounds} round(s); CPU = whole server process tree (web server + app)",
        "",
        "| setup | req/s | latency avg | p50 | p99 | CPU ms/request | errors | load at start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fastest: Dict[str, float] = {}
    for name in args.setups:
        mine = [r for r in runs if r.setup == name]
        if not mine:
            continue
        def med(key: str) -> float:
            return statistics.median(getattr(r, key) for r in mine)  # noqa: B023
        fastest[name] = med("rps")
        loads = "/".join(f"{r.load_before:.2f}" + ("!" if r.load_before >= args.max_load else "") for r in mine)
        lines.append(f"| {LABELS[name]} | {med('rps'):.1f} | {med('latency_avg_ms'):.1f} ms | "
                     f"{med('latency_p50_ms'):.1f} ms | {med('latency_p99_ms'):.1f} ms | "
                     f"{med('cpu_ms_per_request'):.2f} | {sum(r.errors for r in mine)} | {loads} |")
    if "cgi" in fastest:
        lines.append("")
        for name in ("fcgid", "nginx"):
            if name in fastest:
                lines.append(f"{LABELS[name]}: {fastest[name] / fastest['cgi']:.0f}x the requests per second of CGI")
    return "\n".join(lines)


LABELS = {
    "cgi": "Apache mod_cgid, dispatch.fcgi as CGI",
    "fcgid": "Apache mod_fcgid, dispatch.fcgi as FastCGI",
    "nginx": "nginx -> wsgi_fcgi --workers 2",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default=",".join(SETUPS), type=lambda s: s.split(","))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="wrk -d, seconds")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--connections", type=int, default=4, help="wrk -c")
    parser.add_argument("--max-load", type=float, default=0.8)
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="seconds, in all, to wait for the load to drop; then runs start anyway (marked !)")
    args = parser.parse_args()
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))} (known: {', '.join(SETUPS)})")
    if os.geteuid() != 0:
        parser.error("run as root: Apache and nginx are started with configs in temp dirs, the app as www-data")

    args.wait_until = time.monotonic() + args.max_wait
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = BENCH_DIR / "results" / stamp
    venv_base = shared_temp_dir("wfcgi-bench-venv-")
    runs: List[Run] = []
    try:
        venv = hosting_venv(venv_base / "venv", ["flask"])
        cpu_log = venv_base / "cpu.log"
        install_cpu_hook(venv, cpu_log)
        for rnd in range(args.rounds):
            for name in args.setups:
                print(f"round {rnd + 1}/{args.rounds}: {name}", flush=True)
                run = one_run(name, rnd, venv, cpu_log, args)
                print(f"  {run.rps:.1f} req/s, {run.latency_avg_ms:.1f} ms avg, "
                      f"{run.cpu_ms_per_request:.2f} CPU ms/request, load at start {run.load_before:.2f}", flush=True)
                runs.append(run)
    finally:
        shutil.rmtree(venv_base, ignore_errors=True)
    text = summary(runs, args)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    (out_dir / "summary.md").write_text(f"`{' '.join(sys.argv)}` at {stamp}\n\n{text}\n")
    print(text)
    print(f"\nwritten to {out_dir.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
