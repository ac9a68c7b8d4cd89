"""WebSockets over HTTP/2 (RFC 8441), on both loops: an extended CONNECT with `:protocol
websocket` is an ASGI websocket scope, and the stream's DATA frames carry RFC 6455 frames.

The client is the `h2` library on a real socket (prior knowledge, and once over TLS with ALPN);
its WebSocket frames are made and read by the websockets library's sans-I/O ClientProtocol
(which masks them, as a client must). The tests check what the app received and what the
client sees: the 200 and its fields, echoes both ways, a message larger than the client's
window, subprotocols, close codes both ways, resets, several WebSockets and a request on one
connection, the limits (--ws-max-size, --ws-max-queue, --limit-concurrency, header limits),
permessage-deflate, proxy headers, a denial, shutdown, metrics and the access log, and the
SETTINGS that offer it only when WebSockets are on.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading

import h2.errors
import h2.events
import h2.settings
import pytest
from h2.connection import ConnectionState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.protocol import State
from websockets.uri import parse_uri

from fastserve.protocols.h2 import H2Protocol
from tests.apps import ws_apps
from tests.apps.core_apps import App, Probe, Receive, Scope, Send
from tests.conftest import RunningServer, run_server
from tests.helpers import Serve, wait_until
from tests.test_http2 import H2Client, echo_app
from tests.test_http2_frames import DATA, frame
from tests.test_tls import Certs

pytest.importorskip("zttp")

ENABLE_CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


class TLSH2Client(H2Client):
    """H2Client over TLS, h2 chosen by ALPN."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        super().__init__(port)

    def flush(self) -> None:
        if not isinstance(self.sock, ssl.SSLSocket):
            self.sock = self.ctx.wrap_socket(self.sock, server_hostname="localhost")
            assert self.sock.selected_alpn_protocol() == "h2"
        super().flush()


class CountingClient(H2Client):
    """H2Client that counts the bytes it sends."""

    sent = 0

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sent += len(data)
            self.sock.sendall(data)


def settings_of(client: H2Client) -> dict[int, int]:
    """The server's first SETTINGS, as the client read them."""
    changed = client.until(h2.events.RemoteSettingsChanged).changed_settings
    return {code: setting.new_value for code, setting in changed.items()}


