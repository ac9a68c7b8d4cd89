"""WebSockets over a real server on both loops: messages, closing, protocol errors, flow
control and the frameworks' endpoints. (The handshake and server shutdown:
test_websocket_handshake.py.) The websockets client where behaviour matters, raw frames
(`RawWS`) where the wire matters or the client must misbehave."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import struct
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.frames import Opcode
from websockets.sync.client import connect

from tests.apps.core_apps import Probe
from tests.apps.ws_apps import (
    RawWS,
    close_after_first,
    closed_code,
    echo_app,
    fastapi_app,
    flooder,
    frame_bytes,
    headers,
    send_after_disconnect,
    slow_reader,
    starlette_app,
    unmasked_frame,
    ws_connect,
)
from tests.helpers import (
    Serve,
    on_server_loop,
    sent_and_read,
    stalled,
    unread_by_server,
    wait_until,
)

# -- messages -------------------------------------------------------------------------------


def test_echo_text_and_bytes_and_the_scope(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe), root_path="/api") as srv, ws_connect(srv.port, "/a%20b?x=1") as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv(timeout=5) == b"\x00\xff" * 1000
        ws.send("")
        assert ws.recv(timeout=5) == ""
        assert headers(ws)["x-extra"] == "yes"
        assert headers(ws)["server"] == "fastserve"
        scope = probe.get()
        port = srv.port
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/api/a b"  # root_path included, as in the HTTP scope
    assert scope["raw_path"] == b"/api/a%20b"
    assert scope["query_string"] == b"x=1"
    assert scope["root_path"] == "/api"
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", port)
    assert scope["subprotocols"] == []
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert isinstance(scope["state"], dict)
    assert "method" not in scope
    assert (b"upgrade", b"websocket") in scope["headers"]


def test_wss_over_tls(serve: Serve, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    probe = Probe()
    with serve(echo_app(probe), ssl_certfile=str(pem)) as srv:
        with connect(f"wss://127.0.0.1:{srv.port}/", ssl=client_ctx, open_timeout=5) as ws:
            ws.send("secret")
            assert ws.recv(timeout=5) == "secret"
        scope = probe.get()
    assert scope["scheme"] == "wss"
    assert "tls" in scope["extensions"]
    assert "websocket.http.response" in scope["extensions"]


def test_fragmented_messages_are_reassembled(serve: Serve) -> None:
    with serve(echo_app()) as srv, ws_connect(srv.port) as ws:
        ws.send(["frag", "mented ", "tëxt"])
        assert ws.recv(timeout=5) == "fragmented tëxt"
        ws.send([b"ab", b"", b"cd"])
        assert ws.recv(timeout=5) == b"abcd"


def test_raw_fragments_with_a_ping_in_between(serve: Serve) -> None:
    with serve(echo_app(), ws_per_message_deflate=False) as srv, RawWS(srv.port) as raw:
        assert raw.status == 101
        # "é" split across two fragments: UTF-8 is decoded across frame boundaries.
        raw.send(Opcode.TEXT, b"caf\xc3", fin=False)
        raw.send(Opcode.PING, b"p1")
        raw.send(Opcode.CONT, b"\xa9!", fin=True)
        assert raw.recv_frame() == (Opcode.PONG, True, b"p1")
        assert raw.recv_frame() == (Opcode.TEXT, True, "café!".encode())
        raw.close()


def test_ping_pong_from_the_client(serve: Serve) -> None:
    with serve(echo_app()) as srv, ws_connect(srv.port) as ws:
        assert ws.ping(b"hi").wait(5)


def answer_pings(raw: RawWS, count: int) -> None:
    """Answer the server's next `count` frames, which must all be keepalive pings."""
    for _ in range(count):
        opcode, _, payload = raw.recv_frame()  # (a timeout, if no ping comes, fails)
        assert opcode == Opcode.PING, (opcode, payload)
        raw.send(Opcode.PONG, payload)


def next_data_frame(raw: RawWS) -> tuple[int, bool, bytes]:
    """The next frame that is not a ping (pings are answered on the way)."""
    while True:
        frame = raw.recv_frame()
        if frame[0] != Opcode.PING:
            return frame
        raw.send(Opcode.PONG, frame[2])


def test_keepalive_pings_answered_keep_the_connection(serve: Serve) -> None:
    options = {"ws_ping_interval": 0.05, "ws_ping_timeout": 0.2, "ws_per_message_deflate": False}
    with serve(echo_app(), **options) as srv, RawWS(srv.port) as raw:
        # A ping is only sent an interval after the last pong: 10 answered pings span more
        # than two ping timeouts (a dropped pong would have closed the connection by then).
        answer_pings(raw, 10)
        raw.send(Opcode.TEXT, b"still here")
        assert next_data_frame(raw) == (Opcode.TEXT, True, b"still here")


