"""The rules of the smaller protocol modules (server/protocols/proxy_protocol.py, connection.py,
flow.py, outbox.py, linger.py, sendfile.py) that a mutation pass (mutmut 3, docs/testing.md)
found unchecked: every test here failed against at least one mutant the rest of the suite let
live. By direct calls where the rule is pure logic (the PROXY header's parser, the peer
address, the held responses' order); over real sockets where it shows on the wire (the
lingering close, back-pressure, the hand-over after a PROXY header).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h11
import pytest
from websockets.frames import Close, Opcode

from fastserve.config import Config, ConfigError
from fastserve.protocols.connection import address
from fastserve.protocols.linger import Lingering
from fastserve.protocols.outbox import Outbox
from fastserve.protocols.proxy_protocol import (
    V1_MAX,
    V2_MAX,
    ProxyHeaderError,
    header_start,
    parse_header,
)
from fastserve.protocols.sendfile import copy, zero_copy
from fastserve.state import ServerState
from fastserve.types import ClientDisconnected
from tests.apps.core_apps import Probe, core_app
from tests.apps.ws_apps import (
    RawWS,
    crash_after_accept,
    crash_before_accept,
    deny_app,
    echo_app,
    frame_bytes,
    recorder,
    slow_reader,
)
from tests.conftest import RunningServer, run_server
from tests.helpers import (
    Serve,
    Wire,
    error_log,
    on_server_loop,
    request,
    sent_and_read,
    settle,
    stalled,
    unread_by_server,
    until_closed,
    wait_until,
)
from tests.test_proxy import where_app
from tests.test_websocket_fragments import Peer

# -- the PROXY header, parsed (proxy_protocol.py) ------------------------------------------------

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, family: int, block: bytes) -> bytes:
    return V2 + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pton = socket.inet_pton
    block = pton(socket.AF_INET6, src) + pton(socket.AF_INET6, dst)
    return block + struct.pack("!HH", sport, dport)


def refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=f"^{reason}$"):
        parse_header(data)


def test_v1_lines_parse_to_their_exact_length_and_addresses() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 65535 0\r\n"
    assert parse_header(line + b"GET") == (len(line), ("192.0.2.1", 65535), ("198.51.100.2", 0))
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 80\r\n"
    assert parse_header(line) == (len(line), ("2001:db8::1", 1), ("2001:db8::2", 80))
    # UNKNOWN: the connection's own addresses stand; the rest of the line is ignored.
    assert parse_header(b"PROXY UNKNOWN\r\nGET") == (15, None, None)
    assert parse_header(b"PROXY UNKNOWN 1 2 3 4\r\n") == (23, None, None)


def test_the_longest_v1_line() -> None:
    assert V1_MAX == 107
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(longest) == V1_MAX
    assert parse_header(longest + b"GET") == (V1_MAX, None, None)
    too_long = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r\n"
    refused(too_long, "PROXY v1 line too long or malformed")
    # Without its end, a line of V1_MAX bytes is already too long; one byte less may go on.
    refused(b"PROXY " + b"x" * (V1_MAX - 6), "PROXY v1 line too long or malformed")
    assert parse_header(b"PROXY " + b"x" * (V1_MAX - 7)) is None


def test_an_unfinished_v1_line_waits_only_while_it_can_still_be_one() -> None:
    for part in (b"P", b"PROXY", b"PROXY ", b"PROXY T", b"PROXY TCP4 1.2.3.4"):
        assert parse_header(part) is None, part
    for bad in (b"PROXX", b"PROXYZ", b"PROXY\t", b"PXOXY TCP4"):
        refused(bad, "PROXY v1 line too long or malformed")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY\r\n",
        b"PROX TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ],
)
def test_malformed_v1_lines(line: bytes) -> None:
    refused(line, "malformed PROXY v1 line")


def test_v1_addresses_and_ports() -> None:
    refused(b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "bad address in PROXY header")
    refused(b"PROXY TCP4 1.2.3.4 5.6.7.x 1 2\r\n", "bad address in PROXY header")
    refused(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "address family mismatch in PROXY header")
    refused(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "address family mismatch in PROXY header")
    for bad in (b"01", b"00", b"65536", b"99999", b"123456", b"1a", b"", b"-1", b"+1"):
        refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 %s 2\r\n" % bad, "bad port in PROXY header")
    for text, port in ((b"0", 0), (b"9", 9), (b"10", 10), (b"65535", 65535), (b"12345", 12345)):
        line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 %s\r\n" % text
        assert parse_header(line) == (len(line), ("1.2.3.4", 1), ("5.6.7.8", port))


def test_v2_headers_parse_to_their_exact_length_and_addresses() -> None:
    header = v2(1, 0x11, inet("192.0.2.1", "198.51.100.2", 65535, 1))
    assert len(header) == 28
    assert parse_header(header + b"GET") == (28, ("192.0.2.1", 65535), ("198.51.100.2", 1))
    header = v2(1, 0x21, inet6("2001:db8::1", "2001:db8::2", 65535, 32768) + b"\x03\x00\x01x")
    assert parse_header(header) == (56, ("2001:db8::1", 65535), ("2001:db8::2", 32768))
    # The shortest blocks that hold the addresses; one byte less is refused.
    assert parse_header(v2(1, 0x11, b"\x01" * 12)) == (28, ("1.1.1.1", 257), ("1.1.1.1", 257))
    assert parse_header(v2(1, 0x21, b"\x00" * 36)) == (52, ("::", 0), ("::", 0))
    refused(v2(1, 0x11, b"\x00" * 11), "short PROXY v2 address block")
    refused(v2(1, 0x21, b"\x00" * 35), "short PROXY v2 address block")


def test_v2_local_unspec_and_unix_keep_the_connections_addresses() -> None:
    assert parse_header(v2(0, 0x00, b"")) == (16, None, None)  # LOCAL, no block at all
    assert parse_header(v2(0, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2))) == (28, None, None)
    assert parse_header(v2(1, 0x00, b"")) == (16, None, None)  # PROXY, AF_UNSPEC
    assert parse_header(v2(1, 0x01, b"")) == (16, None, None)  # AF_UNSPEC over stream
    assert parse_header(v2(1, 0x31, b"\x00" * 216)) == (232, None, None)  # AF_UNIX stream


def test_v2_needs_the_whole_header_and_no_more() -> None:
    header = v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2))
    for n in range(1, len(header)):
        assert parse_header(header[:n]) is None, n
    assert parse_header(header) == (28, ("1.2.3.4", 1), ("5.6.7.8", 2))
    # The longest header allowed, and one byte more.
    assert V2_MAX == 16 + 4096
    longest = v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x00" * (4096 - 12))
    assert parse_header(longest[:-1]) is None
    assert parse_header(longest) == (V2_MAX, ("1.2.3.4", 1), ("5.6.7.8", 2))
    for length in (4097, 0x7FFF, 0x8000, 0xFFFF):  # (an unsigned length)
        refused(V2 + b"\x21\x11" + struct.pack("!H", length), "PROXY v2 header too long")


def test_v2_refusals() -> None:
    for bad in (V2[:11] + b"X", b"\r\n\r\n\x01", b"\r\nGET / HTTP/1.1\r\n", b"G"):
        refused(bad, "no PROXY header")
    refused(V2[:11] + b"X" + b"\x21\x11\x00\x00", "no PROXY header")
    for version_command in (0x11, 0x31, 0x22, 0x2F, 0x12):
        header = V2 + bytes([version_command, 0x11]) + b"\x00\x0c" + b"\x00" * 12
        refused(header, "unsupported PROXY v2 version or command")
    for family in (0x12, 0x22, 0x02):
        refused(v2(1, family, b"\x00" * 36), "PROXY v2 datagram header on a stream connection")


def test_where_a_proxy_header_starts() -> None:
    assert header_start(b"") is None
    for start in (b"P", b"PROXY", b"\r", b"\r\n\r\n\x00\r\nQUI"):
        assert header_start(start) is None, start
    for start in (b"PROXY ", b"PROXY TCP4 ", V2, V2 + b"\x21"):
        assert header_start(start) is True, start
    for start in (b"G", b"PROXYZ", b"POST", b"\r\n\r\n\x01", b"\n", V2[:11] + b"X"):
        assert header_start(start) is False, start


# -- the PROXY header on the wire: the refusals' reasons, the shutdown, the hand-over -----------

NO_DEADLINE = {"proxy_protocol": True, "timeout_request_header": 60}


def closed_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if " - closed: " in r.getMessage()]


def test_each_refusal_of_a_proxy_header_logs_its_reason(serve: Serve) -> None:
    cases = [
        ({}, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad port in PROXY header"),
        ({}, b"GET / HTTP/1.1\r\n", "no PROXY header"),
        ({}, V2 + b"\x21\x12\x00\x00", "PROXY v2 datagram header on a stream connection"),
        (
            {"forwarded_allow_ips": "10.0.0.1"},
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY header from an untrusted peer",
        ),
    ]
    for options, data, reason in cases:
        with serve(where_app, **NO_DEADLINE, **options) as srv:
            with (
                error_log(logging.INFO) as records,
                error_log(name="asyncio") as loop_errors,
                srv.connect() as sock,
            ):
                port = sock.getsockname()[1]
                sock.sendall(data)
                assert until_closed(sock, timeout=10) == b""
                wait_until(lambda: bool(closed_lines(records)), "the refusal logged")
                settle(srv)  # (connection_lost has run: the timer is not cancelled twice)
            assert closed_lines(records) == [f"127.0.0.1:{port} - closed: {reason}"]
            assert loop_errors == []


def test_plain_http_from_an_untrusted_peer_is_handed_over_at_once(serve: Serve) -> None:
    with serve(where_app, **NO_DEADLINE, forwarded_allow_ips="10.0.0.1") as srv:
        for method, data in (
            ("GET", request("/")),
            ("POST", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            ("GET", b"\r\n" + request("/")),
        ):
            with srv.connect() as sock:
                wire = Wire(sock)
                wire.send(data)
                seen = json.loads(wire.response(method).body)
                assert seen["client"] == ["127.0.0.1", sock.getsockname()[1]]


def test_proxy_protocol_and_tls_are_refused_together(tmp_path: Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("localhost")
    certfile, keyfile = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    options = {"proxy_protocol": True, "ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    message = "^--proxy-protocol cannot be combined with --ssl-certfile$"
    with pytest.raises(ConfigError, match=message), run_server(where_app, **options):
        pass


def test_a_refusal_on_a_unix_socket_logs_a_placeholder_peer(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    options = {**NO_DEADLINE, "uds": path, "forwarded_allow_ips": "unix"}
    with (
        run_server(where_app, **options),
        socket.socket(socket.AF_UNIX) as sock,
        error_log(logging.INFO) as records,
    ):
        sock.connect(path)
        sock.sendall(b"GET / HTTP/1.1\r\n")
        assert until_closed(sock, timeout=10) == b""
        wait_until(lambda: bool(closed_lines(records)), "the refusal logged")
    assert closed_lines(records) == ["-:0 - closed: no PROXY header"]


def test_a_proxy_header_late_is_refused_with_its_reason(serve: Serve) -> None:
    with serve(where_app, proxy_protocol=True, timeout_request_header=0.2) as srv:
        with error_log(logging.INFO) as records, srv.connect() as sock:
            port = sock.getsockname()[1]
            sent_and_read(sock, b"PROXY TCP4 1.2.3.4")
            assert until_closed(sock, timeout=10) == b""
            wait_until(lambda: bool(closed_lines(records)), "the refusal logged")
        assert closed_lines(records) == [f"127.0.0.1:{port} - closed: no PROXY header in time"]


def test_a_connection_waiting_for_its_proxy_header_is_closed_at_shutdown(serve: Serve) -> None:
    with serve(where_app, **NO_DEADLINE) as srv:
        with error_log(logging.INFO) as records, srv.connect() as sock:
            port = sock.getsockname()[1]
            sent_and_read(sock, b"PROXY TCP4 ")
            srv.loop.call_soon_threadsafe(srv.server.handle_exit)
            assert until_closed(sock, timeout=10) == b""
            srv.thread.join(10)  # (the server stops at once: nothing else was open)
            assert not srv.thread.is_alive()
        assert closed_lines(records) == [f"127.0.0.1:{port} - closed: server shutting down"]


def connection_kinds(srv: RunningServer) -> list[str]:
    async def kinds() -> list[str]:
        assert srv.server.state is not None
        return sorted(type(c).__name__ for c in srv.server.state.connections)

    return on_server_loop(srv, kinds)


def test_after_the_hand_over_only_the_http_connection_is_left(serve: Serve) -> None:
    with serve(where_app, **NO_DEADLINE) as srv, srv.connect() as sock:
        sent_and_read(sock, b"PROXY TCP4 ")
        assert connection_kinds(srv) == ["ProxyProtocol"]
        sock.sendall(b"1.2.3.4 5.6.7.8 1 2\r\n")
        wire = Wire(sock)
        wire.send(request("/"))
        assert json.loads(wire.response().body)["client"] == ["1.2.3.4", 1]
        assert connection_kinds(srv) == ["HTTP1Protocol"]


# -- peer addresses (connection.py) ------------------------------------------------------------


def test_a_transports_address_as_asgi_has_it() -> None:
    assert address(("127.0.0.1", 8000)) == ("127.0.0.1", 8000)
    assert address(("::1", 8000, 0, 0)) == ("::1", 8000)  # AF_INET6: flow info and scope
    assert address(("1.2.3.4", "80")) == ("1.2.3.4", 80)
    assert address(("only-host",)) is None
    assert address("/run/fastserve.sock") is None  # a UNIX socket
    assert address(b"\x00abstract") is None
    assert address(None) is None
    assert address(["127.0.0.1", 80]) is None


# -- the lingering close (linger.py) -----------------------------------------------------------
#
# Direct: a Lingering on a real socket pair, with a deadline the test chooses (the server's
# are fixed). On the wire: the deadlines the server gives it.


async def lingering(
    seconds: float = 60.0,
) -> tuple[asyncio.Transport, Lingering, ServerState, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    # A real ServerState: the compiled Lingering takes nothing else.
    state = ServerState(Config(app=core_app), core_app, loop, {}, None)
    protocol = Lingering(transport, state, seconds)
    transport.set_protocol(protocol)
    return transport, protocol, state, theirs


async def passes(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def test_lingering_drops_a_mib_then_closes_on_the_next_byte() -> None:
    async def main() -> None:
        transport, protocol, state, theirs = await lingering()
        loop = asyncio.get_running_loop()
        with theirs:
            assert state.connections == {protocol}  # a shutdown reaches it
            await loop.sock_sendall(theirs, b"x" * (1 << 19))
            await loop.sock_sendall(theirs, b"x" * (1 << 19))
            await until(lambda: protocol.left == 0, "the MiB read")
            await passes()
            assert not transport.is_closing()  # exactly LINGER_BYTES: still draining
            await loop.sock_sendall(theirs, b"x")
            await until(transport.is_closing, "closed past LINGER_BYTES")
            await until(lambda: not state.connections, "connection_lost")
            assert protocol not in protocol.lingering.deadlines  # its deadline forgotten

    asyncio.run(main())


def test_lingering_closes_when_the_client_is_done() -> None:
    async def main() -> None:
        transport, protocol, state, theirs = await lingering()
        with theirs:
            await passes()
            assert not transport.is_closing()
            theirs.shutdown(socket.SHUT_WR)
            await until(transport.is_closing, "closed on the client's FIN")
            await until(lambda: not state.connections, "connection_lost")
            assert protocol not in protocol.lingering.deadlines  # its deadline forgotten

    asyncio.run(main())


def test_lingering_closes_at_its_deadline() -> None:
    async def main() -> None:
        transport, _protocol, state, theirs = await lingering(0.05)
        with theirs:
            await passes()
            assert not transport.is_closing()
            await asyncio.sleep(0.05)
            # The deadlines' timer may fire a hair early (the loop's clock has 1 ms steps)
            # and wait out the rest: closed within a few more milliseconds, not at once.
            for _ in range(200):
                if transport.is_closing():
                    break
                await asyncio.sleep(0.005)
            assert transport.is_closing()
            await until(lambda: not state.connections, "connection_lost")

    asyncio.run(main())


def test_a_shutdown_or_cancel_closes_a_lingering_connection_at_once() -> None:
    async def main() -> None:
        for stop in ("shutdown", "cancel"):
            transport, protocol, state, theirs = await lingering()
            with theirs:
                assert protocol.idle is True and protocol.task is None
                getattr(protocol, stop)()
                assert transport.is_closing()
                await until(lambda s=state: not s.connections, "connection_lost")  # type: ignore[misc]
                assert protocol not in protocol.lingering.deadlines  # its deadline forgotten

    asyncio.run(main())


def lingerers(srv: RunningServer) -> int:
    async def count() -> int:
        assert srv.server.state is not None
        return sum(isinstance(c, Lingering) for c in srv.server.state.connections)

    return on_server_loop(srv, count)


def test_the_server_lingers_two_seconds_after_an_error_and_one_after_an_idle_close(
    serve: Serve,
) -> None:
    with serve(core_app) as srv:
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nBad Field: x\r\n\r\n")
            assert until_closed(sock).startswith(b"HTTP/1.1 400 ")  # our FIN: lingering now
            assert lingerers(srv) == 1
            on_server_loop(srv, lambda: asyncio.sleep(2.0))  # the server's deadline passed
            settle(srv)
            assert lingerers(srv) == 0
        with srv.connect() as sock:
            sock.sendall(request("/close"))
            assert until_closed(sock).startswith(b"HTTP/1.1 200 ")
            assert lingerers(srv) == 1
            on_server_loop(srv, lambda: asyncio.sleep(1.0))
            settle(srv)
            assert lingerers(srv) == 0


# -- held responses (outbox.py) ----------------------------------------------------------------
#
# Only an eager start (Python 3.12+) holds responses; the rule is pure ordering, checked here on
# real socket transports on any Python.


async def pair() -> tuple[asyncio.Transport, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    return transport, theirs


def received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


def test_held_responses_go_out_at_the_end_of_the_pass_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop)
        (a, peer_a), (b, peer_b) = await pair(), await pair()
        with peer_a, peer_b:
            outbox.hold(a, b"one ")
            assert received(peer_a) == b""  # held
            outbox.hold(b, b"two ")
            outbox.hold(a, b"three")
            assert received(peer_a) == received(peer_b) == b""
            await asyncio.sleep(0)  # the pass ends: flushed once, in order
            assert outbox.items == []
            assert received(peer_a) == b"one three" and received(peer_b) == b"two "
            outbox.hold(b, b"four")  # a new pass, a new flush
            await asyncio.sleep(0)
            assert received(peer_b) == b"four"
            a.close()
            b.close()

    asyncio.run(main())


def test_a_flush_writes_held_responses_now_and_skips_closed_connections() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop)
        (a, peer_a), (b, peer_b) = await pair(), await pair()
        with peer_a, peer_b:
            outbox.hold(a, b"lost")
            outbox.hold(b, b"kept")
            a.close()
            outbox.flush()
            assert outbox.items == []
            assert received(peer_b) == b"kept"
            outbox.hold(b, b" again")  # after a flush by hand: held and flushed again
            outbox.flush()
            await asyncio.sleep(0)  # (the flush scheduled by the first hold: nothing left)
            assert received(peer_b) == b" again"
            await passes()
            assert received(peer_a) == b""  # closed, with nothing written
            b.close()

    asyncio.run(main())


# -- a file as a body (sendfile.py) ------------------------------------------------------------
#
# Direct calls on a real socket pair, on a loop whose clock does not move: the file must go out
# with no timed wait at all (each piece yields the loop with sleep(0), not a delay), so a
# timer anywhere in the path hangs the run, and the watchdog fails it.


class FrozenClock(asyncio.SelectorEventLoop):
    def time(self) -> float:
        return 0.0


def run_frozen(main: Callable[[], Coroutine[Any, Any, None]], limit: float = 20.0) -> None:
    with asyncio.Runner(loop_factory=FrozenClock) as runner:
        loop = runner.get_loop()
        task = loop.create_task(main())
        watchdog = threading.Timer(limit, loop.call_soon_threadsafe, (task.cancel,))
        watchdog.start()
        try:
            runner.run(wait_for_task(task))
        except asyncio.CancelledError:
            raise AssertionError("a timed wait on a frozen clock: never finished") from None
        finally:
            watchdog.cancel()


async def wait_for_task(task: asyncio.Task[None]) -> None:
    await task


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while piece := await loop.sock_recv(sock, 1 << 20):
        data += piece
    return bytes(data)


async def zero_copied(
    path: Path, offset: int, count: int, queued: int = 0, bytes_sent: int = 5
) -> tuple[bytes, int]:
    """What the peer reads when `count` bytes of `path` from `offset` are zero-copied behind
    `queued` bytes still in the transport's buffer; and the cycle's bytes_sent after."""
    transport, theirs = await pair()
    cycle = SimpleNamespace(bytes_sent=bytes_sent)
    fd = os.open(path, os.O_RDONLY)
    with theirs:
        if queued:
            transport.write(b"h" * queued)
            assert transport.get_write_buffer_size() > 0
        reader = asyncio.ensure_future(read_all(theirs))
        try:
            sock = transport.get_extra_info("socket").fileno()
            await zero_copy(cycle, transport, sock, fd, offset, count)  # type: ignore[arg-type]
            transport.close()
            return await reader, cycle.bytes_sent
        finally:
            os.close(fd)
            if not reader.done():  # (zero_copy failed: the socket closes with the test)
                reader.cancel()
                transport.abort()


CONTENT = bytes(range(256)) * (3 * 4096 + 1)  # 3 MiB and 256 bytes, no two pieces alike


def test_zero_copy_sends_the_range_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(CONTENT)

    async def main() -> None:
        for offset, count in ((0, len(CONTENT)), (1000, len(CONTENT) - 1001), (1, 1), (0, 1)):
            data, sent = await zero_copied(path, offset, count)
            assert data == CONTENT[offset : offset + count], (offset, count)
            assert sent == 5 + count

    run_frozen(main)


def test_zero_copy_waits_for_what_the_transport_still_holds(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(CONTENT)

    async def main() -> None:
        queued = 4 << 20  # more than the socket takes: the rest waits in the transport
        data, sent = await zero_copied(path, 7, len(CONTENT) - 7, queued=queued)
        assert data[:queued] == b"h" * queued
        assert data[queued:] == CONTENT[7:]
        assert sent == 5 + len(CONTENT) - 7

    run_frozen(main)


def test_zero_copy_of_a_file_that_got_shorter(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"^the file got shorter while it was sent$"):
            await zero_copied(path, 4, 7)

    run_frozen(main)


def test_zero_copy_to_a_client_that_left(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(CONTENT)

    async def main() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            # The transport knows (closing) / only the socket knows (a broken pipe).
            for gone in ("closing", "broken pipe"):
                transport, theirs = await pair()
                if gone == "closing":
                    transport.close()
                theirs.close()
                sock = transport.get_extra_info("socket").fileno()
                cycle = SimpleNamespace(bytes_sent=0)
                with pytest.raises(ClientDisconnected) as caught:
                    await zero_copy(cycle, transport, sock, fd, 0, len(CONTENT))  # type: ignore[arg-type]
                assert str(caught.value) == "client disconnected", gone
                assert cycle.bytes_sent == 0
                transport.abort()
        finally:
            os.close(fd)

    run_frozen(main)


class Recorder:
    """A channel that takes every piece, and asks the sender to wait after every other one."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.finals: list[bool] = []
        self.waits = 0

    def send_body(self, cycle: object, body: bytes, final: bool) -> None:
        self.pieces.append(body)
        self.finals.append(final)

    def must_wait(self) -> bool:
        return len(self.pieces) % 2 == 1

    async def wait_writable(self) -> None:
        self.waits += 1


