"""Eager start's held responses (see "Eager start" in http1.py).

With eager tasks (Python 3.12+) an app runs inside the read callback that parsed its request,
and its small final response is ready before that callback returns. Written at once, the
responses to one loop pass's reads would spread the client's next requests over more epoll
wake-ups (measured: perf/README.md, Log). So they are held here until the pass ends and then
written in order; any other write or close on a connection flushes first, so each
connection's bytes stay in order.
"""

from __future__ import annotations

import asyncio


class Outbox:
    __slots__ = ("items", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[asyncio.WriteTransport, bytes]] = []

    def hold(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        items = self.items
        if not items:
            self.loop.call_soon(self.flush)  # at the end of this loop pass
        items.append((transport, data))

    def flush(self) -> None:
        """Write the held responses now, in the order they were made."""
        items = self.items
        if items:
            self.items = []
            for transport, data in items:
                if not transport.is_closing():
                    transport.write(data)
