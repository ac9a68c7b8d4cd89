"""The rules of server/protocols/h2.py that a mutation pass (mutmut 3, docs/testing.md) found
unchecked: every test here failed against at least one mutant the rest of the suite let live.
Over real sockets (TCP, and a Unix socket where the peer has no address), with hand-built
frames where the `h2` library would not send them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.apps.core_apps import Receive, Scope, Send
from tests.conftest import run_server
from tests.helpers import error_log, wait_until
from tests.test_http2_frames import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frames,
    RawH2,
    frame,
    u32,
)

pytest.importorskip("zttp")


GATES: list[asyncio.Event] = []
ENDS: list[str] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """/hold waits for the client to go; /never never reads (cancelled at shutdown);
    anything else reads its body and is served."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/never":
        await asyncio.Event().wait()
    if scope["path"] == "/gate":  # reads once the test opens GATES[0], and records the end
        gate = asyncio.Event()
        GATES.append(gate)
        await gate.wait()
        while (message := await receive()).get("more_body"):
            pass
        ENDS.append(message["type"])
        return
    if scope["path"] == "/hold":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": b"ok"})


class UnixH2(RawH2):
    """RawH2 on a Unix socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buffer = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))


OPEN: list[RawH2] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


Server = Callable[..., AbstractContextManager[Callable[[], RawH2]]]


@pytest.fixture(params=["tcp", "unix"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Server:
    """`with server(**options) as connect:` a server on TCP or a Unix socket; each client
    `connect()` gives has the `name` the log lines give its peer."""

    @contextmanager
    def serving(**options: Any) -> Iterator[Callable[[], RawH2]]:
        if request.param == "unix":
            path = str(tmp_path / "h2.sock")
            with run_server(app, uds=path, **options):

                def unix() -> RawH2:
                    client = UnixH2(path)
                    client.name = "-:0"  # type: ignore[attr-defined]
                    OPEN.append(client)
                    return client

                yield unix
            return
        with run_server(app, **options) as srv:

            def tcp() -> RawH2:
                client = RawH2(srv.port)
                port = client.sock.getsockname()[1]
                client.name = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
                OPEN.append(client)
                return client

            yield tcp

    return serving


def h2_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if "HTTP/2" in r.getMessage()]


@contextmanager
def logged(expected: str) -> Iterator[None]:
    """The block makes the server log exactly `expected` (and no other HTTP/2 line)."""
    with error_log(logging.INFO) as records:
        yield
        wait_until(lambda: bool(h2_lines(records)), "the line logged")
    assert h2_lines(records) == [expected]


def self_dependent(f: Frames) -> bytes:
    block = u32(1) + b"\x10" + f.block()
    return frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, block)


@pytest.mark.timeout(30)
def test_a_stream_past_its_window_is_logged_with_its_peer(server: Server) -> None:
    with server(timeout_graceful_shutdown=0.2) as connect:
        raw = connect()
        frames = Frames()
        with logged(f"{raw.name} - HTTP/2 stream 1: DATA past its window"):  # type: ignore[attr-defined]
            raw.send(frames.post(1, "/never"))
            raw.send(frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232))
            raw.until(WINDOW_UPDATE, 0)
            raw.send(frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 9152))
            assert int.from_bytes(raw.until(RST_STREAM, 1)[3]) == 0x3
        assert raw.served(frames, 3) == b"ok"


@pytest.mark.timeout(30)
def test_a_stream_past_its_window_is_a_disconnect_and_the_connection_takes_more_bodies() -> None:
    """The app of a stream reset for DATA past its window gets the body it was given, then
    http.disconnect; later uploads on the connection are served."""
    GATES.clear()
    ENDS.clear()
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        frames = Frames()
        raw.send(frames.post(1, "/gate"))
        raw.send(frame(DATA, 0, 1, b"x" * 16384) * 2 + frame(DATA, 0, 1, b"x" * 7232))
        raw.until(WINDOW_UPDATE, 0)
        raw.send(frame(DATA, 0, 1, b"x" * 16384) + frame(DATA, 0, 1, b"x" * 9152))
        assert int.from_bytes(raw.until(RST_STREAM, 1)[3]) == 0x3
        wait_until(lambda: len(GATES) == 1, "the app to wait")
        srv.loop.call_soon_threadsafe(GATES[0].set)
        wait_until(lambda: ENDS == ["http.disconnect"], "the app to see the disconnect")
        for stream in (3, 5):
            raw.send(frames.post(stream, "/") + frame(DATA, END_STREAM, stream, b"abc"))
            assert raw.until(DATA, stream)[3] == b"ok"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (frame(PRIORITY, 0, 0, u32(1) + b"\x10"), 0x1),
        (frame(DATA, 0, 5, b"") * 101, 0xB),
    ],
)
def test_a_connection_error_names_the_last_stream_taken(frames: bytes, code: int) -> None:
    with run_server(app) as srv:
        raw = RawH2(srv.port)
        OPEN.append(raw)
        f = Frames()
        raw.send(f.get(1, "/ok") + f.post(3, "/hold") + f.post(5, "/hold"))
        assert raw.until(DATA, 1)[3] == b"ok"
        raw.send(frames)
        assert raw.goaway() == (5, code)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("frames", "line"),
    [
        (
            lambda f: frame(PRIORITY, 0, 0, u32(1) + b"\x10"),
            "connection error: PRIORITY on stream 0",
        ),
        (self_dependent, "stream 1: depends on itself"),
        (
            lambda f: frame(PRIORITY, 0, 5, u32(5) + b"\x10"),
            "connection error: stream 5 depends on itself",
        ),
        (lambda f: frame(DATA, 0, 0, b"x"), "connection error: "),
        (
            lambda f: f.post(1, "/hold") + frame(DATA, 0, 1, b"") * 101,
            "empty DATA frames: GOAWAY ENHANCE_YOUR_CALM",
        ),
        (
            lambda f: f.post(1) + frame(DATA, END_STREAM, 1, b"x" * 1001),
            "stream 1: request body too large",
        ),
        (lambda f: f.post(1), "stream 1: request body timeout"),
    ],
)
def test_refusals_are_logged_with_their_peer(
    server: Server, frames: Callable[[Frames], bytes], line: str
) -> None:
    with server(limit_request_body=1000, timeout_request_body=0.3) as connect:
        raw = connect()
        with error_log(logging.INFO) as records:
            raw.send(frames(Frames()))
            got = raw.next_frame()
            while got is not None and got[0] not in (GOAWAY, RST_STREAM, HEADERS):
                got = raw.next_frame()
            wait_until(lambda: bool(h2_lines(records)), "the line logged")
        expected = f"{raw.name} - HTTP/2 {line}"  # type: ignore[attr-defined]
        if line.endswith(": "):  # zttp's own reason follows
            assert [x[: len(expected)] for x in h2_lines(records)] == [expected]
        else:
            assert h2_lines(records) == [expected]
