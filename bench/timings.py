"""How long the server takes to react, measured here instead of asserted in tests/.

    .venv/bin/python bench/timings.py [-r REPS]

tests/ asserts that each of these happens (the event); this says how soon:

    timeout_kill     --workers 1 --timeout 1, GET /hang: seconds until the hung
                     request's connection closes (the master ticks once a second)
    unimportable     --workers 3 --pool P no_such_module:app: seconds until exit 4
    crash_storm      an app whose import exits 1: seconds until the master has
                     logged 6 boot failures in a row (back-off 0.1+0.2+0.4+0.8 s)

Each figure is the median of REPS runs (default 3), with min and max. The
processes are started in their own session and killed by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
APPS = REPO / "tests" / "apps"
ROOT = ["--allow-root"] if os.geteuid() == 0 else []


def _server(args: List[str], workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(REPO), str(workdir)])}
    return subprocess.Popen([sys.executable, "-m", "wsgi_fcgi", *ROOT, "--bind", f"unix:{workdir / 's.sock'}",
                             *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def timeout_kill(workdir: Path) -> float:
    sys.path.insert(0, str(REPO))
    from wsgi_fcgi.client import Client, FastCGIError

    proc = _server(["--workers", "1", "--timeout", "1", "manager_app:app"], workdir)
    try:
        deadline = time.monotonic() + 20
        while not (workdir / "s.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        Client(f"unix:{workdir / 's.sock'}", timeout=20).request("/")  # a worker is up
        started = time.monotonic()
        try:
            Client(f"unix:{workdir / 's.sock'}", timeout=30).request("/hang")
        except FastCGIError:
            pass
        return time.monotonic() - started
    finally:
        _stop(proc)


def unimportable(pool: str) -> Callable[[Path], float]:
    def measure(workdir: Path) -> float:
        started = time.monotonic()
        proc = _server(["--workers", "3", "--pool", pool, "no_such_module_xyz:app"], workdir)
        try:
            proc.wait(60)
            return time.monotonic() - started
        finally:
            _stop(proc)
    return measure


def crash_storm(workdir: Path) -> float:
    (workdir / "crashapp.py").write_text("import os\nos._exit(1)\n")
    started = time.monotonic()
    proc = _server(["--workers", "2", "crashapp:app"], workdir)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "6 in a row" in line:
                return time.monotonic() - started
        raise RuntimeError("the master never logged 6 boot failures in a row")
    finally:
        _stop(proc)


MEASURES: Dict[str, Callable[[Path], float]] = {
    "timeout_kill": timeout_kill,
    "unimportable static": unimportable("static"),
    "unimportable dynamic": unimportable("dynamic"),
    "unimportable ondemand": unimportable("ondemand"),
    "crash_storm": crash_storm,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--reps", type=int, default=3)
    reps = parser.parse_args().reps
    print("| measure | median s | min–max s |")
    print("|---|---|---|")
    for name, measure in MEASURES.items():
        values = []
        for _ in range(reps):
            with tempfile.TemporaryDirectory(prefix="wfcgi-timing-") as tmp:
                values.append(measure(Path(tmp)))
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} |", flush=True)


if __name__ == "__main__":
    main()