def test_keepalive_timeout_closes_with_1011(serve: Serve) -> None:
    with (
        serve(echo_app(), ws_ping_interval=0.05, ws_ping_timeout=0.2) as srv,
        RawWS(srv.port) as raw,
    ):
        opcode, _, _ = raw.recv_frame()
        assert opcode == Opcode.PING  # never answered
        assert raw.recv_close()[0] == 1011
        assert raw.at_eof()


def test_keepalive_spares_a_peer_whose_pong_we_did_not_read(serve: Serve) -> None:
    # The app reads nothing for a while, so reading pauses (queue of 1) and the client's
    # pong stays unread in the socket: that is our doing, not a dead peer.
    probe = Probe()
    options = {
        "ws_ping_interval": 0.05,
        "ws_ping_timeout": 0.1,
        "ws_max_queue": 1,
        "ws_per_message_deflate": False,
    }
    with serve(slow_reader(probe), **options) as srv, RawWS(srv.port) as raw:
        # Ten messages in one read: the queue is over its limit and reading pauses.
        sent_and_read(raw.sock, b"".join(frame_bytes(Opcode.TEXT, b"m%d" % i) for i in range(10)))
        answer_pings(raw, 1)
        wait_until(lambda: unread_by_server(raw.sock) > 0, "our pong to reach the server")
        # The server's ping deadline passes five times over while the pong waits unread: a
        # timer on its own loop, due after the ping timeout's, is the barrier (a sleep here
        # would also pass a server too starved to have reached its deadline).
        on_server_loop(srv, lambda: asyncio.sleep(0.5))
        assert unread_by_server(raw.sock) > 0, "the server read the pong: nothing was tested"
        probe.release.set()  # the app reads, reading resumes, the pong is read: pings go on
        answer_pings(raw, 2)
        raw.send(Opcode.CLOSE, struct.pack("!H", 1000))
        opcode, _, payload = next_data_frame(raw)
        assert (opcode, payload[:2]) == (Opcode.CLOSE, struct.pack("!H", 1000))
        assert probe.get() == 10


# -- closing --------------------------------------------------------------------------------
# -- closing --------------------------------------------------------------------------------


def test_client_close_code_reaches_the_app(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe)) as srv:
        with ws_connect(srv.port) as ws:
            probe.get()  # the scope
            ws.close(4001, "client bye")
        assert probe.get() == {"type": "websocket.disconnect", "code": 4001, "reason": "client bye"}


def test_app_close_code_reaches_the_client(serve: Serve) -> None:
    probe = Probe()
    with serve(close_after_first(4002, "app bye", probe)) as srv, ws_connect(srv.port) as ws:
        ws.send("one")
        assert closed_code(ws) == (4002, "app bye")
        assert probe.get()["text"] == "one"
        # After its own close, the app's receive() says disconnected, with its code.
        assert probe.get() == {"type": "websocket.disconnect", "code": 4002, "reason": "app bye"}


def test_closing_handshake_times_out_when_the_peer_never_answers(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastserve.protocols import websocket

    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.2)
    with serve(close_after_first(1000, "", Probe())) as srv, RawWS(srv.port) as raw:
        raw.send(Opcode.TEXT, b"x")
        assert raw.recv_close() == (1000, "")
        # We neither answer the close frame nor close TCP: the server drops the connection.
        assert raw.at_eof(timeout=5)


def test_client_vanishing_mid_message(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe)) as srv, RawWS(srv.port) as raw:
        probe.get()
        raw.send(Opcode.BINARY, b"first half", fin=False)
        raw.sock.sendall(frame_bytes(Opcode.CONT, b"x" * 100)[:20])  # and half a frame
        raw.close()
        assert probe.get() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        # The server carries on.
        with ws_connect(srv.port) as ws:
            ws.send("next")
            assert ws.recv(timeout=5) == "next"


def test_send_after_disconnect_raises_oserror(serve: Serve) -> None:
    probe = Probe()
    with serve(send_after_disconnect(probe)) as srv:
        with ws_connect(srv.port) as ws:
            ws.close(1000)
        assert probe.get()["code"] == 1000
        assert isinstance(probe.get(), OSError)


# -- protocol errors ------------------------------------------------------------------------


def test_message_too_big_closes_with_1009(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe), ws_max_size=1024) as srv, ws_connect(srv.port) as ws:
        probe.get()
        ws.send(b"x" * 1024)
        assert ws.recv(timeout=5) == b"x" * 1024
        ws.send(b"x" * 1025)
        assert closed_code(ws)[0] == 1009
        assert probe.get()["code"] == 1009


def test_fragmented_message_too_big_closes_with_1009(serve: Serve) -> None:
    with (
        serve(echo_app(), ws_max_size=1024, ws_per_message_deflate=False) as srv,
        RawWS(srv.port) as raw,
    ):
        raw.send(Opcode.BINARY, b"x" * 600, fin=False)
        raw.send(Opcode.CONT, b"x" * 600, fin=True)
        assert raw.recv_close()[0] == 1009
        assert raw.at_eof()


