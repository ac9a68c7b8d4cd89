"""Apps for the core HTTP/1.1, ASGI and CLI tests (other app shapes: `framework_apps`).

The apps run on the server's loop (a thread of the test process, or a subprocess); a `Probe`
is how an in-process app reports what it saw to the test thread, and how the test releases
an app that is holding a request. The client side of the raw-socket tests is `tests.helpers`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- server side: talking to the test thread -----------------------------------------------------


class Probe:
    """A thread-safe channel from an app (on the server's loop) to the test thread."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.release = threading.Event()
        self.counter = 0

    def put(self, item: Any) -> None:
        self.events.put(item)

    def get(self, timeout: float = 5.0) -> Any:
        return self.events.get(timeout=timeout)

    async def wait_release(self, timeout: float = 20.0) -> None:
        """Hold the app (without blocking the loop) until the test sets `release`."""
        deadline = time.monotonic() + timeout
        while not self.release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


async def respond(
    send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole response in two messages, without Content-Length (the server adds it)."""
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def count_body(receive: Receive, probe: Probe | None = None) -> int | None:
    """Read the whole request body and return its size, or None if the client left first;
    each message goes to `probe`, if given."""
    size = 0
    while True:
        message = await receive()
        if probe is not None:
            probe.put(message)
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            return size


def query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


# -- the routing app: one path per behaviour ---------------------------------------------------

BAD_HEADERS: dict[str, tuple[bytes, bytes]] = {
    "cr": (b"x-bad", b"a\rx-injected: 1"),
    "lf": (b"x-bad", b"a\nx-injected: 1"),
    "crlf": (b"x-bad", b"a\r\nx-injected: 1"),
    "nul": (b"x-bad", b"a\0b"),
    "name-space": (b"x bad", b"1"),
    "name-colon": (b"x-injected:", b"1"),
    "name-empty": (b"", b"1"),
    "name-crlf": (b"x-a\r\nx-injected", b"1"),
    "content-length": (b"content-length", b"5, 5"),
}


async def _stream(send: Send, pieces: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for piece in pieces:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def core_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Dispatch on the path; each path exercises one server rule (see the tests)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    args = query(scope)
    if path == "/echo":
        await respond(send, 200, await read_body(receive))
    elif path == "/stream":
        pieces = [b"chunk%d\n" % i for i in range(int(args.get("n", "3")))]
        await _stream(send, pieces, [(b"content-type", b"text/plain")])
    elif path == "/stream-cl":
        await _stream(send, [b"01234", b"56789"], [(b"content-length", b"10")])
    elif path == "/status":
        code = int(args["code"])
        headers = [(b"content-length", args["cl"].encode())] if "cl" in args else []
        await respond(send, code, args.get("body", "").encode(), headers)
    elif path == "/slow":
        await asyncio.sleep(float(args.get("s", "0.3")))
        await respond(send, 200, b"slow " + scope["query_string"])
    elif path == "/close":
        await respond(send, 200, b"bye", [(b"connection", b"close")])
    elif path == "/bad-header":
        await respond(send, 200, b"never", [BAD_HEADERS[args["kind"]]])
    elif path.startswith("/cl-"):
        await _wrong_length(send, path[4:])
    elif path == "/raise-before":
        raise RuntimeError("boom before the response")
    elif path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after the response started")
    elif path == "/no-response":
        return
    elif path == "/start-only":
        await send({"type": "http.response.start", "status": 200, "headers": []})
    elif path == "/two-lengths":
        lengths = [(b"content-length", b"5"), (b"content-length", args["second"].encode())]
        await respond(send, 200, b"hello", lengths)
    elif path == "/iterable-headers":
        # ASGI: headers is any iterable of pairs (here a generator, read once).
        pairs = ((b"x-gen-%d" % i, b"%d" % i) for i in range(2))
        await send({"type": "http.response.start", "status": 200, "headers": pairs})
        await send({"type": "http.response.body", "body": b"gen"})
    elif path == "/start-then-echo":
        # Starts the response, then streams the request body back as it arrives.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message["body"], "more_body": more})
            if not more:
                break
    elif path == "/bad-status":
        await respond(send, json.loads(args["status"]), b"never")
    elif path == "/body-first":
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/own-server-date":
        own = [(b"Server", b"custom/1.0"), (b"Date", b"Mon, 01 Jan 2001 00:00:00 GMT")]
        await respond(send, 200, b"own", own)
    else:
        await respond(send, 200, b"hello", [(b"content-type", b"text/plain")])


async def _wrong_length(send: Send, kind: str) -> None:
    """A body that disagrees with its Content-Length, in one message or streamed."""
    headers = [(b"content-length", b"10")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if kind == "longer":
        await send({"type": "http.response.body", "body": b"0123456789ABC"})
    elif kind == "shorter":
        await send({"type": "http.response.body", "body": b"01234"})
    elif kind == "longer-streamed":
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789ABC"})
    else:  # shorter-streamed
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"567"})


# -- apps that report to a Probe ---------------------------------------------------------------


def recording_echo(probe: Probe) -> App:
    """Puts every received message on the probe, then echoes the body."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            probe.put(message)
            if message["type"] != "http.request":
                return
            chunks.append(message["body"])
            if not message["more_body"]:
                break
        await respond(send, 200, b"".join(chunks))

    return app


def recording_app(probe: Probe) -> App:
    """Reads the whole body, answers 200 with what it saw (size, raw path, query); reports
    ("scope", scope), then each message."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        probe.put(("scope", scope))
        size = await count_body(receive, probe)
        if size is None:
            return
        await respond(send, 200, b"%d %s %s" % (size, scope["raw_path"], scope["query_string"]))

    return app


def hold_then_count(probe: Probe) -> App:
    """Reads nothing until released, then counts the body (reading-side flow control)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("started")
        await probe.wait_release()
        size = len(await read_body(receive))
        await respond(send, 200, b"%d" % size)

    return app


def counted_download(probe: Probe, pieces: int, size: int) -> App:
    """Streams `pieces` x `size` bytes and counts each send() that returned (write-side
    flow control: the count must stall while the client does not read)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * size
        for _ in range(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            probe.counter += 1
        await send({"type": "http.response.body", "body": b""})

    return app


def download_until_gone(probe: Probe) -> App:
    """Streams 1 MiB pieces until send() raises because the client left (ASGI 2.4: OSError)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"d" * (1 << 20)
        try:
            for _ in range(256):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except OSError as exc:
            probe.put(f"OSError: {type(exc).__name__}")
            raise
        probe.put("finished")

    return app


def until_disconnect(probe: Probe) -> App:
    """Calls receive() until http.disconnect (at most 50 times), reporting each message."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(50):
            message = await receive()
            probe.put(message)
            if message["type"] == "http.disconnect":
                return

    return app


def receive_after_response(probe: Probe) -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"done")
        try:
            message = await asyncio.wait_for(receive(), 2.0)
        except TimeoutError:
            message = {"type": "timed out"}
        probe.put(message)

    return app


def answer_while_receiving(probe: Probe) -> App:
    """One task waits in receive() while another answers: the waiter gets http.disconnect."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the (empty) request body

        async def listen() -> None:
            probe.put(await receive())

        task = asyncio.get_running_loop().create_task(listen())
        await asyncio.sleep(0.05)
        await respond(send, 200, b"answered")
        await asyncio.wait_for(task, 2.0)

    return app


# -- scope, lifespan, factories, other interfaces -------------------------------------------------


def jsonable(value: Any) -> Any:
    """The scope as JSON: bytes as latin-1 text, tuples as lists."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


async def scope_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with its scope as JSON. With lifespan state it counts requests in the shared
    nested dict (a shallow copy shares it) and marks its own copy (which must not leak)."""
    if scope["type"] == "lifespan":
        await lifespan_app(scope, receive, send)
        return
    state = scope.get("state", {})
    if "shared" in state:
        state["shared"]["count"] += 1
    body = json.dumps(jsonable(scope)).encode()
    state["mutated_by_request"] = True
    await respond(send, 200, body, [(b"content-type", b"application/json")])


def recording_lifespan(probe: Probe) -> App:
    """scope_app, with every lifespan message it receives put on the probe."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await scope_app(scope, receive, send)
            return

        async def recorded() -> Message:
            message = await receive()
            probe.put(message["type"])
            return message

        await lifespan_app(scope, recorded, send)

    return app


def under_task_factory(app: App, made: list[asyncio.Task[Any]]) -> App:
    """`app` (HTTP) behind a lifespan that sets a loop task factory at startup, as
    instrumentation does, and removes it at shutdown; every task it makes goes to `made`."""

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        await receive()
        asyncio.get_running_loop().set_task_factory(factory)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        asyncio.get_running_loop().set_task_factory(None)
        await send({"type": "lifespan.shutdown.complete"})

    return wrapped


async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Supports lifespan: puts a value in `state` at startup and logs both phases."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["answer"] = 42
                scope["state"]["shared"] = {"count": 0}
                print("lifespan startup ran", flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                print("lifespan shutdown ran", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    await core_app(scope, receive, send)


async def lifespan_failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await core_app(scope, receive, send)


async def lifespan_raising_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("startup exploded")
    await core_app(scope, receive, send)


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that (like many) asserts it only ever sees HTTP."""
    assert scope["type"] == "http", "only HTTP is supported"
    await core_app(scope, receive, send)


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    """For graceful shutdown (in a subprocess): /slow?s=N prints a line to stdout when it
    starts, so the test knows the request is in flight, and answers after N seconds."""
    if scope["type"] == "http" and scope["path"] == "/slow":
        print("slow request started", flush=True)
    await lifespan_app(scope, receive, send)


_together: dict[int, asyncio.Event] = {}
_arrived: dict[int, int] = {}


async def gc_threshold_app(scope: Scope, receive: Receive, send: Send) -> None:
    """For --gc-tune (in a subprocess): answers the young generation's collection threshold;
    /together?n=N first waits until N such requests run at once."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/together":
        n = int(query(scope)["n"])
        event = _together.setdefault(n, asyncio.Event())
        _arrived[n] = _arrived.get(n, 0) + 1
        if _arrived[n] >= n:
            event.set()
        await event.wait()
    await respond(send, 200, str(gc.get_threshold()[0]).encode())


def make_app() -> App:
    """A zero-argument factory (`--factory`)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await respond(send, 200, b"from factory")

    return app