def test_copy_sends_the_range_in_pieces_of_256_kib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(CONTENT)
    fd = os.open(path, os.O_RDONLY)

    async def copied(offset: int, count: int) -> tuple[Recorder, int]:
        conn, cycle = Recorder(), SimpleNamespace(bytes_sent=5)
        await copy(cycle, conn, fd, offset, count)  # type: ignore[arg-type]
        return conn, cycle.bytes_sent

    try:
        count = 2 * 256 * 1024 + 1
        conn, sent = asyncio.run(copied(3, count))
        assert [len(p) for p in conn.pieces] == [256 * 1024, 256 * 1024, 1]
        assert b"".join(conn.pieces) == CONTENT[3 : 3 + count]
        assert conn.finals == [False] * 3  # the caller ends the response
        assert conn.waits == 2 and sent == 5 + count
        conn, sent = asyncio.run(copied(len(CONTENT) - 1, 1))
        assert conn.pieces == [CONTENT[-1:]] and sent == 6
        with pytest.raises(RuntimeError, match=r"^the file got shorter while it was sent$"):
            asyncio.run(copied(len(CONTENT) - 1, 2))
    finally:
        os.close(fd)


# -- write back-pressure shared by concurrent senders (flow.py) --------------------------------


def two_senders(done: Probe, counts: dict[bytes, int], size: int) -> Callable[..., Any]:
    """A WebSocket app whose two tasks send at once (ASGI allows it), `counts[tag]` messages
    each: both wait for the same drain while the client does not read, and both must be
    woken when it does."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        messages = dict(counts)

        async def sender(tag: bytes) -> None:
            for _ in range(messages[tag]):
                await send({"type": "websocket.send", "bytes": tag * size})
                counts[tag] -= 1
            done.put(tag)

        await asyncio.gather(sender(b"a"), sender(b"b"))
        await send({"type": "websocket.close", "code": 1000})

    return app


def test_two_tasks_blocked_on_a_full_buffer_are_both_woken(serve: Serve) -> None:
    # 16 MiB each: more than the kernel's buffers take, so the first task waits before it is
    # done, and the second starts and waits too.
    done, messages, size = Probe(), 16, 1 << 20
    counts = {b"a": messages, b"b": messages}
    app = two_senders(done, counts, size)
    with serve(app, ws_per_message_deflate=False) as srv, RawWS(srv.port) as raw:
        assert raw.status == 101
        stalled(srv, lambda: counts[b"a"] + counts[b"b"], "both senders waiting")
        assert counts[b"a"] > 0 and counts[b"b"] > 0  # both are in send(), waiting
        tags = []
        for _ in range(2 * messages):
            opcode, fin, payload = raw.recv_frame()
            assert opcode == Opcode.BINARY and fin and len(payload) == size
            tags.append(payload[:1])
        assert sorted(tags) == [b"a"] * messages + [b"b"] * messages
        assert raw.recv_close() == (1000, "")
        assert sorted([done.get(), done.get()]) == [b"a", b"b"]


# -- WebSocket (websocket.py): fragments, keepalive ----------------------------------------------


def recorded(probe: Probe) -> list[dict[str, Any]]:
    """What the recorder app received, up to its disconnect."""
    events = []
    while True:
        events.append(probe.get())
        if events[-1]["type"] == "websocket.disconnect":
            return events


def test_a_fragment_after_invalid_utf8_is_never_delivered(serve: Serve) -> None:
    probe = Probe()
    with serve(recorder(probe), ws_per_message_deflate=False) as srv, Peer(srv.port) as peer:
        first = frame_bytes(Opcode.TEXT, b"ok \xff", fin=False)
        peer.sock.sendall(first + frame_bytes(Opcode.CONT, b"after"))  # one read
        frame = peer.recv_frame()
        assert frame.opcode is Opcode.CLOSE
        close = Close.parse(frame.data)
        assert (close.code, close.reason) == (1007, "invalid UTF-8")
    assert recorded(probe) == [{**DISCONNECT, "code": 1007, "reason": "invalid UTF-8"}]


def test_a_fragmented_message_of_exactly_max_size_is_taken(serve: Serve) -> None:
    # Each fragment counts its payload and FRAGMENT_COST (128): 2 x (372 + 128) = 1000.
    probe = Probe()
    options = {"ws_max_size": 1000, "ws_per_message_deflate": False}
    with serve(recorder(probe), **options) as srv, Peer(srv.port) as peer:
        for _ in range(2):  # (a second message: the count starts again at 0)
            peer.send(Opcode.BINARY, b"a" * 372, fin=False)
            peer.send(Opcode.CONT, b"b" * 372)
        peer.sync()
        peer.send(Opcode.CLOSE, struct.pack("!H", 1000))
    message = {"type": "websocket.receive", "bytes": b"a" * 372 + b"b" * 372}
    assert recorded(probe) == [message, message, {**DISCONNECT, "code": 1000}]


def test_a_text_message_that_ends_inside_a_character_is_refused(serve: Serve) -> None:
    probe = Probe()
    with serve(recorder(probe), ws_per_message_deflate=False) as srv, Peer(srv.port) as peer:
        peer.send(Opcode.TEXT, "é".encode()[:1], fin=False)
        peer.send(Opcode.CONT, b"")
        frame = peer.recv_frame()
        assert frame.opcode is Opcode.CLOSE and Close.parse(frame.data).code == 1007
    assert recorded(probe) == [{**DISCONNECT, "code": 1007, "reason": "invalid UTF-8"}]


DISCONNECT = {"type": "websocket.disconnect", "code": 1000, "reason": ""}


@pytest.mark.parametrize("answer", [None, b"nope"], ids=["silent", "wrong-pong"])
def test_a_keepalive_timeout_closes_with_its_reason_and_logs_it(
    serve: Serve, answer: bytes | None
) -> None:
    options = {"ws_ping_interval": 0.05, "ws_ping_timeout": 0.2, "ws_per_message_deflate": False}
    with (
        serve(echo_app(), **options) as srv,
        error_log(logging.INFO) as records,
        error_log(name="asyncio") as loop_errors,
        RawWS(srv.port) as raw,
    ):
        pings = 0
        while True:
            opcode, _, payload = raw.recv_frame()
            if opcode != Opcode.PING:
                break
            pings += 1
            assert pings <= 3, "a ping answered with the wrong payload counted as answered"
            if answer is not None:
                raw.send(Opcode.PONG, answer)
        assert opcode == Opcode.CLOSE
        assert (struct.unpack("!H", payload[:2])[0], payload[2:]) == (
            1011,
            b"keepalive ping timeout",
        )
        assert raw.at_eof()
        settle(srv)  # (connection_lost has run)
    lines = [r.getMessage() for r in records if "keepalive" in r.getMessage()]
    assert lines == ["WebSocket keepalive ping timed out: closing with 1011"]
    assert loop_errors == []


def test_the_keepalive_deadline_moved_while_reading_paused_still_fires_after(
    serve: Serve,
) -> None:
    # The app reads nothing at first (queue of 1: reading pauses) and the client never answers
    # a ping: the deadline moves while we do not read, then fires once the app reads again.
    probe = Probe()
    options = {
        "ws_ping_interval": 0.05,
        "ws_ping_timeout": 0.1,
        "ws_max_queue": 1,
        "ws_per_message_deflate": False,
    }
    with (
        serve(slow_reader(probe), **options) as srv,
        error_log(name="asyncio") as loop_errors,
        RawWS(srv.port) as raw,
    ):
        sent_and_read(raw.sock, b"".join(frame_bytes(Opcode.TEXT, b"m%d" % i) for i in range(10)))
        on_server_loop(srv, lambda: asyncio.sleep(0.5))  # the deadline passed, paused
        raw.sock.setblocking(False)
        try:
            while chunk := raw.sock.recv(65536):
                raw.buffer += chunk
        except BlockingIOError:
            pass
        raw.sock.setblocking(True)
        raw.sock.settimeout(5)
        while raw.buffer:  # what came so far: pings only
            opcode, _, _ = raw.recv_frame()
            assert opcode == Opcode.PING
        probe.release.set()
        while (frame := raw.recv_frame())[0] == Opcode.PING:
            pass
        assert frame[0] == Opcode.CLOSE
        assert struct.unpack("!H", frame[2][:2])[0] == 1011
        assert probe.get() == 10
        settle(srv)
    assert loop_errors == []


def test_a_keepalive_ping_due_while_closing_is_not_sent(serve: Serve) -> None:
    # The app closes at once; the client answers the Close late, after a ping was due.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    options = {"ws_ping_interval": 0.05, "ws_ping_timeout": 0.05, "ws_per_message_deflate": False}
    with (
        serve(app, **options) as srv,
        error_log(name="asyncio") as loop_errors,
        RawWS(srv.port) as raw,
    ):
        assert raw.recv_close() == (1000, "")
        on_server_loop(srv, lambda: asyncio.sleep(0.2))  # the ping was due meanwhile
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        assert raw.at_eof()
        settle(srv)
    assert loop_errors == []


def test_a_whole_text_message_of_invalid_utf8_closes_with_its_reason(serve: Serve) -> None:
    probe = Probe()
    with serve(recorder(probe), ws_per_message_deflate=False) as srv, Peer(srv.port) as peer:
        peer.send(Opcode.TEXT, b"ok \xff")
        frame = peer.recv_frame()
        assert frame.opcode is Opcode.CLOSE
        close = Close.parse(frame.data)
        assert (close.code, close.reason) == (1007, "invalid UTF-8")
    assert recorded(probe) == [{**DISCONNECT, "code": 1007, "reason": "invalid UTF-8"}]


def test_reading_pauses_once_the_queue_holds_ws_max_queue_messages(serve: Serve) -> None:
    probe = Probe()
    options = {"ws_max_queue": 2, "ws_per_message_deflate": False}
    with serve(slow_reader(probe), **options) as srv, RawWS(srv.port) as raw:
        sent_and_read(raw.sock, frame_bytes(Opcode.TEXT, b"1") + frame_bytes(Opcode.TEXT, b"2"))
        raw.sock.sendall(frame_bytes(Opcode.TEXT, b"3"))
        settle(srv)
        assert unread_by_server(raw.sock) > 0  # two queued: the third waits in the socket
        probe.release.set()
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        assert raw.recv_close()[0] == 1000
        assert probe.get() == 3


def test_a_frame_sent_with_the_handshake_reaches_the_app(serve: Serve) -> None:
    with serve(echo_app(), ws_per_message_deflate=False) as srv, srv.connect() as sock:
        raw = RawWS.__new__(RawWS)  # (its handshake, but with a frame in the same packet)
        raw.sock, raw.buffer = sock, b""
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % key
            + frame_bytes(Opcode.TEXT, b"early")
        )
        assert raw.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 101 ")
        assert raw.recv_frame() == (Opcode.TEXT, True, b"early")


def http_answer(raw: RawWS) -> tuple[h11.Response, bytes]:
    """The HTTP response a WebSocket handshake got, read to the server's close, by h11."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw.head + b"\r\n\r\n" + raw.buffer + until_closed(raw.sock))
    conn.receive_data(b"")
    head, body = None, b""
    while (event := conn.next_event()) is not h11.PAUSED and event is not h11.NEED_DATA:
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    assert head is not None
    return head, body


