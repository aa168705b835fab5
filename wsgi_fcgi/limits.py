"""What the app's process is given before the app is imported (``--env``,
``--rlimit-nofile``, ``--rlimit-core``), and the memory figure the master
recycles workers on (``--max-worker-memory``).

Strategy: ``prepare_process`` runs once, in the one start-up place every mode
goes through (``cli._start``; ``cli.check_config`` too), before the app is
imported and before the first fork. So the master with or without
``--preload``, the single process a web server spawns on fd 0 and a CGI
script get the same environment and limits, every worker inherits them, and
no worker code and nothing per request knows about them.

Resource limits set the soft limit, which is what the kernel enforces. The
hard limit is raised only when the soft one must go above it, which takes
privilege (root, CAP_SYS_RESOURCE); an unprivileged server asked for more
stops with ``StartupError`` (exit 2, an option this process cannot honour)
naming the limit and where to raise it, rather than starting with less than
the operator asked for.

``resident_bytes`` is the one reader of a process's resident memory (RSS),
for the master's ``--max-worker-memory`` check (once a tick per worker) and
the status page: one read of /proc/PID/statm, counters the kernel keeps, so
its cost does not grow with the process (11-22 us from 20 MiB to 1 GiB, where
smaps_rollup, which USS and PSS need, walks the page tables: 0.3-10 ms,
``bench/memory_read.py``). manager.py says why RSS is also the right figure.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .config import SETTINGS_BY_NAME, UNLIMITED, Config
from .errors import EXIT_USAGE, StartupError


MIB = 1024 * 1024
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Rlimit(NamedTuple):
    setting: str  # its name in config.SETTINGS
    resource: str  # the resource module's constant
    how_to_raise: str  # where an operator raises the hard limit


RLIMITS = (
    Rlimit("rlimit_nofile", "RLIMIT_NOFILE", "ulimit -Hn or LimitNOFILE= in the systemd unit"),
    Rlimit("rlimit_core", "RLIMIT_CORE", "ulimit -Hc or LimitCORE= in the systemd unit"),
)


def prepare_process(config: Config) -> None:
    """--env and the --rlimit-* settings, for this process and every child it forks."""
    if config.env:
        os.environ.update(config.env)
    for limit in RLIMITS:
        wanted = getattr(config, limit.setting)
        if wanted is not None:
            set_soft_limit(limit, wanted)


def set_soft_limit(limit: Rlimit, wanted: int | str) -> None:
    """Set the soft limit to ``wanted`` (a number or UNLIMITED); raise the hard
    limit to it only when it must."""
    import resource  # only when a limit is set: otherwise not one more module in the master and its workers

    flag = SETTINGS_BY_NAME[limit.setting].flags[-1]
    which = getattr(resource, limit.resource)
    infinity = resource.RLIM_INFINITY
    soft = infinity if wanted == UNLIMITED else int(wanted)
    _, hard = resource.getrlimit(which)
    within = hard == infinity or (soft != infinity and soft <= hard)
    new_hard = hard if within else soft
    try:
        resource.setrlimit(which, (soft, new_hard))
    except (ValueError, OSError) as exc:
        if not within:  # unprivileged, or above what the kernel allows anyone (fs.nr_open)
            shown = UNLIMITED if soft == infinity else soft
            raise StartupError(f"{flag}: {shown} is above the hard limit {hard} (raise it with "
                               f"{limit.how_to_raise})", EXIT_USAGE) from None
        raise StartupError(f"{flag}: cannot set {wanted}: {exc}", EXIT_USAGE) from None


def resident_bytes(pid: int) -> int | None:
    """``pid``'s resident set size in bytes, or None if it has gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
