"""The app tests/test_recycling.py serves: every body starts with the serving worker's pid.

GET /          -> "<pid>"
GET /grow?N    -> keeps N more MiB (written, so resident) for the worker's lifetime; "<pid> <MiB>"
GET /rss       -> "<pid> <resident MiB>"
"""

from __future__ import annotations

import os
from typing import Any

from fastserve.recycling import MIB, rss_bytes

KEPT: list[bytes] = []  # the leak


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    pid = os.getpid()
    body = f"{pid}"
    if scope["path"] == "/grow":
        size = int(scope["query_string"] or b"1") * MIB
        KEPT.append(b"\x01" * size)  # written byte by byte: every page is resident
        body = f"{pid} {sum(map(len, KEPT)) // MIB}"
    elif scope["path"] == "/rss":
        body = f"{pid} {(rss_bytes(pid) or 0) / MIB:.1f}"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})
