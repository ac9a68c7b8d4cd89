"""Closing a connection after an error answer without losing the answer.

Closing a socket with unread input makes the kernel send a reset, which can destroy our
response before the client reads it (a client still uploading a body it was refused for). So,
as RFC 9112 §9.6 describes: half-close (FIN after the response), read and drop what still
comes, then close. The connection is handed to this small protocol for that.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .connection import NoAppRunning

if TYPE_CHECKING:
    from ..state import ServerState
    from .idle import IdleConnections

# After an error answer, input is read and dropped for at most this long / this much.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
# After closing an idle keep-alive connection: long enough for a request already on its way
# (one round trip) to arrive and be dropped, short enough not to hold a retiring worker up.
IDLE_LINGER_SECONDS = 1.0


class Lingering(NoAppRunning):
    """A connection whose error answer is out and whose write side is shut: drop input until
    the client closes, LINGER_SECONDS pass or LINGER_BYTES arrive (see HTTP1Protocol.linger).

    The deadline is kept with every other lingering connection of the same duration, on one
    timer (state.lingering, idle.py): a connection per request (an app answering
    `Connection: close`) would otherwise create and cancel a loop timer each (~4k instructions
    of a 107k request). A client that asked to close itself gets a plain close
    (HTTP1Protocol.cycle_done)."""

    def __init__(
        self, transport: asyncio.Transport, state: ServerState, seconds: float = LINGER_SECONDS
    ) -> None:
        self.transport = transport
        self.state = state
        self.left = LINGER_BYTES
        self.lingering: IdleConnections = state.lingering(seconds)
        self.lingering.add(self)
        state.connections.add(self)  # so that a server shutdown closes it at once

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # the client is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lingering.discard(self)
        self.state.connections.discard(self)

    def on_idle(self) -> None:  # Idler: the deadline passed
        self.transport.close()

    def shutdown(self) -> None:  # Closable
        self.transport.close()
