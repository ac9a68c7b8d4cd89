"""The lean reference path: how fast an ASGI request can go in Python on this machine.

NOT a server. It is the "lean ASGI path" of /work/shared/PERFORMANCE.md, runnable beside the
real servers so the harness can show the ceiling in the same run (`--scenarios ceiling`):
httptools parses, the scope is a dict, one `create_task` per request runs the app, and the
head and a final body leave in one `transport.write`. There is no validation, no timeout, no
flow control, no pipelining order, no error handling, no lifespan and no access log: every
one of those costs the real servers something this path does not pay.

    python perf/lean.py --port 8000     # serves apps:app (GET /plaintext and the like)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import uvloop
from apps import app  # type: ignore[import-not-found]  # perf/ is on PYTHONPATH

REQUEST: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}


class LeanProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": self.parser.get_method().decode(),
            "path": path.decode("latin-1"),
            "raw_path": path,
            "query_string": query,
            "headers": self.headers,
        }
        self.url = b""
        self.headers = []
        self.loop.create_task(self.run(scope))

    async def run(self, scope: dict[str, Any]) -> None:
        transport = self.transport
        assert transport is not None
        start: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            return REQUEST

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body = message.get("body", b"")
            parts = [b"HTTP/1.1 %d \r\n" % start["status"]]  # an empty reason phrase is valid
            length_given = False
            for name, value in start.get("headers", ()):
                parts += (name, b": ", value, b"\r\n")
                length_given = length_given or name == b"content-length"
            if not length_given:
                parts.append(b"content-length: %d\r\n" % len(body))
            parts += (b"\r\n", body)
            transport.write(b"".join(parts))

        await app(scope, receive, send)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(LeanProtocol, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
