"""Load clients wrk cannot play, run as `python perf/clients.py COMMAND ...` (pinned to CPU 1).

- `idle`: opens N keep-alive connections, sends one request on each, reads the answer and
  holds them idle; prints `READY {...}` and waits for a line on stdin (or --hold seconds).
  With `--h2`, HTTP/2 connections: the preface and an empty SETTINGS, one GET on stream 1
  (a hand-made HPACK block), the server's SETTINGS acknowledged, then idle.
- `download`: one GET of a large body read at a limited rate through a small receive buffer:
  the server must stop producing while the reader lags (its `send()` waits on the transport).
- `upload`: one POST of a large body written as fast as the socket takes it, to a route that
  consumes it slowly: the server must stop reading meanwhile.
- `ws`: WebSocket echo round trips over C connections for D seconds (needs `websockets`).

Standard library only (except `ws`), self-contained, every loop bounded in time. Results are
printed as one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import resource
import socket
import sys
import time
from typing import Any


def emit(tag: str, data: dict[str, Any]) -> None:
    print(f"{tag} {json.dumps(data)}", flush=True)


def emit_transfer(count: int, complete: bool, start: float, error: str | None = None) -> None:
    """The RESULT line of the slow download/upload clients."""
    result: dict[str, Any] = {
        "bytes": count,
        "complete": complete,
        "seconds": round(time.monotonic() - start, 2),
    }
    if error is not None:
        result["error"] = error
    emit("RESULT", result)


async def _open_one(port: int, sem: asyncio.Semaphore) -> asyncio.StreamWriter | None:
    """One connection that has completed one request (so the server holds per-connection state)."""
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=10
            )
            writer.write(b"GET /plaintext HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await asyncio.wait_for(reader.readexactly(length), timeout=10)
            return writer
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
H2_END_STREAM, H2_ACK, H2_END_HEADERS = 0x1, 0x1, 0x4
PLAIN_LENGTH = 13  # apps.PLAIN, the /plaintext body


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 §4.1)."""
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def h2_get(path: bytes, authority: bytes = b"bench", stream: int = 1) -> bytes:
    """A HEADERS frame (END_STREAM, END_HEADERS) for GET `path`, HPACK by hand (RFC 7541):
    :method GET and :scheme http from the static table (indexes 2 and 6), :path and :authority
    as literals without indexing whose names are static indexes 4 and 1."""
    block = b"\x82\x86" + b"\x04" + bytes((len(path),)) + path
    block += b"\x01" + bytes((len(authority),)) + authority
    return h2_frame(H2_HEADERS, H2_END_STREAM | H2_END_HEADERS, stream, block)


async def _h2_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Read frames until stream 1 ends; the body's length. Acknowledges the server's SETTINGS.
    Raises ConnectionError on a reset or GOAWAY."""
    body = 0
    while True:
        head = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == H2_SETTINGS and not flags & H2_ACK:
            writer.write(h2_frame(H2_SETTINGS, H2_ACK, 0))
        elif kind in (H2_RST_STREAM, H2_GOAWAY):
            raise ConnectionError(f"HTTP/2 frame type {kind} from the server")
        elif stream == 1 and kind == H2_DATA:
            body += len(payload)
        if stream == 1 and kind in (H2_DATA, H2_HEADERS) and flags & H2_END_STREAM:
            return body


async def _open_one_h2(port: int, sem: asyncio.Semaphore) -> asyncio.StreamWriter | None:
    """One HTTP/2 connection that has completed one GET /plaintext, then left idle."""
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=10
            )
            writer.write(H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0) + h2_get(b"/plaintext"))
            body = await asyncio.wait_for(_h2_response(reader, writer), timeout=10)
            if body != PLAIN_LENGTH:
                writer.transport.abort()
                return None
            return writer
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None


async def idle(port: int, count: int, hold: float, concurrency: int, h2: bool = False) -> None:
    start = time.monotonic()
    sem = asyncio.Semaphore(concurrency)
    opener = _open_one_h2 if h2 else _open_one
    tasks = [asyncio.ensure_future(opener(port, sem)) for _ in range(count)]
    # A server that stops accepting must not stall the run: give up on the rest after 60 s.
    done, pending = await asyncio.wait(tasks, timeout=60)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    writers = [w for t in done if (w := t.result()) is not None]
    emit(
        "READY",
        {"opened": len(writers), "wanted": count, "seconds": round(time.monotonic() - start, 2)},
    )
    # Hold until the harness writes a line (or closes our stdin), at most `hold` seconds.
    released = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), released.set)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(released.wait(), timeout=hold)
    loop.remove_reader(sys.stdin.fileno())
    for writer in writers:
        writer.transport.abort()
    emit("RESULT", {"opened": len(writers)})


def download(port: int, size: int, rate: float, deadline: float) -> None:
    """Read `size` body bytes no faster than `rate` bytes/s, through a 64 KiB receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    start = time.monotonic()
    got = 0
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /download?size={size} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            piece = sock.recv(65536)
            if not piece:
                break
            head += piece
        got = len(head.partition(b"\r\n\r\n")[2])
        while got < size and time.monotonic() - start < deadline:
            piece = sock.recv(65536)
            if not piece:
                break
            got += len(piece)
            ahead = got / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    except OSError as exc:
        emit_transfer(got, False, start, str(exc))
        return
    finally:
        sock.close()
    emit_transfer(got, got >= size, start)


