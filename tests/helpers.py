"""Client-side helpers shared by the raw-socket tests.

`Wire` writes requests exactly as the test built them and parses the responses with h11, an
independent HTTP/1.1 implementation, so framing errors (a missing chunk terminator, a body on
a HEAD, a split header) fail the parse instead of slipping past a substring check. `exchange`
is for answers h11 must not judge (refusals of malformed input): raw bytes until the server
closes. `error_log` collects what "fastserve.error" logs, which does not reach caplog.

Waiting is on conditions, never on a fixed sleep (a loaded machine stretches any sleep past
what it was meant to cover, or shrinks what the server did meanwhile to nothing):
- `until_closed`: a timeout is a failure, never taken for the server's close;
- `sent_and_read`: a read barrier, so that bytes written next arrive in a read of their own;
- `settle` / `stalled`: "nothing (more) happens" measured in the server loop's own passes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11

from tests.conftest import RunningServer

Serve = Callable[..., Any]
"""The `serve` fixture's type: `with serve(app, **options) as srv:`."""

T = TypeVar("T")


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
    """Send raw bytes (a list: each part in a read of its own, see `sent_and_read`) and read
    until the server closes; a server that stays silent and open for `timeout` s fails."""
    with srv.connect() as sock:
        if isinstance(data, bytes):
            sock.sendall(data)
        else:
            for part in data:
                sent_and_read(sock, part)
        return until_closed(sock, timeout)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the client is gone, now."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_in_flight(srv: RunningServer, count: int = 1) -> None:
    """Wait until `count` requests are in the app (the server's own count)."""
    state = srv.server.state
    wait_until(lambda: state is not None and state.in_flight == count, f"{count} in the app")


def abandon_request(srv: RunningServer, path: str = "/") -> None:
    """Send a request, wait until the app has it, then reset the connection."""
    sock = srv.connect()
    sock.sendall(request(path))
    wait_in_flight(srv)
    abort(sock)


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


# -- barriers ---------------------------------------------------------------------------------


def sent_and_read(sock: socket.socket, data: bytes, timeout: float = 10.0) -> None:
    """Send `data`, then wait until the server's process has read every byte of it (our
    side has no unacknowledged byte and the server's socket no unread one, as the kernel
    reports them in /proc/net/tcp). What is sent next is then in a read of its own, however
    loaded the machine: a sleep between writes only makes separate reads likely."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(data)
    wait_until(
        lambda: unacknowledged(sock) == 0 and unread_by_server(sock) == 0,
        f"the server to read {len(data)} bytes we sent",
        timeout,
    )


def unacknowledged(sock: socket.socket) -> int:
    """Bytes we sent that the server's kernel has not acknowledged yet."""
    return _queues(sock.getsockname()[:2], sock.getpeername()[:2])[0]


def unread_by_server(sock: socket.socket) -> int:
    """Bytes we sent that sit in the server's socket, not read by its process (yet)."""
    return _queues(sock.getpeername()[:2], sock.getsockname()[:2])[1]


TIME_WAIT = "06"  # (include/net/tcp_states.h) a closed connection's leftover: no queues


def _queues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int]:
    """(tx_queue, rx_queue) of the IPv4 TCP socket `local` connected to `remote`: bytes sent
    and not yet acknowledged, and bytes received that its process has not read yet."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            pair = (_address(fields[1]), _address(fields[2]))
            if pair == (local, remote) and fields[3] != TIME_WAIT:
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no TCP socket {local} -> {remote} in /proc/net/tcp")


def _address(field: str) -> tuple[str, int]:
    """/proc/net/tcp's "0100007F:1F90" is ("127.0.0.1", 8080): the address is in host byte
    order, the port is not."""
    host, port = field.split(":")
    return socket.inet_ntoa(struct.pack("=I", int(host, 16))), int(port, 16)


def on_server_loop(srv: RunningServer, run: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
    """Run the coroutine `run()` on the server's loop; its result."""

    async def wrapped() -> T:
        return await run()

    return asyncio.run_coroutine_threadsafe(wrapped(), srv.loop).result(timeout)


@contextmanager
def loop_held(srv: RunningServer, *socks: socket.socket) -> Iterator[None]:
    """The server's loop blocked while the block sends on `socks`; once the server's kernel
    holds every byte sent, the loop goes on and reads them all in one pass."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(10)  # (blocks the server's loop)

    srv.loop.call_soon_threadsafe(hold)
    assert held.wait(5)
    try:
        yield
        wait_until(
            lambda: all(unacknowledged(sock) == 0 for sock in socks),
            "the server's kernel to hold it all",
        )
    finally:
        release.set()


def requests_read_in_one_pass(srv: RunningServer, count: int) -> list[bytes]:
    """`count` connections each send one GET (`/0`, `/1`...) while the server's loop is
    held, so the server reads them all in one pass of its loop; every byte each connection
    received until the server closed it, in order."""
    socks = [srv.connect() for _ in range(count)]
    try:
        state = srv.server.state
        assert state is not None
        wait_until(lambda: len(state.connections) == count, f"the server to take {count}")
        with loop_held(srv, *socks):
            for i, sock in enumerate(socks):
                sock.sendall(request(f"/{i}"))
        return [until_closed(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def settle(srv: RunningServer, passes: int = 200) -> None:
    """Let the server's loop go round `passes` times. Whatever was due to happen there (a
    woken task, a queued callback, bytes already in its sockets) has then had many turns: a
    check that something did NOT happen is only meaningful after this. A wall-clock window
    (`get(timeout=0.05)`) can pass with the server not having run at all."""

    async def spin() -> None:
        for _ in range(passes):
            await asyncio.sleep(0)

    on_server_loop(srv, spin)


def stalled(srv: RunningServer, read: Callable[[], int], what: str, timeout: float = 20) -> int:
    """Wait until `read()` (a counter the app moves on the server's loop) stays the same over
    `settle`'s loop passes; its value then. "Unchanged for 0.5 s of wall clock" would also
    pass a server that was merely starved of CPU for those 0.5 s."""

    async def unchanged() -> int | None:
        before = read()
        for _ in range(200):
            await asyncio.sleep(0)
        return before if read() == before else None

    result: list[int] = []

    def check() -> bool:
        value = on_server_loop(srv, unchanged)
        if value is not None:
            result.append(value)
        return value is not None

    wait_until(check, what, timeout)
    return result[0]


def until_closed_cleanly(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Like until_closed, but a reset is a test failure: the server must close with a FIN."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        raise AssertionError(f"a reset, not a clean close, after {data!r}") from None
    except TimeoutError:
        raise AssertionError(f"the server did not close within {timeout} s: {data!r}") from None
    return data


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
def error_log(
    level: int | None = None, name: str = "fastserve.error"
) -> Iterator[list[logging.LogRecord]]:
    """Records of the "fastserve.error" logger (which does not propagate to caplog's root
    handler), or of logger `name`; `level` lowers the logger's level for the block (INFO: the
    refusal lines). Enter it after the server started: configure_logging resets the
    handlers."""
    handler = _Records()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    previous = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
