"""HTTP/2 (RFC 9113) on zttp's sans-I/O engine: one connection, many streams, each stream one
request through the shared request layer (request.py, cycle.py).

Every call into zttp is in this module. zttp parses frames, decodes HPACK, validates request
header blocks (pseudo-headers, connection-specific fields, `te`, upper-case names: the stream
is reset with PROTOCOL_ERROR), answers PING and SETTINGS, and parks response bytes that
exceed the peer's send window until a WINDOW_UPDATE. This module turns its events into ASGI
requests, and owns time, memory, limits and the receive windows:

- how a connection arrives: http1.py hands it over on the HTTP/2 preface (prior knowledge,
  h2c) or when ALPN chose h2 (TLS); an `Upgrade: h2c` request is served as HTTP/1.1;
- SETTINGS_MAX_CONCURRENT_STREAMS is --http2-max-concurrent-streams (zttp's own SETTINGS
  frame is rewritten before it leaves: it says 128); streams beyond it get REFUSED_STREAM;
- WebSockets (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL is offered when WebSockets are on
  (--ws); an extended CONNECT with `:protocol websocket` is then a WebSocket on its stream
  (H2WebSocket: websocket.py's protocol, DATA frames carrying RFC 6455 frames). Any other
  `:protocol`, or one when not offered, is a malformed request (RFC 8441 §4: PROTOCOL_ERROR);
- flow control out: send() waits while a stream's bytes are parked for window credit or the
  transport's buffer is full, so a peer that stops reading holds at most a window per stream;
- flow control in (RFC 9113 §6.9), ours, not zttp's: zttp credits DATA as it parses it
  (0.0.35 has no call to withhold credit), so its WINDOW_UPDATE frames are dropped from what
  it gives us to send (own_frames, a walk of the frame headers) and the windows are
  accounted here, on the frame headers of what is read (check_priorities: whole payloads,
  padding too). A stream's window is credited as its app's receive() takes the bytes (a
  WebSocket's as websockets' parser takes them; dropped bytes at once), in WINDOW_UPDATE
  frames of at least half a window (credit); the connection's as DATA arrives
  (grant_connection), so that a stream whose app does not read holds its own window and
  stalls no other stream: memory is bounded by --http2-initial-window-size times
  --http2-max-concurrent-streams. DATA past a stream's window: RST_STREAM
  FLOW_CONTROL_ERROR (flow_errors); past the connection's: GOAWAY FLOW_CONTROL_ERROR;
- the priority rules zttp 0.0.35 does not check (RFC 9113 §5.3.1: a stream cannot depend on
  itself; §6.3: no PRIORITY on stream 0), found by the same walk of what is read;
- rapid reset (CVE-2023-44487): streams the client resets count against a budget that refills
  with time; past it, GOAWAY ENHANCE_YOUR_CALM; so do empty DATA frames (CVE-2019-9518), which
  zttp takes without limit (its own guards end CONTINUATION, header-block and PING floods);
- shutdown: GOAWAY NO_ERROR in RFC 9113 §6.8's two steps (a PING and stream 2^31-1, then
  the last stream taken once the PING comes back), in-flight streams finish; the same when
  an idle connection closes after --timeout-keep-alive or a connection is retired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import zttp

from .connection import Address
from .cycle import Channel, ClientDisconnected, RequestCycle
from .flow import FlowControl
from .linger import IDLE_LINGER_SECONDS, Lingering
from .request import admit, connection_scope, make_scope, start

if TYPE_CHECKING:
    from ..state import ServerState

log = logging.getLogger("fastserve.error")
monotonic: Final = time.monotonic


NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
ENHANCE_YOUR_CALM: Final = 0xB

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
WINDOW_UPDATE: Final = 0x8
END_STREAM: Final = 0x1
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
DEFAULT_WINDOW: Final = 65535  # RFC 9113 §6.9.2
SETTINGS_ENABLE_CONNECT_PROTOCOL: Final = 0x8

# Client resets a connection may make: a budget of RESET_BURST that refills by RESET_RATE a
# second. Browsers cancel a few streams when a page is left; an attack resets thousands a
# second (CVE-2023-44487).
RESET_BURST: Final = 200.0
RESET_RATE: Final = 50.0

# Empty DATA frames that do not end their stream (CVE-2019-9518, "empty frames flood": each
# costs a parse and carries nothing): a budget of EMPTY_BURST refilled by EMPTY_RATE a second.
# A client has no reason to send one; Netty allows 2 in a row (maxConsecutiveEmptyFrames).
EMPTY_BURST: Final = 100.0
EMPTY_RATE: Final = 10.0

# Streams one connection takes before it is retired with GOAWAY NO_ERROR (clients open a new
# one, as after nginx's keepalive_requests). zttp 0.0.35 ends a connection after 4,096 streams
# as a "flood" (ENHANCE_YOUR_CALM, whatever the rate: measured at 1,000 req/s with h2load),
# which would fail the requests in flight; a GOAWAY below that lets them finish.
STREAMS_PER_CONNECTION: Final = 4000
# ... at its first idle moment (a GOAWAY after the last response: some clients, the h2
# library among them, take a GOAWAY as the end of every stream); at once past this many.
STREAMS_HARD_LIMIT: Final = 4080

# Graceful GOAWAY (RFC 9113 §6.8): the first names the highest stream id there is ("no new
# streams soon": those already on their way are still served); its ACK, one round trip
# later, says the client has read the GOAWAY, so the streams it opened before are in. The
# second GOAWAY names the last stream taken then, or after GOAWAY_WAIT seconds if no ACK
# comes (RFC 9113: "at least one round-trip time"). The PING goes just before the GOAWAY, in
# the same write, not after it: the `h2` library (httpx's HTTP/2) takes any frame after a
# GOAWAY but another GOAWAY as a protocol error, and would fail a response it had read whole.
MAX_STREAM_ID: Final = 2**31 - 1
GOAWAY_PING: Final = b"fs-drain"
GOAWAY_PING_FRAME: Final = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + GOAWAY_PING
GOAWAY_WAIT: Final = 1.0

# Response header fields that are connection-specific in HTTP/1.1 and forbidden in HTTP/2
# (RFC 9113 §8.2.2): an app written for HTTP/1.1 may send them; they are dropped.
CONNECTION_SPECIFIC: Final = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)


class H2Stream(Channel):
    """One request/response exchange on an HTTP/2 connection: the cycle's Channel."""

    __slots__ = ("body_seen", "conn", "cycle", "received", "stream_id", "unread", "waiter")

    def __init__(self, conn: H2Protocol, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.cycle: RequestCycle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.body_seen = monotonic()  # when request body last arrived (or the stream opened)
        self.received = 0  # request body bytes so far (--limit-request-body)
        self.unread = 0  # body bytes given to the cycle and not yet taken by receive()

    def start_response(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        cycle.head_sent = True
        conn = self.conn
        headers = response_headers(cycle, body, final, conn.state)
        handle = conn.h2.stream(self.stream_id)
        if cycle.no_body or (final and not body):
            handle.send_response(cycle.status, headers, True)
        else:
            handle.send_response(cycle.status, headers)
            if body:
                handle.send_data(body)
            if final:
                handle.end_message()
        conn.want_flush()

    def send_body(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        conn = self.conn
        if conn.closed or cycle.disconnected:
            raise ClientDisconnected("client disconnected")
        if cycle.no_body:
            return
        handle = conn.h2.stream(self.stream_id)
        if body:
            handle.send_data(body)
        if final:
            handle.end_message()
        conn.want_flush()

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]]) -> None:
        conn = self.conn
        if conn.closed or cycle.disconnected:
            raise ClientDisconnected("client disconnected")
        if cycle.no_body:
            return  # the stream ended with the head
        trailers = [(name.lower(), value) for name, value in fields]
        conn.h2.stream(self.stream_id).end_message(trailers or None)
        conn.want_flush()

    def must_wait(self) -> bool:
        conn = self.conn
        if conn.closed or (self.cycle is not None and self.cycle.disconnected):
            return False
        if conn.write_paused:
            return True
        # (zttp 0.0.35 answers None, not an error, for a stream that is closed or unknown.)
        return bool(conn.h2.stream(self.stream_id).pending_bytes)

    async def wait_writable(self) -> None:
        """Until a WINDOW_UPDATE, the transport draining, or the stream's end wakes us."""
        while self.must_wait():
            self.waiter = self.conn.state.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send_continue(self) -> None:
        self.conn.h2.stream(self.stream_id).send_informational(100)
        self.conn.want_flush()

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.conn.h2.stream(self.stream_id).send_informational(status, headers)
        self.conn.want_flush()

    def body_consumed(self, cycle: RequestCycle) -> None:
        """receive() took the buffered body: its window credit goes back to the client, and
        the client's --timeout-request-body clock starts again (it may send now)."""
        taken = self.unread - cycle.body_size
        self.unread = cycle.body_size
        self.body_seen = monotonic()
        self.conn.credit(self.stream_id, taken)

    def cycle_done(self, cycle: RequestCycle) -> None:
        self.conn.stream_done(self)

    def abort(self) -> None:
        """The response cannot be completed: RST_STREAM INTERNAL_ERROR (the connection
        lives on)."""
        self.conn.reset(self.stream_id, INTERNAL_ERROR)

    # The connection's events for a stream that has no request cycle (H2WebSocket's).

    def lost(self) -> None:
        """The stream was reset, or the connection is gone."""
        if self.cycle is not None:
            self.cycle.lost()  # the app's receive() gets http.disconnect

    def deliver(self, data: bytes) -> None:
        pass

    def peer_ended(self) -> None:
        pass

    def shutdown(self) -> None:
        pass  # a request finishes (see H2Protocol.go_away)


