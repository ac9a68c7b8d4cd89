"""WebSocket over the `websockets` library's sans-I/O protocol (issue 5: in progress)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .http1 import HTTP1Protocol


def upgrade_to_websocket(conn: HTTP1Protocol, scope: dict[str, Any], rest: bytes) -> None:
    """Take over `conn`'s transport for the WebSocket whose handshake request is `scope`."""
    from .http1 import RejectRequest

    conn.reject(RejectRequest(501, "WebSocket support is not built yet"))
