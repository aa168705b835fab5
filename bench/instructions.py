"""Instructions per request in one backend worker, counted by valgrind (callgrind).

    bench/.venv/bin/python bench/instructions.py [--backends wsgi_fcgi,uwsgi,libfcgi-c] [--paths /hello]
                                                 [--app flaskapp:app --paths /] [--src DIR] [-n 1000]
                                                 [--queued] [--cache-sim] [--keep DIR]

On a shared virtual machine wall and CPU times move by tens of percent from
one run to the next; the number of user-space instructions a worker executes
per request does not. This counts them: one worker (``-w 1``) under
``valgrind --tool=callgrind``, a warm-up, then N sequential requests from
fcgiload's request bytes (what nginx sends), and the same with N+K; the
difference over K is per request, start-up and shutdown cancelled out.

Each request is sent once the backend sleeps: an idle server, every request
taking the same path through accept and epoll. With ``--queued``, the next
request is sent while one is served: a loaded server's path, the next
connection already waiting when the worker looks (repeats exactly). Python's
string hashing runs with a fixed seed (PYTHONHASHSEED=0). Kernel work (the
syscalls) is not in it: run.py measures CPU time. ``--keep`` keeps the
callgrind files, for ``callgrind_annotate --inclusive=yes FILE``.
``--cache-sim`` adds valgrind's simulated first-level cache misses per request
(instruction and data; the cache sizes are this CPU's) and mispredicted
branches (conditional and indirect): where two backends run about as many
instructions but one takes longer, these are the usual reasons.
WSGI_FCGI_PURE_PYTHON=1 in the environment counts the pure-Python form of a
compiled build.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import fcgiload  # noqa: E402  (needs the path above)
import rss  # noqa: E402

VENV = BENCH / ".venv"


def command(backend: str, sock: str, app: str) -> List[str]:
    if backend == "uwsgi":
        return [str(VENV / "bin" / "uwsgi"), "--fastcgi-socket", sock, "--processes", "1", "--master",
                "--disable-logging", "--die-on-term", "--need-app", "--home", str(VENV),
                "--pythonpath", str(BENCH), "--module", app]
    if backend == "libfcgi-c":
        return ["spawn-fcgi", "-n", "-s", sock, "--", str(BENCH / "c" / "hello")]
    return [str(VENV / "bin" / "python"), "-m", "wsgi_fcgi", "-w", "1", "--allow-root", "--timeout", "600",
            "--log-level", "warning", "--bind", f"unix:{sock}", app]


def count(backend: str, app: str, path: str, requests: int, src: str, keep: Optional[str],
          body: int = 0, queued: bool = False, cache_sim: bool = False) -> Tuple[Dict[str, int], str]:
    """The worker process's callgrind event totals (Ir: instructions; with
    ``cache_sim``, I1mr, D1mr, D1mw, Bcm, Bim too) over ``requests`` requests (plus start-up)."""
    work = tempfile.mkdtemp(prefix="wsgi_fcgi-instructions-")
    sock = os.path.join(work, "s.sock")
    # A fixed string-hash seed: with a random one, dict probe sequences (and so the
    # count) differ from one run to the next by a percent or two.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(BENCH)]), PYTHONHASHSEED="0")
    argv = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--trace-children=yes",
            f"--cache-sim={'yes' if cache_sim else 'no'}", f"--branch-sim={'yes' if cache_sim else 'no'}",
            f"--callgrind-out-file={work}/cg.%p"] + command(backend, sock, app)
    log = open(os.path.join(work, "log"), "w")
    # cwd: ``python -m`` puts the working directory first on sys.path, ahead of
    # PYTHONPATH; from a checkout, that checkout's package would be counted, not --src's.
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True, cwd=work)
    try:
        request = fcgiload.build_request(path, body)
        _wait_until_serving(sock, request, proc)
        if queued:
            _send_queued(sock, request, requests, backend)
        else:
            for _ in range(requests):
                _wait_until_asleep(proc.pid)
                if not fcgiload.one_request(sock, request, timeout=60)[0]:
                    raise SystemExit(f"{backend}: a request failed")
        if backend == "libfcgi-c":
            # the responder dies of SIGTERM before callgrind writes: dump its counts first
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True,
                           timeout=120)
    finally:
        _stop(proc)
        log.close()
    totals = _worker_totals(work, proc.pid, backend)
    if keep:
        os.makedirs(keep, exist_ok=True)
        kept = os.path.join(keep, f"{backend}{path.replace('/', '-')}-{requests}.callgrind")
        shutil.copy(totals[1], kept)
        totals = (totals[0], kept)
    shutil.rmtree(work, ignore_errors=True)
    return totals


def _wait_until_serving(sock: str, request: bytes, proc: "subprocess.Popen[bytes]") -> None:
    deadline = time.monotonic() + 120  # valgrind starts Python slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the backend exited with {proc.returncode} before serving")
        try:
            if fcgiload.one_request(sock, request, timeout=60)[0]:
                return
        except OSError:
            pass
        time.sleep(0.2)  # polling for start-up, with a deadline
    raise SystemExit("the backend did not serve within 120 s")


def _send_queued(sock_path: str, request: bytes, requests: int, backend: str) -> None:
    """``requests`` requests, the next one always connected and sent before the
    current response is read: the backend (slowed down fifty times by
    valgrind) finds a connection queued whenever it is done with one, as a
    server under load does."""
    def send() -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(60)
        conn.connect(sock_path)
        conn.sendall(request)
        return conn

    current = send()
    for i in range(requests):
        following = send() if i + 1 < requests else None
        try:
            if not fcgiload.read_response(current)[0]:
                raise SystemExit(f"{backend}: a request failed")
        finally:
            current.close()
        if following is not None:
            current = following


def _wait_until_asleep(pgid: int) -> None:
    """Until every process of the backend sleeps (in its poll or accept): each
    request then finds the server idle and takes the same path. Sent as soon as
    the last response is read, a request would race the worker's next accept,
    and the count would move by thousands of instructions per request with the
    share of requests that find it still running."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(state in "SID" for state in _states(pgid)):
            return
        time.sleep(0.0005)  # polling /proc, with a deadline
    raise SystemExit("the backend did not go idle within 60 s")


