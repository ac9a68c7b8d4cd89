"""Back-pressure in both directions, shared by the HTTP/1.1 and WebSocket protocols.

Reading: the protocol pauses the transport while data it already has waits for the app
(request body past a high-water mark, WebSocket messages past the queue size) and resumes it
once the app has taken them. Writing: the transport calls `pause_writing()` when its buffer
passes its high-water mark; `await drain()` then waits for `resume_writing()`, so an app
sending faster than the peer reads waits instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..state import ServerState


class FlowControl(asyncio.Protocol):
    __slots__ = ("drain_waiter", "read_paused", "write_paused")

    transport: asyncio.Transport  # set by the subclass
    state: ServerState  # set by the subclass
    read_paused: bool
    write_paused: bool
    drain_waiter: asyncio.Future[None] | None

    def stopped(self) -> bool:
        """The connection is closed (or handed over): leave the transport alone."""
        raise NotImplementedError

    def pause_reading(self) -> None:
        if not self.read_paused and not self.stopped():
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.stopped():
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake_drain()

    def wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.stopped():
            return
        waiter = self.drain_waiter
        if waiter is None:
            waiter = self.drain_waiter = self.state.loop.create_future()
        await waiter
