"""uvicorn.run() from a script, with uvicorn-typed settings; with `host`, the program has a
SIGTERM handler of its own. The test reads the port from the log, sends a request, then a
signal, and reads whether run() returned and what the handler saw."""

from __future__ import annotations

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
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"run"})


if __name__ == "__main__":
    if sys.argv[1] == "host":
        signal.signal(signal.SIGTERM, host_handler)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="info",
        access_log=False,
        headers=[("X-A", "1"), ("Server", "mine")],
        workers=1,
    )
    print("RUN RETURNED", SEEN, flush=True)