class WS:
    """One WebSocket on a stream of `client`: the extended CONNECT, then frames both ways."""

    def __init__(
        self,
        client: H2Client,
        path: str = "/ws",
        headers: list[tuple[str, str]] | None = None,
        scheme: str = "http",
    ) -> None:
        self.client = client
        conn = client.conn
        if not conn.remote_settings.enable_connect_protocol:
            settings_of(client)  # the h2 library sends :protocol only once it is offered
        self.stream_id: int = conn.get_next_available_stream_id()
        fields = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", scheme),
            (":path", path),
            (":authority", "test"),
            ("sec-websocket-version", "13"),
            *(headers or []),
        ]
        conn.send_headers(self.stream_id, fields)
        client.flush()
        self.ws = ClientProtocol(parse_uri("ws://test/"), state=State.OPEN, max_size=None)
        self.seen = 0  # client.events read so far
        self.frames: list[Frame] = []  # received, not returned yet
        self.ended = False  # the server's END_STREAM came
        self.reset: int | None = None  # the server's RST_STREAM code

    def head(self) -> dict[str, str]:
        event = self.client.until(h2.events.ResponseReceived, self.stream_id)
        return dict(event.headers)

    def send(self, data: bytes) -> None:
        """Bytes as DATA, within the windows the server gives (read for more)."""
        conn, sid = self.client.conn, self.stream_id
        while data:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                self.client.read()
                continue
            conn.send_data(sid, data[:room])
            data = data[room:]
            self.client.flush()

    def send_frame(self, opcode: Opcode, data: bytes) -> None:
        self.ws.send_frame(Frame(opcode, data))
        self.send(b"".join(self.ws.data_to_send()))

    def send_text(self, text: str) -> None:
        self.send_frame(Opcode.TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self.send_frame(Opcode.BINARY, data)

    def send_close(self, code: int, reason: str = "") -> None:
        self.ws.send_close(code, reason)
        self.send(b"".join(self.ws.data_to_send()))

    def end(self) -> None:
        """END_STREAM from the client."""
        self.client.conn.end_stream(self.stream_id)
        self.client.flush()

    def answer(self) -> None:
        """What the client library answers by itself: a pong, the echo of a close."""
        data = b"".join(self.ws.data_to_send())
        if data and not self.ended:
            if self.client.conn.state_machine.state is ConnectionState.CLOSED:
                # After a GOAWAY the h2 library sends nothing more, though RFC 9113 §6.8 lets
                # the streams it names go on: the frame is written by hand.
                self.client.sock.sendall(frame(DATA, 0, self.stream_id, data))
            else:
                self.send(data)

    def pump(self) -> bool:
        """Feed what arrived for this stream to the WebSocket (crediting the windows as it
        is read); False if nothing new came."""
        events = self.client.events
        fresh = False
        while self.seen < len(events):
            event = events[self.seen]
            self.seen += 1
            if getattr(event, "stream_id", None) != self.stream_id:
                continue
            fresh = True
            if isinstance(event, h2.events.DataReceived):
                self.ws.receive_data(event.data)
                length = event.flow_controlled_length
                if length and not self.ended:
                    self.client.conn.acknowledge_received_data(length, self.stream_id)
                    self.client.flush()
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
                self.ws.receive_eof()
            elif isinstance(event, h2.events.StreamReset):
                self.reset = event.error_code
        return fresh

    def frame(self) -> Frame:
        """The next frame from the server (a timeout or an end of stream is a failure)."""
        while True:
            self.pump()
            self.frames += [e for e in self.ws.events_received() if isinstance(e, Frame)]
            self.answer()
            if self.frames:
                return self.frames.pop(0)
            if self.ended or self.reset is not None or self.client.closed:
                raise AssertionError(f"stream ended before a frame (reset {self.reset})")
            self.client.read()

    def message(self) -> Frame:
        frame = self.frame()
        assert frame.opcode in (Opcode.TEXT, Opcode.BINARY), frame
        assert frame.fin
        return frame

    def close_frame(self) -> Close:
        frame = self.frame()
        assert frame.opcode is Opcode.CLOSE, frame
        return Close.parse(frame.data)

    def until_ended(self) -> None:
        """Until the server's END_STREAM."""
        while not self.ended:
            self.pump()
            if self.ended:
                break
            if self.reset is not None or self.client.closed:
                raise AssertionError(f"stream reset ({self.reset}) or connection closed")
            self.client.read()

    def until_reset(self) -> int:
        while self.reset is None:
            self.pump()
            if self.reset is not None:
                break
            if self.client.closed:
                raise AssertionError("connection closed before the reset")
            self.client.read()
        return self.reset


def with_http(websocket: App) -> App:
    """`websocket` for WebSockets; an http request gets test_http2's echo_app."""
    http = echo_app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await http(scope, receive, send)
        elif scope["type"] == "websocket":
            await websocket(scope, receive, send)

    return app


def ws_echo(probe: Probe | None = None) -> App:
    """tests/apps/ws_apps.echo_app: accepts with the subprotocol named in `?sub=`, echoes,
    reports the scope and the disconnect."""
    return with_http(ws_apps.echo_app(probe))


def test_echo_text_and_binary_and_the_scope(serve: Serve) -> None:
    probe = Probe()
    with serve(ws_echo(probe)) as srv:
        client = H2Client(srv.port)
        ws = WS(client, "/chat/r%C3%A9?room=1", headers=[("x-custom", "yes")])
        head = ws.head()
        assert head[":status"] == "200"
        # RFC 8441 §5: no Sec-WebSocket-Accept, no connection-specific fields.
        assert "sec-websocket-accept" not in head and "upgrade" not in head
        assert "server" in head and "date" in head
        scope = probe.get()
        assert scope["type"] == "websocket"
        assert scope["http_version"] == "2"
        assert scope["scheme"] == "ws"
        assert scope["path"] == "/chat/ré"
        assert scope["raw_path"] == b"/chat/r%C3%A9"
        assert scope["query_string"] == b"room=1"
        assert (b"host", b"test") in scope["headers"]
        assert (b"x-custom", b"yes") in scope["headers"]
        assert "method" not in scope
        assert scope["subprotocols"] == []
        assert scope["client"][0] == "127.0.0.1"
        assert "websocket.http.response" in scope["extensions"]
        ws.send_text("héllo")
        frame = ws.message()
        assert (frame.opcode, frame.data) == (Opcode.TEXT, "héllo".encode())
        ws.send_binary(b"\x00\x01\xff")
        frame = ws.message()
        assert (frame.opcode, frame.data) == (Opcode.BINARY, b"\x00\x01\xff")
        client.close()


def test_the_apps_date_and_server_replace_the_servers_own(serve: Serve) -> None:
    """One Date and one Server on the 200 (singleton fields, RFC 9110 §5.3, §6.6.1): the
    app's, never beside the server's or the WebSocket library's."""
    app_date = "Tue, 01 Dec 2026 00:00:00 GMT"

    async def accept_with_fields(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        fields = [(b"Date", app_date.encode()), (b"server", b"mine")]
        await send({"type": "websocket.accept", "headers": fields})
        await receive()  # until the client goes

    with serve(with_http(accept_with_fields)) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        fields = client.until(h2.events.ResponseReceived, ws.stream_id).headers
        client.close()
    assert [v for n, v in fields if n == "date"] == [app_date], fields
    assert [v for n, v in fields if n == "server"] == ["mine"], fields


def test_a_message_larger_than_the_windows_both_ways(serve: Serve) -> None:
    """1 MiB each way: the client's window is 16 KiB, so the server's send waits for
    WINDOW_UPDATEs, and the client's DATA waits for the server's credit."""
    message = bytes(range(256)) * 4096
    with serve(ws_echo()) as srv:
        client = H2Client(srv.port, window=16384)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        ws.send_binary(message)
        frame = ws.message()
        assert frame.data == message
        ws.send_text("after")
        assert ws.message().data == b"after"
        client.close()


def test_subprotocol_negotiation(serve: Serve) -> None:
    probe = Probe()
    with serve(ws_echo(probe)) as srv:
        client = H2Client(srv.port)
        ws = WS(client, "/?sub=two", headers=[("sec-websocket-protocol", "one, two")])
        assert ws.head()["sec-websocket-protocol"] == "two"
        assert probe.get()["subprotocols"] == ["one", "two"]
        client.close()


def test_the_app_closes_with_its_code(serve: Serve) -> None:
    probe = Probe()
    with serve(with_http(ws_apps.close_after_first(4001, "asked", probe))) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        ws.send_text("first")
        assert probe.get() == {"type": "websocket.receive", "text": "first"}
        close = ws.close_frame()
        assert (close.code, close.reason) == (4001, "asked")  # (frame() echoed it)
        ws.until_ended()  # then END_STREAM (RFC 8441 §5: the orderly close)
        assert probe.get() == {"type": "websocket.disconnect", "code": 4001, "reason": "asked"}
        # The connection serves on.
        assert client.response(client.request("/after"))[1] == b"2 GET /after 0"
        client.close()


def test_the_client_closes_with_its_code(serve: Serve) -> None:
    probe = Probe()
    with serve(ws_echo(probe)) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        probe.get()
        ws.send_close(4002, "bye")
        close = ws.close_frame()  # echoed (RFC 6455 §5.5.1)
        assert close.code == 4002
        ws.until_ended()
        assert probe.get() == {"type": "websocket.disconnect", "code": 4002, "reason": "bye"}
        client.close()


def test_a_client_reset_is_a_disconnect_and_the_connection_lives_on(serve: Serve) -> None:
    probe = Probe()
    with serve(ws_echo(probe)) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        probe.get()
        client.conn.reset_stream(ws.stream_id, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        assert probe.get() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        other = WS(client)
        assert other.head()[":status"] == "200"
        other.send_text("still here")
        assert other.message().data == b"still here"
        client.close()


def test_an_end_stream_without_a_close_frame_is_1006(serve: Serve) -> None:
    probe = Probe()
    with serve(ws_echo(probe)) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        probe.get()
        ws.end()
        assert probe.get() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        ws.until_ended()  # our side ends too
        client.close()


def test_end_stream_before_the_app_answers_is_a_reset_and_a_disconnect(serve: Serve) -> None:
    release = threading.Event()
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put(await receive())
        while not release.is_set():
            await asyncio.sleep(0.005)
        probe.put(await receive())

    with serve(with_http(app)) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert probe.get() == {"type": "websocket.connect"}
        ws.end()
        # No response was sent: the stream cannot end with one; CANCEL (RFC 9113 §8.1).
        assert ws.until_reset() == h2.errors.ErrorCodes.CANCEL
        release.set()
        assert probe.get() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        assert client.response(client.request("/after"))[1] == b"2 GET /after 0"
        client.close()


def test_two_websockets_and_a_request_on_one_connection(serve: Serve) -> None:
    with serve(ws_echo()) as srv:
        client = H2Client(srv.port)
        first, second = WS(client), WS(client)
        request = client.request("/plain", "POST", body=b"abc")
        assert first.head()[":status"] == "200"
        assert second.head()[":status"] == "200"
        first.send_text("to first")
        second.send_text("to second")
        assert client.response(request)[1] == b"2 POST /plain 3"
        assert first.message().data == b"to first"
        assert second.message().data == b"to second"
        assert first.stream_id != second.stream_id
        client.close()


def test_a_message_over_max_size_is_closed_with_1009(serve: Serve) -> None:
    probe = Probe()
    with serve(ws_echo(probe), ws_max_size=1000) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        probe.get()
        ws.send_binary(b"x" * 1000)
        assert len(ws.message().data) == 1000
        ws.send_binary(b"x" * 1001)
        assert ws.close_frame().code == 1009
        assert probe.get()["code"] == 1009
        client.close()


def test_a_close_before_accept_is_a_403_and_a_denial_its_response(serve: Serve) -> None:
    denial = ws_apps.deny_app(401, [b"who ", b"are you"])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await (denial if scope["path"] == "/deny" else ws_apps.reject_app)(scope, receive, send)

    # One stream at a time: a stream whose response is out must leave the connection (the
    # client ends its side: the h2 library counts the stream until then).
    with serve(with_http(app), http2_max_concurrent_streams=1) as srv:
        client = H2Client(srv.port)
        ws = WS(client, "/close")
        head, body = client.response(ws.stream_id)
        assert head[":status"] == "403"
        assert body == b"Forbidden"
        ws.end()
        denied = WS(client, "/deny")
        head, body = client.response(denied.stream_id)
        assert (head[":status"], head["x-denied"]) == ("401", "1")
        assert body == b"who are you"
        denied.end()
        again = WS(client, "/close")
        assert client.response(again.stream_id)[0][":status"] == "403"
        client.close()


def bare_connect(client: H2Client, protocol: str) -> int:
    """An extended CONNECT with the pseudo-header fields only (no sec-websocket-version)."""
    settings_of(client)
    sid: int = client.conn.get_next_available_stream_id()
    fields = [(":method", "CONNECT"), (":protocol", protocol), (":scheme", "http")]
    client.conn.send_headers(sid, [*fields, (":path", "/"), (":authority", "t")])
    client.flush()
    return sid


def test_a_handshake_without_sec_websocket_version_is_a_400(serve: Serve) -> None:
    with serve(ws_echo()) as srv:
        client = H2Client(srv.port)
        sid = bare_connect(client, "websocket")
        head, body = client.response(sid)
        assert head[":status"] == "400"
        assert b"Sec-WebSocket-Version" in body
        client.close()


def test_header_limits_apply_to_the_handshake(serve: Serve) -> None:
    with serve(ws_echo(), limit_request_fields=8, http2_max_concurrent_streams=1) as srv:
        client = H2Client(srv.port)
        many = WS(client, headers=[(f"x-{i}", "1") for i in range(8)])
        assert client.response(many.stream_id)[0][":status"] == "431"
        many.end()
        assert WS(client).head()[":status"] == "200"  # (the refused stream left)
        client.close()


def test_limit_concurrency_counts_websockets(serve: Serve) -> None:
    with serve(ws_echo(), limit_concurrency=1) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        refused = WS(client)
        assert client.response(refused.stream_id)[0][":status"] == "503"
        assert client.response(client.request("/"))[0][":status"] == "503"
        ws.send_close(1000)
        ws.until_ended()
        wait_until(
            lambda: srv.server.state is not None and srv.server.state.in_flight == 0,
            "the WebSocket's app to end",
        )
        assert WS(client).head()[":status"] == "200"
        client.close()


@pytest.mark.parametrize(("restarting", "code"), [(False, 1001), (True, 1012)])
def test_shutdown_closes_websockets(serve: Serve, restarting: bool, code: int) -> None:
    probe = Probe()
    with serve(ws_echo(probe)) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        probe.get()
        assert srv.server.state is not None
        srv.server.state.restarting = restarting
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        # The close frame comes before the GOAWAY (after which the h2 library reads no
        # frames: frame() answers the close by hand).
        assert ws.close_frame().code == code
        assert probe.get()["code"] == code
        srv.thread.join(10)
        assert not srv.thread.is_alive(), "the server did not stop"
        client.close()


def test_keepalive_pings_go_over_the_stream(serve: Serve) -> None:
    with serve(ws_echo(), ws_ping_interval=0.05, ws_ping_timeout=5.0) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        ws.head()
        for _ in range(2):
            frame = ws.frame()
            assert frame.opcode is Opcode.PING  # (frame() sent the pong)
        client.close()


def unanswered_frame(ws: WS) -> Frame:
    """The next frame from the server, never answered (no pong, no close echo)."""
    while True:
        ws.pump()
        ws.frames += [e for e in ws.ws.events_received() if isinstance(e, Frame)]
        if ws.frames:
            return ws.frames.pop(0)
        assert ws.reset is None and not ws.ended and not ws.client.closed
        ws.client.read()


def test_an_unanswered_keepalive_ping_closes_with_1011(serve: Serve) -> None:
    """The ping timeout over HTTP/2: a ping never answered is a 1011 close frame on the
    stream, and the connection serves another stream after it."""
    probe = Probe()
    with serve(ws_echo(probe), ws_ping_interval=0.05, ws_ping_timeout=0.2) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        assert unanswered_frame(ws).opcode is Opcode.PING
        frame = unanswered_frame(ws)
        assert frame.opcode is Opcode.CLOSE
        assert Close.parse(frame.data).code == 1011
        assert client.response(client.request("/after"))[1] == b"2 GET /after 0"
        client.close()


def test_an_unanswered_close_resets_the_stream(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closing handshake's timeout over HTTP/2: the app closed, the client neither
    echoes the close frame nor ends the stream: RST_STREAM CANCEL once the timeout passes
    (the stream, not the connection: another stream is served after it)."""
    from fastserve.protocols import websocket

    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.2)
    with serve(with_http(ws_apps.close_after_first(1000, "bye", Probe()))) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        assert ws.head()[":status"] == "200"
        ws.send_text("x")
        frame = unanswered_frame(ws)
        assert frame.opcode is Opcode.CLOSE
        assert Close.parse(frame.data).code == 1000
        assert ws.until_reset() == h2.errors.ErrorCodes.CANCEL
        assert not client.closed
        assert client.response(client.request("/after"))[1] == b"2 GET /after 0"
        client.close()


@pytest.mark.parametrize("deflate", [True, False])
def test_permessage_deflate(serve: Serve, deflate: bool) -> None:
    """Negotiated as over HTTP/1.1 (RFC 7692), and the messages are compressed both ways;
    --ws-per-message-deflate false declines it."""
    factory = ClientPerMessageDeflateFactory()
    offer = build_extension([(factory.name, factory.get_request_params())])
    text = "compress me " * 1000
    with serve(ws_echo(), ws_per_message_deflate=deflate) as srv:
        client = H2Client(srv.port)
        ws = WS(client, headers=[("sec-websocket-extensions", offer)])
        answer = ws.head().get("sec-websocket-extensions")
        if not deflate:
            assert answer is None
            return
        assert answer is not None
        [(name, params)] = parse_extension(answer)
        assert name == factory.name
        ws.ws.extensions = [factory.process_response_params(params, [])]
        ws.send_text(text)
        sent = client.conn.outbound_flow_control_window
        assert ws.message().data == text.encode()
        # Compressed on the wire both ways: far fewer bytes than the text.
        received = sum(
            e.flow_controlled_length
            for e in client.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == ws.stream_id
        )
        assert received < len(text) // 10
        assert 65535 - sent < len(text) // 10
        client.close()


def test_an_app_that_reads_slowly_stops_the_reading_and_gets_every_message(serve: Serve) -> None:
    """--ws-max-queue: past it the connection is not read (zttp credits DATA as it comes), and
    reading resumes as the app catches up: every message arrives, in order."""
    release = threading.Event()
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while not release.is_set():
            await asyncio.sleep(0.005)
        texts: list[str] = []
        while len(texts) < 200:
            texts.append((await receive())["text"])
        probe.put(texts)
        await send({"type": "websocket.send", "text": str(len(texts))})

    with serve(with_http(app), ws_max_queue=4) as srv:
        client = H2Client(srv.port)
        ws = WS(client)
        ws.head()
        for i in range(200):
            if i == 20:  # the app's queue is full: the connection is not read
                wait_until(lambda: h2_reading_paused(srv), "the connection to stop reading")
                release.set()
            ws.send_text(f"m{i:03d}" + "x" * 1000)
        assert ws.message().data == b"200"
        assert probe.get() == [f"m{i:03d}" + "x" * 1000 for i in range(200)]
        client.close()


def h2_reading_paused(srv: RunningServer) -> bool:
    state = srv.server.state
    assert state is not None
    return any(isinstance(c, H2Protocol) and c.read_paused for c in list(state.connections))


def test_root_path_and_proxy_headers_as_over_http11(serve: Serve) -> None:
    probe = Probe()
    options = {"root_path": "/api", "proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"}
    with serve(ws_echo(probe), **options) as srv:
        client = H2Client(srv.port)
        forwarded = [("x-forwarded-for", "10.1.2.3"), ("x-forwarded-proto", "https")]
        WS(client, "/a%20b", headers=forwarded).head()
        scope = probe.get()
        assert scope["path"] == "/api/a b"
        assert scope["root_path"] == "/api"
        assert scope["client"][0] == "10.1.2.3"
        assert scope["scheme"] == "wss"
        client.close()


def test_settings_offer_extended_connect_only_with_websockets(serve: Serve) -> None:
    with serve(ws_echo()) as srv:
        client = H2Client(srv.port)
        assert settings_of(client).get(ENABLE_CONNECT_PROTOCOL) == 1
        client.close()
    with serve(ws_echo(), ws="none") as srv:
        client = H2Client(srv.port)
        assert ENABLE_CONNECT_PROTOCOL not in settings_of(client)
        client.close()


def test_a_protocol_other_than_websocket_is_a_protocol_error(serve: Serve) -> None:
    with serve(ws_echo()) as srv:
        client = H2Client(srv.port)
        sid = bare_connect(client, "webtransport")
        reset = client.until(h2.events.StreamReset, sid)
        assert reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert client.response(client.request("/ok"))[1] == b"2 GET /ok 0"
        client.close()


def test_websocket_metrics_and_access_log(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    with serve(ws_echo(), access_log=True, log_level="info", metrics=True) as srv:
        client = CountingClient(srv.port)
        ws = WS(client, "/logged?x=1")
        ws.head()
        state = srv.server.state
        assert state is not None and state.metrics is not None
        metrics = state.metrics
        before = (metrics.bytes_received, client.sent)
        ws.send_text("one" * 10000)
        ws.message()
        # The WebSocket's bytes are counted once (as the connection's), not again as frames.
        wait_until(
            lambda: metrics.bytes_received - before[0] == client.sent - before[1],
            "the server to count what the client sent",
        )
        ws.send_close(1000)
        ws.until_ended()
        wait_until(lambda: metrics.ws_closes, "the close to be counted")
        assert metrics.ws_closes == {"1000": 1}
        assert metrics.ws_connections == 1
        assert (metrics.ws_received, metrics.ws_sent) == (1, 1)
        client.close()
    out = capsys.readouterr().out
    assert re.search(r'"CONNECT /logged\?x=1 HTTP/2" 200 ', out), out


def test_starlette_websocket_endpoint_over_http2(serve: Serve) -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="chat")
        name = await websocket.receive_text()
        await websocket.send_json({"hello": name, "path": websocket.url.path})
        data = await websocket.receive_bytes()
        await websocket.send_bytes(data[::-1])
        await websocket.close(code=4000)

    app = Starlette(routes=[WebSocketRoute("/ws/{room}", endpoint)])
    with serve(app, lifespan="off") as srv:
        client = H2Client(srv.port)
        ws = WS(client, "/ws/lobby", headers=[("sec-websocket-protocol", "chat")])
        assert ws.head()["sec-websocket-protocol"] == "chat"
        ws.send_text("ada")
        assert ws.message().data == b'{"hello":"ada","path":"/ws/lobby"}'
        ws.send_binary(b"abc")
        assert ws.message().data == b"cba"
        assert ws.close_frame().code == 4000
        client.close()


def test_websocket_over_tls_is_wss(tmp_path_factory: pytest.TempPathFactory) -> None:
    certs = Certs(tmp_path_factory.mktemp("tls"))
    probe = Probe()
    with run_server(ws_echo(probe), **certs.options()) as srv:
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["h2"])
        client = TLSH2Client(srv.port, ctx)
        ws = WS(client, scheme="https")
        assert ws.head()[":status"] == "200"
        scope = probe.get()
        assert scope["scheme"] == "wss"
        assert scope["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)
        ws.send_binary(b"x" * 100_000)
        assert ws.message().data == b"x" * 100_000
        client.close()
