"""--proxy-headers: the client's address, scheme and host as a trusted reverse proxy saw them.

Only a peer in --forwarded-allow-ips is believed, and a chain is walked from the right:
each proxy appends the address it received the request from, so the rightmost entries were
written by our own proxies and the first untrusted address found from the right is the
client. Anything to its left was written by the client itself and could be forged.

Two header families exist. `X-Forwarded-For` (with `-Proto`, `-Host`, `-Port`) is what
nginx, HAProxy, AWS ALB and most others send; RFC 7239 `Forwarded` carries the same
in one field. When both are present X-Forwarded-For wins: most proxies set it but pass a
client's `Forwarded` through untouched. (A proxy that only sets `Forwarded` should drop
incoming X-Forwarded-* headers.)

The scope's `client`, `scheme` and `server` are rewritten, and `X-Forwarded-Host` /
`host=` replaces the Host header, since that is what apps build URLs from.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..trust import TrustedPeers
from ..types import ASGIApp, Receive, Scope, Send

# Characters a host (reg-name, IPv4, [IPv6]) and optional port may contain (RFC 3986 §3.2.2).
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]%~")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ProxyHeadersMiddleware:
    def __init__(
        self, app: ASGIApp, forwarded_allow_ips: str | Iterable[str] = "127.0.0.1"
    ) -> None:
        self.app = app
        self.trusted = TrustedPeers(forwarded_allow_ips)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if (client[0] if client else None) in self.trusted:
                hop = self.find_hop(scope["headers"])
                if hop is not None:
                    apply_hop(scope, hop)
        await self.app(scope, receive, send)

    def find_hop(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
        """What the proxy nearest to the client recorded: `for`, `proto`, `host`, `port`."""
        xff: list[str] = []
        fields: dict[bytes, list[str]] = {}
        forwarded: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                xff += _list(value)
            elif name in _X_FIELDS:
                fields.setdefault(name, []).extend(_list(value))
            elif name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
        if xff:
            hops = [{"for": entry} for entry in xff]
            index = self.pick(hops)
            hop = hops[index]
            for name, key in _X_FIELDS.items():
                values = fields.get(name)
                if values:
                    # Aligned with X-Forwarded-For when every proxy appended; else the last
                    # value, which our own proxy wrote.
                    hop[key] = values[index] if len(values) == len(xff) else values[-1]
            return hop
        if forwarded:
            elements = parse_forwarded(",".join(forwarded))
            if elements:
                return elements[self.pick(elements)]
        # No chain, but a proxy may still tell the scheme or host (X-Forwarded-Proto alone).
        if fields:
            return {key: fields[name][-1] for name, key in _X_FIELDS.items() if fields.get(name)}
        return None

    def pick(self, hops: list[dict[str, str]]) -> int:
        """Walk from the right past our trusted proxies; the first other address is the
        client (all trusted: the leftmost)."""
        for index in range(len(hops) - 1, 0, -1):
            if _split_host_port(hops[index].get("for", ""))[0] not in self.trusted:
                return index
        return 0


_X_FIELDS = {
    b"x-forwarded-proto": "proto",
    b"x-forwarded-host": "host",
    b"x-forwarded-port": "port",
}


def apply_hop(scope: Scope, hop: dict[str, str]) -> None:
    addr = hop.get("for")
    if addr:
        host, port = _split_host_port(addr)
        # An IP, `unknown` or an obfuscated `_name` (RFC 7239 §6): nothing that could garble
        # an access log line.
        if host and all(ch in _HOST_CHARS for ch in host):
            scope["client"] = (host, port)
    proto = hop.get("proto", "").lower()
    if proto in _SCHEMES:
        secure = _SCHEMES[proto] == "https"
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
    port = _port(hop.get("port", ""))
    authority = hop.get("host", "")
    if authority and all(ch in _HOST_CHARS for ch in authority):
        name, in_host = _split_host_port(authority)
        scope["headers"] = [
            (n, authority.encode("latin-1") if n == b"host" else v) for n, v in scope["headers"]
        ]
        if not any(n == b"host" for n, _ in scope["headers"]):
            scope["headers"].append((b"host", authority.encode("latin-1")))
        default = 443 if scope["scheme"] in ("https", "wss") else 80
        scope["server"] = (name, port or in_host or default)
    elif port and scope.get("server"):
        scope["server"] = (scope["server"][0], port)


def _list(value: bytes) -> list[str]:
    return [part.strip() for part in value.decode("latin-1").split(",") if part.strip()]


def _port(text: str) -> int:
    if text.isdigit() and len(text) <= 5 and int(text) <= 65535:
        return int(text)
    return 0


def _split_host_port(value: str) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`, `unknown`, `_hidden` -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, _port(rest[1:]) if rest.startswith(":") else 0
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, _port(port)
    return value, 0


def parse_forwarded(text: str) -> list[dict[str, str]]:
    """RFC 7239 §4: `for=a;proto=https, for="[::1]:80"` -> one dict per element; [] when
    malformed (a half-understood header is not trusted)."""
    elements: list[dict[str, str]] = []
    for element in _split_quoted(text, ","):
        pairs: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            if not pair.strip():
                continue
            name, sep, value = pair.strip().partition("=")
            if not sep or not name or not value:
                return []
            if value.startswith('"'):
                if len(value) < 2 or not value.endswith('"'):
                    return []
                value = _unquote(value[1:-1])
            pairs[name.lower()] = value
        if pairs:
            elements.append(pairs)
    return elements


def _split_quoted(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _unquote(text: str) -> str:
    out: list[str] = []
    escaped = False
    for ch in text:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


__all__ = ["ProxyHeadersMiddleware", "TrustedPeers", "parse_forwarded"]
