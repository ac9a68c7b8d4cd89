"""The one ASGI app every server in the benchmark serves (`apps:app`, with perf/ on PYTHONPATH).

Each route is as cheap as the scenario allows, so the numbers measure the server, not the app:
canned bytes, no framework. Routes:

- `GET /plaintext`: 13-byte text body with Content-Length (TechEmpower "plaintext").
- `GET /json`: a small object serialised per request (TechEmpower "json").
- `POST /echo`: reads the whole body, answers it back with Content-Length.
- `GET /stream?size=N&chunk=M`: N bytes in M-byte `more_body` pieces, no Content-Length
  (chunked transfer coding, RFC 9112 section 7.1).
- `GET /download?size=N`: N bytes in 64 KiB pieces with Content-Length; `send()` must wait on a
  slow reader (flow control) or the server's memory grows.
- `POST /upload?rate=B`: reads the body at most B bytes/s, then answers the byte count; the
  server must stop reading from a fast writer meanwhile.
- `GET /static`: a 100 MiB file (STATIC_FILE, written once) as Starlette's FileResponse sends
  it: with the `http.response.pathsend` extension where the server offers it, else read and
  sent in 64 KiB pieces.
- websocket `/ws`: echoes every message (text or bytes).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PLAIN = b"Hello, world!"
PLAIN_HEAD = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
JSON_TYPE = (b"content-type", b"application/json")
OCTETS = (b"content-type", b"application/octet-stream")
PIECE = 64 * 1024
PIECE_BYTES = b"x" * PIECE


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope["query_string"].decode("latin-1")))


async def plaintext(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": PLAIN_HEAD})
    await send({"type": "http.response.body", "body": PLAIN})


def json_body() -> bytes:
    """The /json body, serialised anew on each call as TechEmpower asks."""
    return json.dumps({"message": "Hello, world!"}).encode()


async def json_response(scope: Scope, receive: Receive, send: Send) -> None:
    body = json_body()
    headers = [JSON_TYPE, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = await read_body(receive)
    headers = [OCTETS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    query = _query(scope)
    size = int(query.get("size", 1 << 20))
    piece = PIECE_BYTES[: int(query.get("chunk", PIECE))] or b"x"
    await send({"type": "http.response.start", "status": 200, "headers": [OCTETS]})
    await _send_pieces(send, size, piece)


async def download(scope: Scope, receive: Receive, send: Send) -> None:
    size = int(_query(scope).get("size", 1 << 30))
    headers = [OCTETS, (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await _send_pieces(send, size, PIECE_BYTES)


async def _send_pieces(send: Send, size: int, piece: bytes) -> None:
    full, rest = divmod(size, len(piece))
    for _ in range(full):
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": piece[:rest]})


STATIC_SIZE = 100 * 1024 * 1024
STATIC_FILE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "fastserve-perf-static.bin")


def static_file() -> str:
    """The file /static serves, written on first use (random bytes: nothing compresses or
    dedups it)."""
    if not os.path.exists(STATIC_FILE) or os.path.getsize(STATIC_FILE) != STATIC_SIZE:
        part = f"{STATIC_FILE}.{os.getpid()}"
        with open(part, "wb") as f:
            for _ in range(STATIC_SIZE // (4 * 1024 * 1024)):
                f.write(os.urandom(4 * 1024 * 1024))
        os.replace(part, STATIC_FILE)
    return STATIC_FILE


async def static(scope: Scope, receive: Receive, send: Send) -> None:
    path = static_file()
    head = [OCTETS, (b"content-length", b"%d" % STATIC_SIZE)]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    if "http.response.pathsend" in scope.get("extensions", {}):
        await send({"type": "http.response.pathsend", "path": path})
        return
    with open(path, "rb") as f:  # (Starlette reads in a thread; the bytes are the same)
        more = True
        while more:
            piece = f.read(PIECE)
            more = len(piece) == PIECE
            await send({"type": "http.response.body", "body": piece, "more_body": more})


async def upload(scope: Scope, receive: Receive, send: Send) -> None:
    """Consume the body no faster than `rate` bytes/s: the server must stop reading meanwhile."""
    rate = float(_query(scope).get("rate", 0)) or None
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        total += len(message.get("body", b""))
        if rate is not None:
            ahead = total / rate - (loop.time() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if not message.get("more_body"):
            break
    body = str(total).encode()
    headers = [OCTETS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": PLAIN_HEAD[:1]})
    await send({"type": "http.response.body", "body": b"not found"})


async def websocket_echo(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message.get("text", "")})
        else:
            return


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


ROUTES: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {
    "/plaintext": plaintext,
    "/json": json_response,
    "/echo": echo,
    "/stream": stream,
    "/download": download,
    "/upload": upload,
    "/static": static,
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        await ROUTES.get(scope["path"], not_found)(scope, receive, send)
    elif kind == "websocket":
        await websocket_echo(scope, receive, send)
    elif kind == "lifespan":
        await lifespan(scope, receive, send)
