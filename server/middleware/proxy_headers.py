"""--proxy-headers: the client's address and scheme as a trusted reverse proxy saw them.

Only a peer in --forwarded-allow-ips is believed, and a chain is walked from the right:
each proxy appends the address it received the request from, so the rightmost entries were
written by our own proxies and the first untrusted address found from the right is the
client. Anything to its left was written by the client itself and could be forged.

By default exactly what uvicorn reads: `X-Forwarded-For` and `X-Forwarded-Proto` (nginx,
HAProxy, AWS ALB, Traefik and Caddy all send them). Two more things only when asked, because
a proxy that does not set them passes a client's own values through:

- --forwarded-host: `X-Forwarded-Host` replaces the Host header and, with `X-Forwarded-Port`,
  sets the scope's `server` (Werkzeug's ProxyFix has the same switch, x_host, off by default;
  on by default it would defeat Django's USE_X_FORWARDED_HOST=False);
- --forwarded-rfc7239: RFC 7239 `Forwarded` (`for=`, `proto=`, and `host=` with
  --forwarded-host), read when there is no `X-Forwarded-For`.

The server applies this where it builds each request's scope (protocols/request.py), for
connections from a trusted peer only: HTTP/1.1, HTTP/2 streams and WebSocket handshakes alike,
and no middleware frame per request. ProxyHeadersMiddleware does the same as an ASGI
middleware, for apps that wrap themselves (uvicorn's has the same name and arguments).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..trust import TrustedPeers
from ..types import ASGIApp, Receive, Scope, Send

# Characters a host (reg-name, IPv4, [IPv6]) and optional port may contain (RFC 3986 §3.2.2).
_HOST = re.compile(r"[A-Za-z0-9.\-_:\[\]%~]+")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ProxyHeaders:
    """What is believed from a trusted proxy, and how (see the module docstring)."""

    def __init__(
        self,
        forwarded_allow_ips: str | Iterable[str] = "127.0.0.1,::1",
        forwarded_host: bool = False,
        forwarded_rfc7239: bool = False,
    ) -> None:
        self.trusted = TrustedPeers(forwarded_allow_ips)
        self.host = forwarded_host
        self.rfc7239 = forwarded_rfc7239

    def apply(self, scope: Scope) -> None:
        """Rewrite the scope of a request whose peer is trusted."""
        headers = scope["headers"]
        hop = self.single_hop(headers)
        if hop is None:
            hop = self.find_hop(headers)
        if hop:
            apply_hop(scope, hop, self.host)

    def single_hop(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
        """find_hop's answer for what one proxy in front sends: at most one X-Forwarded-For
        and one X-Forwarded-Proto field, one value each, and nothing else it would read
        (~5x faster: this runs for every request a local nginx passes on). None: anything
        else, for find_hop."""
        xff = xfp = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                if xff is not None or 44 in value:  # a second field, or a list (b",")
                    return None
                xff = value
            elif name == b"x-forwarded-proto":
                if xfp is not None or 44 in value:
                    return None
                xfp = value
            elif (name in _X_FIELDS and self.host) or (name == b"forwarded" and self.rfc7239):
                return None
        hop: dict[str, str] = {}
        if xff is not None and xff.strip():
            hop["for"] = xff.decode("latin-1").strip()
        if xfp is not None and xfp.strip():
            hop["proto"] = xfp.decode("latin-1").strip()
        return hop

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
            elif name == b"forwarded" and self.rfc7239:
                forwarded.append(value.decode("latin-1"))
        if xff:
            hops = [{"for": entry} for entry in xff]
            index = self.pick(hops)
            hop = hops[index]
            for name, key in _X_FIELDS.items():
                entry = _entry(fields.get(name), index, len(xff))
                if entry:
                    hop[key] = entry
            return hop
        if forwarded:
            elements = parse_forwarded(",".join(forwarded))
            if elements:
                return elements[self.pick(elements)]
        # No chain, but a proxy may still tell the scheme (X-Forwarded-Proto alone).
        alone: dict[str, str] = {}
        for name, key in _X_FIELDS.items():
            entry = _entry(fields.get(name), 0, 1)
            if entry:
                alone[key] = entry
        return alone or None

    def pick(self, hops: list[dict[str, str]]) -> int:
        """Walk from the right past our trusted proxies; the first other address is the
        client (all trusted: the leftmost)."""
        for index in range(len(hops) - 1, 0, -1):
            if _split_host_port(hops[index].get("for", ""))[0] not in self.trusted:
                return index
        return 0


def _entry(values: list[str] | None, index: int, chain: int) -> str:
    """The entry of an X-Forwarded-Proto/-Host/-Port list that belongs to the hop at `index`
    of an X-Forwarded-For chain `chain` long. One value: the proxy's. As many values as the
    chain has entries: every proxy appended one to each, and the one at `index` was written by
    the same trusted proxy as the chosen `for`. Any other list (`https, http` without a chain
    to align with) cannot be attributed to a proxy we trust: ignored, as uvicorn ignores every
    list (it keeps the connection's own scheme)."""
    if not values:
        return ""
    if len(values) == 1:
        return values[0]
    return values[index] if len(values) == chain else ""


class ProxyHeadersMiddleware:
    """--proxy-headers as an ASGI middleware (the server itself does not need it)."""

    def __init__(
        self,
        app: ASGIApp,
        trusted_hosts: str | Iterable[str] = "127.0.0.1,::1",
        forwarded_host: bool = False,
        forwarded_rfc7239: bool = False,
    ) -> None:
        self.app = app
        self.proxy = ProxyHeaders(trusted_hosts, forwarded_host, forwarded_rfc7239)
        self.trusted = self.proxy.trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if (client[0] if client else None) in self.trusted:
                self.proxy.apply(scope)
        await self.app(scope, receive, send)


_X_FIELDS = {
    b"x-forwarded-proto": "proto",
    b"x-forwarded-host": "host",
    b"x-forwarded-port": "port",
}


def apply_hop(scope: Scope, hop: dict[str, str], with_host: bool) -> None:
    addr = hop.get("for")
    if addr:
        host, port = _split_host_port(addr)
        # An IP, `unknown` or an obfuscated `_name` (RFC 7239 §6): nothing that could garble
        # an access log line.
        if host and _HOST.fullmatch(host):
            scope["client"] = (host, port)
    proto = hop.get("proto", "").lower()
    if proto in _SCHEMES:
        secure = _SCHEMES[proto] == "https"
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
    if not with_host:
        return
    port = _port(hop.get("port", ""))
    authority = hop.get("host", "")
    if authority and _HOST.fullmatch(authority):
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


__all__ = ["ProxyHeaders", "ProxyHeadersMiddleware", "TrustedPeers", "parse_forwarded"]
