"""WebSocket echo throughput: messages per second over N connections, small and 64 KiB messages.

    python perf/ws_bench.py --url ws://127.0.0.1:8000/ [--connections 50] [--size 32]
    python perf/ws_bench.py --compare [--duration 10]

`--url` measures a running server that echoes (serve `ws_bench:app` from this directory, or
perf/apps.py's `/ws`). `--compare` starts fastserve and uvicorn (`--ws websockets-sansio`) itself,
on free ports on 127.0.0.1, the server pinned to CPU 0 and this client to CPU 1 when there are
two CPUs, and prints one table; each server is stopped at the end whatever happens.

The client is the websockets library's sans-I/O `ClientProtocol` on a bare asyncio protocol: the
library frames and masks, but there is no reader task, assembler or keepalive per connection, so
one client core drives more load than a server core can answer and the server is what is
measured. Each connection does strict round trips (send, wait for the echo), counted until the
deadline; permessage-deflate is off unless `--deflate`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any
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


class EchoClient(asyncio.Protocol):
    """One connection: handshake, then keep `window` messages in flight (1: strict round
    trips) until the deadline, then close once every echo is back."""

    def __init__(
        self, url: str, payload: bytes, deadline: float, deflate: bool, window: int
    ) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
        from websockets.uri import parse_uri

        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.ws = ClientProtocol(parse_uri(url), extensions=extensions, max_size=None)
        self.payload = payload
        self.deadline = deadline
        self.window = window
        self.in_flight = 0
        self.count = 0
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ws.send_request(self.ws.connect())
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
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
        self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None and time.monotonic() < self.deadline:
                exc = ConnectionError("connection closed early")
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def measure(
    url: str, connections: int, size: int, duration: float, deflate: bool = False, window: int = 1
) -> dict[str, Any]:
    """Run `connections` echo loops for `duration` seconds; messages/s and errors."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = os.urandom(size)
    deadline = time.monotonic() + duration
    clients: list[EchoClient] = []
    errors: list[str] = []

    async def one() -> None:
        client = EchoClient(url, payload, deadline, deflate, window)
        clients.append(client)
        try:
            await loop.create_connection(lambda: client, host, port)
            await asyncio.wait_for(client.done, duration + 15)
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
    url: str, connections: int, size: int, duration: float, deflate: bool, window: int
) -> Any:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(measure(url, connections, size, duration, deflate, window))


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
               "window": args.window}  # fmt: skip
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
    parser.add_argument("--rounds", type=int, default=3, help="--compare: interleaved rounds")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    if not args.url:
        parser.error("--url or --compare is required")
    result = run_client(
        args.url, args.connections, args.size, args.duration, args.deflate, args.window
    )
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
