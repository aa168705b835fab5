"""What a process is doing, read from Linux /proc: the states tests wait for
instead of sleeping.

- ``listening_unix_inode(path)``: the socket inode of the listener bound to
  ``path`` (/proc/net/unix);
- ``epoll_watched(pid)``: the inodes of every file in ``pid``'s epoll sets
  (/proc/PID/fdinfo of each eventpoll descriptor: one ``tfd:`` line per
  registered file, with its ``ino:`` in hex);
- ``asleep_in_epoll_wait(pid)``: the process is blocked in epoll_wait
  (/proc/PID/wchan), i.e. idle in its event loop, not running and not
  spinning.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Set, Union

SO_ACCEPTCON = 0x10000  # /proc/net/unix "Flags": a listening socket
EPOLL_WAIT_CHANNELS = ("do_epoll_wait", "ep_poll")  # wchan names across kernel versions
_WATCHED = re.compile(r"^tfd:\s*\d+\s.*\bino:([0-9a-f]+)", re.M)


def listening_unix_inode(path: Union[str, Path]) -> Optional[int]:
    """The inode of the listening unix socket bound to ``path``, or None."""
    with open("/proc/net/unix") as f:
        next(f)  # Num RefCount Protocol Flags Type St Inode Path
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & SO_ACCEPTCON:
                return int(fields[6])
    return None


def epoll_watched(pid: int) -> Set[int]:
    """Inodes of the files registered in any of ``pid``'s epoll sets (empty if it has none, or is gone)."""
    watched: Set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return watched
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                watched.update(int(ino, 16) for ino in _WATCHED.findall(f.read()))
        except OSError:
            continue
    return watched


def asleep_in_epoll_wait(pid: int) -> bool:
    """Whether ``pid`` is blocked in epoll_wait right now (single-threaded processes)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() in EPOLL_WAIT_CHANNELS
    except OSError:
        return False
