#!/usr/bin/env python3
"""What it costs the master to read one worker's memory, by the figure it reads.

    python bench/memory_read.py                 # processes of 20, 300 and 1000 MiB
    python bench/memory_read.py 64 512

For each size, starts a child that writes that many MiB (so they are resident)
and times reading its /proc/PID/statm (RSS: counters the kernel keeps) against
/proc/PID/smaps_rollup (PSS and USS: the kernel walks every page table entry
of the process, under its memory map lock, at each read). --max-worker-memory
reads statm once a second per worker (wsgi_fcgi/manager.py says why RSS).
Standard library only; the child is killed by PID at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time

READS = 2000
CHILD = "import sys, time; keep = [b'\\x01' * (1 << 20) for _ in range({mib})]; print(flush=True); time.sleep(600)"


def microseconds_per_read(path: str) -> float:
    started = time.perf_counter()
    for _ in range(READS):
        with open(path, "rb") as f:
            f.read()
    return (time.perf_counter() - started) / READS * 1e6


def measure(mib: int) -> str:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(mib=mib)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its memory is written
        statm = microseconds_per_read(f"/proc/{child.pid}/statm")
        rollup = microseconds_per_read(f"/proc/{child.pid}/smaps_rollup")
    finally:
        child.kill()
        child.wait()
    return f"| {mib} | {statm:.1f} | {rollup:.1f} |"


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [20, 300, 1000]
    print(f"µs per read, mean of {READS}\n\n| process MiB | statm (RSS) | smaps_rollup (PSS, USS) |\n|---|---|---|")
    for mib in sizes:
        print(measure(mib))


if __name__ == "__main__":
    main()
