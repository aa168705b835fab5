"""Listening sockets: bind specs, the inherited fd-0 socket, socket file hygiene.

Strategy: every address a user can write (``unix:PATH``, ``HOST:PORT``,
``[IPV6]:PORT``, ``fd://N``) is parsed once into an ``Address``; binding and
connecting both start from it. A web server that spawns us (mod_fcgid,
lighttpd ``bin-path``, spawn-fcgi) hands over a listening socket as fd 0
(FCGI_LISTENSOCK_FILENO); ``inherited_listener`` detects it. systemd's socket
activation hands over fds 3 and up (systemd.py finds them);
``adopt_activated`` makes each a socket and an Address marked ``adopted``:
systemd owns it, so its socket file is never removed here.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import NamedTuple

DEFAULT_TCP_ADDRESS = "127.0.0.1:9000"


class AddressError(ValueError):
    """A bind or connect address that cannot be used."""


class Address(NamedTuple):
    family: int
    # unix: the path; inet: (host, port); fd: the descriptor number
    target: str | tuple[str, int] | int
    spec: str
    adopted: bool = False  # passed by systemd (socket activation): its socket file is systemd's to remove

    @property
    def is_unix(self) -> bool:
        return self.family == socket.AF_UNIX

    @property
    def is_fd(self) -> bool:
        return isinstance(self.target, int)

    def __str__(self) -> str:
        return self.spec


def parse_address(spec: str) -> Address:
    """``unix:PATH`` | ``HOST:PORT`` | ``[IPV6]:PORT`` | ``fd://N`` -> Address."""
    spec = spec.strip()
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise AddressError(f"{spec!r}: unix: needs a socket path")
        return Address(socket.AF_UNIX, path, spec)
    if spec.startswith("fd://"):
        number = spec[len("fd://"):]
        if not number.isdigit():
            raise AddressError(f"{spec!r}: fd:// needs a file descriptor number")
        return Address(socket.AF_UNIX, int(number), spec)  # family fixed up when adopted
    if spec.startswith("tcp://"):
        spec = spec[len("tcp://"):]
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep:
            raise AddressError(f"{spec!r}: an IPv6 address is written [ADDR]:PORT")
        family = socket.AF_INET6
    else:
        host, sep, port = spec.rpartition(":")
        if not sep:
            raise AddressError(f"{spec!r}: expected unix:PATH, HOST:PORT, [IPV6]:PORT or fd://N")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"{spec!r}: {port!r} is not a port number")
    return Address(family, (host or "127.0.0.1", int(port)), spec)


def is_loopback(address: Address) -> bool:
    """True for unix sockets and TCP addresses on the loopback interface."""
    if address.is_unix or address.is_fd:
        return True
    host = address.target[0]  # type: ignore[index]
    if host == "localhost":
        return True
    import ipaddress
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(address: Address, *, backlog: int = 1024, socket_mode: int | None = 0o660,
         owner: tuple[int, int] = (-1, -1)) -> socket.socket:
    """A listening socket for ``address``. A stale unix socket file is replaced,
    one that a live server still answers on is not. A unix socket file gets its
    mode and ``owner`` (uid, gid; -1 keeps one) before listen(), so no client
    can connect while it still has the wrong ones."""
    if address.is_fd:
        return adopt_fd(address.target)  # type: ignore[arg-type]
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if address.is_unix:
            path = address.target
            assert isinstance(path, str)
            _remove_stale_unix_socket(path)
            sock.bind(path)
            if socket_mode is not None:
                os.chmod(path, socket_mode)
            if owner != (-1, -1):
                os.chown(path, *owner)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if address.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address.target)  # type: ignore[arg-type]
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise AddressError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AddressError(f"cannot listen on unix:{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left over from a crash
        return
    finally:
        probe.close()
    raise AddressError(f"cannot listen on unix:{path}: another server is listening there")


def adopt_fd(fd: int) -> socket.socket:
    """Wrap an inherited listening socket; the family is read from the socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise AddressError(f"fd://{fd} is not a socket: {exc.strerror or exc}") from None
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise AddressError(f"fd://{fd} is not a listening socket")
    sock.set_inheritable(False)
    return sock


def adopt_activated(fd: int, name: str = "") -> tuple[socket.socket, Address]:
    """A socket systemd passed (socket activation) and its Address, read from
    the socket itself. Only a listening stream socket will do: FastCGI is a
    byte stream (not ListenDatagram=), and the master and its workers accept
    connections themselves (not Accept=yes, which passes one connection)."""
    label = f"fd {fd}" + (f" ({name})" if name else "") + " from systemd"  # for the errors
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise AddressError(f"{label} is not a socket: {exc.strerror or exc}") from None
    try:
        address = _activated_address(sock, label, f"systemd fd {fd}" + (f", {name}" if name else ""))
    except AddressError:
        sock.detach()  # not ours to close: the message says what is wrong with it
        raise
    sock.set_inheritable(False)  # app code may exec: the listener must not leak into it
    return sock, address


def _activated_address(sock: socket.socket, label: str, origin: str) -> Address:
    if sock.type != socket.SOCK_STREAM:
        kind = {socket.SOCK_DGRAM: "a datagram socket (ListenDatagram=)",
                socket.SOCK_SEQPACKET: "a sequential-packet socket (ListenSequentialPacket=)"}.get(
                    sock.type, "not a stream socket")
        raise AddressError(f"{label} is {kind}: FastCGI needs a stream socket, use ListenStream= in the "
                           ".socket unit")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise AddressError(f"{label} is a connected socket, not a listening one: the .socket unit has "
                           "Accept=yes; wsgi_fcgi accepts connections itself, use Accept=no (the default)")
    bound = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = os.fsdecode(bound) if isinstance(bound, bytes) else str(bound)
        shown = "@" + path[1:] if path.startswith("\0") else path
        return Address(socket.AF_UNIX, path, f"unix:{shown} ({origin})", adopted=True)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = bound[0], int(bound[1])
        shown = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
        return Address(sock.family, (host, port), f"{shown} ({origin})", adopted=True)
    raise AddressError(f"{label} is a socket of family {sock.family!r}: wsgi_fcgi listens on unix and TCP sockets")


def fd0_is_listening() -> bool:
    """Whether fd 0 is a listening socket (a web server spawned us for FastCGI),
    looked at through a duplicate, without adopting it.

    The spec's test is getpeername() failing with ENOTCONN; SO_ACCEPTCONN says
    the same thing more directly and rejects a connected or non-stream socket.
    """
    try:
        if not stat.S_ISSOCK(os.fstat(0).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(fileno=os.dup(0))
    try:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        probe.close()


def inherited_listener() -> socket.socket | None:
    """The listening socket on fd 0 that a spawning web server left us, if any."""
    if not fd0_is_listening():
        return None
    sock = socket.socket(fileno=0)
    sock.set_inheritable(False)
    return sock


def connect(address: Address, timeout: float | None = None) -> socket.socket:
    """A client connection to ``address`` (for the client and health checks)."""
    if address.is_fd:
        raise AddressError("cannot connect to an fd:// address")
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address.target)  # type: ignore[arg-type]
    except OSError:
        sock.close()
        raise
    return sock


def cleanup(address: Address) -> None:
    """Remove the socket file we created (on a clean stop); never systemd's."""
    if address.is_unix and not address.is_fd and not address.adopted:
        try:
            os.unlink(address.target)  # type: ignore[arg-type]
        except FileNotFoundError:
            pass
