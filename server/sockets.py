"""Binding listening sockets (done once, by the single process or by the supervisor)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
import sys

from .config import Config, ConfigError
from .protocols.connection import Address, address

# Linux's IP_TRANSPARENT / IPV6_TRANSPARENT (<linux/in.h>, <linux/in6.h>): a listener with it
# accepts connections for any local address (TPROXY).
TRANSPARENT = {socket.AF_INET: (socket.SOL_IP, 19), socket.AF_INET6: (socket.IPPROTO_IPV6, 75)}


def bind_sockets(config: Config, reuse_port: bool = False) -> list[socket.socket]:
    """The listening socket(s) the config asks for. Errors are ConfigError (exit code 3)."""
    if config.sockets:
        return list(config.sockets)
    if config.fd is not None:
        try:
            sock = socket.socket(fileno=config.fd)
        except OSError as exc:
            raise ConfigError(f"--fd {config.fd}: {exc.strerror}") from None
        sock.setblocking(False)
        return [sock]
    if config.uds:
        return [_bind_unix(config.uds, config.backlog)]
    return [_bind_tcp(config.host, config.port, config.backlog, reuse_port)]


def _bind_tcp(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: accepted sockets take it, and asyncio's transports turn Nagle's
    # algorithm off (TCP_NODELAY) only on sockets that say TCP (uvloop's too, for a listener
    # given to create_server: tests/test_http1.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_error(host, port, exc) from None
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def says_tcp(sock: socket.socket) -> socket.socket:
    """`sock`, or, for a TCP socket made with proto 0 (gunicorn's, an embedder's), a socket
    object on a duplicate of its descriptor that says IPPROTO_TCP (see _bind_tcp: else
    asyncio leaves Nagle's algorithm on for its connections). The caller's object stays
    as it was, and stays the caller's to close."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, os.dup(sock.fileno()))
    tcp.setblocking(False)
    return tcp


def fixed_address(sock: socket.socket) -> Address | None:
    """The listener's (host, port) if it is the local address of every connection it accepts:
    an IP socket bound to one address (not 0.0.0.0 or ::, not transparent). None otherwise:
    each connection's own is asked for then."""
    if sock.family not in TRANSPARENT:
        return None
    try:
        name = sock.getsockname()
        if ipaddress.ip_address(name[0]).is_unspecified:
            return None
        if sys.platform == "linux" and sock.getsockopt(*TRANSPARENT[sock.family]):
            return None
    except (OSError, ValueError):
        return None
    return address(name)


def bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    """The one line for a TCP bind that failed. EACCES is nearly always a port below the
    kernel's net.ipv4.ip_unprivileged_port_start (1024) and a process without
    CAP_NET_BIND_SERVICE: a container's non-root user under podman's and Kubernetes' defaults
    (Docker lowers the limit to 0 in its containers)."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"cannot bind {host}:{port}: address already in use")
    if exc.errno == errno.EACCES:
        try:
            with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", encoding="ascii") as fh:
                lowest = int(fh.read())
        except (OSError, ValueError):
            lowest = 1024
        if port < lowest:
            return ConfigError(
                f"cannot bind {host}:{port}: permission denied: ports below {lowest} need root"
                f" or CAP_NET_BIND_SERVICE, and this process runs as uid {os.getuid()};"
                f" use a port >= {lowest} (the container image listens on 8000)"
            )
    return ConfigError(f"cannot bind {host}:{port}: {exc.strerror}")


def _bind_unix(path: str, backlog: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket, tls: bool) -> str:
    """What the startup line and --listen-file say: http(s)://host:port or unix:path."""
    where = describe(sock)
    return where if where.startswith("unix:") else f"{'https' if tls else 'http'}://{where}"


def describe(sock: socket.socket) -> str:
    """The URL-ish address a socket listens on, for the startup line."""
    addr = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{addr}"
    host, port = addr[0], addr[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{host}:{port}"
