"""The HTTP/1.1 rules of server/protocols/http1.py that a mutation pass (mutmut 3,
docs/testing.md) found unchecked: every test here failed against at least one mutant the rest
of the suite let live. Over real sockets where the rule shows on the wire; by a call on a live
connection, on the server's loop, where no client input reaches the code (a callback that
fails with something other than a refusal, a transport found closing while a body is sent).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools
import pytest

from fastserve.protocols.http1 import HIGH_WATER, IDLE, HTTP1Protocol
from fastserve.protocols.linger import IDLE_LINGER_SECONDS
from tests.apps.core_apps import (
    App,
    Probe,
    Receive,
    Scope,
    Send,
    count_body,
    read_body,
    respond,
)
from tests.apps.ws_apps import echo_app, frame_bytes
from tests.conftest import RunningServer
from tests.helpers import (
    Serve,
    Wire,
    error_log,
    on_server_loop,
    request,
    sent_and_read,
    settle,
    status_of,
    statuses_of,
    unacknowledged,
    unread_by_server,
    until_closed,
    wait_until,
)
from tests.test_http2 import H2Client
from tests.test_memory import timers
from tests.test_metrics import samples, value

WS_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def connections(srv: RunningServer) -> list[HTTP1Protocol]:
    """The server's HTTP/1.1 connections (read on its loop)."""

    async def read() -> list[HTTP1Protocol]:
        state = srv.server.state
        assert state is not None
        return [c for c in state.connections if isinstance(c, HTTP1Protocol)]

    return on_server_loop(srv, read)


def the_connection(srv: RunningServer) -> HTTP1Protocol:
    wait_until(lambda: len(connections(srv)) == 1, "the connection to be made")
    (conn,) = connections(srv)
    return conn


def holding_app(probe: Probe) -> App:
    """Reports ("start", method, path), reads the body, holds until released, answers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        probe.put(("start", scope["method"], scope["path"]))
        await read_body(receive)
        await probe.wait_release()
        await respond(send, 200, scope["path"].encode())

    return app


# -- a callback that fails with something other than a refusal -------------------------------


def test_a_callback_failing_unexpectedly_is_a_500_with_its_exception_logged(
    serve: Serve,
) -> None:
    """callback_failed's second branch: httptools wraps what our callback raised; anything
    but a RejectRequest is a bug of ours, logged with its traceback, and the client gets a
    500 (no client input makes a callback raise that, so the wrapped error is handed to the
    live connection's callback_failed on the server's loop)."""
    cause = ValueError("a callback's bug")

    async def fail(conn: HTTP1Protocol) -> None:
        wrapped = httptools.HttpParserCallbackError("the callback failed")
        wrapped.__context__ = cause
        conn.callback_failed(wrapped)

    with serve(respond_ok) as srv, srv.connect() as sock:
        conn = the_connection(srv)
        with error_log(logging.INFO) as records:
            on_server_loop(srv, lambda: fail(conn))
            raw = until_closed(sock)
    assert status_of(raw) == 500
    head, _, body = raw.partition(b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), raw
    assert body == b"Internal Server Error"
    assert b"\r\ncontent-length: 21\r\n" in head
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["Exception while parsing a request"]
    assert errors[0].exc_info is not None and errors[0].exc_info[1] is cause
    lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any(line.endswith(" - rejected: 500 Internal Server Error") for line in lines), lines


async def respond_ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await respond(send, 200, b"ok")


# -- targets ---------------------------------------------------------------------------------


def test_an_absolute_form_target_replaces_the_host_field_only(serve: Serve) -> None:
    """RFC 9112 §3.2.2: the target's authority replaces Host; every other field is kept."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put(scope["headers"])
        await respond(send, 200, b"ok")

    data = (
        b"GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: other\r\nX-One: 1\r\n"
        b"Accept: */*\r\n\r\n"
    )
    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(data)
        assert wire.response().status == 200
    assert probe.get() == [
        (b"host", b"example.com:8080"),
        (b"x-one", b"1"),
        (b"accept", b"*/*"),
    ]


# -- Upgrade: WebSocket, CONNECT, upgrades not performed -----------------------------------


def test_a_websocket_handshake_pipelined_behind_a_request_gets_a_400_after_its_answer(
    serve: Serve,
) -> None:
    """The handshake arrives while the request before it runs: that request is answered,
    then the handshake is refused with its reason, and the connection closes."""
    probe = Probe()
    with serve(holding_app(probe)) as srv, srv.connect() as sock:
        sock.sendall(request("/first") + WS_HANDSHAKE)
        assert probe.get() == ("start", "GET", "/first")
        probe.release.set()
        raw = until_closed(sock)
    assert statuses_of(raw) == [200, 400], raw
    assert raw.endswith(b"\r\n\r\nWebSocket upgrade pipelined behind another request"), raw


def test_a_frame_sent_with_the_websocket_handshake_reaches_the_app(serve: Serve) -> None:
    """What follows the handshake's head in the same read goes to the WebSocket protocol."""
    from websockets.frames import Opcode

    with serve(echo_app()) as srv, srv.connect() as sock:
        sock.sendall(WS_HANDSHAKE + frame_bytes(Opcode.TEXT, b"early"))
        sock.settimeout(5)
        data = b""
        while b"early" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert frames == bytes([0x81, 5]) + b"early"


