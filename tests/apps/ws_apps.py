"""WebSocket apps and the clients for the WebSocket tests.

The apps run on the server's loop and report what they saw through a `Probe` (see
core_apps). `ws_connect` opens a websockets-library client with bounded timeouts. `RawWS` is
a client that writes frames exactly as the test builds them (masked by the websockets
library's `Frame.serialize`, or hand-made when they must be invalid) and reads the server's
frames with a minimal RFC 6455 §5.2 parser, so the tests can send what a well-behaved client
never would and can see every control frame the server sends.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import sys
from typing import Any

import pytest
from fastapi import FastAPI, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from tests.apps.core_apps import App, Probe, Receive, Scope, Send

# -- apps ---------------------------------------------------------------------------------


async def plain_http(send: Send, body: bytes = b"plain http") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def echo_app(probe: Probe | None = None) -> App:
    """Accept (with the subprotocol named in `?sub=`), echo every message, report the scope
    and the disconnect event. HTTP requests get a plain 200."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await plain_http(send)
            return
        assert (await receive())["type"] == "websocket.connect"
        if probe is not None:
            probe.put(dict(scope))
        qs = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        headers = [(b"x-extra", b"yes")]
        await send({"type": "websocket.accept", "subprotocol": qs.get("sub"), "headers": headers})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if probe is not None:
                    probe.put(message)
                return
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})

    return app


def close_after_first(code: int, reason: str, probe: Probe) -> App:
    """Accept, read one message, close with `code`/`reason`, then report what receive() says."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        probe.put(await receive())
        await send({"type": "websocket.close", "code": code, "reason": reason})
        probe.put(await receive())

    return app


async def reject_app(scope: Scope, receive: Receive, send: Send) -> None:
    """websocket.close before accept: HTTP 403."""
    await receive()
    await send({"type": "websocket.close"})


def deny_app(status: int, parts: list[bytes]) -> App:
    """A denial response (ASGI WebSocket Denial Response extension) with the body in parts."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        headers = [(b"content-type", b"text/plain"), (b"x-denied", b"1")]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            await send({"type": "websocket.http.response.body", "body": part, "more_body": more})

    return app


async def crash_before_accept(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("boom before accept")


async def crash_after_accept(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("boom after accept")


def slow_reader(probe: Probe) -> App:
    """Accept, read nothing until released, then count messages until the disconnect."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await probe.wait_release()
        count = 0
        while (await receive())["type"] == "websocket.receive":
            count += 1
        probe.put(count)

    return app


def flooder(probe: Probe, size: int, total: int) -> App:
    """Accept and send `total` binary messages of `size` bytes; `probe.counter` counts the
    send() calls that returned; the final outcome (done or the exception) goes to the probe."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        payload = b"x" * size
        try:
            for _ in range(total):
                await send({"type": "websocket.send", "bytes": payload})
                probe.counter += 1
        except OSError as exc:
            probe.put(exc)
        else:
            probe.put("done")

    return app


def hold_after_disconnect(probe: Probe) -> App:
    """Accept, report the disconnect event, then keep running (a slow app at shutdown) until
    released or cancelled ("cancelled" is reported)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        probe.put("accepted")
        probe.put(await receive())
        try:
            await probe.wait_release()
        except asyncio.CancelledError:
            probe.put("cancelled")
            raise

    return app


async def print_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
    """For the process-level shutdown test: print the disconnect code on stdout."""
    if scope["type"] == "lifespan":
        return
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    print("disconnect", message["code"], flush=True)
    sys.stdout.flush()


def send_after_disconnect(probe: Probe) -> App:
    """Report the disconnect event, then what send() raises after it (ASGI: an OSError)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        probe.put(await receive())
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            probe.put(exc)
        else:
            probe.put("no error")

    return app


def starlette_app() -> Any:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="chat")
        async for text in websocket.iter_text():
            await websocket.send_text(f"starlette: {text}")

    async def denied(websocket: WebSocket) -> None:
        await websocket.send_denial_response(PlainTextResponse("go away", status_code=401))

    return Starlette(routes=[WebSocketRoute("/ws", echo), WebSocketRoute("/denied", denied)])


def fastapi_app() -> Any:
    # FastAPI reads the endpoint's annotations: its names must be module globals.
    app = FastAPI()

    @app.websocket("/items/{item}")
    async def items(websocket: WebSocket, item: str, q: str = "") -> None:
        await websocket.accept()
        try:
            while True:
                data = await websocket.receive_json()
                await websocket.send_json({"item": item, "q": q, "got": data})
        except WebSocketDisconnect:
            pass

    return app


# -- client side: the websockets library ------------------------------------------------------


def ws_connect(port: int, path: str = "/", **options: Any) -> ClientConnection:
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 5)
    ws: ClientConnection = connect(f"ws://127.0.0.1:{port}{path}", **options)
    return ws


def headers(ws: ClientConnection) -> Any:
    """The handshake response's headers."""
    assert ws.response is not None
    return ws.response.headers


def closed_code(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server's close frame; the (code, reason) it carried."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None, "no close frame from the server"
    return info.value.rcvd.code, info.value.rcvd.reason


# -- client side: raw frames ----------------------------------------------------------------


class RawWS:
    """A WebSocket client on a plain socket: exact bytes out, every server frame visible."""

    def __init__(self, port: int, path: str = "/", headers: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        try:
            self.handshake(path, headers)
        except BaseException:
            self.sock.close()
            raise

    def handshake(self, path: str, headers: bytes) -> None:
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"%s\r\n" % (path.encode(), key, headers)
        )
        head = self.read_until(b"\r\n\r\n")
        self.head = head
        self.status = int(head.split(b" ", 2)[1])

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self.fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buffer += data

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, opcode: Opcode, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(frame_bytes(opcode, payload, fin))

    def recv_frame(self) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next server frame (servers never mask, §5.1)."""
        b1, b2 = self.read(2)
        assert not b2 & 0x80, "server frames must not be masked"
        length = b2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.read(8))
        return b1 & 0x0F, bool(b1 & 0x80), self.read(length)

    def recv_close(self) -> tuple[int, str]:
        """Skip frames up to the server's close frame; its (code, reason)."""
        while True:
            opcode, _, payload = self.recv_frame()
            if opcode == Opcode.CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closes TCP within `timeout` (data before it is skipped)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def frame_bytes(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame, serialized by the websockets library."""
    return Frame(opcode, payload, fin).serialize(mask=True, extensions=[])


def unmasked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame without the mask bit: a protocol error (RFC 6455 §5.1)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def recorder(probe: Probe) -> App:
    """Accept, then report every event receive() gives, up to and including the disconnect."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            probe.put(message)
            if message["type"] == "websocket.disconnect":
                return

    return app


def events_to_disconnect(probe: Probe) -> list[dict[str, Any]]:
    """What a `recorder` app reported, up to its disconnect; a silent app fails (the probe's
    get() times out), it never ends the list early."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["type"] != "websocket.disconnect":
        got.append(probe.get())
    return got


def events_of_a_closing_burst(serve: Any, burst: bytes, code: int) -> list[dict[str, Any]]:
    """`burst` sent in one write to a `recorder` app (`serve`: the tests' fixture): the
    server's Close carries `code` and the TCP connection ends; what the app received up to
    its disconnect."""
    probe = Probe()
    with serve(recorder(probe)) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(burst)
        assert raw.recv_close()[0] == code
        assert raw.at_eof()
        return events_to_disconnect(probe)
