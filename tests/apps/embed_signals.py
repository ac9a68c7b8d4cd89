"""A program that serves with uvicorn's Server inside its own asyncio.run and has signal
handlers of its own (`host`) or not (`none`). It prints READY once serving; the test then
sends a signal and reads what happened: whether serve() returned, whether the program's
handlers are back, and whether its handler saw the signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import uvicorn

SEEN: list[int] = []


def host_handler(sig: int, frame: Any) -> None:
    SEEN.append(sig)
    print("HOST HANDLER", sig, flush=True)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def main() -> None:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print("READY", flush=True)
    await task
    print("SERVE RETURNED", SEEN, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "host":
        signal.signal(signal.SIGTERM, host_handler)
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("KEYBOARD INTERRUPT", flush=True)
    after = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    print("HANDLERS RESTORED", after == before, flush=True)
    if sys.argv[1] == "host":
        os.kill(os.getpid(), signal.SIGTERM)  # the program's handler gets the next one too
        print("AFTERWARDS", SEEN, flush=True)
