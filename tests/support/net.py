"""Addresses and ports, the one parser the tests use for bind specs.

``unix:PATH`` | ``HOST:PORT`` | ``[V6]:PORT``, the specs ``--bind`` takes
(the ``fd://N`` form is the server's own business and never a test's
connect target).
"""

from __future__ import annotations

import socket
from typing import Optional, Tuple, Union

Target = Union[str, Tuple[str, int]]


def parse_address(spec: str) -> Tuple[int, Target]:
    """``unix:PATH`` | ``HOST:PORT`` | ``[V6]:PORT`` -> (family, connect target)."""
    if spec.startswith("unix:"):
        return socket.AF_UNIX, spec[len("unix:") :]
    if spec.startswith("["):
        host, _, port = spec[1:].partition("]:")
        return socket.AF_INET6, (host, int(port))
    host, _, port = spec.rpartition(":")
    return socket.AF_INET, (host, int(port))


def unix_path(spec: str) -> Optional[str]:
    """The socket path of a ``unix:PATH`` spec; None for TCP."""
    family, target = parse_address(spec)
    return target if isinstance(target, str) else None


def port_of(spec: str) -> int:
    """The TCP port of a ``HOST:PORT`` or ``[V6]:PORT`` spec."""
    family, target = parse_address(spec)
    if family == socket.AF_UNIX:
        raise ValueError(f"{spec} is a unix socket: no port")
    assert isinstance(target, tuple)
    return target[1]


def connect(spec: str, timeout: float = 10.0) -> socket.socket:
    """A stream socket connected to ``spec``; every call on it times out after ``timeout`` s."""
    family, target = parse_address(spec)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (IPv4, or IPv6 as ``::1`` or ``[::1]``) that
    was free a moment ago: bind to port 0, read it, close."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
