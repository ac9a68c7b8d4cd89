"""--forwarded-allow-ips: which peers are believed when they say who the client is. Shared by
the proxy headers middleware (middleware/proxy_headers.py) and the PROXY protocol
(protocols/proxy_protocol.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from .config import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedPeers:
    """--forwarded-allow-ips: addresses, CIDR networks, `*` (anyone) and `unix` (peers on a
    UNIX socket, which have no address)."""

    def __init__(self, spec: str | Iterable[str]) -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        self.anyone = False
        self.unix = False
        self.networks: list[IPNetwork] = []
        self.cache: dict[str, bool] = {}
        for item in (i.strip() for i in items):
            if item == "*":
                self.anyone = True
            elif item == "unix":
                self.unix = True
            elif item:
                try:
                    self.networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ConfigError(
                        f"--forwarded-allow-ips: {item!r} is not an IP address or network"
                    ) from None

    def __contains__(self, host: object) -> bool:
        if self.anyone:
            return True
        if host is None:
            return self.unix
        if not isinstance(host, str):
            return False
        known = self.cache.get(host)
        if known is None:
            known = self._check(host)
            if len(self.cache) >= 1024:  # bounded: header values are attacker-chosen
                self.cache.clear()
            self.cache[host] = known
        return known

    def _check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        return any(ip in net for net in self.networks)


class TrustedConnection(dict[str, Any]):
    """The scope base (protocols/request.connection_scope) of a connection whose peer is in
    --forwarded-allow-ips, with --proxy-headers on: make_scope reads the proxy headers of its
    requests. A dict of its own type, so that the decision is made once per connection and
    the protocols carry it without knowing; `copy()` of it is a plain dict, the ASGI scope."""
