"""An app that embeds uvicorn the way its documentation shows: Config + Server + serve() in
asyncio.run, with uvicorn-typed settings (header pairs, an int log level, a dictConfig dict
naming uvicorn's loggers). tests/test_embedding.py runs it as it is and with `uvicorn`
replaced by `fastserve`, and expects the same."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "CUSTOM %(message)s"}},
    "handlers": {
        "out": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {"uvicorn.error": {"handlers": ["out"], "level": "INFO", "propagate": False}},
}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def fetch(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data


async def main() -> None:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        access_log=False,
        log_level=20,
        log_config=LOG_CONFIG,
        headers=[("X-A", "1")],
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print("RESPONSE", repr(await fetch(port)), flush=True)
    server.should_exit = True
    await task
    print("SERVE RETURNED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