class H2WebSocket(H2Stream):
    """An extended CONNECT stream carrying a WebSocket (RFC 8441): the channel of its
    handshake's HTTP exchange (a 200, or a response in its place), and, through its
    WebSocketTransport, the transport of websocket.py's protocol. No request cycle."""

    __slots__ = ("answered", "ended", "gone", "holding", "transport", "ws")

    def __init__(self, conn: H2Protocol, stream_id: int) -> None:
        super().__init__(conn, stream_id)
        # websocket.WebSocketProtocol (imported only when WebSockets are on: the websockets
        # library is optional).
        self.ws: Any = None
        self.transport = WebSocketTransport(self)
        self.answered = False  # our HEADERS are out (the 200, or a response in its place)
        self.ended = False  # our END_STREAM is queued (or the stream was reset)
        self.gone = False  # the WebSocket's connection_lost is on its way
        self.holding = False  # the WebSocket stopped reading: so does the connection

    def open(self, scope: dict[str, Any], end_stream: bool) -> None:
        # (Every --ws entry but `none` is websocket.py: protocols/__init__.py's WS registry.)
        from .websocket import websocket_over_h2

        self.ws = ws = websocket_over_h2(self.conn.state, scope, self.transport, self)
        ws.start(b"")
        if end_stream:
            self.peer_ended()

    # -- the transport side (WebSocketTransport delegates here) ------------------------------

    def write(self, data: bytes) -> None:
        conn = self.conn
        if self.gone or self.ended or conn.closed:
            return
        try:
            conn.h2.stream(self.stream_id).send_data(data)
        except zttp.ProtocolError:
            return  # closed under us: its reset is on its way
        conn.want_flush()
        if self.must_wait():
            self.ws.pause_writing()  # its send() waits for the window (wake)

    def close(self) -> None:
        """Our side is done: END_STREAM (after what the window still holds back). The stream
        is the WebSocket's no more: what the client still sends on it is dropped, as bytes
        after a TCP close would be."""
        if self.gone:
            return
        if not self.answered:
            # The client ended its stream before the app answered: nothing to end ours with.
            self.abort_stream()
            return
        if not self.ended:
            self.ended = True
            try:
                self.conn.h2.stream(self.stream_id).end_message()
            except zttp.ProtocolError:
                pass
            self.conn.want_flush()
        self.finish()

    def abort_stream(self) -> None:
        if not self.gone:
            self.ended = True
            self.conn.reset(self.stream_id, CANCEL)
            self.finish()

    def hold(self, paused: bool) -> None:
        if paused != self.holding and not self.gone:
            self.holding = paused
            self.conn.hold_reading(paused)

    def finish(self) -> None:
        """The WebSocket's connection_lost, soon (as asyncio calls a protocol's); the stream
        leaves the connection."""
        conn = self.conn
        if self.holding:
            self.holding = False
            conn.hold_reading(False)
        self.gone = True
        conn.stream_done(self)
        if self.ws is not None:
            conn.state.loop.call_soon(self.ws.connection_lost, None)

    # -- the connection's events -------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        metrics = self.conn.state.metrics
        if metrics is not None:
            metrics.bytes_received -= len(data)  # the connection counted them (frames too)
        if not self.gone:
            self.ws.data_received(data)

    def peer_ended(self) -> None:
        """END_STREAM from the client: its EOF; we close our side (as a transport closes
        after eof_received)."""
        if not self.gone:
            self.ws.eof_received()
            self.close()

    def shutdown(self) -> None:
        if self.ws is not None:
            self.ws.shutdown()  # (1001, or 1012 on a restart, as over HTTP/1.1)

    def lost(self) -> None:
        if not self.gone:
            self.ended = True
            self.finish()

    def wake(self) -> None:
        super().wake()  # a denial response's body waiting for the window
        ws = self.ws
        if ws is not None and ws.write_paused and not self.must_wait():
            ws.resume_writing()

    # -- the channel of the handshake's HTTP exchange (a response instead of the 200) -------

    def start_response(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        if self.gone:
            return  # (the app answers a stream that is gone: its sends fail from here on)
        self.answered = True
        super().start_response(cycle, body, final)
        if final:
            self.responded()

    def send_body(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        if self.gone:
            raise ClientDisconnected("client disconnected")  # (a denial's body)
        super().send_body(cycle, body, final)
        if final:
            self.responded()

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]]) -> None:
        self.send_body(cycle, b"", True)  # as on HTTP/1.1: a denial's trailers are not sent

    def responded(self) -> None:
        self.ended = True
        if self.ws is not None:
            self.ws.responded()  # -> close(): the stream leaves the connection
        # (Else refused by request_limits before the WebSocket was made: take() ends it.)

    def send_continue(self) -> None:
        pass

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def body_consumed(self, cycle: RequestCycle) -> None:
        pass

    def cycle_done(self, cycle: RequestCycle) -> None:
        pass  # the stream ends with the WebSocket (finish)

    def abort(self) -> None:
        if self.ws is not None:
            self.ws.abort()  # -> abort_stream()
        else:
            self.abort_stream()


