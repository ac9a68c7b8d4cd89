"""WebSocket echo throughput: messages per second over N connections, small and 64 KiB messages.

    python perf/ws_bench.py --url ws://127.0.0.1:8000/ [--connections 50] [--size 32]
    python perf/ws_bench.py --compare [--duration 10]

`--url` measures a running server that echoes (serve `ws_bench:app` from this directory, or
perf/apps.py's `/ws`). `--compare` starts fastserve and uvicorn (`--ws websockets-sansio`) itself,
on free ports on 127.0.0.1, the server pinned to CPU 0 and this client to CPU 1 when there are
two CPUs, and prints one table; each server is stopped at the end whatever happens.

The client is a bare asyncio protocol that speaks the protocol from bytes made once: the
handshake request, one masked binary frame, and the exact frame the echo must come back as. Each
echo is compared with that frame byte for byte (a memcmp: a fast wrong answer counts as an
error, not a message), so a client core costs ~3x less per message than a server core and the
server is what is measured. The websockets library's sans-I/O `ClientProtocol` (`--client
sansio`, and always with `--deflate`) costs as much per message as a server does, so it capped
both servers near 52,000 msg/s on this machine, the faster one idling half its time (session 11).
The raw client's one deviation from RFC 6455: its mask key is chosen once per connection, not
per frame; the server unmasks every frame alike either way. Each connection does strict round
trips (send, wait for the echo), counted until the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

PERF_DIR = Path(__file__).resolve().parent
SIZES = {"small": 32, "64k": 64 * 1024}


# -- the app the servers run -------------------------------------------------------------------


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Echo every WebSocket message; HTTP gets a 404 and lifespan is acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message["text"]})
        elif kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        else:
            return


# -- the client --------------------------------------------------------------------------------


class EchoLoop(asyncio.Protocol):
    """What both clients share: `window` messages in flight (1: strict round trips) until the
    deadline, the counts, and the future that ends the connection's run."""

    transport: asyncio.Transport

    def __init__(self, deadline: float, window: int) -> None:
        self.deadline = deadline
        self.window = window
        self.in_flight = 0
        self.count = 0
        self.received = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)

    def finish(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        if hasattr(self, "transport"):
            self.transport.close()


class EchoClient(EchoLoop):
    """The websockets library's sans-I/O ClientProtocol on a bare asyncio protocol: the library
    frames, masks and parses (and deflates with `deflate`)."""

    def __init__(
        self, url: str, payload: bytes, deadline: float, deflate: bool, window: int
    ) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
        from websockets.uri import parse_uri

        super().__init__(deadline, window)
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.ws = ClientProtocol(parse_uri(url), extensions=extensions, max_size=None)
        self.payload = payload

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ws.send_request(self.ws.connect())
        self.flush()

    def flush(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            else:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self.finish(RuntimeError(f"handshake answered {event.status_code}"))
                    return
                for _ in range(self.window):
                    self.send_next()
            elif isinstance(event, Frame) and event.opcode in (Opcode.BINARY, Opcode.CONT):
                self.received += len(event.data)
                if event.fin:
                    self.count += 1
                    self.in_flight -= 1
                    self.send_next()
        self.flush()

    def send_next(self) -> None:
        if time.monotonic() < self.deadline:
            self.ws.send_binary(self.payload)
            self.in_flight += 1
        elif self.in_flight == 0:
            self.ws.send_close(1000)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and time.monotonic() < self.deadline:
            exc = ConnectionError("connection closed early")
        self.finish(exc)


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def frame_header(opcode: int, length: int, masked: bool) -> bytes:
    """A final frame's header (RFC 6455 section 5.2), without the mask key."""
    bit = 0x80 if masked else 0
    if length < 126:
        return bytes((0x80 | opcode, bit | length))
    if length < 1 << 16:
        return bytes((0x80 | opcode, bit | 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, bit | 127)) + length.to_bytes(8, "big")


def masked_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """A client's frame: header, mask key, payload XORed with the key."""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )
    return frame_header(opcode, len(payload), True) + key + body


class RawEchoClient(EchoLoop):
    """One connection over bytes made once: the handshake, then `window` copies of one masked
    binary frame in flight, each echo checked against the frame it must be, until the deadline;
    then a Close, and the connection ends when the server closes too."""

    def __init__(self, url: str, payload: bytes, deadline: float, window: int) -> None:
        super().__init__(deadline, window)
        parts = urlsplit(url)
        key = base64.b64encode(os.urandom(16))
        self.request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        mask = os.urandom(4)
        self.frame = masked_frame(0x2, payload, mask)
        self.echo = frame_header(0x2, len(payload), False) + payload
        self.close_frame = masked_frame(0x8, (1000).to_bytes(2, "big"), mask)
        self.buffer = bytearray()
        self.opened = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.opened:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101 ") or self.accept not in head:
                self.finish(RuntimeError(f"handshake answered {head[:40]!r}"))
                return
            self.opened = True
            for _ in range(self.window):
                self.send_next()
        if self.closing:
            if buffer[:1] == b"\x88":
                self.transport.close()
            return
        echo = self.echo
        size = len(echo)
        while len(buffer) >= size:
            if not buffer.startswith(echo):
                self.finish(RuntimeError(f"wrong echo: {bytes(buffer[:16])!r}..."))
                return
            del buffer[:size]
            self.count += 1
            self.received += size
            self.in_flight -= 1
            self.send_next()

    def send_next(self) -> None:
        if time.monotonic() < self.deadline:
            self.transport.write(self.frame)
            self.in_flight += 1
        elif self.in_flight == 0 and not self.closing:
            self.closing = True
            self.transport.write(self.close_frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and not self.closing:
            exc = ConnectionError("connection closed early")
        self.finish(exc)


async def measure(
    url: str,
    connections: int,
    size: int,
    duration: float,
    deflate: bool = False,
    window: int = 1,
    client: str = "raw",
) -> dict[str, Any]:
    """Run `connections` echo loops for `duration` seconds; messages/s and errors. `client`:
    "raw" (bytes made once, each echo checked) or "sansio" (the websockets library's
    ClientProtocol, which deflate always uses)."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = os.urandom(size)
    deadline = time.monotonic() + duration
    clients: list[EchoLoop] = []
    errors: list[str] = []

    async def one() -> None:
        conn: EchoLoop
        if client == "raw" and not deflate:
            conn = RawEchoClient(url, payload, deadline, window)
        else:
            conn = EchoClient(url, payload, deadline, deflate, window)
        clients.append(conn)
        try:
            await loop.create_connection(lambda: conn, host, port)
            await asyncio.wait_for(conn.done, duration + 15)
        except Exception as exc:  # reported, not raised: one failure must not hide the rest
            errors.append(f"{type(exc).__name__}: {exc}")

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    seconds = time.monotonic() - start
    messages = sum(c.count for c in clients)
    return {
        "messages": messages,
        "seconds": round(seconds, 2),
        "mps": round(messages / seconds, 1),
        "mib_s": round(sum(c.received for c in clients) / seconds / 2**20, 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def run_client(
    url: str, connections: int, size: int, duration: float, deflate: bool, window: int, client: str
) -> Any:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(measure(url, connections, size, duration, deflate, window, client))


# -- --compare: start the servers ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin(cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def server_command(name: str, port: int) -> list[str]:
    bindir = Path(sys.executable).parent
    common = ["--app-dir", str(PERF_DIR), "ws_bench:app", "--port", str(port)]
    if name == "fastserve":
        return [str(bindir / "fastserve"), *common, "--no-access-log", "--log-level", "warning"]
    return [
        str(bindir / "uvicorn"),
        *common,
        "--ws",
        "websockets-sansio",
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]


@contextlib.contextmanager
def running(name: str, port: int) -> Iterator[int]:
    """Start server `name` on `port` (pinned to CPU 0); yields its pid; always stops it."""
    proc = subprocess.Popen([*pin(0), *server_command(name, port)], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start listening")
            time.sleep(0.1)
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(args: argparse.Namespace, port: int, pid: int, size: int) -> tuple[float, float]:
    """(messages/s, server CPU µs per message) of one client run in a subprocess on CPU 1."""
    options = {"connections": args.connections, "size": size, "duration": args.duration,
               "window": args.window, "client": args.client}  # fmt: skip
    argv = [*pin(1), sys.executable, __file__, "--url", f"ws://127.0.0.1:{port}/"]
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    if args.deflate:
        argv.append("--deflate")
    before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 60)
    cpu = cpu_seconds(pid) - before
    found = dict(re.findall(r"(\w+)=(\S+)", out.stdout))
    if "mps" not in found or found.get("errors") != "0":
        raise RuntimeError(f"client failed: {out.stdout}{out.stderr}")
    messages = int(found["messages"])
    return float(found["mps"]), (cpu / messages * 1e6 if messages else 0.0)


def compare(args: argparse.Namespace) -> None:
    """Both servers up at once, runs interleaved round by round (A B A B...), so that load
    from elsewhere on the machine hits both alike; medians of messages/s and of the server's
    CPU time per message (the steadier figure on a busy machine)."""
    names = ("fastserve", "uvicorn")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in names:
            port = free_port()
            servers[name] = (port, stack.enter_context(running(name, port)))
        for round_no in range(args.rounds):
            for label, size in SIZES.items():
                for name in names if round_no % 2 == 0 else reversed(names):
                    mps, cpu_us = one_run(args, *servers[name], size)
                    results.setdefault((name, label), []).append((mps, cpu_us))
                    print(
                        f"round {round_no + 1} {name:10} {label:6} {mps:>10.0f} msg/s "
                        f"{cpu_us:>7.1f} µs CPU/msg",
                        flush=True,
                    )
    print(f"\nmedians over {args.rounds} rounds, {args.connections} connections:")
    print(f"{'size':6} {'server':10} {'msg/s':>10} {'µs CPU/msg':>11}")
    for label in SIZES:
        medians = {}
        for name in names:
            runs = results[(name, label)]
            medians[name] = (
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs),
            )
            print(f"{label:6} {name:10} {medians[name][0]:>10.0f} {medians[name][1]:>11.1f}")
        fast, slow = medians["fastserve"], medians["uvicorn"]
        print(f"{label:6} {'ratio':10} {fast[0] / slow[0]:>9.2f}x {slow[1] / fast[1]:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="ws:// URL of a running echo server")
    parser.add_argument("--compare", action="store_true", help="fastserve vs uvicorn")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="message size in bytes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per conn")
    parser.add_argument(
        "--client", choices=["raw", "sansio"], default="raw", help="the client (see above)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--compare: interleaved rounds")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    if not args.url:
        parser.error("--url or --compare is required")
    result = run_client(
        args.url,
        args.connections,
        args.size,
        args.duration,
        args.deflate,
        args.window,
        args.client,
    )
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
