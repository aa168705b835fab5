#!/usr/bin/env python3
"""Idle memory of wsgi_fcgi against gunicorn's sync worker, for the same app.

    bench/.venv/bin/python bench/rss.py                       # flaskapp:app and apps:application, 3 runs
    bench/.venv/bin/python bench/rss.py --apps flaskapp:app -n 5
    bench/.venv/bin/python bench/rss.py --servers wsgi_fcgi --wsgi-fcgi-args=--preload
    bench/.venv/bin/python bench/rss.py --src /tmp/snapshot     # wsgi_fcgi from another source tree
    # without the editable install's import hook (it imports pathlib, urllib.parse, ipaddress at start-up):
    "$(bench/.venv/bin/python -c 'import sys; print(sys._base_executable)')" -m venv --without-pip /tmp/bare
    PYTHONPATH=$PWD/bench/.venv/lib/python3.11/site-packages \
        bench/.venv/bin/python bench/rss.py --python /tmp/bare/bin/python

Each run starts the server with 2 workers on a unix socket in a fresh temp
dir (cwd bench/, so bench/*.py apps import), waits until the socket listens,
both workers exist and their RSS has stopped changing (the app is imported
after the fork, so "the socket listens" is not enough), then reads Rss, Pss
and USS (Private_Clean + Private_Dirty) from /proc/PID/smaps_rollup of the
master and each worker. No request is sent: this is memory before the first
request. Everything started is stopped by process group: SIGTERM, SIGKILL
after a timeout.

The table gives medians over the runs, in MiB. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_PYTHON = BENCH / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
WORKERS = 2
BOOT_DEADLINE = 60.0  # seconds for the server to listen and both workers to settle
SETTLE_SAMPLES = 6  # a worker has booted when its RSS is the same over this many samples ...
SAMPLE_EVERY = 0.05  # ... taken this often (s)
STOP_GRACE = 5.0


def wsgi_fcgi_argv(python: str, sock: str, app: str, extra: List[str]) -> List[str]:
    # --allow-root: the bench runs as root (bench/run.py does the same)
    return [python, "-m", "wsgi_fcgi", "--bind", f"unix:{sock}", "--workers", str(WORKERS),
            "--log-level", "warning", "--allow-root", *extra, app]


def gunicorn_argv(python: str, sock: str, app: str, extra: List[str]) -> List[str]:
    return [python, "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", str(WORKERS),
            "--worker-class", "sync", "--log-level", "warning", *extra, app]


def proc_stats() -> Iterator[Tuple[int, List[str]]]:
    """(pid, the /proc/PID/stat fields after the command name) of every process:
    [0] is the state letter, [1] the parent pid, [2] the process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        yield int(entry), stat[stat.rindex(")") + 2:].split()


def children(pid: int) -> List[int]:
    return sorted(child for child, fields in proc_stats() if int(fields[1]) == pid)


def memory(pid: int) -> Tuple[float, float, float]:
    """(RSS, PSS, USS) in MiB. USS, the pages no other process maps, does not
    move when unrelated processes start or stop sharing libpython; PSS does."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    kib = {}
    for key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        kib[key] = int(m.group(1)) if m else 0
    return kib["Rss"] / 1024, kib["Pss"] / 1024, (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024


def vm_rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def listening(path: str) -> bool:
    """Whether a unix socket is bound to ``path`` and listening, seen in /proc/net/unix:
    a test connection would be accepted by a worker and touch its memory."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split(None, 7)
            # Flags 00010000 is __SO_ACCEPTCON: listen() was called
            if len(fields) == 8 and fields[7].strip() == path and int(fields[3], 16) & 0x10000:
                return True
    return False