@pytest.mark.parametrize(
    "parts",
    [[b"d" * (20 * 1024)], [b"ab", b"cd", b"ef"], [b"ab", b"c" * (20 * 1024), b"ef"]],
    ids=["large-whole", "chunked", "chunked-large-piece"],
)
def test_a_denial_response_arrives_whole_and_closes(serve: Serve, parts: list[bytes]) -> None:
    with serve(deny_app(403, parts)) as srv, RawWS(srv.port) as raw:
        assert raw.status == 403
        head, body = http_answer(raw)
    assert body == b"".join(parts)
    assert (b"connection", b"close") in head.headers


def test_a_websocket_app_failing_before_accept_gets_a_500_that_closes(serve: Serve) -> None:
    with serve(crash_before_accept) as srv, RawWS(srv.port) as raw:
        assert raw.status == 500
        head, body = http_answer(raw)
    assert body == b"Internal Server Error"
    assert (b"connection", b"close") in head.headers


@pytest.mark.parametrize(
    ("restarting", "code", "reason"),
    [(False, 1001, "server shutdown"), (True, 1012, "server restart")],
    ids=["shutdown", "restart"],
)
def test_a_server_stopping_closes_websockets_with_its_reason(
    serve: Serve, restarting: bool, code: int, reason: str
) -> None:
    probe = Probe()
    with serve(recorder(probe), ws_per_message_deflate=False) as srv, RawWS(srv.port) as raw:
        assert raw.status == 101
        assert srv.server.state is not None
        srv.server.state.restarting = restarting  # (what a retiring worker sets)
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        assert raw.recv_close() == (code, reason)
        raw.send(Opcode.CLOSE, struct.pack("!H", code))
        assert raw.at_eof()
    assert recorded(probe) == [{**DISCONNECT, "code": code, "reason": reason}]