def test_nothing_after_a_connect_head_is_read(serve: Serve) -> None:
    """What follows CONNECT's head is tunnel data, never requests: reading stops there (the
    app answers, then the connection closes)."""
    probe = Probe()
    with serve(holding_app(probe)) as srv, srv.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert probe.get() == ("start", "CONNECT", "example.com:443")
        tunnel = b"GET /tunnelled HTTP/1.1\r\nHost: a\r\n"
        sock.sendall(tunnel)
        wait_until(lambda: unacknowledged(sock) == 0, "the server's kernel to take the bytes")
        settle(srv)
        assert unread_by_server(sock) == len(tunnel)
        probe.release.set()
        raw = until_closed(sock)
    assert statuses_of(raw) == [200], raw


def test_two_upgrades_not_performed_one_with_a_body_then_one_without(serve: Serve) -> None:
    """The stand-in parser of the first request's skipped body is used once: the second
    upgrade request (no body) gets a fresh parser."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        probe.put((scope["path"], body))
        await respond(send, 200, body)

    first = (
        b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    second = b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(first)
        assert wire.response("POST").body == b"abc"
        wire.send(second)
        assert wire.response().status == 200
        wire.send(request("/c"))
        assert wire.response().status == 200
    assert [probe.get() for _ in range(3)] == [("/a", b"abc"), ("/b", b""), ("/c", b"")]


# -- the transport found closing while a body goes out ----------------------------------------


def test_a_body_or_trailers_sent_after_the_transport_closed_raise_client_disconnected(
    serve: Serve,
) -> None:
    """ASGI 2.4: send() raises an OSError once the peer is gone, also in the loop pass
    between the transport's close and connection_lost (send_body, send_trailers)."""
    probe = Probe()
    box: list[RunningServer] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        (conn,) = connections_now(box[0])
        trailers = scope["path"] == "/trailers"
        await send({"type": "http.response.start", "status": 200, "trailers": trailers})
        # The first body goes out with the head (start_response), the next one alone.
        await send({"type": "http.response.body", "body": b"x", "more_body": not trailers})
        conn.transport.close()  # connection_lost() is only scheduled
        try:
            if trailers:
                await send({"type": "http.response.trailers", "headers": []})
            else:
                await send({"type": "http.response.body", "body": b"more", "more_body": True})
        except OSError as exc:
            probe.put((type(exc).__name__, str(exc)))
            raise

    for path in ("/body", "/trailers"):
        with serve(app) as srv, srv.connect() as sock:
            box[:] = [srv]
            sock.sendall(request(path, headers="TE: trailers\r\n"))
            until_closed(sock)
            assert probe.get() == ("ClientDisconnected", "client disconnected"), path


def connections_now(srv: RunningServer) -> list[HTTP1Protocol]:
    """connections() for code already on the server's loop."""
    state = srv.server.state
    assert state is not None
    return [c for c in state.connections if isinstance(c, HTTP1Protocol)]


# -- shutdown --------------------------------------------------------------------------------


def test_a_silent_connection_is_closed_when_the_graceful_timeout_passes(serve: Serve) -> None:
    """A connection that has sent nothing at shutdown is given a moment for its first
    request; a graceful timeout shorter than that closes it (cancel() with no cycle)."""
    with serve(respond_ok, timeout_graceful_shutdown=0) as srv, srv.connect() as sock:
        the_connection(srv)
        srv.stop()  # fails if the shutdown raised
        assert until_closed(sock) == b""


# -- refusals: the log line, the metrics, one answer -------------------------------------------


def unix_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def client_of(sock: socket.socket) -> str:
    """How the server's log names the client: host:port, or -:0 on a UNIX socket."""
    if sock.family == socket.AF_UNIX:
        return "-:0"
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_a_refusal_is_logged_with_the_client_status_and_reason(
    serve: Serve, tmp_path: Path, over: str
) -> None:
    options: dict[str, Any] = {"uds": str(tmp_path / "s.sock")} if over == "unix" else {}
    with serve(respond_ok, **options) as srv:
        sock = unix_connect(options["uds"]) if over == "unix" else srv.connect()
        with sock, error_log(logging.INFO) as records:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            raw = until_closed(sock)
            client = client_of(sock)
    assert status_of(raw) == 400
    lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert lines == [f"{client} - rejected: 400 Several Host headers"]


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_a_body_over_the_limit_after_the_answer_closes_with_one_log_line(
    serve: Serve, tmp_path: Path, over: str
) -> None:
    """The app answered without reading and returned; the body goes on past
    --limit-request-body: no second answer, the connection closes, one "closed" line, and
    the refusal is counted."""
    options: dict[str, Any] = {"uds": str(tmp_path / "s.sock")} if over == "unix" else {}
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    with serve(respond_ok, limit_request_body=100, metrics=True, metrics_port=0, **options) as srv:
        sock = unix_connect(options["uds"]) if over == "unix" else srv.connect()
        with sock, error_log(logging.INFO) as records:
            sock.sendall(head + b"10\r\n" + b"a" * 16 + b"\r\n")
            wire = Wire(sock)
            assert wire.response("POST").status == 200
            sock.sendall(b"80\r\n" + b"b" * 128 + b"\r\n")
            assert until_closed(sock) == b""
            client = client_of(sock)
        assert srv.server.metrics is not None
        found = samples(srv.server.metrics.port)
    lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert lines == [f"{client} - closed: 413 Request body too large"]
    assert value(found, "fastserve_requests_rejected_total", status="413") == 1


# -- shutdown ----------------------------------------------------------------------------------


def stop_serving(srv: RunningServer) -> None:
    """What a graceful shutdown does first (Server.stop_serving), without ending the test's
    server: no new requests, idle connections close, busy ones after their response."""

    async def stop() -> None:
        srv.server.stop_serving()

    on_server_loop(srv, stop)


def test_a_response_in_flight_at_shutdown_says_the_connection_closes(serve: Serve) -> None:
    probe = Probe()
    with serve(holding_app(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/busy"))
        assert probe.get() == ("start", "GET", "/busy")
        stop_serving(srv)
        probe.release.set()
        response = wire.response()
        assert wire.closed()
    assert response.status == 200
    assert response.header(b"connection") == b"close"


def test_an_idle_keep_alive_connection_closes_at_once_at_shutdown(serve: Serve) -> None:
    """Not the moment a silent new connection gets: a request sent after the shutdown is
    not answered."""
    with serve(respond_ok) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/first"))
        assert wire.response().status == 200
        stop_serving(srv)
        try:
            sock.sendall(request("/late"))
        except OSError:
            pass  # (already reset: closed, as it should be)
        assert until_closed(sock) == b""


def test_a_silent_new_connection_at_shutdown_is_closed_after_its_moment(serve: Serve) -> None:
    with serve(respond_ok) as srv, srv.connect() as sock:
        the_connection(srv)
        stop_serving(srv)
        assert until_closed(sock) == b""


# -- --timeout-request-body: the timer that re-arms itself -------------------------------------


def pending(sock: socket.socket) -> bytes:
    """What the server has sent and we have not read (nothing: b""), without waiting."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return b""
    finally:
        sock.settimeout(timeout)


def test_a_stalled_body_gets_its_408_on_time_after_the_timer_re_armed(serve: Serve) -> None:
    """The timer first fires at the head's deadline (2 s) while the body is on its way:
    --timeout-request-body (2.5 s) has not passed, so it re-arms for the rest (0.5 s), not
    for a whole period: by 3 s on the server's clock, the 408 is out."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("start")
        probe.put(await count_body(receive))  # None: the 408's disconnect

    with (
        serve(app, timeout_request_header=2.0, timeout_request_body=2.5) as srv,
        srv.connect() as sock,
    ):
        sock.sendall(request("/up", "POST", "Content-Length: 10\r\n", b"12345"))
        assert probe.get() == "start"
        on_server_loop(srv, lambda: asyncio.sleep(3.0))  # every earlier timer has fired
        assert pending(sock).startswith(b"HTTP/1.1 408 "), pending(sock)
    assert probe.get() is None


def test_a_body_that_ends_after_the_timer_re_armed_leaves_the_keep_alive_timer_right(
    serve: Serve,
) -> None:
    """The timer fired mid-body (the head's deadline) and re-armed for the body's
    timeout (10 s); the body then ends, the answer goes out, and the keep-alive timeout
    (0.5 s), earlier than the armed timer, still closes the idle connection."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("start")
        await respond(send, 200, await read_body(receive))

    with (
        serve(
            app, timeout_request_header=1.0, timeout_request_body=10, timeout_keep_alive=0.5
        ) as srv,
        srv.connect() as sock,
    ):
        wire = Wire(sock)
        wire.send(request("/up", "POST", "Content-Length: 10\r\n", b"12345"))
        assert probe.get() == "start"
        on_server_loop(srv, lambda: asyncio.sleep(1.2))  # the head's deadline has passed
        wire.send(b"67890")
        assert wire.response("POST").body == b"1234567890"
        assert until_closed(sock, timeout=5) == b""


def test_an_app_slower_than_the_body_timeout_is_not_timed_out_once_its_body_is_in(
    serve: Serve,
) -> None:
    """The timer fires while the app runs with its body complete: no 408 (before or
    after the answer), and the connection serves the next request."""
    probe = Probe()
    with (
        serve(holding_app(probe), timeout_request_header=0.2, timeout_request_body=0.5) as srv,
        srv.connect() as sock,
    ):
        wire = Wire(sock)
        wire.send(request("/slow", "POST", "Content-Length: 3\r\n", b"abc"))
        assert probe.get() == ("start", "POST", "/slow")
        on_server_loop(srv, lambda: asyncio.sleep(1.5))  # both deadlines have passed
        probe.release.set()
        assert wire.response("POST").status == 200
        probe.release.clear()
        wire.send(request("/next"))
        assert probe.get() == ("start", "GET", "/next")
        probe.release.set()
        assert wire.response().status == 200


def test_a_framing_field_in_the_trailers_is_refused_with_its_reason(serve: Serve) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: b\r\n\r\n"
    )
    with serve(respond_ok) as srv, srv.connect() as sock:
        sock.sendall(data)
        raw = until_closed(sock)
    assert status_of(raw) == 400
    assert raw.endswith(b"\r\n\r\nForbidden trailer field"), raw


# -- reading-side flow control: the high-water mark ---------------------------------------------


def test_reading_goes_on_at_exactly_the_high_water_mark(serve: Serve) -> None:
    """Reading pauses once MORE than HIGH_WATER (64 KiB) of body waits unread by the app:
    with exactly 64 KiB buffered the next bytes are still read."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("start")
        await probe.wait_release()
        await respond(send, 200, b"%d" % len(await read_body(receive)))

    with serve(app) as srv, srv.connect() as sock:
        sent_and_read(sock, request("/up", "POST", "Content-Length: 65546\r\n"))
        assert probe.get() == "start"
        sent_and_read(sock, b"a" * HIGH_WATER)
        sent_and_read(sock, b"b" * 10)  # fails (times out) if reading paused
        probe.release.set()
        wire = Wire(sock)
        assert wire.response("POST").body == b"65546"


# -- the keep-alive timer, armed once and re-armed for the rest --------------------------------


def connected_at(srv: RunningServer) -> tuple[HTTP1Protocol, float]:
    """The connection, and a monotonic time no earlier than when it was made."""
    conn = the_connection(srv)
    return conn, time.monotonic()


def until(moment: float) -> Callable[[], Awaitable[None]]:
    """A barrier on the server's loop: returns once `moment` (monotonic) has passed there,
    after every timer due before it."""
    return lambda: asyncio.sleep(max(0.0, moment - time.monotonic()))


def test_the_keep_alive_timer_re_arms_for_a_short_rest(serve: Serve) -> None:
    """The keep-alive timer armed at the connection's start (1.5 s) fires when the idle
    deadline has moved on by the request served at 0.7 s: it re-arms for the rest (under a
    second), and the connection is still open between the two."""
    with serve(respond_ok, timeout_keep_alive=1.5) as srv, srv.connect() as sock:
        conn, start = connected_at(srv)
        on_server_loop(srv, until(start + 0.7))
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 200

        async def open_after_first_timer() -> bool:
            await until(start + 1.5 + 0.3)()
            return not conn.closed

        assert on_server_loop(srv, open_after_first_timer)
        assert until_closed(sock) == b""  # and it does close, later


def test_a_request_after_the_keep_alive_timer_re_armed_is_served(serve: Serve) -> None:
    with serve(respond_ok, timeout_keep_alive=2.0) as srv, srv.connect() as sock:
        _, start = connected_at(srv)
        on_server_loop(srv, until(start + 1.0))
        wire = Wire(sock)
        wire.send(request("/first"))
        assert wire.response().status == 200
        on_server_loop(srv, until(start + 2.2))  # the first timer fired and re-armed
        wire.send(request("/second"))
        assert wire.response().status == 200


# -- HTTP/2 with prior knowledge: the handover keeps the addresses ----------------------------


def test_an_h2c_connection_keeps_the_client_and_server_addresses(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put((scope["client"], scope["server"]))
        await respond(send, 200, b"ok")

    with serve(app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/")
        assert client.response(stream)[0][":status"] == "200"
        host, port = client.sock.getsockname()[:2]
        client.close()
        assert probe.get() == ((host, port), ("127.0.0.1", srv.port))


def test_transfer_encoding_fields_are_read_as_one_list(serve: Serve) -> None:
    """RFC 9110 §5.3: two Transfer-Encoding fields are one list, "gzip, chunked": a coding
    we do not implement (501), not the last field's "chunked" alone."""
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    with serve(respond_ok) as srv, srv.connect() as sock:
        sock.sendall(data)
        raw = until_closed(sock)
    assert status_of(raw) == 501
    assert raw.endswith(b"\r\n\r\nTransfer coding not implemented"), raw


def test_an_upgrade_request_refused_for_concurrency_leaves_an_idle_connection(
    serve: Serve,
) -> None:
    """The 503 (--limit-concurrency) of an Upgrade request that is not performed: the
    connection is idle after it and closes at its keep-alive timeout, silently; no request
    head was started, so no 408 at the (earlier) head timeout."""
    probe = Probe()
    upgrade = b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
    with (
        serve(
            holding_app(probe),
            limit_concurrency=1,
            timeout_request_header=0.3,
            timeout_keep_alive=1.0,
        ) as srv,
        srv.connect() as held,
        srv.connect() as sock,
    ):
        held.sendall(request("/held"))
        assert probe.get() == ("start", "GET", "/held")
        sock.sendall(upgrade)
        raw = until_closed(sock)
        probe.release.set()
    assert statuses_of(raw) == [503], raw


def test_an_app_failing_mid_body_drops_what_is_still_buffered(serve: Serve) -> None:
    """After the head, an app's exception aborts the connection: the body still in the
    transport's buffer is dropped, not flushed before a close (the client must see a
    truncated response, and a large one is not sent in full)."""
    size = 64 << 20

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def big() -> None:
            try:
                await send({"type": "http.response.body", "body": b"x" * size, "more_body": True})
            except OSError:
                pass

        task = asyncio.get_running_loop().create_task(big())
        await asyncio.sleep(0)  # the piece is written: most of it waits in the buffer
        assert not task.done()
        raise RuntimeError("boom mid-body")

    with serve(app) as srv, srv.connect() as sock, error_log():
        sock.sendall(request("/"))
        received = 0
        sock.settimeout(10)
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
    assert 0 < received < size


# -- what llhttp refuses ---------------------------------------------------------------------------


def test_a_malformed_request_gets_llhttps_reason(serve: Serve) -> None:
    with serve(respond_ok) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n")
        raw = until_closed(sock)
    assert status_of(raw) == 400
    assert raw.endswith(b"\r\n\r\nInvalid HTTP request: Invalid header token"), raw


def test_an_http2_preface_pipelined_behind_a_request_is_a_400_after_its_answer(
    serve: Serve,
) -> None:
    """Prior knowledge means HTTP/2 from the first byte: a preface behind an HTTP/1.1
    request is a malformed request, answered in order, not a switch mid-connection."""
    probe = Probe()
    first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    with serve(holding_app(probe)) as srv, srv.connect() as sock:
        sent_and_read(sock, first)
        assert probe.get() == ("start", "GET", "/")
        # In a read of its own, and as long as the first (27 bytes): the bytes read so
        # far for this "head" cannot tell it from a preface that started the connection.
        sent_and_read(sock, preface + b"\0" * (len(first) - len(preface)))
        probe.release.set()
        raw = until_closed(sock)
    assert statuses_of(raw) == [200, 400], raw


# -- --log-level debug: the connection lines ------------------------------------------------------


@pytest.mark.parametrize("over", ["tcp", "unix"])
@pytest.mark.parametrize("end", ["close", "reset"])
def test_the_connection_lines_name_the_client_and_how_it_ended(
    serve: Serve, tmp_path: Path, over: str, end: str
) -> None:
    options: dict[str, Any] = {"uds": str(tmp_path / "s.sock")} if over == "unix" else {}
    with serve(respond_ok, log_level="debug", **options) as srv, error_log() as records:
        sock = unix_connect(options["uds"]) if over == "unix" else srv.connect()
        with sock:
            wire = Wire(sock)
            wire.send(request("/"))
            assert wire.response().status == 200
            who = client_of(sock)
            if end == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        how = "reset" if end == "reset" and over == "tcp" else "closed"
        wait_until(
            lambda: any(" - connection " + how in r.getMessage() for r in records),
            "the connection's last line",
        )
    lines = [r.getMessage() for r in records if r.getMessage().startswith(who + " - conn")]
    assert lines == [f"{who} - connection open", f"{who} - connection {how}"]


# -- the client's FIN ----------------------------------------------------------------------------


def test_a_half_closed_client_is_closed_right_after_its_answer(serve: Serve) -> None:
    """Not at the keep-alive timeout (60 s here): the FIN said no more requests come."""
    probe = Probe()
    with serve(holding_app(probe), timeout_keep_alive=60) as srv, srv.connect() as sock:
        sock.sendall(request("/"))
        assert probe.get() == ("start", "GET", "/")
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: the_connection(srv).eof, "the server to see the FIN")
        probe.release.set()
        raw = until_closed(sock)
    assert statuses_of(raw) == [200], raw


@pytest.mark.parametrize("when", ["idle", "body-after-the-answer"])
def test_a_fin_where_no_request_runs_closes_quietly(serve: Serve, when: str) -> None:
    """A FIN on an idle connection, or inside a body whose request was answered already:
    the connection closes, and nothing goes wrong on the way (no error logged by the loop)."""
    with (
        serve(respond_ok, timeout_keep_alive=60) as srv,
        srv.connect() as sock,
        error_log(name="asyncio") as loop_records,
        error_log() as records,
    ):
        wire = Wire(sock)
        if when == "idle":
            wire.send(request("/"))
            assert wire.response().status == 200
        else:
            wire.send(request("/", "POST", "Content-Length: 10\r\n", b"12345"))
            assert wire.response("POST").status == 200
            conn = the_connection(srv)
            wait_until(lambda: conn.cycle is None, "the app to return")
        sock.shutdown(socket.SHUT_WR)
        assert until_closed(sock) == b""
        settle(srv)
    assert [r.getMessage() for r in loop_records + records if r.levelno >= logging.ERROR] == []


# -- a body that ends after its answer -------------------------------------------------------------


def test_a_body_ending_after_the_answer_leaves_the_connection_idle(serve: Serve) -> None:
    """Then the keep-alive timeout (0.5 s) closes it, not the body timeout (60 s)."""
    with (
        serve(respond_ok, timeout_keep_alive=0.5, timeout_request_body=60) as srv,
        srv.connect() as sock,
    ):
        wire = Wire(sock)
        wire.send(request("/", "POST", "Content-Length: 10\r\n", b"12345"))
        assert wire.response("POST").status == 200
        conn = the_connection(srv)
        wait_until(lambda: conn.cycle is None, "the app to return")
        wire.send(b"67890")
        assert until_closed(sock) == b""


# -- lingering after an idle close --------------------------------------------------------------


def test_an_idle_close_lingers_for_its_own_short_time(serve: Serve) -> None:
    """close_idle() drains input for IDLE_LINGER_SECONDS (1 s), not an error answer's 2 s."""
    with serve(respond_ok) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 200

        async def close_and_wait() -> int:
            state = srv.server.state
            assert state is not None
            srv.server.stop_serving()  # the idle connection closes (and lingers) now
            lingering = len(state.connections)
            await asyncio.sleep(IDLE_LINGER_SECONDS + 0.5)
            for _ in range(10):
                await asyncio.sleep(0)
            return lingering * 10 + len(state.connections)

        assert on_server_loop(srv, close_and_wait) == 10  # lingering, then gone


# -- a head split over reads --------------------------------------------------------------------


def test_a_request_target_split_over_reads_is_whole(serve: Serve) -> None:
    probe = Probe()
    with serve(holding_app(probe)) as srv, srv.connect() as sock:
        probe.release.set()
        sent_and_read(sock, b"GET /first-half")
        sent_and_read(sock, b"-second-half?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert probe.get() == ("start", "GET", "/first-half-second-half")
        assert Wire(sock).response().body == b"/first-half-second-half"


def split_head(total: int) -> list[bytes]:
    """A GET head of exactly `total` bytes, in two pieces (two reads)."""
    first = b"GET / HTTP/1.1\r\nHost: a\r\n"
    pad = total - len(first) - len(b"X-Pad: \r\n\r\n")
    return [first, b"X-Pad: " + b"p" * pad + b"\r\n\r\n"]


@pytest.mark.parametrize("total", [100, 101])
def test_a_head_split_over_reads_may_be_exactly_the_head_size_cap(serve: Serve, total: int) -> None:
    with serve(respond_ok, h11_max_incomplete_event_size=100) as srv, srv.connect() as sock:
        for piece in split_head(total):
            sent_and_read(sock, piece)
        if total == 100:
            assert Wire(sock).response().status == 200
        else:
            raw = until_closed(sock)
            assert status_of(raw) == 431
            assert raw.endswith(b"\r\n\r\nRequest header fields too large"), raw


def version_app(probe: Probe) -> App:
    """Reports each request's http_version, answers 200 "ok"."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put(scope["http_version"])
        await respond(send, 200, b"ok")

    return app


def test_the_version_of_a_read_is_its_first_request_lines(serve: Serve) -> None:
    """A read holding one request and the line of the next (another version): each request
    has its own version."""
    probe = Probe()
    with serve(version_app(probe)) as srv, srv.connect() as sock:
        sent_and_read(sock, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\n")
        sock.sendall(b"Host: b\r\n\r\n")
        raw = until_closed(sock)
    assert statuses_of(raw) == [200, 200], raw
    assert [probe.get(), probe.get()] == ["1.1", "1.0"]


# -- every refusal of http1.py: its status and reason, and the limits' exact edges -------------

LIMITS: dict[str, Any] = {
    "limit_request_fields": 3,
    "limit_request_field_size": 40,
    "limit_request_body": 10,
}
REFUSALS = {
    "field-too-large": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 36 + b"\r\n\r\n",  # 41
        431,
        b"Request header field too large",
    ),
    "too-many-fields": (
        b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
        431,
        b"Too many request header fields",
    ),
    "no-version": (b"GET /\r\n\r\n", 400, b"Invalid request line: no HTTP version"),
    "version-2": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, b"HTTP version not supported"),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400, b"Missing Host header"),
    "fragment": (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"Fragment in request target"),
    "asterisk-not-options": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"Invalid request target"),
    "length-over-limit": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
        413,
        b"Request body too large",
    ),
    "chunked-over-limit": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n"
        + b"x" * 11
        + b"\r\n0\r\n\r\n",
        413,
        b"Request body too large",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_has_its_status_and_reason(serve: Serve, case: str) -> None:
    data, status, reason = REFUSALS[case]
    with serve(respond_ok, **LIMITS) as srv, srv.connect() as sock:
        sock.sendall(data)
        raw = until_closed(sock)
    assert status_of(raw) == status, raw
    assert raw.endswith(b"\r\n\r\n" + reason), raw


def test_the_limits_admit_a_request_exactly_at_them(serve: Serve) -> None:
    """A field of exactly --limit-request-field-size (name + value), exactly
    --limit-request-fields fields, a body of exactly --limit-request-body."""
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 35 + b"\r\n"  # 5 + 35 = 40
        b"Content-Length: 10\r\n\r\n0123456789"
    )
    with serve(respond_ok, **LIMITS) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(data)
        assert wire.response("POST").status == 200


def test_the_target_and_the_field_values_as_the_app_sees_them(serve: Serve) -> None:
    """The query is what follows the first "?"; trailing whitespace leaves field values
    (llhttp strips the leading); OPTIONS * keeps its target."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put((scope["method"], scope["raw_path"], scope["query_string"], scope["headers"]))
        await respond(send, 200, b"ok")

    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"GET /p?a=1?b=2 HTTP/1.1\r\nHost: a\r\nX-Pad:  v w \t\r\nX-Y: aX \r\n\r\n")
        assert wire.response().status == 200
        wire.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        assert wire.response("OPTIONS").status == 200
    fields = [(b"host", b"a"), (b"x-pad", b"v w"), (b"x-y", b"aX")]
    assert probe.get() == ("GET", b"/p", b"a=1?b=2", fields)
    assert probe.get() == ("OPTIONS", b"*", b"", [(b"host", b"a")])


# -- after a response: the next deadline ----------------------------------------------------------


def test_the_keep_alive_timer_is_armed_again_after_it_fired_during_the_app(
    serve: Serve,
) -> None:
    """The keep-alive timer (0.3 s) fires while the app runs with its request complete:
    nothing to time then, and no timer left. After the answer the idle connection gets a
    new one, and closes."""
    probe = Probe()
    with (
        serve(holding_app(probe), timeout_keep_alive=0.3) as srv,
        srv.connect() as sock,
    ):
        _, start = connected_at(srv)
        wire = Wire(sock)
        wire.send(request("/"))
        assert probe.get() == ("start", "GET", "/")
        on_server_loop(srv, until(start + 0.6))  # the timer has fired
        probe.release.set()
        assert wire.response().status == 200
        assert until_closed(sock) == b""


def test_a_pipelined_request_whose_body_stalls_gets_its_408_on_time(serve: Serve) -> None:
    """Once it runs, --timeout-request-body (0.5 s) counts for its body, whatever timer
    was armed before (the keep-alive and head timeouts are 60 s)."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put(("start", scope["path"]))
        if scope["path"] == "/first":
            await probe.wait_release()
        size = await count_body(receive)
        if size is not None:
            await respond(send, 200, b"%d" % size)

    options = {"timeout_keep_alive": 60, "timeout_request_header": 60}
    with (
        serve(app, timeout_request_body=0.5, **options) as srv,
        srv.connect() as sock,
    ):
        sock.sendall(
            request("/first") + request("/second", "POST", "Content-Length: 10\r\n", b"12")
        )
        assert probe.get() == ("start", "/first")
        probe.release.set()
        assert probe.get() == ("start", "/second")
        raw = until_closed(sock)
    assert statuses_of(raw) == [200, 408], raw


def test_reading_stays_paused_while_pipelined_requests_wait(serve: Serve) -> None:
    """Three pipelined requests: when the first is answered, the second runs and the third
    still waits, so reading stays paused (what the client sends next stays unread)."""
    probe = Probe()
    gates = {"/1": threading.Event(), "/2": threading.Event(), "/3": threading.Event()}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        probe.put(path)
        while not gates[path].is_set():
            await asyncio.sleep(0.005)
        await respond(send, 200, path.encode())

    with serve(app) as srv, srv.connect() as sock:
        sent_and_read(sock, request("/1") + request("/2") + request("/3"))
        assert probe.get() == "/1"
        later = b"GET /4 HTTP/1.1\r\n"
        sock.sendall(later)
        gates["/1"].set()
        assert probe.get() == "/2"
        wait_until(lambda: unacknowledged(sock) == 0, "the server's kernel to take the bytes")
        settle(srv)
        assert unread_by_server(sock) == len(later)
        gates["/2"].set()
        gates["/3"].set()
        wire = Wire(sock)
        assert [wire.response().body for _ in range(3)] == [b"/1", b"/2", b"/3"]


def test_after_a_large_body_read_late_the_idle_connection_still_times_out(
    serve: Serve,
) -> None:
    """A request whose body went past the high-water mark (reading paused on the way, and
    resumed at the request's end): after its answer the connection is idle like any other
    and closes at the keep-alive timeout."""
    probe = Probe()
    size = HIGH_WATER + 5000
    with serve(holding_app(probe), timeout_keep_alive=0.3) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/big", "POST", f"Content-Length: {size}\r\n", b"b" * size))
        assert probe.get() == ("start", "POST", "/big")
        wait_until(
            lambda: unacknowledged(sock) == 0 and unread_by_server(sock) == 0,
            "the server to read the whole body",
        )
        probe.release.set()
        assert wire.response("POST").status == 200
        assert until_closed(sock) == b""


def test_expect_100_continue_is_for_its_own_request_only(serve: Serve) -> None:
    """The first request asks for a 100 (Continue) and gets it; the next one, on the same
    connection, does not ask: the app waits for its body and no 100 goes out."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, await read_body(receive))

    with serve(app) as srv, srv.connect() as sock:
        sent_and_read(sock, request("/1", "POST", "Content-Length: 1\r\nExpect: 100-continue\r\n"))
        sock.settimeout(5)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        wire = Wire(sock)
        wire.send(b"a")
        assert wire.response("POST").body == b"a"
        sent_and_read(sock, request("/2", "POST", "Content-Length: 1\r\n"))
        settle(srv)  # the app waits in receive()
        assert pending(sock) == b""
        wire.send(b"b")
        second = wire.response("POST")
    assert (second.informational, second.body) == ([], b"b")


def test_without_log_connections_no_connection_line_is_logged(serve: Serve) -> None:
    """At --log-level info (no connection lines), not even the close line is made, whatever
    the logger's level."""
    with serve(respond_ok, log_level="info") as srv, error_log(logging.DEBUG) as records:
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/"))
            assert wire.response().status == 200
        wait_until(lambda: not connections(srv), "the connection to end")
        settle(srv)
    assert [r.getMessage() for r in records if " - connection " in r.getMessage()] == []


def test_a_connection_ending_after_its_timer_fired_for_nothing_ends_cleanly(
    serve: Serve,
) -> None:
    """The keep-alive timer (0.3 s) fires while the app runs with its request complete and
    is not re-armed; then the client leaves: the connection ends with no timer to cancel,
    and nothing goes wrong (no error logged)."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("start")
        while (await receive())["type"] != "http.disconnect":
            pass
        await respond(send, 200, b"late")  # (to a half-closed client: still delivered)

    with (
        serve(app, timeout_keep_alive=0.3) as srv,
        error_log(name="asyncio") as loop_records,
        error_log() as records,
    ):
        with srv.connect() as sock:
            _, start = connected_at(srv)
            sock.sendall(request("/"))
            assert probe.get() == "start"
            on_server_loop(srv, until(start + 0.6))  # the timer has fired
        wait_until(lambda: not connections(srv), "the connection to end")
        settle(srv)
    assert [r.getMessage() for r in loop_records + records if r.levelno >= logging.ERROR] == []


def test_a_body_that_never_starts_gets_its_408(serve: Serve) -> None:
    """The first request of a connection announces a body and sends none of it: the timer
    (first at the head's deadline, 0.2 s) finds no body byte yet and counts from the
    request's start; --timeout-request-body (1 s) then refuses it."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("start")
        probe.put(await count_body(receive))  # None: the 408's disconnect

    with (
        serve(app, timeout_request_header=0.2, timeout_request_body=1.0) as srv,
        srv.connect() as sock,
    ):
        sock.sendall(request("/up", "POST", "Content-Length: 5\r\n"))
        assert probe.get() == "start"
        raw = until_closed(sock)
    assert statuses_of(raw) == [408], raw
    assert probe.get() is None


def test_the_scope_names_the_client_and_the_server(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put((scope["client"], scope["server"]))
        await respond(send, 200, b"ok")

    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 200
        host, port = sock.getsockname()[:2]
        assert probe.get() == ((host, port), ("127.0.0.1", srv.port))


# -- data_received (session 12): the version read from a read, the head deadline of a later request


def test_a_read_that_goes_on_with_a_pipelined_head_is_no_request_line(serve: Serve) -> None:
    """The next request's line came behind the first request; once the first is answered (the
    connection idle), the read that goes on with its head starts with a field whose value
    ends like a request line (" HTTP/1.1"): the request is still HTTP/1.0."""
    probe = Probe()
    with serve(version_app(probe)) as srv, srv.connect() as sock:
        sent_and_read(sock, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\n")
        assert Wire(sock).response().status == 200
        assert probe.get() == "1.1"
        conn = the_connection(srv)

        async def phase() -> int:
            return conn.phase

        wait_until(lambda: on_server_loop(srv, phase) == IDLE, "the connection idle")
        sock.sendall(b"X: HTTP/1.1\r\nHost: b\r\n\r\n")
        raw = until_closed(sock)
    assert statuses_of(raw) == [200], raw
    assert probe.get() == "1.0"


def test_a_later_requests_head_deadline_is_armed_at_its_first_read(serve: Serve) -> None:
    """A kept-alive connection's next request: its head deadline (--timeout-request-header)
    comes long before the keep-alive timer armed after the first answer: the 408 comes then."""
    options = {"timeout_keep_alive": 60, "timeout_request_header": 0.3}
    with serve(respond_ok, **options) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        raw = until_closed(sock, timeout=10)
    assert status_of(raw) == 408, raw


def test_a_first_body_in_many_reads_arms_one_timer(serve: Serve) -> None:
    """A new connection's first request, its body in many reads: the first read arms the
    body's timer, the reads after it arm none (one per read would each live for the body
    timeout)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await respond(send, 200, body)

    with serve(app, timeout_request_body=60) as srv, srv.connect() as sock:
        settle(srv)
        before = timers()
        sent_and_read(sock, request("/", "POST", "Content-Length: 12\r\n", b"a"))
        for _ in range(10):
            sent_and_read(sock, b"b")
        settle(srv)
        assert timers() <= before + 1
        sock.sendall(b"c")
        assert Wire(sock).response().body == b"a" + b"b" * 10 + b"c"


def test_a_refused_first_request_leaves_no_timer_behind(serve: Serve) -> None:
    """A new connection's first read is refused (400): the connection is closed by the end
    of that read, and no timer is armed for it afterwards."""
    with serve(respond_ok, timeout_request_header=60) as srv, srv.connect() as sock:
        conn = the_connection(srv)
        sock.sendall(b"BAD\r\n\r\n")
        assert status_of(until_closed(sock)) == 400

        async def timer() -> object:
            return conn.timer

        assert conn.closed
        assert on_server_loop(srv, timer) is None
