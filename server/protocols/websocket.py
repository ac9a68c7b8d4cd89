"""WebSockets (RFC 6455) for ASGI apps, on the `websockets` library's sans-I/O ServerProtocol.

`http1.py` parses the handshake request with httptools and, for `Upgrade: websocket`, calls
`upgrade_to_websocket`, which switches the transport to a `WebSocketProtocol`. Over HTTP/2
(RFC 8441: an extended CONNECT with `:protocol websocket`), `h2.py` calls `websocket_over_h2`
with the stream's own transport.

The stream a WebSocket runs on is whatever implements the few `asyncio.Transport` methods used
here: `write`, `close` (our side is done), `abort`, `pause_reading`/`resume_reading`; and calls
back `data_received`, `eof_received`, `connection_lost`, `pause_writing`/`resume_writing`. An
HTTP/1.1 connection's transport is one (nothing in between: the hot path is unchanged); an
HTTP/2 stream is another (h2.WebSocketTransport: DATA frames, END_STREAM, RST_STREAM, the
stream and connection windows). What differs on HTTP/2 is the handshake (RFC 8441 §5: no
Sec-WebSocket-Key/Accept, a 200 instead of a 101) and the channel that writes an HTTP
response in its place (403, 500, a denial): the stream's HEADERS and DATA, not an HTTP/1.1 head.

Who does what:
- the library does the wire: handshake validation and negotiation (`accept`), frame parsing and
  serialization, masking, permessage-deflate (RFC 7692), the max message size (checked after
  inflation too), ping replies, close frames and when TCP must be closed. One exception, for
  speed: with no extension negotiated, a whole text or binary message in one frame is parsed
  and unmasked here (`read_frames`, `read_kept`) and written with our own header
  (`frame_head`), with the library's checks in the library's order; every other frame is
  handed to the library whole and in order;
- this module moves bytes, turns frames into ASGI messages and back, reassembles fragmented
  messages (decoding UTF-8 as fragments arrive, to fail fast: RFC 6455 §8.1) and owns time and
  memory: keepalive pings, the closing timeout, flow control, server shutdown.

The library is created in state OPEN: httptools already parsed the request, so the library's
own HTTP parser must not run. `accept()` then only validates and negotiates; the 101 response
it returns is written here once the app accepts.

Flow control, both ways bounded: reading pauses while `ws_max_queue` messages wait for the app's
`receive()`, and `send()` waits while the transport's buffer is above its high-water mark.
Outgoing data frames are `frame_head()` and the payload, or, with an extension, the library's
`Frame.serialize` (the extension transforms them), rather than `send_binary()`/`data_to_send()`:
the same bytes, less work per message, and our phase already guarantees the library's state
checks.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

try:  # the library's C unmasking, as its own frame parser uses (pure Python without it)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (wheels ship it)
    from websockets.utils import apply_mask

from ..logs import escape
from ..types import Message, Scope, SendMessage
from .cycle import Channel, ClientDisconnected, RequestCycle, check_field
from .flow import FlowControl
from .http1_head import frame_body, frame_response, switching_head

if TYPE_CHECKING:
    from ..state import ServerState

log = logging.getLogger("fastserve.error")

# Connection phases, in order.
HANDSHAKE = 0  # the app got websocket.connect and must accept, close or deny
DENYING = 1  # a denial response (websocket.http.response.*) is being sent
OPEN = 2  # messages flow both ways
CLOSING = 3  # a close frame was sent or received
RESPONDED = 4  # an HTTP response replaced the handshake; the transport is closing
CLOSED = 5  # the transport is gone

# Seconds the peer gets to answer our close frame, or to read our last bytes, before the TCP
# connection is dropped (the websockets library's own default).
CLOSE_TIMEOUT = 10.0
# The library's refusal headers that the head writer decides itself (framing, the body's type).
LIBRARY_FRAMING = frozenset(["content-length", "connection", "content-type", "transfer-encoding"])
# The library's fields left out of a 101: the head writer adds the server's own Date and
# Server, or the app's in their place (one of each, RFC 9110 §6.6.1, §10.2.4).
SERVER_DEFAULTS = frozenset(["date", "server"])
# Bytes a client may send before the app accepted (it should send none) before reading pauses.
PRE_ACCEPT_LIMIT = 64 * 1024
# What holding one fragment costs beyond its payload, charged against --ws-max-size so that an
# unfinished message stays under it bookkeeping included. Measured on 3.11 (issue 11): 200,002
# two-byte fragments grew the server by 10.5 MB (bytes) / 15.9 MB (text), 54 / 81 bytes each;
# 128 leaves a margin. A 16 MiB limit then allows ~131k tiny fragments, and a message cut in
# 4 KiB fragments loses 3 % of it (the websockets library's own connections refuse more than
# 4,096 fragments whatever their size).
FRAGMENT_COST = 128

TEXT, BINARY, CONT, PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG
CLOSE = Opcode.CLOSE
LIB_OPEN = State.OPEN
CONNECT: Message = {"type": "websocket.connect"}
_utf8_decoder = codecs.getincrementaldecoder("utf-8")
# The library's permessage-deflate defaults (12-bit windows, memLevel 5: ~64 KiB a socket).
_DEFLATE = enable_server_permessage_deflate(None)


# The fields the library's RFC 6455 handshake check requires and RFC 8441 §5 leaves out on
# HTTP/2: given to it so that it validates and negotiates the rest (version, subprotocols,
# extensions) as on HTTP/1.1. The key is any valid one: no Sec-WebSocket-Accept is sent back.
H2_HANDSHAKE_FIELDS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="),
]
# The library's 101 fields that an HTTP/2 200 does not carry (RFC 8441 §5, RFC 9113 §8.2.2).
NOT_ON_H2 = frozenset([b"upgrade", b"connection", b"sec-websocket-accept"])


def upgrade_to_websocket(
    state: ServerState,
    scope: dict[str, Any],
    transport: asyncio.Transport,
    rest: bytes,
    write_paused: bool,
) -> None:
    """Take over `transport` (handed over by http1.py, reading on) for the WebSocket whose
    handshake request is `scope`; `rest` is what the client sent after it."""
    ws = WebSocketProtocol(state, scope, transport, write_paused)
    transport.set_protocol(ws)
    ws.start(rest)


def websocket_over_h2(
    state: ServerState, scope: dict[str, Any], transport: asyncio.Transport, channel: Channel
) -> WebSocketProtocol:
    """A WebSocket on an HTTP/2 stream (RFC 8441), to be start()ed: `scope` is the extended
    CONNECT's HTTP scope, `transport` the stream's, `channel` writes an HTTP response on it."""
    return WebSocketProtocol(state, scope, transport, False, channel)


class WebSocketProtocol(FlowControl, Channel):
    """One WebSocket connection: the asyncio protocol, and the ASGI receive/send of its app."""

    __slots__ = (
        "chunked",
        "close_timer",
        "decoder",
        "disconnect",
        "fragments",
        "fragments_size",
        "handshake",
        "http",
        "http_scope",
        "max_queue",
        "messages",
        "over_h2",
        "pending",
        "phase",
        "ping_payload",
        "ping_timer",
        "plain",
        "rx",
        "rx_need",
        "rx_start",
        "scope",
        "start_time",
        "state",
        "task",
        "transport",
        "vectored",
        "waiter",
        "ws",
    )

    def __init__(
        self,
        state: ServerState,
        http_scope: dict[str, Any],
        transport: asyncio.Transport,
        write_paused: bool,
        channel: Channel | None = None,
    ) -> None:
        config = state.config
        self.state = state
        self.http_scope = http_scope
        self.transport = transport
        self.ws = ServerProtocol(
            state=LIB_OPEN,
            extensions=_DEFLATE if config.ws_per_message_deflate else None,
            max_size=config.ws_max_size,
        )
        self.scope: Scope = {}
        self.handshake: Response | None = None
        self.phase = HANDSHAKE
        self.start_time = monotonic()
        self.task: asyncio.Task[None] | None = None
        self.messages: deque[Message] = deque([CONNECT])
        self.max_queue = max(1, config.ws_max_queue)
        self.disconnect: Message | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.read_paused = False
        self.write_paused = write_paused
        self.pending: list[bytes] = []
        # Frames read here, not by the library (read_frames): set at accept when no extension
        # was negotiated; `rx` holds a frame's first bytes until `rx_need` of them came.
        self.plain = False
        self.rx = bytearray()
        self.rx_need = 0
        self.rx_start = 0  # (the payload's offset in rx, once rx_need is a whole frame's size)
        # uvloop's writelines() writes a header and a large payload without joining them
        # (one writev); asyncio's does not pause the protocol on some versions (http1.py).
        self.vectored = channel is None and type(transport).__module__.startswith("uvloop")
        self.fragments: list[Any] = []  # the message being reassembled, decoded
        self.fragments_size = 0  # its payload and FRAGMENT_COST for each fragment
        self.decoder: codecs.IncrementalDecoder | None = None
        self.ping_timer: asyncio.TimerHandle | None = None
        self.ping_payload: bytes | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        # The handshake's own HTTP exchange, for a response in its place (a refused handshake,
        # a denial, a 403 or 500): written by the same cycle and head writer as any response,
        # through this protocol (HTTP/1.1) or the HTTP/2 stream's channel.
        self.over_h2 = channel is not None
        self.http = RequestCycle(http_scope, channel or self, state, False, False)
        self.chunked = False

    def start(self, rest: bytes) -> None:
        """Validate the handshake, then run the app (or send the library's 4xx at once)."""
        state = self.state
        state.connections.add(self)
        state.total_requests += 1
        scope = self.http_scope
        query = scope["query_string"]
        target = scope["raw_path"] + b"?" + query if query else scope["raw_path"]
        method, version = scope["method"], "HTTP/" + scope["http_version"]
        try:
            fields = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
            if self.over_h2:
                fields = [f for f in fields if f[0] != "sec-websocket-key"]
                fields += H2_HANDSHAKE_FIELDS
                method, version = "GET", "HTTP/1.1"
            headers = Headers(fields)
        except InvalidHeader as exc:  # a value httptools let through (a control character)
            response = self.ws.reject(400, "Invalid header value\n")
            self.ws.handshake_exc = exc
        else:
            request = Request(target.decode("latin-1"), headers, method, version)
            response = self.ws.accept(request)
        if response.status_code != 101:
            # Not a valid handshake (key, version, method...): the app never sees it.
            client = scope["client"] or ("-", 0)
            reason = escape(str(self.ws.handshake_exc))
            log.info("%s:%s - bad WebSocket handshake: %s", *client, reason)
            extra = [
                (n.lower().encode("latin-1"), v.encode("latin-1"))
                for n, v in response.headers.raw_items()
                if n.lower() not in LIBRARY_FRAMING  # (its Date: answer() leaves ours out)
            ]
            self.http.answer(response.status_code, bytes(response.body), extra, close=True)
            return
        limit = state.config.limit_concurrency
        if limit is not None and state.in_flight >= limit:
            self.respond(503, b"Service Unavailable")  # as an HTTP request would be
            return
        self.handshake = response
        self.scope = websocket_scope(scope)
        if rest:
            self.pending.append(rest)
        # The app counts in `in_flight` (--limit-concurrency) for as long as it runs.
        state.in_flight += 1
        self.task = task = state.loop.create_task(self.run())
        state.tasks.add(task)
        task.add_done_callback(self.task_done)

    def task_done(self, task: asyncio.Task[None]) -> None:
        self.state.tasks.discard(task)
        self.state.in_flight -= 1

    # -- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        metrics = self.state.metrics
        if metrics is not None:
            metrics.bytes_received += len(data)
        phase = self.phase
        if phase == OPEN and self.plain:
            rx = self.rx
            if not rx:
                self.read_frames(data)
            else:
                rx += data
                if len(rx) < self.rx_need:
                    return  # a frame still coming: nothing to parse yet
                self.rx = bytearray()
                self.read_kept(rx)
        elif phase == OPEN or phase == CLOSING:  # noqa: SIM109 (cheaper than a tuple test)
            if self.rx:  # the start of a frame read_frames kept: the library's now
                data = bytes(self.rx) + data
                self.rx = bytearray()
            self.ws.receive_data(data)
            self.take_frames(self.ws.events_received())  # type: ignore[arg-type]
        elif phase == HANDSHAKE:
            # Frames before our 101 are a client bug: kept for after accept, bounded.
            self.pending.append(data)
            if sum(map(len, self.pending)) > PRE_ACCEPT_LIMIT:
                self.pause_reading()
            return
        else:
            return
        if self.messages:
            self.wake()
            if len(self.messages) >= self.max_queue:
                self.pause_reading()
        self.after_io()

    def read_frames(self, data: bytes) -> None:
        """The common frames (a whole text or binary message in one frame, masked, no reserved
        bit, within the size limit) parsed here: the library's generator-based parser cost
        ~25 % of a small echo's CPU. Any other frame (control frames, fragments, or one the
        library must refuse) goes to the library whole, in order, and its events are taken
        as always. Inside a fragmented message every frame is the library's, still whole:
        were it handed a frame's first bytes, the rest would come in a later read that this
        reader would take for the start of a frame. Once the library is closing or failed,
        the rest of the bytes go to it as they are (it reads no further frames). A frame's
        first bytes wait in `rx` until the frame is whole. The checks are the library's
        (Frame.parse, Protocol.parse and recv_frame), in the same order."""
        ws = self.ws
        messages = self.messages
        limit = ws.max_message_size
        end = len(data)
        pos = 0
        while pos < end:
            if ws.state is not LIB_OPEN:
                break
            taken = ws.current_size  # None between messages, else a fragmented message's size
            if pos + 2 > end:
                self.keep(data, pos, pos + 2)
                return
            head = data[pos]
            second = data[pos + 1]
            if head & 0x07 > 2 or head & 0x70 or not second & 0x80:
                # Not an opcode (3-7, 11-15), a reserved bit, no mask: the library fails
                # the connection, as soon as it would have.
                break
            length = second & 0x7F
            start = pos + 2  # (the end of the header, then of the mask: the payload's start)
            if length == 126:
                start = pos + 4
                if start > end:
                    self.keep(data, pos, start)
                    return
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                start = pos + 10
                if start > end:
                    self.keep(data, pos, start)
                    return
                length = int.from_bytes(data[pos + 2 : start], "big")
            if limit is not None and length > (limit if taken is None else limit - taken):
                break  # the library's 1009
            start += 4
            stop = start + length
            if stop > end:
                self.keep(data, pos, stop, start)
                return
            opcode = head & 0x0F
            if head & 0x80 and (opcode == 2 or opcode == 1) and taken is None:
                mask = data[start - 4 : start]
                if length < VIEW_SIZE:
                    payload = apply_mask(data[start:stop], mask)
                else:  # unmasked from the read itself: a slice would copy it first
                    payload = apply_mask(memoryview(data)[start:stop], mask)
                if opcode == 2:
                    messages.append({"type": "websocket.receive", "bytes": payload})
                elif not self.deliver(False, payload):
                    return  # what follows is discarded (§7.1.7)
            else:
                ws.receive_data(data[pos:stop])
                if not self.take_frames(ws.events_received()):  # type: ignore[arg-type]
                    return
            pos = stop
        if pos < end:
            ws.receive_data(data[pos:] if pos else data)
            self.take_frames(ws.events_received())  # type: ignore[arg-type]

    def keep(self, data: bytes, pos: int, need: int, start: int = 0) -> None:
        """A frame (or its header) not whole yet: its bytes wait for `need - pos` of them
        (`start`: where its payload starts, once the header was read)."""
        self.rx = bytearray(memoryview(data)[pos:]) if pos else bytearray(data)  # one copy
        self.rx_need = need - pos
        self.rx_start = start - pos if start else 0

    def read_kept(self, rx: bytearray) -> None:
        """The bytes kept in `rx` are now enough. A whole message frame (a large message,
        in several reads) is unmasked from `rx` itself, not copied out first; anything
        else goes through read_frames."""
        start = self.rx_start
        need = self.rx_need
        ws = self.ws
        if start and rx[0] & 0x80 and ws.state is LIB_OPEN and ws.current_size is None:
            opcode = rx[0] & 0x0F
            if opcode == 1 or opcode == 2:
                view = memoryview(rx)
                payload = apply_mask(view[start:need], bytes(view[start - 4 : start]))
                view.release()
                if not self.deliver(opcode == 2, payload):
                    return
                if len(rx) > need:
                    self.read_frames(bytes(rx[need:]))
                return
        self.read_frames(bytes(rx))

    def deliver(self, binary: bool, payload: bytes) -> bool:
        """A whole message read here; False if it is text and not UTF-8 (the connection
        fails: 1007, and what follows is discarded, §7.1.7)."""
        if binary:
            self.messages.append({"type": "websocket.receive", "bytes": payload})
            return True
        try:
            text = str(payload, "utf-8")
        except UnicodeDecodeError:
            self.ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return False
        self.messages.append({"type": "websocket.receive", "text": text})
        return True

    def take_frames(self, frames: list[Frame]) -> bool:
        """The library's frames, in order; False if the connection failed on one of them."""
        messages = self.messages
        open_ = self.phase == OPEN
        for frame in frames:
            opcode = frame.opcode
            if opcode is BINARY and frame.fin:  # the common cases first
                if open_:
                    messages.append({"type": "websocket.receive", "bytes": bytes(frame.data)})
            elif opcode is TEXT and frame.fin:
                if open_:
                    try:
                        text = str(frame.data, "utf-8")
                    except UnicodeDecodeError:
                        self.ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                        return False  # what follows is discarded (§7.1.7)
                    messages.append({"type": "websocket.receive", "text": text})
            elif opcode is TEXT or opcode is BINARY or opcode is CONT:
                if open_ and not self.on_fragment(frame):
                    return False
            elif opcode is PONG:
                self.on_pong(frame.data)
        return True

    def on_fragment(self, frame: Frame) -> bool:
        """A frame of a fragmented message (RFC 6455 §5.4); False if the connection failed.

        The fragments are kept as they come (decoded, for text, to fail fast: §8.1) and joined
        once at the end. Joining them into a bytearray as they arrive would bound memory too,
        but costs a copy and, for text, a second decode: 1 MiB in 16 fragments took 150 us
        instead of 45 (bytes), 3.0 ms instead of 1.1 (non-ASCII text).
        """
        opcode, data = frame.opcode, frame.data
        if opcode is not CONT:
            self.fragments = []
            self.fragments_size = 0
            self.decoder = _utf8_decoder() if opcode is TEXT else None
        self.fragments_size += len(data) + FRAGMENT_COST
        if self.fragments_size > self.state.config.ws_max_size:
            self.fragments = []
            self.ws.fail(CloseCode.MESSAGE_TOO_BIG, "fragmented message too big")
            return False
        decoder = self.decoder
        try:
            self.fragments.append(
                bytes(data) if decoder is None else decoder.decode(data, frame.fin)
            )
        except UnicodeDecodeError:
            self.ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return False
        if frame.fin:
            parts, self.fragments = self.fragments, []
            if decoder is not None:
                self.decoder = None
                self.messages.append({"type": "websocket.receive", "text": "".join(parts)})
            else:
                self.messages.append({"type": "websocket.receive", "bytes": b"".join(parts)})
        return True

    def eof_received(self) -> bool | None:
        if self.phase in (OPEN, CLOSING):
            self.ws.receive_eof()
            self.after_io()
        return None  # the transport closes itself

    def after_io(self) -> None:
        """After the library read or failed: notice a close, write what it produced."""
        ws = self.ws
        if self.phase == OPEN and ws.state is not LIB_OPEN:
            # The peer's close frame, or the library failed the connection (1002/1007/1009).
            self.phase = CLOSING
            self.fragments = []  # an unfinished message is never delivered
            self.decoder = None
            if ws.close_rcvd is not None and ws.close_sent is not ws.close_rcvd:
                self.echo_close(ws.close_rcvd)  # it failed after the peer's Close: see there
            close = ws.close_rcvd or ws.close_sent
            if close is not None:
                self.set_disconnect(close.code, close.reason)
            else:
                self.set_disconnect(CloseCode.ABNORMAL_CLOSURE, "")
        writes = ws.data_to_send()
        if writes and self.phase != CLOSED:
            data = b"".join(writes)
            if data:
                self.transport.write(data)
            if not all(writes):  # the library's SEND_EOF (b""): close TCP now
                self.close_transport()

    def echo_close(self, close: Close) -> None:
        """Answer the peer's Close with its echo when the library answered it with a failure.

        RFC 6455 §5.4 allows control frames between the fragments of a message, and §5.5.1
        asks for a Close to be answered with a Close, echoing its code. The library instead
        fails with 1002 "incomplete fragmented message" when a Close comes between fragments
        (the only failure it has after parsing a Close), so the app would get the peer's code
        and the wire ours. Its Close is swapped for the echo here, after the fact: a
        ServerProtocol subclass overriding recv_frame() would do it as the frame is read, but
        costs every frame 2 % interpreted and 15-19 % compiled (callgrind, 32-byte frames:
        +0.6k and +4.5-5.6k instructions on 30.3k).
        """
        ws = self.ws
        writes, sent = ws.writes, ws.close_sent
        if sent is None:
            return
        failure = Frame(CLOSE, sent.serialize()).serialize(mask=False, extensions=ws.extensions)
        if failure in writes:
            # An empty Close is echoed empty: 1005 is the library's "no code" (§7.1.5).
            echo = b"" if close.code == CloseCode.NO_STATUS_RCVD else close.serialize()
            frame = Frame(CLOSE, echo).serialize(mask=False, extensions=ws.extensions)
            writes[writes.index(failure)] = frame
            ws.close_sent = close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state.log_connections:
            client = self.http_scope["client"] or ("-", 0)
            log.debug("%s:%s - WebSocket connection closed", *client)
        self.phase = CLOSED
        self.state.connections.discard(self)
        for timer in (self.ping_timer, self.close_timer):
            if timer is not None:
                timer.cancel()
        self.ping_timer = self.close_timer = None
        if self.state.access_log is not None:
            self.state.access_log.forget(self.http_scope["client"])
        self.set_disconnect(CloseCode.ABNORMAL_CLOSURE, "")
        self.resume_writing()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def set_disconnect(self, code: int, reason: str) -> None:
        """The app's last receive() event; the first cause wins."""
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": int(code), "reason": reason}
            self.wake()
            metrics = self.state.metrics
            # (Accepted: the handshake was answered with 101, not with an HTTP response.)
            accepted = self.handshake is None and self.http.status == 0 and bool(self.scope)
            if metrics is not None and accepted:
                metrics.ws_closed(int(code))

    # -- flow control and closing --------------------------------------------------------------

    def stopped(self) -> bool:  # FlowControl
        return self.phase == CLOSED

    def close_transport(self) -> None:
        """Close once the buffer is flushed; drop the connection if the peer never reads it."""
        if self.phase != CLOSED:
            self.transport.close()
            self.arm_close_timer()

    def arm_close_timer(self) -> None:
        if self.close_timer is None:
            self.close_timer = self.state.loop.call_later(CLOSE_TIMEOUT, self.on_close_timeout)

    def on_close_timeout(self) -> None:
        self.close_timer = None
        if self.phase != CLOSED:
            log.debug("WebSocket closing handshake timed out: dropping the connection")
            self.transport.abort()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); the peer has CLOSE_TIMEOUT to answer."""
        self.ws.send_close(code, reason)
        self.phase = CLOSING
        self.set_disconnect(code, reason)
        self.after_io()
        self.arm_close_timer()

    # -- keepalive (RFC 6455 §5.5.2) ------------------------------------------------------------

    def schedule_ping(self) -> None:
        interval = self.state.config.ws_ping_interval
        if interval and self.phase == OPEN:
            self.ping_timer = self.state.loop.call_later(interval, self.send_keepalive_ping)

    def send_keepalive_ping(self) -> None:
        self.ping_timer = None
        if self.phase != OPEN:
            return
        self.ping_payload = os.urandom(4)
        self.ws.send_ping(self.ping_payload)
        self.after_io()
        timeout = self.state.config.ws_ping_timeout
        if timeout:
            self.ping_timer = self.state.loop.call_later(timeout, self.on_ping_timeout)
        else:
            self.schedule_ping()

    def on_pong(self, data: Any) -> None:
        if self.ping_payload is not None and data == self.ping_payload:
            self.ping_payload = None
            if self.ping_timer is not None:
                self.ping_timer.cancel()
            self.schedule_ping()

    def on_ping_timeout(self) -> None:
        self.ping_timer = None
        if self.read_paused and self.phase == OPEN:
            # We stopped reading (the app is slow): the pong may be waiting unread. Not the
            # peer's fault, so the deadline moves instead of failing a live connection.
            timeout = self.state.config.ws_ping_timeout or 0.0
            self.ping_timer = self.state.loop.call_later(timeout, self.on_ping_timeout)
        elif self.phase == OPEN:
            log.info("WebSocket keepalive ping timed out: closing with 1011")
            self.ws.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self.after_io()

    # -- server shutdown (state.Closable) ------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.phase == CLOSED

    def shutdown(self) -> None:
        """Server stopping: 1012 when it will be replaced (restart), else 1001 (going away)."""
        if self.phase == OPEN:
            if self.state.restarting:
                self.close(CloseCode.SERVICE_RESTART, "server restart")
            else:
                self.close(CloseCode.GOING_AWAY, "server shutdown")

    def cancel(self) -> None:
        """The graceful timeout passed: cancel the app and drop the connection. (The server
        cancels every task in `state.tasks` right after, this one too; cancelling it here
        first makes the app's CancelledError come before connection_lost, so it is logged as
        a cancellation, not as an app that raised after the client left.)"""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.phase != CLOSED:
            self.transport.abort()

    # -- the app --------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.state.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.phase == CLOSED or isinstance(exc, ClientDisconnected):
                log.debug("WebSocket app raised after the client disconnected: %r", exc)
            elif isinstance(exc, asyncio.CancelledError):
                log.warning("WebSocket app cancelled (server shutting down)")
            else:
                log.error("Exception in ASGI application", exc_info=exc)
            self.app_done(CloseCode.INTERNAL_ERROR)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
        else:
            if self.phase == HANDSHAKE:
                log.error("ASGI app returned without accepting or rejecting the WebSocket")
            elif self.phase == DENYING:
                log.error("ASGI app returned without completing the denial response")
            self.app_done(CloseCode.NORMAL_CLOSURE)

    def app_done(self, code: int) -> None:
        """Whatever the app left open is closed with `code` (or answered with a 500)."""
        if self.phase == HANDSHAKE or (self.phase == DENYING and not self.http.head_sent):
            self.respond(500, b"Internal Server Error")
        elif self.phase == DENYING:
            self.abort()  # a truncated response must not look complete
        elif self.phase == OPEN:
            self.close(code, "")

    async def receive(self) -> Message:
        messages = self.messages
        while not messages:
            if self.disconnect is not None:
                return self.disconnect
            if self.read_paused and self.phase >= OPEN:
                self.resume_reading()  # never wait for data we stopped reading
            self.waiter = self.state.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        message = messages.popleft()
        if self.read_paused and len(messages) <= self.max_queue // 2 and self.phase >= OPEN:
            self.resume_reading()
        metrics = self.state.metrics
        if metrics is not None and message is not CONNECT:
            metrics.ws_received += 1
        return message

    async def send(self, message: SendMessage) -> None:
        if self.phase == OPEN and message["type"] == "websocket.send":
            data = message.get("bytes")
            text = message.get("text")
            if text is None and data is not None:
                binary = True
            elif data is None and text is not None:
                binary = False
                data = text.encode()
            else:
                raise RuntimeError("websocket.send needs one of 'bytes' or 'text'")
            if self.plain:  # a server's frame: a header, the payload as it is (§5.2)
                size = len(data)
                if size >= VECTORED_SIZE and self.vectored:
                    self.transport.writelines((frame_head(binary, size), data))
                else:
                    self.transport.write(frame_head(binary, size) + data)
            else:  # the negotiated extensions (permessage-deflate) transform it
                frame = Frame(BINARY if binary else TEXT, data)
                self.transport.write(frame.serialize(mask=False, extensions=self.ws.extensions))
            metrics = self.state.metrics
            if metrics is not None:
                metrics.ws_sent += 1
            if self.write_paused:
                await self.drain()
        else:
            await self.send_other(message)

    async def send_other(self, message: SendMessage) -> None:
        """Every message but websocket.send on an open WebSocket, by phase."""
        mtype = message["type"]
        phase = self.phase
        if phase == OPEN and mtype == "websocket.close":
            self.close(message.get("code") or 1000, message.get("reason") or "")
        elif phase == HANDSHAKE and mtype == "websocket.accept":
            self.accept(message)
        elif phase == HANDSHAKE and mtype == "websocket.close":
            self.respond(403, b"Forbidden")  # ASGI: a close before accept is an HTTP 403
        elif phase == HANDSHAKE and mtype == "websocket.http.response.start":
            # The WebSocket Denial Response extension: an HTTP response, by the HTTP rules.
            self.phase = DENYING
            await self.http.send({**message, "type": "http.response.start"})
        elif phase == DENYING and mtype == "websocket.http.response.body":
            await self.http.send({**message, "type": "http.response.body"})
        elif mtype == "websocket.close" and phase >= CLOSING:
            pass  # closing twice is harmless
        elif phase in (CLOSING, CLOSED):
            raise ClientDisconnected("WebSocket closed")  # ASGI 2.4 asks for an OSError
        else:
            raise RuntimeError(f"unexpected ASGI message {mtype!r} (WebSocket phase {phase})")

    def accept(self, message: SendMessage) -> None:
        response = self.handshake
        assert response is not None
        headers = [
            (n.encode("latin-1"), v.encode("latin-1"))
            for n, v in response.headers.raw_items()
            if n.lower() not in SERVER_DEFAULTS  # the head writer adds them (or the app's)
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
            self.ws.subprotocol = Subprotocol(subprotocol)
        for name, value in message.get("headers") or ():
            check_field(name, value)  # the same check as any response's
            headers.append((name, value))
        self.handshake = None
        self.plain = not self.ws.extensions
        if self.over_h2:
            self.accept_h2(headers)
        else:
            self.transport.write(switching_head(headers, self.state))
        self.phase = OPEN
        self.log_access(200 if self.over_h2 else 101, 0)
        if self.state.metrics is not None:
            self.state.metrics.ws_connections += 1
        self.schedule_ping()
        if self.pending:
            data = b"".join(self.pending)
            self.pending = []
            self.resume_reading()
            self.data_received(data)
        if self.state.shutting_down:
            self.shutdown()

    def accept_h2(self, headers: list[tuple[bytes, bytes]]) -> None:
        """RFC 8441 §5: a 200 whose stream stays open, through the stream's channel (which
        lower-cases names and adds the default fields)."""
        head = RequestCycle(self.http_scope, self.http.conn, self.state, False, False)
        head.status = 200
        head.headers = [(n, v) for n, v in headers if n.lower() not in NOT_ON_H2]
        self.http.conn.start_response(head, b"", False)

    # -- an HTTP response instead of the handshake ------------------------------------------------

    def respond(self, status: int, body: bytes) -> None:
        """A short text/plain response in place of the handshake (403 on close, 500 on error)."""
        self.http.answer(status, body, close=True)

    # The handshake's HTTP exchange writes through these (Channel); see http1_head.py.

    def start_response(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        head, rest, tail, self.chunked = frame_response(cycle, body, final, False, self.state)
        # write(), not writelines(): asyncio's writelines on CPython 3.12.0-3.12.8 and
        # 3.13.0-3.13.1 (see http1.WRITELINES_UNPAUSED) left these bytes unsent (CI, 3.12.1).
        self.transport.write(head + rest + tail if rest else head)
        if final:
            self.responded()

    def send_body(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        if not cycle.no_body:
            self.transport.write(b"".join(frame_body(body, final, self.chunked)))
        if final:
            self.responded()

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]]) -> None:
        self.send_body(cycle, b"", True)  # a denial's trailers are not sent: just end it

    def must_wait(self) -> bool:
        return self.write_paused

    async def wait_writable(self) -> None:
        await self.drain()

    def send_continue(self) -> None:
        pass  # a handshake has no body to ask for

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        pass  # (the denial response is not streamed ahead of time)

    def body_consumed(self, cycle: RequestCycle) -> None:
        pass

    def cycle_done(self, cycle: RequestCycle) -> None:
        pass  # the exchange ends with the WebSocket's own task (run)

    def abort(self) -> None:
        self.phase = RESPONDED
        self.transport.abort()

    def responded(self) -> None:
        self.phase = RESPONDED
        self.close_transport()

    def log_access(self, status: int, sent: int) -> None:
        access = self.state.access_log
        if access is not None:
            access.log_websocket(self.http_scope, status, sent, self.start_time, monotonic())


# A received payload from this size on is unmasked from a view of the read, not a slice of it
# (a slice copies; a view costs two small objects).
VIEW_SIZE: Final = 2048
# A payload from this size on is written beside its header (one writev), not joined to it.
VECTORED_SIZE: Final = 16 * 1024
# The headers of final, unmasked text and binary frames with a payload under 126 bytes.
_TEXT_HEADS: Final = [bytes((0x81, length)) for length in range(126)]
_BINARY_HEADS: Final = [bytes((0x82, length)) for length in range(126)]


def frame_head(binary: bool, length: int) -> bytes:
    """The header of a final, unmasked text or binary frame with a payload of `length`
    bytes (RFC 6455 §5.2: a 7-bit, 16-bit or 64-bit length): what the library's
    Frame.serialize writes for a server without extensions."""
    if length < 126:
        return _BINARY_HEADS[length] if binary else _TEXT_HEADS[length]
    first = 0x82 if binary else 0x81
    if length < 0x10000:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def websocket_scope(http_scope: dict[str, Any]) -> Scope:
    """The ASGI websocket scope (spec 2.4) from the handshake's HTTP scope."""
    scope = dict(http_scope)
    del scope["method"]
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if http_scope["scheme"] == "https" else "ws"
    subprotocols: list[str] = []
    for name, value in http_scope["headers"]:
        if name == b"sec-websocket-protocol":
            try:
                subprotocols += parse_subprotocol(value.decode("latin-1"))
            except InvalidHeader:
                pass  # accept() already refused a malformed header
    scope["subprotocols"] = subprotocols
    # Keep the connection's TLS extension (not the HTTP-only ones) and add the Denial one.
    tls = (http_scope.get("extensions") or {}).get("tls")
    scope["extensions"] = {"websocket.http.response": {}, **({"tls": tls} if tls else {})}
    return scope