def upload(port: int, size: int, rate: float, deadline: float) -> None:
    """POST `size` bytes as fast as the socket accepts them to /upload?rate=`rate`."""
    sock = socket.socket()
    start = time.monotonic()
    sent = 0
    piece = b"u" * (1 << 20)
    answer = b""
    try:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(max(1.0, deadline))
        head = (
            f"POST /upload?rate={int(rate)} HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode())
        while sent < size and time.monotonic() - start < deadline:
            chunk = piece[: size - sent]
            sock.sendall(chunk)
            sent += len(chunk)
        if sent >= size:
            answer = sock.recv(65536)
    except OSError as exc:
        emit_transfer(sent, False, start, str(exc))
        return
    finally:
        sock.close()
    complete = sent >= size and answer.startswith(b"HTTP/1.1 200")
    emit_transfer(sent, complete, start)


async def ws_echo(port: int, connections: int, duration: float, size: int) -> dict[str, Any]:
    """Echo round trips of `size`-byte binary messages over the websockets asyncio client."""
    from websockets.asyncio.client import connect

    payload = b"w" * size
    counts = [0] * connections
    errors: list[str] = []
    stop_at = time.monotonic() + duration

    async def one(index: int) -> None:
        url = f"ws://127.0.0.1:{port}/ws"
        try:
            async with connect(url, compression=None, max_size=None, open_timeout=10) as ws:
                while time.monotonic() < stop_at:
                    await ws.send(payload)
                    await asyncio.wait_for(ws.recv(), timeout=10)
                    counts[index] += 1
        except Exception as exc:  # any failure is reported, and counts as an error
            errors.append(f"{type(exc).__name__}: {exc}")

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(connections)))
    seconds = time.monotonic() - start
    return {
        "messages": sum(counts),
        "seconds": round(seconds, 3),
        "mps": round(sum(counts) / seconds, 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def ws(port: int, connections: int, duration: float, size: int) -> None:
    """Prefer ws_bench.py's raw client (bytes made once, each echo checked: ~3x cheaper per
    message than a server, so the server is what is measured); fall back to the websockets
    asyncio client when that module is absent."""
    try:
        measure: Any = importlib.import_module("ws_bench").measure
    except (ImportError, AttributeError):
        measure = None
    url = f"ws://127.0.0.1:{port}/ws"
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        if measure is not None:
            result = runner.run(measure(url, connections, size, duration))
            result["client"] = "ws_bench raw"
        else:
            result = runner.run(ws_echo(port, connections, duration, size))
            result["client"] = "websockets asyncio"
    emit("RESULT", result)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["idle", "download", "upload", "ws"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--h2", action="store_true", help="idle: HTTP/2 (prior knowledge)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--size", type=int, default=1 << 30)
    parser.add_argument("--rate", type=float, default=100 * (1 << 20))
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.command == "idle":
        asyncio.run(idle(args.port, args.count, args.hold, args.concurrency, args.h2))
    elif args.command == "download":
        download(args.port, args.size, args.rate, args.deadline)
    elif args.command == "upload":
        upload(args.port, args.size, args.rate, args.deadline)
    else:
        ws(args.port, args.connections, args.duration, args.size)


if __name__ == "__main__":
    main()