def test_frames_before_the_accept_are_read_up_to_64_kib(serve: Serve) -> None:
    probe = Probe()

    async def late_accept(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await probe.wait_release()
        await send({"type": "websocket.accept"})
        received = []
        while (message := await receive())["type"] == "websocket.receive":
            received.append(message.get("bytes") or message.get("text"))
        probe.put(received)

    big, end = frame_bytes(Opcode.BINARY, b"x" * 65528), frame_bytes(Opcode.TEXT, b"end")
    assert len(big) == 64 * 1024  # PRE_ACCEPT_LIMIT
    with serve(late_accept, ws_per_message_deflate=False) as srv, srv.connect() as sock:
        key = base64.b64encode(os.urandom(16))
        sent_and_read(
            sock,
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key,
        )
        sent_and_read(sock, big)  # exactly the limit: still reading
        sock.sendall(end[:1])
        settle(srv)
        assert unread_by_server(sock) == 0  # (one byte past it: reading pauses after it)
        sock.sendall(end[1:])
        probe.release.set()
        raw = RawWS.__new__(RawWS)
        raw.sock, raw.buffer = sock, b""
        assert raw.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 101 ")
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        assert raw.recv_close()[0] == 1000
        assert probe.get() == [b"x" * 65528, "end"]


@pytest.mark.parametrize("interval", [None, 0.0], ids=["none", "zero"])
def test_keepalive_pings_off_send_no_ping(serve: Serve, interval: float | None) -> None:
    options = {"ws_ping_interval": interval, "ws_per_message_deflate": False}
    with (
        serve(echo_app(), **options) as srv,
        error_log(name="asyncio") as loop_errors,
        RawWS(srv.port) as raw,
    ):
        raw.send(Opcode.TEXT, b"one")
        settle(srv)
        raw.send(Opcode.TEXT, b"two")
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        frames = [raw.recv_frame() for _ in range(3)]  # nothing but the echoes and the Close
        assert [f[:2] for f in frames] == [(Opcode.TEXT, True)] * 2 + [(Opcode.CLOSE, True)]
        assert raw.at_eof()
    assert loop_errors == []


def test_an_accepted_websocket_is_logged_as_a_101_of_0_bytes_and_counted(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"access_log": True, "access_log_json": True, "log_level": "info"}
    with serve(echo_app(), metrics=True, metrics_port=0, **options) as srv:
        for _ in range(2):
            with RawWS(srv.port) as raw:
                assert raw.status == 101
                for text in (b"one", b"two"):
                    raw.send(Opcode.TEXT, text)
                    assert raw.recv_frame() == (Opcode.TEXT, True, text)
                raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
                assert raw.recv_close()[0] == 1000

        async def counts() -> tuple[int, int]:
            assert srv.server.state is not None and srv.server.state.metrics is not None
            metrics = srv.server.state.metrics
            return int(metrics.ws_connections), int(metrics.ws_sent)

        assert on_server_loop(srv, counts) == (2, 4)  # connections, messages sent
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert [(line["status"], line["bytes"]) for line in lines] == [(101, 0), (101, 0)]


OPEN_THEN: list[dict[str, Any]] = [{"type": "websocket.accept"}]
MISUSES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "bytes-and-text": (
        [*OPEN_THEN, {"type": "websocket.send", "bytes": b"x", "text": "y"}],
        "websocket.send needs one of 'bytes' or 'text'",
    ),
    "neither": (
        [*OPEN_THEN, {"type": "websocket.send"}],
        "websocket.send needs one of 'bytes' or 'text'",
    ),
    "denial-after-accept": (
        [*OPEN_THEN, {"type": "websocket.http.response.start", "status": 403, "headers": []}],
        "unexpected ASGI message 'websocket.http.response.start' (WebSocket phase",
    ),
    "denial-body-first": (
        [{"type": "websocket.http.response.body", "body": b"x"}],
        "unexpected ASGI message 'websocket.http.response.body' (WebSocket phase",
    ),
}