def _states(pgid: int) -> List[str]:
    """The state letter (/proc/PID/stat) of each process in process group ``pgid``."""
    return [fields[0] for _, fields in rss.proc_stats() if int(fields[2]) == pgid]


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _worker_totals(work: str, master_pid: int, backend: str) -> Tuple[Dict[str, int], str]:
    """The event totals and callgrind file of the process that served: the master's
    own file is skipped, except for libfcgi-c, where spawn-fcgi -n execs the responder."""
    found: Dict[str, Dict[str, int]] = {}
    for name in glob.glob(os.path.join(work, "cg.*")):
        if name.endswith(f".{master_pid}") and backend != "libfcgi-c":
            continue
        events: List[str] = []
        with open(name) as f:
            for line in f:
                if line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith(("summary:", "totals:")):
                    # strict=False: callgrind may leave trailing zero counts out
                    found[name] = dict(zip(events, map(int, line.split()[1:]), strict=False))
                    break
    if not found:
        raise SystemExit(f"no callgrind output from a {backend} worker in {work}")
    name = max(found, key=lambda n: found[n]["Ir"])  # the worker, not a short-lived helper process
    return found[name], name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="wsgi_fcgi,uwsgi,libfcgi-c")
    ap.add_argument("--paths", default="/hello", help="comma-separated request paths (apps.py workloads)")
    ap.add_argument("--app", default="apps:application", help="the WSGI app (flaskapp:app with --paths /)")
    ap.add_argument("--body", type=int, default=0, help="POST a body of this many bytes (/post_1m: 1048576)")
    ap.add_argument("--src", default=str(BENCH.parent), help="directory holding the wsgi_fcgi package")
    ap.add_argument("-n", "--requests", type=int, default=1000, help="K, the requests counted (default 1000)")
    ap.add_argument("--queued", action="store_true",
                    help="a request always queued behind the one being served (a loaded server's path) "
                         "instead of each sent to an idle backend")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also count simulated L1 cache misses and mispredicted branches per request")
    ap.add_argument("--keep", metavar="DIR", help="keep both runs' callgrind files here")
    args = ap.parse_args()
    warmup = 100
    columns = ["instructions/request"] + (["L1i misses/request", "L1d misses/request",
                                           "mispredicted branches/request"] if args.cache_sim else [])
    print("| backend | app | path | " + " | ".join(columns) + " |\n|---|---|---|" + "---|" * len(columns))
    for path in args.paths.split(","):
        for backend in args.backends.split(","):
            low, _ = count(backend, args.app, path, warmup, args.src, args.keep, args.body, args.queued,
                           args.cache_sim)
            high, name = count(backend, args.app, path, warmup + args.requests, args.src, args.keep,
                               args.body, args.queued, args.cache_sim)
            per_request = {event: (high[event] - low.get(event, 0)) / args.requests for event in high}
            figures = [per_request["Ir"]]
            if args.cache_sim:
                figures += [per_request.get("I1mr", 0), per_request.get("D1mr", 0) + per_request.get("D1mw", 0),
                            per_request.get("Bcm", 0) + per_request.get("Bim", 0)]
            label = backend + (" (pure Python)" if backend == "wsgi_fcgi" and os.environ.get(
                "WSGI_FCGI_PURE_PYTHON", "") not in ("", "0") else "")
            print(f"| {label} | {args.app} | {path} | " + " | ".join(f"{x:,.0f}" for x in figures) + " |",
                  flush=True)
            if args.keep:
                print(f"<!-- {name} -->", flush=True)


if __name__ == "__main__":
    main()
