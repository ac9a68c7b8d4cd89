"""What the server knows of every connection, whatever its protocol: how it is shut down
(`Closable`), the base of connections on which no app runs, and the peer addresses."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

Address = tuple[str, int]


class Closable(Protocol):
    """A connection as the server sees it at shutdown."""

    def shutdown(self) -> None:
        """Stop taking requests: close now if idle, else after the current response."""

    def cancel(self) -> None:
        """The graceful timeout passed: stop whatever still runs."""

    @property
    def idle(self) -> bool: ...

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The app task running for this connection now, if any."""


class NoAppRunning(asyncio.Protocol):
    """A connection on which no app runs (a PROXY header still awaited, a lingering close):
    always idle, no task. Subclasses say how they shut down."""

    @property
    def idle(self) -> bool:
        return True

    @property
    def task(self) -> asyncio.Task[None] | None:
        return None

    def shutdown(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        self.shutdown()


# Host strings already seen: every connection from (or to) one address shares one string
# (the transport makes a new one each time; ~50 B a connection, twice). Bounded.
_HOSTS: dict[str, str] = {}


def address(addr: Any) -> Address | None:
    """A transport's peername/sockname as ASGI's (host, port); None for UNIX sockets."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        known = _HOSTS.get(host)
        if known is None:
            if len(_HOSTS) >= 4096:
                _HOSTS.clear()
            _HOSTS[host] = known = host
        return (known, int(addr[1]))
    return None