class WebSocketTransport(asyncio.Transport):
    """The part of asyncio.Transport a WebSocketProtocol uses, on an HTTP/2 stream."""

    __slots__ = ("stream",)

    def __init__(self, stream: H2WebSocket) -> None:
        super().__init__()
        self.stream = stream

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.stream.write(bytes(data))

    def close(self) -> None:
        self.stream.close()

    def abort(self) -> None:
        self.stream.abort_stream()

    def is_closing(self) -> bool:
        return self.stream.gone or self.stream.ended

    def pause_reading(self) -> None:
        self.stream.hold(True)

    def resume_reading(self) -> None:
        self.stream.hold(False)

    def can_write_eof(self) -> bool:
        return False


def response_headers(
    cycle: RequestCycle, body: bytes, final: bool, state: ServerState
) -> list[tuple[bytes, bytes]]:
    """The app's header fields as HTTP/2 wants them (lower-case names, no connection-specific
    fields: RFC 9113 §8.2), a content-length for a whole body, and the default headers."""
    headers = []
    names = set()
    for name, value in cycle.headers:
        lname = name.lower()
        if lname not in CONNECTION_SPECIFIC:
            headers.append((lname, value))
            names.add(lname)
    if final and cycle.expected_length is None and not cycle.no_body:
        headers.append((b"content-length", b"%d" % len(body)))
    headers += state.defaults_without(names)
    return headers