@pytest.mark.parametrize("case", list(MISUSES))
def test_a_websocket_apps_mistake_raises_in_its_send(serve: Serve, case: str) -> None:
    messages, error = MISUSES[case]
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        for message in messages[:-1]:
            await send(message)
        try:
            await send(messages[-1])
        except RuntimeError as exc:
            probe.put(str(exc))
        else:
            probe.put(None)

    with serve(app, ws_per_message_deflate=False) as srv, RawWS(srv.port) as raw:
        assert raw.status == (500 if case == "denial-body-first" else 101)
        raised = probe.get()
    assert raised is not None and raised.startswith(error), raised


def test_a_websocket_close_without_a_code_is_a_1000(serve: Serve) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})

    with serve(app, ws_per_message_deflate=False) as srv, RawWS(srv.port) as raw:
        assert raw.recv_close() == (1000, "")


def test_after_its_close_an_app_may_close_again_but_not_send(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        await send({"type": "websocket.close", "code": 1000})  # harmless
        try:
            await send({"type": "websocket.send", "text": "late"})
        except OSError as exc:
            probe.put((type(exc).__name__, str(exc)))

    with serve(app, ws_per_message_deflate=False) as srv, RawWS(srv.port) as raw:
        assert raw.recv_close() == (1000, "")
        assert probe.get() == ("ClientDisconnected", "WebSocket closed")


def test_an_app_raising_after_its_websocket_closed_is_logged_at_debug(serve: Serve) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        await send({"type": "websocket.send", "text": "late"})  # raises, not caught

    with (
        serve(app, ws_per_message_deflate=False) as srv,
        error_log(logging.DEBUG) as records,
        RawWS(srv.port) as raw,
    ):
        assert raw.recv_close() == (1000, "")
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        assert raw.at_eof()
        wait_until(lambda: any("raised" in r.getMessage() for r in records), "the debug line")
    lines = [(r.levelno, r.getMessage()) for r in records if "raised" in r.getMessage()]
    expected = "WebSocket app raised after the client disconnected: "
    assert lines == [(logging.DEBUG, expected + "ClientDisconnected('WebSocket closed')")]
    assert not [r for r in records if r.levelno >= logging.ERROR]


def test_a_websocket_apps_exception_and_its_cancellation_are_logged(serve: Serve) -> None:
    with serve(crash_after_accept, ws_per_message_deflate=False) as srv:
        with error_log() as records, RawWS(srv.port) as raw:
            raw.send(Opcode.TEXT, b"go")  # it raises on its next message
            assert raw.recv_close()[0] == 1011
            wait_until(lambda: bool(records), "the error logged")
        assert [(r.levelno, r.getMessage()) for r in records] == [
            (logging.ERROR, "Exception in ASGI application")
        ]

    async def stubborn(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.Event().wait()  # ignores the disconnect: cancelled at the deadline

    with serve(stubborn, timeout_graceful_shutdown=0.2) as srv:
        with error_log() as records, RawWS(srv.port) as raw:
            assert raw.status == 101
            srv.loop.call_soon_threadsafe(srv.server.handle_exit)
            assert raw.recv_close()[0] == 1001  # (never answered)
            srv.thread.join(10)
            assert not srv.thread.is_alive()
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert "WebSocket app cancelled (server shutting down)" in warnings


def test_a_websocket_app_returning_without_an_answer_is_logged(serve: Serve) -> None:
    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # and returns: neither accept nor close

    async def polite(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})  # and returns: closed with 1000

    for app, outcome in ((silent, 500), (polite, 1000)):
        with serve(app) as srv, error_log() as records, RawWS(srv.port) as raw:
            if outcome == 500:
                assert raw.status == 500
                wait_until(lambda: bool(records), "the error logged")
            else:
                assert raw.recv_close()[0] == 1000
                settle(srv)
            errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
        if outcome == 500:
            assert errors == ["ASGI app returned without accepting or rejecting the WebSocket"]
        else:
            assert errors == []
