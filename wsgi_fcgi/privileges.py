"""Who the app runs as: --user/--group, and the refusal to run it as root.

Strategy: sockets are bound (and socket files chowned) while still root;
workers then drop to --user/--group for good before the app is imported.
Running the app itself as root needs --allow-root: anyone who can reach the
FastCGI socket controls every request the app sees.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .config import Config
from .errors import EXIT_BOOT_ERROR, EXIT_USAGE, StartupError


class Identity(NamedTuple):
    """Who the workers run as."""

    uid: int
    gid: int
    user_name: str | None  # for initgroups; None for a numeric uid with no passwd entry

    def is_current(self) -> bool:
        return self.uid == os.geteuid() and self.gid == os.getegid()



def resolve_identity(config: Config) -> Identity | None:
    """--user/--group as ids; None when neither is given. ValueError when we cannot switch."""
    import grp
    import pwd

    if config.user is None and config.group is None:
        return None
    user_name: str | None = None
    uid, gid = os.geteuid(), os.getegid()
    if config.user is not None:
        try:
            entry = pwd.getpwuid(int(config.user)) if config.user.isdigit() else pwd.getpwnam(config.user)
        except KeyError:
            entry = None
        uid = entry.pw_uid if entry else int(config.user)
        user_name = entry.pw_name if entry else None
        gid = entry.pw_gid if entry else gid
    if config.group is not None:
        gid = int(config.group) if config.group.isdigit() else grp.getgrnam(config.group).gr_gid
    identity = Identity(uid, gid, user_name)
    if os.geteuid() != 0 and not identity.is_current():
        raise ValueError("--user/--group: only a server started as root can switch to another user")
    return identity


def identity_for(config: Config) -> Identity | None:
    """resolve_identity for start-up: options this process cannot honour are a
    usage error (exit 2) in every mode."""
    try:
        return resolve_identity(config)
    except (KeyError, ValueError) as exc:
        raise StartupError(str(exc).strip("'\""), EXIT_USAGE) from None


def switch_to(identity: Identity | None) -> None:
    """Become ``identity`` for good (nothing to do for None or the current
    user); the system refusing is a boot error (exit 3) in every mode."""
    if identity is None or identity.is_current():
        return
    try:
        drop_privileges(identity)
    except OSError as exc:
        raise StartupError(f"cannot switch to --user/--group: {exc.strerror or exc}", EXIT_BOOT_ERROR) from None


def drop_privileges(identity: Identity) -> None:
    """Groups first (setgid needs root), then the uid, for good."""
    if identity.user_name is not None:
        os.initgroups(identity.user_name, identity.gid)
    else:
        os.setgroups([identity.gid])
    os.setgid(identity.gid)
    os.setuid(identity.uid)


def root_refusal(config: Config) -> str | None:
    """Why we will not start, when the app would run as root without being asked to."""
    if os.geteuid() == 0 and config.user is None and not config.allow_root:
        return ("refusing to run the app as root: pass --user USER (workers drop to it after binding) "
                "or --allow-root if you mean it")
    return None


def socket_owner(config: Config) -> tuple[int, int]:
    """(uid, gid) for a unix socket file we create: the workers' user, and
    --socket-group (else their group); (-1, -1) leaves it as created. Only root
    can give a file away."""
    if os.geteuid() != 0:
        return -1, -1
    identity = resolve_identity(config)
    uid = identity.uid if identity is not None else -1
    gid = identity.gid if identity is not None else -1
    if config.socket_group is not None:
        import grp

        group = config.socket_group
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid
