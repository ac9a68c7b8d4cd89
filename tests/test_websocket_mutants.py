"""Tests written for the surviving mutants of server/protocols/websocket.py (issue 16), second
pass: the functions the first pass never reached (`start`, `__init__`, `websocket_scope`,
`set_disconnect`, `receive`, `connection_lost`, `app_done`, `run`, `wake`). Each test names
the behaviour it pins; docs/testing.md lists which mutant each one kills."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Opcode

from tests.apps.core_apps import Probe
from tests.apps.ws_apps import RawWS, frame_bytes, ws_connect
from tests.helpers import (
    Serve,
    abort,
    error_log,
    on_server_loop,
    sent_and_read,
    settle,
    unacknowledged,
    unread_by_server,
    until_closed,
    wait_until,
)
from tests.test_protocol_mutants import http_answer

DISCONNECT = {"type": "websocket.disconnect"}


# -- receive(): reading resumes once the app took half the queue ---------------------------------


def test_reading_resumes_once_the_app_took_the_queue_down_to_half(serve: Serve) -> None:
    """ws_max_queue 4: four queued messages pause reading; taking one (3 left) keeps it paused,
    taking a second (2 left, half the queue) resumes it."""
    steps = [Probe(), Probe(), Probe()]
    taken = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for step in steps[:2]:
            await step.wait_release()
            taken.put((await receive()).get("text"))
        await steps[2].wait_release()
        rest = []
        while (message := await receive())["type"] == "websocket.receive":
            rest.append(message.get("text"))
        taken.put(rest)

    options = {"ws_max_queue": 4, "ws_per_message_deflate": False}
    with serve(app, **options) as srv, RawWS(srv.port) as raw:
        assert raw.status == 101
        sent_and_read(raw.sock, b"".join(frame_bytes(Opcode.TEXT, b"%d" % i) for i in range(4)))
        raw.sock.sendall(frame_bytes(Opcode.TEXT, b"4"))
        wait_until(lambda: unacknowledged(raw.sock) == 0, "the fifth frame in the server's kernel")
        settle(srv)
        assert unread_by_server(raw.sock) > 0  # four queued: reading paused
        steps[0].release.set()
        assert taken.get() == "0"
        settle(srv)
        assert unread_by_server(raw.sock) > 0  # three left: still paused
        steps[1].release.set()
        assert taken.get() == "1"
        wait_until(lambda: unread_by_server(raw.sock) == 0, "reading resumed at two left")
        steps[2].release.set()
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        assert raw.recv_close()[0] == 1000
        assert taken.get() == ["2", "3", "4"]


# -- run(): an app returning in the middle of its denial response --------------------------------


def test_an_app_returning_before_its_denial_body_is_logged_and_gets_a_500(serve: Serve) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        start = {"type": "websocket.http.response.start", "status": 403, "headers": []}
        await send(start)  # and returns: no body

    with serve(app) as srv, error_log() as records, RawWS(srv.port) as raw:
        assert raw.status == 500
        _head, body = http_answer(raw)
        wait_until(lambda: bool(records), "the error logged")
    assert body == b"Internal Server Error"
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.ERROR, "ASGI app returned without completing the denial response")
    ]


# -- metrics: messages received, closes by code (receive, set_disconnect) ---------------------


def test_websocket_messages_received_and_closes_are_counted_for_accepted_ones_only(
    serve: Serve,
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})  # a 403: not an accepted WebSocket
            return
        await send({"type": "websocket.accept"})
        while (await receive())["type"] == "websocket.receive":
            pass

    with serve(app, metrics=True, metrics_port=0, ws_per_message_deflate=False) as srv:
        state = srv.server.state
        assert state is not None and state.metrics is not None
        metrics = state.metrics
        with RawWS(srv.port) as raw:
            raw.send(Opcode.TEXT, b"one")
            raw.send(Opcode.BINARY, b"two")
            raw.send(Opcode.CLOSE, struct.pack("!H", 4001))
            assert raw.recv_close()[0] == 4001
            assert raw.at_eof()
        raw = RawWS(srv.port)
        assert raw.status == 101
        abort(raw.sock)  # no closing handshake: 1006
        with RawWS(srv.port, "/deny") as raw:
            assert raw.status == 403
            until_closed(raw.sock)
        with srv.connect() as sock:  # a bad handshake (no key): a 400, the app never runs
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert until_closed(sock).startswith(b"HTTP/1.1 400 ")
        wait_until(lambda: not state.connections, "every connection closed")

        async def counts() -> tuple[int, dict[str, int]]:
            return int(metrics.ws_received), dict(metrics.ws_closes)

        assert on_server_loop(srv, counts) == (2, {"4xxx": 1, "1006": 1})


# -- connection_lost() ---------------------------------------------------------------------------


def test_a_reset_websocket_gives_the_app_1006_without_a_reason(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        probe.put("accepted")
        probe.put(await receive())
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:  # ASGI 2.4: an OSError once the client is gone
            probe.put(str(exc))

    with serve(app) as srv:
        raw = RawWS(srv.port)
        assert raw.status == 101
        assert probe.get() == "accepted"
        abort(raw.sock)
        assert probe.get() == {**DISCONNECT, "code": 1006, "reason": ""}
        assert probe.get() == "WebSocket closed"


def test_a_closed_websocket_is_logged_at_debug_and_leaves_the_server(serve: Serve) -> None:
    with serve(_echo, log_level="debug") as srv, error_log(logging.DEBUG) as records:
        state = srv.server.state
        assert state is not None
        with ws_connect(srv.port) as ws:
            port = ws.socket.getsockname()[1]
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
        wait_until(lambda: not state.connections, "the server to drop the connection")
        wait_until(
            lambda: any("WebSocket connection closed" in r.getMessage() for r in records),
            "the debug line",
        )
        closed = [
            r.getMessage() for r in records if "WebSocket connection closed" in r.getMessage()
        ]
    assert closed == [f"127.0.0.1:{port} - WebSocket connection closed"]


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message.get("text") or ""})


# -- start(): --limit-concurrency counts every open WebSocket ------------------------------------


def test_limit_concurrency_counts_each_open_websocket_once(serve: Serve) -> None:
    with serve(_echo, limit_concurrency=2) as srv:
        state = srv.server.state
        assert state is not None
        with ws_connect(srv.port) as first, ws_connect(srv.port) as second:
            for ws in (first, second):
                ws.send("x")
                assert ws.recv(timeout=5) == "x"
            assert state.in_flight == 2
            with RawWS(srv.port) as raw:
                assert raw.status == 503
                _head, body = http_answer(raw)
            assert body == b"Service Unavailable"
        wait_until(lambda: state.in_flight == 0, "both apps done")
        with ws_connect(srv.port) as again:
            again.send("y")
            assert again.recv(timeout=5) == "y"


# -- websocket_scope() -----------------------------------------------------------------------------


def test_the_scope_takes_the_subprotocols_of_every_field_line(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        probe.put(dict(scope))
        await send({"type": "websocket.accept", "subprotocol": "b"})

    lines = b"Sec-WebSocket-Protocol: a, b\r\nSec-WebSocket-Protocol: c\r\n"
    with serve(app) as srv, RawWS(srv.port, "/p?q=1", lines) as raw:
        assert raw.status == 101
        scope = probe.get()
    assert scope["subprotocols"] == ["a", "b", "c"]
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert "method" not in scope
    assert scope["extensions"] == {"websocket.http.response": {}}  # no "tls" on plain TCP
    assert (scope["path"], scope["query_string"]) == ("/p", b"q=1")


# -- start(): a handshake the library refuses -----------------------------------------------------

NO_KEY = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
NO_KEY_BODY = b"Failed to open a WebSocket connection: missing Sec-WebSocket-Key header.\n"


def refusal(data: bytes) -> tuple[list[bytes], bytes]:
    """The field names (as written) and the body of a response read to the server's close."""
    head, _, body = data.partition(b"\r\n\r\n")
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]], body


def test_a_refused_handshake_is_logged_and_answered_with_the_librarys_fields_once(
    serve: Serve,
) -> None:
    with serve(_echo) as srv, error_log(logging.INFO) as records, srv.connect() as sock:
        port = sock.getsockname()[1]
        sock.sendall(NO_KEY)
        data = until_closed(sock)
        wait_until(lambda: bool(records), "the refusal logged")
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    names, body = refusal(data)
    expected = [b"content-type", b"date", b"content-length", b"connection", b"server"]
    assert sorted(names) == sorted(expected)
    assert body == NO_KEY_BODY
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.INFO,
            f"127.0.0.1:{port} - bad WebSocket handshake: missing Sec-WebSocket-Key header",
        )
    ]


def test_over_a_unix_socket_the_refusal_and_the_close_name_no_peer(
    serve: Serve, tmp_path: Path
) -> None:
    """A UNIX socket's client is None: the log lines say "-:0"."""
    path = str(tmp_path / "ws.sock")
    with serve(_echo, uds=path, log_level="debug") as srv, error_log(logging.DEBUG) as records:
        state = srv.server.state
        assert state is not None
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(NO_KEY)
            assert until_closed(sock).startswith(b"HTTP/1.1 400 ")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "closed before the 101"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.sendall(frame_bytes(Opcode.CLOSE, struct.pack("!H", 1000)))
            until_closed(sock)
        wait_until(lambda: not state.connections, "the server to drop the connection")
        wanted = ("bad WebSocket handshake", "WebSocket connection closed")

        def lines() -> list[str]:
            return sorted(
                r.getMessage() for r in records if any(w in r.getMessage() for w in wanted)
            )

        wait_until(lambda: len(lines()) == 3, "the refusal and two closes logged")
        assert lines() == [
            "-:0 - WebSocket connection closed",  # (the refused one's too)
            "-:0 - WebSocket connection closed",
            "-:0 - bad WebSocket handshake: missing Sec-WebSocket-Key header",
        ]


# -- __init__(): ws_max_queue 1 is a queue of one -------------------------------------------------


def test_a_queue_of_one_message_pauses_reading(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await probe.wait_release()
        texts = []
        while (message := await receive())["type"] == "websocket.receive":
            texts.append(message.get("text"))
        probe.put(texts)

    options = {"ws_max_queue": 1, "ws_per_message_deflate": False}
    with serve(app, **options) as srv, RawWS(srv.port) as raw:
        assert raw.status == 101
        sent_and_read(raw.sock, frame_bytes(Opcode.TEXT, b"1"))
        raw.sock.sendall(frame_bytes(Opcode.TEXT, b"2"))
        wait_until(lambda: unacknowledged(raw.sock) == 0, "the second frame in the server's kernel")
        settle(srv)
        assert unread_by_server(raw.sock) > 0  # one queued: reading paused
        probe.release.set()
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        assert raw.recv_close()[0] == 1000
        assert probe.get() == ["1", "2"]


# -- start(): each handshake is a request (--limit-max-requests counts them) ----------------------


def test_each_websocket_handshake_counts_as_one_request(serve: Serve) -> None:
    with serve(_echo) as srv:
        state = srv.server.state
        assert state is not None
        with ws_connect(srv.port) as ws:
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
        with srv.connect() as sock:
            sock.sendall(NO_KEY)
            assert until_closed(sock).startswith(b"HTTP/1.1 400 ")
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert until_closed(sock).startswith(b"HTTP/1.1 200 ")

        async def total() -> int:
            return int(state.total_requests)

        assert on_server_loop(srv, total) == 3


# -- start() over HTTP/2 (RFC 8441): the client's own Sec-WebSocket-Key is left out ---------------


def test_an_h2_handshake_with_its_own_sec_websocket_key_is_accepted(serve: Serve) -> None:
    pytest.importorskip("zttp")
    from tests.test_http2 import H2Client
    from tests.test_http2_websocket import WS, with_http

    with serve(with_http(_echo)) as srv:
        client = H2Client(srv.port)
        try:
            ws = WS(client, headers=[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")])
            assert ws.head()[":status"] == "200"
        finally:
            client.close()


def test_an_http_1_0_handshake_is_refused_with_a_505(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        probe.put(scope["type"])

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(
            b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = until_closed(sock)
    assert data.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert data.endswith(b"unsupported HTTP version: HTTP/1.0.\n")
    assert probe.events.empty()  # the app never ran