class H2Protocol(FlowControl):
    """An HTTP/2 connection (asyncio protocol): frames in, ASGI requests out."""

    __slots__ = (
        "body_timer",
        "carry",
        "client",
        "closed",
        "conn_owed",
        "credits",
        "draining",
        "empty",
        "empty_at",
        "flush_handle",
        "frame_skip",
        "goaway_timer",
        "going_away",
        "h2",
        "held",
        "highest",
        "out_carry",
        "overflowed",
        "owed",
        "recv_window",
        "resets",
        "resets_at",
        "scope_base",
        "self_dependent",
        "server",
        "state",
        "streams",
        "taken",
        "transport",
        "walk_highest",
        "websockets",
        "window",
        "windows",
    )

    def __init__(self, state: ServerState, client: Address | None, server: Address | None) -> None:
        self.state = state
        self.client = client
        self.server = server
        self.h2 = zttp.Connection(zttp.SERVER, zttp.HTTP2)
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.scope_base: dict[str, Any] = {}
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.draining = False  # the first GOAWAY is out (go_away)
        self.going_away = False  # no more streams: the last GOAWAY, ours or the client's
        self.goaway_timer: asyncio.TimerHandle | None = None
        self.highest = 0  # the highest stream id taken
        self.taken = 0  # streams taken on this connection
        self.held = 0  # WebSockets whose app lags (their queue is full): reading stops
        # RFC 8441 is offered (own_settings) and served when WebSockets are on (--ws).
        self.websockets = state.ws_upgrade is not None
        self.flush_handle: asyncio.Handle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.resets = RESET_BURST
        self.resets_at = self.empty_at = monotonic()
        self.empty = EMPTY_BURST
        # The frame walk (check_priorities): bytes until the next frame header (the client's
        # 24-byte preface comes first), the start of a frame cut by the end of a read, and the
        # streams named by a frame that makes them depend on themselves (by frame type).
        self.frame_skip = 24
        self.carry = b""
        self.self_dependent: dict[int, int] = {}
        # Receive windows (flow control of request bodies, ours: zttp's WINDOW_UPDATE frames
        # are dropped from its output, see own_frames). `window` is what we advertise for a
        # stream and for the connection; `recv_window` what the client may still send on the
        # connection, `windows` on each stream open for its DATA (as the frame walk sees
        # them), `owed` the stream credit earned and not yet granted (and `conn_owed` the
        # connection's), `credits` our WINDOW_UPDATE frames for the next write, `overflowed`
        # the streams the walk saw send past their window, `walk_highest` the highest stream
        # the walk saw open.
        self.window: int = state.config.http2_initial_window_size
        self.recv_window = self.window
        self.windows: dict[int, int] = {}
        self.owed: dict[int, int] = {}
        self.conn_owed = 0
        self.credits: list[bytes] = []
        self.overflowed: list[int] = []
        self.walk_highest = 0
        self.out_carry = b""

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        state = self.state
        state.connections.add(self)
        if state.metrics is not None:
            state.metrics.h2_connections += 1
        self.scope_base = connection_scope(state, "2", transport, self.client, self.server)
        h2 = self.h2
        h2.initiate_connection()
        self.transport.write(own_settings(self.own_frames(h2.data_to_send()), state))
        self.arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state.log_connections and not self.closed:
            how = "reset" if exc is not None else "closed"
            log.debug("%s:%s - HTTP/2 connection %s", *(self.client or ("-", 0)), how)
        self.closed = True
        self.state.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.lost()
            stream.wake()
        self.state.idle_conns.discard(self)
        for handle in (self.flush_handle, self.body_timer, self.goaway_timer):
            if handle is not None:
                handle.cancel()
        if self.state.access_log is not None:
            self.state.access_log.forget(self.client)
        self.wake_drain()

    def eof_received(self) -> bool | None:
        return None

    def stopped(self) -> bool:  # FlowControl
        return self.closed

    # -- frames in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        metrics = self.state.metrics
        if metrics is not None:
            metrics.bytes_received += len(data)
        h2 = self.h2
        if not self.check_priorities(data):
            return
        try:
            h2.receive_data(data)
            while True:
                event = h2.next_event()
                kind = type(event)
                if kind is zttp.NeedData:
                    break
                if kind is zttp.Request:
                    self.on_request(event)  # type: ignore[arg-type]
                elif kind is zttp.Data:
                    self.on_data(event)  # type: ignore[arg-type]
                elif kind is zttp.EndOfMessage:
                    stream = self.streams.get(event.stream_id)  # type: ignore[union-attr]
                    if stream is not None:
                        if stream.cycle is not None:
                            stream.cycle.end_body()
                        else:
                            stream.peer_ended()  # a WebSocket's
                elif kind is zttp.RstStream:
                    self.on_reset(event)  # type: ignore[arg-type]
                elif kind is zttp.WindowUpdate:
                    self.on_window_update(event)  # type: ignore[arg-type]
                elif kind is zttp.Ping:
                    if event.ack and event.data == GOAWAY_PING:  # type: ignore[union-attr]
                        self.last_goaway()
                elif kind is zttp.GoAway:
                    self.going_away = True
                    if not self.streams:
                        self.close()
                elif kind is zttp.ConnectionClosed:
                    self.close()
                if self.closed:
                    # Closed by this event's handler (a flood's GOAWAY, the peer's end): the
                    # rest of the read is dropped, as bytes after a close would be. Going on
                    # would log a flood once per frame left and start apps on a closed
                    # connection.
                    return
            if self.self_dependent:
                self.self_dependence_errors()
            if self.overflowed:
                self.flow_errors()
        except zttp.ProtocolError as exc:
            # A connection error (RFC 9113 §5.4.1): zttp has queued its GOAWAY.
            peer = self.client or ("-", 0)
            log.info("%s:%s - HTTP/2 connection error: %s", *peer, exc)
            self.flush()
            self.close()
            return
        self.flush()

    def on_request(self, event: zttp.Request) -> None:
        self.taken += 1  # (every stream counts toward zttp's limit, refused ones too)
        self.take(event)
        if self.taken >= STREAMS_HARD_LIMIT:
            self.last_goaway()  # at once (the streams taken so far finish; later are refused)

    def take(self, event: zttp.Request) -> None:
        state = self.state
        stream_id = event.stream_id
        self.highest = max(self.highest, stream_id)
        if self.going_away or (state.shutting_down and not self.draining):
            self.reset(stream_id, REFUSED_STREAM)  # after our GOAWAY: never processed
            return
        if self.self_dependent and self.self_dependent.pop(stream_id, 0):
            self.stream_error(stream_id, "depends on itself")  # RFC 9113 §5.3.1
            return
        if len(self.streams) >= state.config.http2_max_concurrent_streams:
            self.reset(stream_id, REFUSED_STREAM)  # RFC 9113 §5.1.2
            return
        websocket = event.protocol is not None
        if websocket and not (
            self.websockets and event.protocol == b"websocket" and event.method == b"CONNECT"
        ):
            # RFC 8441 §4: a :protocol when extended CONNECT is not offered (--ws none) is
            # malformed (RFC 9113 §8.5); the only protocol served is WebSocket (§5). (zttp
            # 0.0.35 resets a :protocol on another method than CONNECT itself: checked here
            # too, so that an engine that passes it on does not make it a WebSocket.)
            self.reset(stream_id, PROTOCOL_ERROR)
            return
        headers = event.headers
        if type(headers) is not list:
            headers = headers.to_list()  # type: ignore[union-attr]
        headers = join_cookies(headers)
        stream = H2WebSocket(self, stream_id) if websocket else H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.state.idle_conns.discard(self)
        scope = make_scope(
            self.scope_base,
            state,
            "2",
            event.method.decode("ascii"),
            event.path,
            event.query,
            headers,
        )
        error = request_limits(headers, state)
        if websocket and error is None:
            stream.open(scope, event.end_stream)  # type: ignore[attr-defined]
            return
        expect = event.expect_continue or (not event.end_stream and expects_continue(headers))
        cycle = RequestCycle(scope, stream, state, True, expect)
        stream.cycle = cycle
        if event.end_stream:
            cycle.more_body = False  # a GET: one http.request with an empty body
        elif not websocket:
            self.arm_body_check()
        if error is not None:
            status, reason = error
            if state.metrics is not None:
                state.metrics.refused(status)
            cycle.answer(status, reason.encode())
            self.stream_done(stream)
            return
        if admit(cycle, state):
            start(cycle, state, False, False)

    def check_priorities(self, data: bytes) -> bool:
        """RFC 9113's priority rules that zttp 0.0.35 lets through: a HEADERS or PRIORITY
        frame making a stream depend on itself (§5.3.1) and a PRIORITY frame on stream 0
        (§6.3, a connection error: False), empty DATA frames counted, and DATA charged to the
        receive windows (past the connection's: False; past a stream's: `overflowed`). Walks
        the frame headers of what was read, before zttp parses it: a few byte reads per
        frame, none per byte."""
        at = self.frame_skip
        if self.carry:
            data = self.carry + data
            self.carry = b""
        end = len(data)
        while at + 9 <= end:
            length = (data[at] << 16) | (data[at + 1] << 8) | data[at + 2]
            kind = data[at + 3]
            if kind == DATA:
                flags = data[at + 4]
                if flags & PADDED and length and at + 9 >= end:
                    break  # its pad length is in the next read: keep this frame's start
                if length == 0 and not flags & END_STREAM:
                    now = monotonic()
                    self.empty = spend(self.empty, self.empty_at, now, EMPTY_BURST, EMPTY_RATE)
                    self.empty_at = now
                    if self.empty < 0:
                        self.calm("empty DATA frames")
                        return False
                # Flow control (RFC 9113 §6.9.1: the whole payload counts, padding too).
                self.recv_window -= length
                if self.recv_window < 0:
                    self.connection_error("DATA past the connection window", FLOW_CONTROL_ERROR)
                    return False
                self.conn_owed += length  # (granted on receipt: see grant_connection)
                stream_id = frame_stream(data, at)
                left = self.windows.get(stream_id)
                if left is not None:
                    left -= length
                    if left < 0 or flags & END_STREAM:
                        self.stream_closed(stream_id)
                        if left < 0:
                            self.overflowed.append(stream_id)  # (reset after zttp's events)
                    else:
                        self.windows[stream_id] = left
                        if flags & PADDED:
                            self.credit(stream_id, data[at + 9] + 1)  # no app reads padding
            elif kind == RST_STREAM:
                self.stream_closed(frame_stream(data, at))
            elif kind in (HEADERS, PRIORITY):
                flags = data[at + 4]
                start = at + 9
                if kind == HEADERS:
                    stream_id = frame_stream(data, at)
                    if flags & END_STREAM:
                        self.stream_closed(stream_id)  # (a GET, or trailers)
                    elif stream_id > self.walk_highest:
                        self.windows[stream_id] = self.window  # a new stream
                    if stream_id > self.walk_highest:
                        self.walk_highest = stream_id
                    if not flags & PRIORITY_FLAG:
                        at = start + length
                        continue
                    if flags & PADDED:
                        start += 1
                if start + 4 > end and start + 4 <= at + 9 + length:
                    break  # the dependency is in the next read: keep this frame's start
                stream_id = frame_stream(data, at)
                if kind == PRIORITY and stream_id == 0:
                    self.connection_error("PRIORITY on stream 0")  # §6.3
                    return False
                if start + 4 <= at + 9 + length:  # (zttp refuses a frame too short for it)
                    depends = int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF
                    if depends == stream_id:
                        self.self_dependent[stream_id] = kind
            at += 9 + length
        if at < end:
            self.carry = data[at:]  # at most a frame header and 5 bytes of a dependency
            self.frame_skip = 0
        else:
            self.frame_skip = at - end
        if self.conn_owed >= self.window >> 1:
            self.grant_connection()
        return True

    def stream_closed(self, stream_id: int) -> None:
        """The client sends no more DATA on `stream_id` (END_STREAM, RST_STREAM, our reset):
        it has no receive window to keep."""
        if self.windows.pop(stream_id, None) is not None:
            self.owed.pop(stream_id, None)

    def credit(self, stream_id: int, size: int) -> None:
        """`size` body bytes of `stream_id` were taken (by its app's receive(), or dropped):
        the stream's window gets them back, in WINDOW_UPDATE frames of at least half a window
        (the client always has the other half: no stall, and not a frame per DATA frame)."""
        windows = self.windows
        if size <= 0 or stream_id not in windows:
            return  # ended, or reset: no more DATA comes on it
        owed = self.owed.get(stream_id, 0) + size
        if owed >= self.window >> 1:
            windows[stream_id] += owed
            self.credits.append(window_update(stream_id, owed))
            owed = 0
            self.want_flush()
        self.owed[stream_id] = owed

    def grant_connection(self) -> None:
        """The connection's window is granted back as DATA arrives (each stream's own window
        bounds what it holds): a slow reader on one stream does not stall the others."""
        self.recv_window += self.conn_owed
        self.credits.append(window_update(0, self.conn_owed))
        self.conn_owed = 0

    def flow_errors(self) -> None:
        """Streams that sent DATA past their window: RST_STREAM FLOW_CONTROL_ERROR (RFC 9113
        §6.9.1 allows a stream error), their app gets http.disconnect."""
        overflowed = self.overflowed
        self.overflowed = []
        peer = self.client or ("-", 0)
        for stream_id in overflowed:
            log.info("%s:%s - HTTP/2 stream %d: DATA past its window", *peer, stream_id)
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.lost()
            self.reset(stream_id, FLOW_CONTROL_ERROR)

    def self_dependence_errors(self) -> None:
        """The self-dependent streams zttp's events did not start (take() resets those): an
        open stream (trailers, PRIORITY) is reset; a PRIORITY frame for a stream that is not
        open is a connection error, which §5.4.2 allows for any stream error, as RST_STREAM
        must not be sent on an idle stream (§6.4) nor on a closed one (§5.1)."""
        flagged = self.self_dependent
        self.self_dependent = {}
        for stream_id, kind in flagged.items():
            if stream_id in self.streams:
                self.stream_error(stream_id, "depends on itself")
            elif kind == PRIORITY:
                self.connection_error(f"stream {stream_id} depends on itself")
                return

    def stream_error(self, stream_id: int, why: str) -> None:
        """RST_STREAM PROTOCOL_ERROR (RFC 9113 §5.4.2); the app, if it runs, gets
        http.disconnect."""
        peer = self.client or ("-", 0)
        log.info("%s:%s - HTTP/2 stream %d: %s", *peer, stream_id, why)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.lost()
        self.reset(stream_id, PROTOCOL_ERROR)

    def calm(self, why: str) -> None:
        """A flood: GOAWAY ENHANCE_YOUR_CALM, then close."""
        peer = self.client or ("-", 0)
        log.warning("%s:%s - HTTP/2 %s: GOAWAY ENHANCE_YOUR_CALM", *peer, why)
        self.h2.close(ENHANCE_YOUR_CALM, self.highest)
        self.close()

    def connection_error(self, why: str, code: int = PROTOCOL_ERROR) -> None:
        """GOAWAY `code` naming the last stream taken, then close (§5.4.1)."""
        peer = self.client or ("-", 0)
        log.info("%s:%s - HTTP/2 connection error: %s", *peer, why)
        self.h2.close(code, self.highest)
        self.close()

    def on_data(self, event: zttp.Data) -> None:
        """Body bytes for a stream: given to its app (credited as receive() takes them), to
        its WebSocket (credited at once: --ws-max-queue bounds that side), or dropped (the
        app is done or refused it: credited at once, the client may finish its upload)."""
        stream_id = event.stream_id
        data = event.data
        stream = self.streams.get(stream_id)
        if stream is None:
            self.credit(stream_id, len(data))
            return
        cycle = stream.cycle
        if cycle is None:
            stream.deliver(data)  # a WebSocket's frames
            self.credit(stream_id, len(data))
            return
        if cycle.disconnected or stream_id in self.overflowed:
            self.credit(stream_id, len(data))  # refused already (too large), or reset
            return
        stream.received += len(data)
        limit = self.state.limit_request_body
        if limit is not None and stream.received > limit:
            self.body_too_large(stream, cycle)
            self.credit(stream_id, len(data))
            return
        stream.body_seen = monotonic()
        before = cycle.body_size
        cycle.feed_body(data)
        taken = cycle.body_size - before
        stream.unread += taken
        if taken < len(data):
            self.credit(stream_id, len(data) - taken)  # the app answered: dropped

    def body_too_large(self, stream: H2Stream, cycle: RequestCycle) -> None:
        """--limit-request-body passed by DATA: the app's receive() gets http.disconnect (its
        sends fail quietly from here on) and the client a 413, or a reset once the response
        had started."""
        cycle.lost()
        peer = self.client or ("-", 0)
        log.info("%s:%s - HTTP/2 stream %d: request body too large", *peer, stream.stream_id)
        if cycle.head_sent:
            self.reset(stream.stream_id, CANCEL)
            return
        cycle.head_sent = True
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        handle = self.h2.stream(stream.stream_id)
        handle.send_response(413, headers + self.state.defaults_without(set()))
        handle.send_data(b"Request body too large")
        handle.end_message()
        self.want_flush()

    def hold_reading(self, paused: bool) -> None:
        """A WebSocket's app lags (its queue is full) or caught up. Its DATA is credited as
        websockets' parser takes it, so what stops its bytes is not reading the connection:
        every stream of it waits then."""
        self.held += 1 if paused else -1
        if paused:
            self.pause_reading()
        elif self.read_paused and not self.held and not self.write_paused:
            self.resume_reading()

    def on_reset(self, event: zttp.RstStream) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            stream.lost()  # the app's receive() gets http.disconnect (websocket.disconnect)
            stream.wake()
        now = monotonic()
        self.resets = spend(self.resets, self.resets_at, now, RESET_BURST, RESET_RATE)
        self.resets_at = now
        if self.resets < 0:
            self.calm("rapid reset")
        elif not self.streams:
            self.arm_idle()

    def on_window_update(self, event: zttp.WindowUpdate) -> None:
        if event.stream_id == 0:
            for stream in self.streams.values():
                stream.wake()
        else:
            one = self.streams.get(event.stream_id)
            if one is not None:
                one.wake()

    # -- frames out --------------------------------------------------------------------------

    def want_flush(self) -> None:
        """Frames are written once per loop pass, however many streams produced some."""
        if self.flush_handle is None and not self.closed:
            self.flush_handle = self.state.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_handle = None
        if self.closed:
            return
        data = self.outgoing()
        if data:
            self.transport.write(data)

    def outgoing(self) -> bytes:
        """Our WINDOW_UPDATE frames (credit earned before anything zttp queued, a reset
        among it), then zttp's frames without its own (own_frames)."""
        data = self.h2.data_to_send()
        if data:
            data = self.own_frames(data)
        credits = self.credits
        if credits:
            data = b"".join(credits) + data
            credits.clear()
        return data

    def own_frames(self, data: bytes) -> bytes:
        """`data` without zttp's WINDOW_UPDATE frames (it grants credit as it parses DATA,
        whatever the app has read; ours are in `credits`). A walk of the frame headers, a few
        byte reads per frame; `data` itself when there is none to drop. zttp 0.0.35 queues
        whole frames; a frame cut by the end of `data` would wait for the next write."""
        if self.out_carry:
            data = self.out_carry + data
            self.out_carry = b""
        end = len(data)
        at = 0
        kept = 0  # where the bytes not yet in `pieces` start
        pieces: list[bytes] | None = None
        while at + 9 <= end:
            after = at + 9 + ((data[at] << 16) | (data[at + 1] << 8) | data[at + 2])
            if after > end:
                break
            if data[at + 3] == WINDOW_UPDATE:
                if pieces is None:
                    pieces = []
                pieces.append(data[kept:at])
                kept = after
            at = after
        if at < end:
            self.out_carry = data[at:]
        if pieces is None:
            return data if at == end else data[:at]
        pieces.append(data[kept:at])
        return b"".join(pieces)

    def reset(self, stream_id: int, code: int) -> None:
        self.stream_closed(stream_id)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.wake()
        try:
            self.h2.stream(stream_id).reset(code)
        except zttp.ProtocolError:
            pass  # closed already
        self.want_flush()

    def pause_writing(self) -> None:
        # The client does not read what we send. zttp answers PING and SETTINGS itself, so a
        # flood of them would fill the write buffer without bound: read no more until it
        # drains (RFC 9113 §10.5: bounded queued control frames).
        super().pause_writing()
        self.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.held:
            self.resume_reading()
        for stream in self.streams.values():
            stream.wake()

    # -- streams end, timers, shutdown -------------------------------------------------------

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        # The stream and its cycle refer to each other: unlinked, both are freed now by
        # reference counting, not by a later cyclic collection (an idle connection kept
        # its last stream, cycle and task, ~1.5 KB, until a gen-0 collection came).
        stream.cycle = None
        if stream.unread:
            self.credit(stream.stream_id, stream.unread)  # never read: dropped with the cycle
            stream.unread = 0
        if not self.streams:
            if self.going_away:
                self.close()
            elif self.draining:
                pass  # the last GOAWAY closes
            elif self.state.shutting_down or self.taken >= STREAMS_PER_CONNECTION:
                self.go_away()  # retired (see STREAMS_PER_CONNECTION)
            else:
                self.arm_idle()

    def arm_body_check(self) -> None:
        """--timeout-request-body for streams whose body is on its way: one timer for the
        connection, checked lazily (as HTTP/1.1's)."""
        if self.body_timer is None and not self.closed:
            self.body_timer = self.state.loop.call_later(
                self.state.timeout_request_body, self.check_bodies
            )

    def check_bodies(self) -> None:
        """A stream whose body stalled past --timeout-request-body is reset (CANCEL) and its
        app's receive() gets http.disconnect: an open stream that never sends its body would
        hold a slot of --http2-max-concurrent-streams for good."""
        self.body_timer = None
        timeout = self.state.timeout_request_body
        now = monotonic()
        waiting = False
        for stream in list(self.streams.values()):
            cycle = stream.cycle
            if cycle is None or not cycle.more_body:
                continue
            if stream.unread:
                waiting = True  # the app has not read what came: the client waits for credit
                continue
            if now - stream.body_seen >= timeout and not self.read_paused:
                peer = self.client or ("-", 0)
                log.info("%s:%s - HTTP/2 stream %d: request body timeout", *peer, stream.stream_id)
                cycle.lost()
                self.reset(stream.stream_id, CANCEL)
            else:
                waiting = True
        if waiting:
            self.arm_body_check()
        self.flush()

    def arm_idle(self) -> None:
        """No stream is open: --timeout-keep-alive runs (from the first time it is armed).
        The dicts a stream used are replaced by empty ones, which hold no table: an idle
        connection keeps ~500 B less."""
        idle = self.state.idle_conns
        if self.closed or self in idle.deadlines:
            return
        idle.add(self)
        self.streams = {}
        if not self.windows:
            self.windows = {}
            self.owed = {}

    def on_idle(self) -> None:  # (idle.py, once --timeout-keep-alive has passed)
        if not self.streams and not self.closed:
            self.go_away()

    def go_away(self) -> None:
        """A PING and the first GOAWAY NO_ERROR (MAX_STREAM_ID); last_goaway follows."""
        if self.closed or self.draining or self.going_away:
            return
        self.draining = True
        h2 = self.h2
        before = self.outgoing()  # (responses queued: they go first)
        h2.close(NO_ERROR, MAX_STREAM_ID)
        self.transport.write(before + GOAWAY_PING_FRAME + self.own_frames(h2.data_to_send()))
        self.goaway_timer = self.state.loop.call_later(GOAWAY_WAIT, self.last_goaway)

    def last_goaway(self) -> None:
        """GOAWAY NO_ERROR naming the last stream taken: later ones are refused; close once
        the streams up to it are done."""
        if self.goaway_timer is not None:
            self.goaway_timer.cancel()
            self.goaway_timer = None
        if not self.going_away and not self.closed:
            self.going_away = True
            self.h2.close(NO_ERROR, self.highest)
            self.flush()
        if not self.streams:
            self.close()

    def close(self) -> None:
        """Close after our last frames (a GOAWAY): FIN first, then drop what still comes for
        a moment (linger.py), so that a reset does not destroy the GOAWAY."""
        if self.closed:
            return
        self.flush()
        transport = self.transport
        self.connection_lost(None)  # streams, timers, counts
        if not transport.can_write_eof():  # TLS cannot half-close
            transport.close()
            return
        transport.set_protocol(Lingering(transport, self.state, IDLE_LINGER_SECONDS))
        try:
            transport.write_eof()
        except OSError:  # the peer is gone already
            transport.close()
            return
        transport.resume_reading()

    @property
    def idle(self) -> bool:
        return not self.streams

    @property
    def task(self) -> asyncio.Task[None] | None:
        for stream in self.streams.values():
            if stream.cycle is not None and stream.cycle.task is not None:
                return stream.cycle.task
        return None

    def shutdown(self) -> None:
        for stream in list(self.streams.values()):
            stream.shutdown()  # a WebSocket's close frame goes before the GOAWAY
        self.go_away()

    def cancel(self) -> None:
        """The graceful timeout passed: cancel the running apps, then close. The close waits
        a loop pass, behind the cancelled tasks' wake-ups: each app's CancelledError then
        arrives while its request is still connected and is logged as a cancellation (as
        over HTTP/1.1), not as an exception raised after the client disconnected."""
        cancelled = False
        for stream in list(self.streams.values()):
            if stream.cycle is not None and stream.cycle.task is not None:
                stream.cycle.task.cancel()
                cancelled = True
        if cancelled:
            self.state.loop.call_soon(self.close)
        else:
            self.close()


