"""--proxy-protocol: HAProxy's PROXY protocol v1 (text) and v2 (binary) in front of HTTP/1.1.

An L4 load balancer (AWS NLB, HAProxy in TCP mode...) opens the TCP connection itself, so
the server only sees the balancer's address; the PROXY header it sends first carries the
real client's. `ProxyProtocol` reads that header, then hands the transport to an
`--http` protocol whose client (and server) address come from it, and feeds it what followed.

Trust, after the spec (haproxy.org/download/2.9/doc/proxy-protocol.txt, §2):
- a peer in --forwarded-allow-ips must send a valid header: a malformed or missing one
  closes the connection (no guessing whether a header is there);
- any other peer must not send one (it would be claiming an address it may not have): a
  header from it closes the connection; plain HTTP from it is served with its real address.
The header must arrive within --timeout-request-header.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import ConfigError
from ..trust import TrustedPeers
from .connection import NoAppRunning, address

if TYPE_CHECKING:
    from ..state import ServerState

log = logging.getLogger("fastserve.error")

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (spec §2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 16 + 4096  # address block and TLVs; balancers send well under 1 KiB

Address = tuple[str, int]


class ProxyHeaderError(Exception):
    pass


def proxy_protocol_factory(
    state: ServerState, inner: Callable[..., asyncio.Protocol]
) -> Callable[[], asyncio.Protocol]:
    """Connections that start with a PROXY header, then are handed to `inner` (the --http
    entry), called as `inner(state, (client, server) or None)`."""
    if state.config.is_ssl:
        # The header precedes the TLS handshake, and asyncio cannot start TLS on bytes it
        # has already read: terminate TLS at the balancer (or use TLS without PROXY).
        raise ConfigError("--proxy-protocol cannot be combined with --ssl-certfile")
    trusted = TrustedPeers(state.config.forwarded_allow_ips)

    def factory() -> asyncio.Protocol:
        return ProxyProtocol(state, trusted, inner)

    return factory


def parse_header(data: bytes) -> tuple[int, Address | None, Address | None] | None:
    """Parse a PROXY header at the start of `data`.

    Returns None when more bytes are needed, else (header length, source, destination); the
    addresses are None for v2 LOCAL, `UNKNOWN` and non-IP families (the connection's own
    addresses stand). Raises ProxyHeaderError when malformed."""
    if data[:1] == b"P":
        return _parse_v1(data)
    return _parse_v2(data)


def _parse_v1(data: bytes) -> tuple[int, Address | None, Address | None] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or not V1_PREFIX.startswith(data[:6]):
            raise ProxyHeaderError("PROXY v1 line too long or malformed")
        return None
    parts = data[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyHeaderError("malformed PROXY v1 line")
    if parts[1] == b"UNKNOWN":
        return end + 2, None, None
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    version = 4 if parts[1] == b"TCP4" else 6
    src = (_ip(parts[2], version), _v1_port(parts[4]))
    dst = (_ip(parts[3], version), _v1_port(parts[5]))
    return end + 2, src, dst


def _ip(text: bytes, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError("bad address in PROXY header") from None
    if ip.version != version:
        raise ProxyHeaderError("address family mismatch in PROXY header")
    return str(ip)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyHeaderError("bad port in PROXY header")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("bad port in PROXY header")
    return port


def _parse_v2(data: bytes) -> tuple[int, Address | None, Address | None] | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("no PROXY header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY header")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    if 16 + length > V2_MAX:
        raise ProxyHeaderError("PROXY v2 header too long")
    if len(data) < 16 + length:
        return None
    total = 16 + length
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own connection (health checks)
        return total, None, None
    transport_protocol = family & 0x0F
    if transport_protocol == 2:
        raise ProxyHeaderError("PROXY v2 datagram header on a stream connection")
    block = data[16:total]
    if family >> 4 == 1:  # AF_INET
        if length < 12:
            raise ProxyHeaderError("short PROXY v2 address block")
        s, d = str(ipaddress.IPv4Address(block[:4])), str(ipaddress.IPv4Address(block[4:8]))
        sport, dport = struct.unpack("!HH", block[8:12])
        return total, (s, sport), (d, dport)
    if family >> 4 == 2:  # AF_INET6
        if length < 36:
            raise ProxyHeaderError("short PROXY v2 address block")
        s, d = str(ipaddress.IPv6Address(block[:16])), str(ipaddress.IPv6Address(block[16:32]))
        sport, dport = struct.unpack("!HH", block[32:36])
        return total, (s, sport), (d, dport)
    return total, None, None  # AF_UNSPEC / AF_UNIX: keep the connection's addresses


def header_start(data: bytes) -> bool | None:
    """Does a PROXY header start here? None: too few bytes to tell."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(data), len(signature))
        if data[:n] == signature[:n]:
            return True if n == len(signature) else None
    return False


class ProxyProtocol(NoAppRunning):
    """Reads the PROXY header, then gets out of the way (transport.set_protocol)."""

    def __init__(
        self, state: ServerState, trusted: TrustedPeers, inner: Callable[..., asyncio.Protocol]
    ) -> None:
        self.state = state
        self.trusted = trusted
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.peer: Address | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.peer = address(transport.get_extra_info("peername"))
        self.state.connections.add(self)
        timeout = self.state.config.timeout_request_header
        self.timer = self.state.loop.call_later(timeout, self.on_timeout)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        buffer = self.buffer
        trusted = (self.peer[0] if self.peer else None) in self.trusted
        if not trusted:
            starts = header_start(buffer)
            if starts:
                self.refuse("PROXY header from an untrusted peer")
            elif starts is not None:
                self.hand_over(buffer, None, None)
            return
        try:
            parsed = parse_header(buffer)
        except ProxyHeaderError as exc:
            self.refuse(str(exc))
            return
        if parsed is not None:
            length, src, dst = parsed
            self.hand_over(buffer[length:], src, dst)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def on_timeout(self) -> None:
        self.timer = None
        if not self.done:
            self.refuse("no PROXY header in time")

    def refuse(self, reason: str) -> None:
        peer = self.peer or ("-", 0)
        log.info("%s:%s - closed: %s", *peer, reason)
        self.finish()
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> None:
        self.done = True
        self.state.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def hand_over(self, rest: bytes, src: Address | None, dst: Address | None) -> None:
        self.finish()
        transport = self.transport
        assert transport is not None
        addresses = (src, dst) if src is not None and dst is not None else None
        protocol = self.inner(self.state, addresses)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest:
            protocol.data_received(rest)

    def shutdown(self) -> None:  # Closable: no app runs on this connection yet
        self.refuse("server shutting down")


__all__ = ["ProxyProtocol", "parse_header", "proxy_protocol_factory"]
