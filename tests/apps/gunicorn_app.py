"""The app tests/test_gunicorn.py serves under gunicorn: workers_app's endpoints (every body
starts with the serving worker's pid), plus what proxy-header and TLS mapping is seen through."""

from __future__ import annotations

import os
from typing import Any

from tests.apps.workers_app import app as workers_app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET /seen -> "<pid> <client host> <scheme> <root_path>"; the rest: workers_app."""
    if scope["type"] == "http" and scope["path"] == "/seen":
        client = scope["client"][0] if scope.get("client") else "-"
        body = f"{os.getpid()} {client} {scope['scheme']} {scope['root_path'] or '-'}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})
        return
    await workers_app(scope, receive, send)
