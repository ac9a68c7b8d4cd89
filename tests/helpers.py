"""Client-side helpers shared by the raw-socket tests.

`Wire` writes requests exactly as the test built them and parses the responses with h11, an
independent HTTP/1.1 implementation, so framing errors (a missing chunk terminator, a body on
a HEAD, a split header) fail the parse instead of slipping past a substring check. `exchange`
is for answers h11 must not judge (refusals of malformed input): raw bytes until the server
closes. `error_log` collects what "fastserve.error" logs, which does not reach caplog.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import h11

from tests.conftest import RunningServer, recv_all

Serve = Callable[..., Any]
"""The `serve` fixture's type: `with serve(app, **options) as srv:`."""


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    http_version: bytes
    informational: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


class Wire:
    """A client connection that writes raw bytes and parses the responses with h11.

    h11 has to be told which request each response answers (for HEAD and for keep-alive),
    so `response(method)` first replays a matching request into the h11 state machine.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.raw = bytearray()  # every byte received, for "nothing was split" checks

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET", timeout: float = 5.0) -> Response:
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target="/", headers=[("host", "test")]))
        conn.send(h11.EndOfMessage())
        self.sock.settimeout(timeout)
        head: h11.Response | None = None
        informational: list[int] = []
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(262144)
                self.raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Response(
                    head.status_code,
                    list(head.headers),
                    bytes(body),
                    head.http_version,
                    informational,
                )
            else:
                raise AssertionError(f"unexpected h11 event {event!r}")

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closed (EOF or reset) with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        self.raw += data
        return data == b""


def request(target: str, method: str = "GET", headers: str = "", body: bytes = b"") -> bytes:
    """An HTTP/1.1 request's bytes (Host included; pass extra header lines in `headers`)."""
    head = f"{method} {target} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode("latin-1")
    return head + body


def fetch(srv: RunningServer, data: bytes, method: str = "GET") -> Response:
    """One request on a fresh connection; its parsed response (`method`: see `Wire.response`)."""
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(data)
        return wire.response(method)


def assert_serving(srv: RunningServer) -> None:
    """The server still answers a new connection (after a refusal, or under attack)."""
    assert (
        fetch(srv, request("/after", "POST", "Content-Length: 2\r\n", b"ok"), "POST").status == 200
    )


def exchange(srv: RunningServer, data: bytes | list[bytes], timeout: float = 5.0) -> bytes:
    """Send raw bytes (a list: in separate writes) and read until the server closes."""
    with srv.connect() as sock:
        for part in [data] if isinstance(data, bytes) else data:
            sock.sendall(part)
        return recv_all(sock, timeout)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Every byte until the server closes (EOF or reset); a timeout is a test failure, never
    taken for a close."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(
                f"the server did not close within {timeout} s; received {b''.join(chunks)!r}"
            ) from None
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def statuses_of(raw: bytes) -> list[int]:
    """The status of each response in `raw` (heads found by their status lines; bodies in
    these tests are short text that never holds one)."""
    return [int(raw[at + 9 : at + 12]) for at in _status_line_starts(raw)]


def _status_line_starts(raw: bytes) -> list[int]:
    starts, at = [], raw.find(b"HTTP/1.1 ")
    while at >= 0:
        starts.append(at)
        at = raw.find(b"HTTP/1.1 ", at + 1)
    return starts


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    return int(raw[9:12])


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def error_log(level: int | None = None) -> Iterator[list[logging.LogRecord]]:
    """Records of the "fastserve.error" logger (which does not propagate to caplog's root
    handler); `level` lowers the logger's level for the block (INFO: the refusal lines).
    Enter it after the server started: configure_logging resets the handlers."""
    handler = _Records()
    logger = logging.getLogger("fastserve.error")
    logger.addHandler(handler)
    previous = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