def test_compressed_bomb_is_bounded_by_max_size(serve: Serve) -> None:
    # 1 MiB of zeros deflates to ~1 KiB: the limit applies to the inflated size.
    with serve(echo_app(), ws_max_size=64 * 1024) as srv, ws_connect(srv.port) as ws:
        assert "permessage-deflate" in headers(ws)["sec-websocket-extensions"]
        ws.send(b"\0" * (1024 * 1024))
        assert closed_code(ws)[0] == 1009


@pytest.mark.parametrize(
    "frames",
    [
        [(Opcode.TEXT, b"\xff\xfe", True)],
        [(Opcode.TEXT, b"ok", False), (Opcode.CONT, b"\xc3\x28", True)],
    ],
    ids=["single", "fragmented"],
)
def test_invalid_utf8_closes_with_1007(
    serve: Serve, frames: list[tuple[Opcode, bytes, bool]]
) -> None:
    probe = Probe()
    with serve(echo_app(probe)) as srv, RawWS(srv.port) as raw:
        probe.get()
        for opcode, payload, fin in frames:
            raw.send(opcode, payload, fin)
        assert raw.recv_close()[0] == 1007
        assert raw.at_eof()
        assert probe.get()["code"] == 1007


@pytest.mark.parametrize(
    "data",
    [
        unmasked_frame(0x1, b"hi"),  # clients must mask (RFC 6455 §5.1)
        bytes([0x83, 0x80, 0, 0, 0, 0]),  # reserved opcode 3
        frame_bytes(Opcode.CONT, b"x"),  # continuation without a message
    ],
    ids=["unmasked", "reserved-opcode", "stray-continuation"],
)
def test_protocol_errors_close_with_1002(serve: Serve, data: bytes) -> None:
    with serve(echo_app()) as srv, RawWS(srv.port) as raw:
        raw.sock.sendall(data)
        assert raw.recv_close()[0] == 1002
        assert raw.at_eof()


# -- flow control -----------------------------------------------------------------------------


def push_until_blocked(sock: socket.socket, frame: bytes, limit: int) -> int:
    """Send `frame` over and over until the kernel takes no byte for 1 s (or `limit` frames
    went out); the number of bytes sent (the last frame may be cut short)."""
    sock.setblocking(False)
    size, sent = len(frame), 0
    while sent < limit * size:
        try:
            sent += sock.send(frame[sent % size :])
        except BlockingIOError:
            if not select.select([], [sock], [], 1.0)[1]:
                break
    sock.settimeout(30)
    return sent


@pytest.mark.timeout(60)
def test_slow_app_pauses_reading(serve: Serve) -> None:
    probe = Probe()
    frame = frame_bytes(Opcode.BINARY, b"y" * 65536)
    limit = 1024  # 64 MiB: far more than the queue plus the socket buffers can hold
    with (
        serve(slow_reader(probe), ws_max_queue=4, ws_per_message_deflate=False) as srv,
        RawWS(srv.port) as raw,
    ):
        sent = push_until_blocked(raw.sock, frame, limit)
        # Reading paused: only the queue (4 messages) and the kernel's buffers hold the rest.
        assert sent < limit // 2 * len(frame)
        probe.release.set()
        # The app reads again, reading resumes, every message arrives, then the EOF.
        if sent % len(frame):
            raw.sock.sendall(frame[sent % len(frame) :])
        raw.close()
        assert probe.get(timeout=30) == -(-sent // len(frame))


@pytest.mark.timeout(60)
def test_slow_peer_makes_send_wait(serve: Serve) -> None:
    probe = Probe()
    total = 1024  # 64 MiB if nothing held the app back
    with (
        serve(flooder(probe, 65536, total), ws_per_message_deflate=False) as srv,
        RawWS(srv.port) as raw,
    ):  # reads nothing from now on
        sent = stalled(srv, lambda: probe.counter, "the app's send() calls to stop returning")
        assert sent < total // 2  # send() is waiting for the peer
        raw.close()
        assert isinstance(probe.get(timeout=10), OSError)


# -- frameworks ---------------------------------------------------------------------------


def test_starlette_websocket_endpoint(serve: Serve) -> None:
    with serve(starlette_app()) as srv:
        with ws_connect(srv.port, "/ws", subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            ws.send("hi")
            assert ws.recv(timeout=5) == "starlette: hi"
        with pytest.raises(InvalidStatus) as info:
            ws_connect(srv.port, "/denied")
        assert info.value.response.status_code == 401
        assert info.value.response.body == b"go away"


def test_fastapi_websocket_endpoint(serve: Serve) -> None:
    with serve(fastapi_app()) as srv, ws_connect(srv.port, "/items/42?q=z") as ws:
        ws.send('{"a": 1}')
        assert ws.recv(timeout=5) == '{"item":"42","q":"z","got":{"a":1}}'