def spend(level: float, since: float, now: float, burst: float, rate: float) -> float:
    """A budget of `burst` that refills by `rate` a second, `level` at `since`: what is left
    after spending one now (below 0: spent)."""
    return min(burst, level + (now - since) * rate) - 1


def frame_stream(data: bytes, at: int) -> int:
    """The stream id of the frame whose header starts at `at`."""
    return ((data[at + 5] & 0x7F) << 24) | (data[at + 6] << 16) | (data[at + 7] << 8) | data[at + 8]


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame (RFC 9113 §6.9)."""
    return b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


def join_cookies(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """HTTP/2 may split the cookie field into one field per crumb; an HTTP/1.1 app expects
    one, joined with "; " (RFC 9113 §8.2.3)."""
    cookies = [v for n, v in headers if n == b"cookie"]
    if len(cookies) < 2:
        return headers
    joined = [(n, v) for n, v in headers if n != b"cookie"]
    joined.append((b"cookie", b"; ".join(cookies)))
    return joined


def expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    """`expect: 100-continue` (RFC 9110 §10.1.1, allowed in HTTP/2): zttp 0.0.35 sets
    `expect_continue` for HTTP/1.1 only, so a client waiting for the 100 before sending its
    body would stall until its own timeout."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in headers)


def request_limits(
    headers: list[tuple[bytes, bytes]], state: ServerState
) -> tuple[int, str] | None:
    """The --limit-request-* limits, on the decoded header list (an HPACK bomb or a
    CONTINUATION flood ends here at the latest: zttp caps the block at 64 KiB)."""
    if len(headers) > state.limit_request_fields:
        return 431, "Too many request header fields"
    size = state.limit_request_field_size
    for name, value in headers:
        if len(name) + len(value) > size:
            return 431, "Request header field too large"
        if name == b"content-length":
            limit = state.limit_request_body
            if limit is not None and value.isdigit() and int(value) > limit:
                return 413, "Request body too large"
    return None