def wait_ready(proc: subprocess.Popen, sock: str) -> List[int]:
    """The worker PIDs, once the socket listens and both workers' RSS is steady."""
    deadline = time.monotonic() + BOOT_DEADLINE
    history: Dict[int, List[int]] = {}
    is_listening = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        is_listening = is_listening or listening(sock)
        workers = children(proc.pid)
        for pid in workers:
            try:
                history.setdefault(pid, []).append(vm_rss_kib(pid))
            except OSError:
                history.pop(pid, None)
        steady = [pid for pid in workers
                  if len(history.get(pid, [])) >= SETTLE_SAMPLES
                  and len(set(history[pid][-SETTLE_SAMPLES:])) == 1]
        if is_listening and len(workers) == WORKERS and len(steady) == WORKERS:
            return workers
        time.sleep(SAMPLE_EVERY)
    raise RuntimeError(f"not ready after {BOOT_DEADLINE}s (listening={is_listening}, "
                       f"workers={children(proc.pid)})")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after STOP_GRACE."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure no worker outlived it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def measure(server: str, app: str, extra: List[str], src: str, python: str = PYTHON) -> Dict[str, object]:
    tmp = tempfile.mkdtemp(prefix="wsgi_fcgi-rss-")
    sock = os.path.join(tmp, "backend.sock")
    argv = (wsgi_fcgi_argv if server == "wsgi_fcgi" else gunicorn_argv)(python, sock, app, extra)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as deployed: see compile_sources()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(argv, cwd=str(BENCH), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"),
                            start_new_session=True)
    try:
        workers = wait_ready(proc, sock)
        master = memory(proc.pid)
        per_worker = [memory(pid) for pid in workers]
        return {"master": master, "workers": per_worker}
    except RuntimeError as exc:
        log = Path(tmp, "log").read_text()[-2000:]
        raise RuntimeError(f"{server} {app}: {exc}\n{log}") from None
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def compile_sources(python: str, src: str, apps: List[str]) -> None:
    """Write the bytecode caches first, as pip does at install time. A process that
    compiles wsgi_fcgi from source (PYTHONDONTWRITEBYTECODE=1, or a new snapshot)
    leaves the compiler's garbage in the master's heap: 2.3 MiB more in every worker."""
    files = [str(BENCH / f"{app.split(':')[0]}.py") for app in apps]
    files = [f for f in files if os.path.exists(f)]
    subprocess.run([python, "-m", "compileall", "-q", os.path.join(src, "wsgi_fcgi"), *files], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="flaskapp:app,apps:application",
                        help="comma-separated MODULE:APP (importable from bench/)")
    parser.add_argument("--servers", default="wsgi_fcgi,gunicorn")
    parser.add_argument("-n", "--runs", type=int, default=3)
    parser.add_argument("--wsgi-fcgi-args", default="", help="extra arguments for wsgi_fcgi (one string)")
    parser.add_argument("--gunicorn-args", default="", help="extra arguments for gunicorn (one string)")
    parser.add_argument("--src", default=str(REPO),
                        help="directory holding the wsgi_fcgi package to measure (default: this checkout)")
    parser.add_argument("--python", default=PYTHON,
                        help="interpreter for both servers (default: bench/.venv's); PYTHONPATH is kept")
    args = parser.parse_args()
    extra = {"wsgi_fcgi": args.wsgi_fcgi_args.split(), "gunicorn": args.gunicorn_args.split()}
    servers = args.servers.split(",")
    compile_sources(args.python, args.src, args.apps.split(","))
    rows = []
    for app in args.apps.split(","):
        samples: Dict[str, List[Dict[str, object]]] = {s: [] for s in servers}
        for _ in range(args.runs):
            for server in servers:  # interleaved, so drifts hit both alike
                samples[server].append(measure(server, app, extra[server], args.src, args.python))
        for server in servers:
            runs = samples[server]
            m_rss = statistics.median(r["master"][0] for r in runs)  # type: ignore[index]
            m_pss = statistics.median(r["master"][1] for r in runs)  # type: ignore[index]
            w_rss = [w[0] for r in runs for w in r["workers"]]  # type: ignore[attr-defined]
            w_pss = [w[1] for r in runs for w in r["workers"]]  # type: ignore[attr-defined]
            w_uss = [w[2] for r in runs for w in r["workers"]]  # type: ignore[attr-defined]
            rows.append((app, server + (" " + " ".join(extra[server]) if extra[server] else ""),
                         m_rss, m_pss, statistics.median(w_rss), min(w_rss), max(w_rss),
                         statistics.median(w_pss), statistics.median(w_uss)))
    print(f"{args.runs} run(s) each, {WORKERS} workers, idle before the first request; MiB, medians\n")
    print("| app | server | master RSS | master PSS | worker RSS | worker RSS min–max | worker PSS | worker USS |")
    print("|---|---|---|---|---|---|---|---|")
    for app, server, m_rss, m_pss, w_rss, w_min, w_max, w_pss, w_uss in rows:
        print(f"| {app} | {server} | {m_rss:.1f} | {m_pss:.1f} | {w_rss:.1f} | {w_min:.1f}–{w_max:.1f} | {w_pss:.1f} "
              f"| {w_uss:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
