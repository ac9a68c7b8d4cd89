"""An app whose module imports nothing of the websockets library (tests/apps/ws_apps.py does):
a GET answers whether the server's process has loaded it, a WebSocket gets its message back."""

from __future__ import annotations

import sys

from tests.apps.core_apps import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        body = b"loaded" if "websockets" in sys.modules else b"not loaded"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": message.get("text") or ""})
    await send({"type": "websocket.close", "code": 1000})