def own_settings(frames: bytes, state: ServerState) -> bytes:
    """zttp's first SETTINGS frame with our values: MAX_CONCURRENT_STREAMS from the config,
    ENABLE_CONNECT_PROTOCOL (RFC 8441 §3) only when WebSockets are on (uvicorn offers it and
    then hands the app an http scope: offer only what works), and
    --http2-initial-window-size as INITIAL_WINDOW_SIZE and, by a WINDOW_UPDATE, as the
    connection's window (RFC 9113 §6.9.2: SETTINGS does not change that one). zttp credits
    DATA as it arrives whatever the window; our own accounting starts from this window."""
    if len(frames) < 9 or frames[3] != 0x4:
        return frames
    length = int.from_bytes(frames[0:3], "big")
    payload = frames[9 : 9 + length]
    entries = []
    for at in range(0, len(payload) - 5, 6):
        ident = int.from_bytes(payload[at : at + 2], "big")
        if ident in (
            SETTINGS_ENABLE_CONNECT_PROTOCOL,
            SETTINGS_MAX_CONCURRENT_STREAMS,
            SETTINGS_INITIAL_WINDOW_SIZE,
        ):
            continue
        entries.append(payload[at : at + 6])
    if state.ws_upgrade is not None:
        entries.append(SETTINGS_ENABLE_CONNECT_PROTOCOL.to_bytes(2, "big") + b"\x00\x00\x00\x01")
    config = state.config
    limit = config.http2_max_concurrent_streams
    entries.append(SETTINGS_MAX_CONCURRENT_STREAMS.to_bytes(2, "big") + limit.to_bytes(4, "big"))
    window = config.http2_initial_window_size
    grow = b""
    if window != DEFAULT_WINDOW:
        entries.append(SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + window.to_bytes(4, "big"))
        increment = (window - DEFAULT_WINDOW).to_bytes(4, "big")
        grow = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + increment  # WINDOW_UPDATE, stream 0
    new = b"".join(entries)
    return len(new).to_bytes(3, "big") + frames[3:9] + new + frames[9 + length :] + grow


def upgrade_to_h2(
    state: ServerState,
    transport: asyncio.Transport,
    client: Address | None,
    server: Address | None,
    data: bytes,
) -> None:
    """Take over `transport` (handed over by http1.py) for HTTP/2; `data` is what the client
    sent so far, the preface first (or nothing, when ALPN chose h2)."""
    protocol = H2Protocol(state, client, server)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if data:
        if state.metrics is not None:
            state.metrics.bytes_received -= len(data)  # http1.py counted them as they came
        protocol.data_received(data)
