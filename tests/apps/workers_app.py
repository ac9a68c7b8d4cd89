"""Test apps for the supervisor tests (tests/test_workers.py, tests/test_container.py).

Every response body starts with the worker's pid, so a test can see which worker answered.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from tests.apps.workers_procs import process_state

VERSION = "v1"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET /          -> "<pid>"
    GET /slow?S      -> sleeps S seconds (asynchronously), then "<pid> slow done"
    GET /block?S     -> blocks the event loop for S seconds (time.sleep), then "<pid>"
    GET /spin        -> a busy loop that never ends: the worker stops sending heartbeats
    GET /version     -> "<pid> <VERSION>"
    GET /orphan      -> starts a grandchild that outlives its parent; answers its pid
    GET /proc/N      -> the state letter of process N in /proc, or "gone"
    WebSocket        -> echoes text messages as "<pid> <text>"
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _echo(receive, send)
        return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    query = scope["query_string"].decode() or "0"
    pid = os.getpid()
    body = f"{pid}"
    if path == "/slow":
        print(f"slow request started in [{pid}]", file=sys.stderr, flush=True)
        await asyncio.sleep(float(query))
        body = f"{pid} slow done"
    elif path == "/block":
        if float(query) >= 1:
            print(f"blocking request started in [{pid}]", file=sys.stderr, flush=True)
        time.sleep(float(query))
    elif path == "/spin":
        while True:  # the point: a worker whose event loop never turns again
            time.sleep(0.01)
    elif path == "/version":
        body = f"{pid} {VERSION}"
    elif path == "/orphan":
        body = _orphan()
    elif path.startswith("/proc/"):
        body = process_state(int(path.removeprefix("/proc/")))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("WORKERS_APP_FAIL_STARTUP"):
                await send({"type": "lifespan.startup.failed", "message": "refusing to start"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _echo(receive: Any, send: Any) -> None:
    """WebSocket: accept, then echo text messages until the connection closes."""
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": f"{os.getpid()} {message.get('text')}"})
        else:
            return


def _orphan() -> str:
    """`sh` starts `sleep` in the background and exits: the sleep is re-parented to PID 1."""
    out = subprocess.run(
        ["sh", "-c", "sleep 0.5 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        check=True,
        timeout=5,
    )
    return out.stdout.decode().strip()
