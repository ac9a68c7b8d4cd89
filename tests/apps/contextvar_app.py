"""An app that shows which context variables its requests see (--reset-contextvars): one set
when the module is imported, one in the lifespan startup, one by a previous request."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

AT_IMPORT: ContextVar[str] = ContextVar("at_import", default="-")
IN_LIFESPAN: ContextVar[str] = ContextVar("in_lifespan", default="-")
BY_REQUEST: ContextVar[str] = ContextVar("by_request", default="-")

AT_IMPORT.set("import")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                IN_LIFESPAN.set("lifespan")
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    seen = f"{AT_IMPORT.get()} {IN_LIFESPAN.get()} {BY_REQUEST.get()}"
    BY_REQUEST.set("request")  # must not reach the next request on this connection
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": seen.encode()})
