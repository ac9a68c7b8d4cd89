"""HTTP/1.1 on httptools: where a request enters and where its bytes leave.

Bytes arrive in `data_received`, httptools calls back `on_url` / `on_header` /
`on_headers_complete` (the scope is built there) / `on_body` / `on_message_complete`, and a
`RequestCycle` runs the app (in a task created once `feed_data` returns: an eager one on
Python 3.12+). Responses leave through `start_response` / `send_body`, which frame them
(Content-Length, chunked or close-delimited) and write head and body with a single
`transport.write` for small responses (on 3.12+ a small final one is held to the end of the
loop pass: see "Eager start" below).

Rules this module lives by:
- responses go out strictly in request order (pipelining): one cycle runs at a time, later
  requests wait in `pipeline` and reading pauses while they do;
- memory is bounded both ways: reading pauses while a request body is buffered past
  HIGH_WATER, and `send()` waits while the transport's write buffer is above its high mark;
- one timer per connection whose deadline moves; it is checked lazily when it fires. Until
  its first request a connection has none: it waits on the server's keep-alive timer
  (`fresh`, idle.py), and its first read arms one only if the request still needs it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Final

import httptools

from .connection import Address, address
from .cycle import Channel, ClientDisconnected, RequestCycle
from .flow import FlowControl
from .http1_head import (
    CONTINUE,
    error_response,
    frame_body,
    frame_response,
    informational_head,
    last_chunk,
)
from .http1_rules import (
    FRAMING_HEADERS,
    METHODS,
    WATCHED_REQUEST_HEADERS,
    RejectRequest,
    check_host,
    check_transfer_encoding,
    other_method,
    parser_reason,
    skipped_body_head,
    split_absolute_target,
)
from .linger import IDLE_LINGER_SECONDS, LINGER_SECONDS, Lingering
from .request import admit, connection_scope, make_scope, start, start_eagerly
from .sendfile import CAN_ZERO_COPY, copy, zero_copy

if TYPE_CHECKING:
    from ..state import ServerState

log = logging.getLogger("fastserve.error")

# Module constants are Final: compiled (setup.py), a Final name is a C static or an inlined
# value, any other global a dict lookup at each use.
monotonic: Final = time.monotonic

# Reading pauses when this much request body waits unread by the app (the same order as
# asyncio's StreamReader default limit of 64 KiB).
HIGH_WATER: Final = 64 * 1024


WRITELINES_UNPAUSED: Final = (3, 12) <= sys.version_info < (3, 12, 9) or (
    (3, 13) <= sys.version_info < (3, 13, 2)
)

# Eager start (ServerState.eager: Python 3.12+ and --eager-start, the default): a request's
# app starts at once, in an eager task, when feed_data() has returned (not inside httptools'
# callbacks): no handle and no loop pass between the parser and the app. A small final
# response is then held (outbox.py) until the loop pass ends, so the responses to one
# pass's reads still leave in one burst after those reads, as they do when tasks run later.
# Written from inside each read callback instead, they spread the client's next requests
# out: fewer per epoll_wait, more wake-ups, and more system CPU than the eager start saves
# (measured: perf/README.md, Log).

# RFC 9113 §3.4: how an HTTP/2 client with prior knowledge opens a connection.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# What a closed or handed-over connection's `parser` becomes. A parser holds its protocol's
# bound callbacks, so protocol and parser form a reference cycle that only the cyclic GC
# would free (every closed connection's ~2 KB waited for a gen-0 collection, and a
# connection handed over to HTTP/2 kept it while idle): swapping the parser out frees both
# at once by reference counting. It is never fed.
DETACHED_PARSER: Final = httptools.HttpRequestParser(object())

# Timer phases: what the connection's single deadline means when it passes.
IDLE: Final = 0
HEAD: Final = 1
BUSY: Final = 2
BODY: Final = 3


class HTTP1Protocol(FlowControl, Channel):
    __slots__ = (
        "body_received",
        "body_seen",
        "chunked",
        "client",
        "closed",
        "cycle",
        "deadline",
        "eof",
        "expect_100",
        "fresh",
        "has_host",
        "head_bytes",
        "headers",
        "join_pieces",
        "keep_alive",
        "last_asked",
        "parser",
        "parsing",
        "pending_error",
        "phase",
        "pipeline",
        "scope_base",
        "server",
        "skipped",
        "starting",
        "state",
        "te",
        "timer",
        "timer_at",
        "transport",
        "upgrade",
        "url",
        "valid_host",
        "version_hint",
        "ws_scope",
    )

    def __init__(
        self,
        state: ServerState,
        proxied: tuple[Address, Address] | None = None,
        local: Address | None = None,
    ) -> None:
        """`proxied`: the client and server addresses a PROXY header gave (proxy_protocol.py);
        `local`: the listener's own address, when it is every connection's (connection_factory)."""
        self.state = state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.expect_100 = False
        self.upgrade: bytes | None = None
        self.ws_scope: dict[str, Any] | None = None
        # A request whose Upgrade is not performed and whose body llhttp skipped, with the
        # stand-in head that frames that body for the next parser (see handle_upgrade).
        self.skipped: tuple[RequestCycle, bytes] | None = None
        self.cycle: RequestCycle | None = None  # the cycle whose app runs
        self.parsing: RequestCycle | None = None  # the cycle whose body is being read
        # (A list: an empty deque allocates a 64-slot block, ~700 B per idle connection.)
        self.pipeline: list[RequestCycle] = []
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.keep_alive = True
        self.last_asked = False  # the client asked to close after its request
        self.chunked = False  # the response being written is (HTTP/1.1 has one at a time)
        self.closed = False
        self.eof = False  # the client half-closed: no more requests, answer those we have
        self.pending_error: RejectRequest | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.fresh = False  # no request yet: the keep-alive deadline is in state.idle_conns
        self.has_host = False
        self.valid_host = b""  # the last Host value checked on this connection
        self.te: bytes | None = None  # Transfer-Encoding value(s), checked at end of head
        self.body_received = 0  # body bytes of the request being parsed (limit_request_body)
        self.body_seen = 0.0  # when body bytes last arrived (timeout_request_body)
        self.deadline = 0.0
        self.phase = IDLE
        self.client: Address | None = None
        self.server: Address | None = local
        if proxied is not None:
            self.client, self.server = proxied
        self.scope_base: dict[str, Any] = {}
        self.starting: RequestCycle | None = None  # to start once feed_data() returns
        self.join_pieces = False
        self.version_hint: str | None = None  # this request's version, read in data_received

    # -- connection lifecycle ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        state = self.state
        state.connections.add(self)
        if state.metrics is not None:
            state.metrics.connections += 1
        if self.client is None:  # (unless a PROXY header said who it is)
            self.client = address(transport.get_extra_info("peername"))
            if self.server is None:  # (unless the listener has one address: `local`)
                self.server = address(transport.get_extra_info("sockname"))
        if state.log_connections:
            log.debug("%s:%s - connection open", *(self.client or ("-", 0)))
        # CPython 3.12.0-3.12.8 and 3.13.0-3.13.1: asyncio's socket transport never pauses
        # the protocol in writelines() (gh-127655, PSF-2024-14), so a client that does not
        # read would make a streaming response buffer without bound. write() pauses it.
        self.join_pieces = WRITELINES_UNPAUSED and not type(transport).__module__.startswith(
            "uvloop"
        )
        self.scope_base = connection_scope(state, "1.1", transport, self.client, self.server)
        # Until its first request, the connection waits on the server's one keep-alive timer
        # (idle.py) instead of a loop timer of its own: a dict entry, not a call_later() and a
        # cancel() (~4k instructions of a `Connection: close` request's 107k).
        self.fresh = True
        state.idle_conns.add(self)
        if state.h2_upgrade is not None and self.scope_base["scheme"] == "https":
            # TLS: when ALPN chose h2 (RFC 9113 §3.2), HTTP/2 from the first byte on.
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self.to_h2(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state.log_connections and not self.closed:
            how = "reset" if exc is not None else "closed"
            log.debug("%s:%s - connection %s", *(self.client or ("-", 0)), how)
        self.closed = True
        self.parser = DETACHED_PARSER
        self.state.connections.discard(self)
        self.forget_fresh()
        if self.cycle is not None:
            self.cycle.lost()
        for cycle in self.pipeline:
            cycle.lost()
        self.pipeline.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.state.access_log is not None:
            self.state.access_log.forget(self.client)
        self.wake_drain()

    def eof_received(self) -> bool | None:
        """The client's FIN means "no more requests", not "abort" (RFC 9112 §9.6): requests
        already received are answered, then the connection closes. (A reset is an abort:
        connection_lost.) Reading is over, so it counts as paused from here on."""
        if self.eof or self.closed:
            return None
        # An answer held to the end of this pass ("Eager start") leaves first: where this
        # returns None the transport closes itself, and the outbox skips closing transports.
        self.flush_held()
        broken = self.parsing
        if broken is not None:
            if broken is not self.cycle and broken in self.pipeline:
                # A pipelined request whose body will never end: it never runs.
                self.parsing = None
                self.pipeline.remove(broken)
                broken.lost()
            else:
                return None  # the running request's body is cut short: an abort
        if self.cycle is None or not self.transport.can_write_eof():
            # Nothing being answered (a partial head is dropped), or TLS, whose transports
            # close on the peer's close_notify whatever we return.
            return None
        self.eof = True
        self.read_paused = True  # never resumed: cycle_done() closes once all are answered
        self.cycle.peer_closed()
        for cycle in self.pipeline:
            cycle.peer_closed()
        return True

    # -- bytes in --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        metrics = self.state.metrics
        if metrics is not None:
            metrics.bytes_received += len(data)
        phase = self.phase
        first = False
        if phase == IDLE:
            # A request begins: its head must arrive within --timeout-request-header.
            # (No on_message_begin callback: one Python call a request less.)
            self.phase = HEAD
            self.deadline = deadline = monotonic() + self.state.timeout_request_header
            if self.fresh:
                # The first request: a timer only if it still needs one after this read
                # (arm_after_first_read).
                self.fresh = False
                self.state.idle_conns.discard(self)
                first = True
            elif self.timer is None or deadline < self.timer_at:
                self.set_deadline(HEAD, self.state.timeout_request_header)
            self.head_bytes = len(data)  # one read: bounded by the transport's read size
            if not self.url:
                # The request line ends at this read's first LF (no URL bytes came before):
                # read its version here, a slice compare instead of get_http_version(), which
                # formats a new string (~6 % of a request's instructions). Anything else
                # (a split line, a bare LF, leading empty lines) is left to httptools.
                lf = data.find(10)
                if lf >= 10:
                    end = data[lf - 10 : lf + 1]
                    if end == b" HTTP/1.1\r\n":
                        self.version_hint = "1.1"
                    elif end == b" HTTP/1.0\r\n":
                        self.version_hint = "1.0"
        elif phase == HEAD:
            # A head split over several reads: bound it (a single read is bounded by the
            # transport's read size, and on_url/on_header check their own parts).
            self.head_bytes += len(data)
            if self.head_bytes > self.state.max_head_size:
                self.reject(RejectRequest(431, "Request header fields too large"))
                return
        upgrade_at = -1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            upgrade_at = exc.args[0] if exc.args else len(data)
        except httptools.HttpParserCallbackError as exc:
            # What a callback raises (a RejectRequest too) arrives wrapped: never bare.
            self.callback_failed(exc)
        except httptools.HttpParserError as exc:
            self.parser_failed(exc, data)
        if upgrade_at >= 0:
            # Outside the except block: what parsing the rest raises must not carry the
            # upgrade exception as its __context__ (callback_failed looks there).
            self.handle_upgrade(data[upgrade_at:])
        cycle = self.starting
        if cycle is not None:
            self.starting = None
            start_eagerly(cycle, self.state)
        if first and self.timer is None and not self.closed:
            self.arm_after_first_read()

    def arm_after_first_read(self) -> None:
        """The connection's first read is parsed and no timer is armed: one is, if a deadline
        applies now. A head not whole yet has --timeout-request-header; a body still on its
        way, --timeout-request-body (check_body_progress). A request read whole and being
        answered needs none: its response's end arms the keep-alive deadline (cycle_done),
        and a close needs no timer of this protocol's."""
        now = monotonic()
        if self.phase == HEAD:
            at = self.deadline
        elif self.parsing is not None:
            at = now + self.state.timeout_request_body
        else:
            return
        self.timer_at = at
        self.timer = self.state.loop.call_later(at - now, self.on_timer)

    def forget_fresh(self) -> None:
        if self.fresh:
            self.fresh = False
            self.state.idle_conns.discard(self)

    def on_idle(self) -> None:  # Idler (state.idle_conns): no request within the keep-alive timeout
        self.fresh = False
        if self.phase == IDLE:
            self.close_idle()

    def callback_failed(self, exc: Exception) -> None:
        """httptools wraps what our callbacks raise: the RejectRequest is its __context__."""
        cause = exc.__context__
        if isinstance(cause, RejectRequest):
            self.reject(cause)
        else:
            log.error("Exception while parsing a request", exc_info=cause)
            self.reject(RejectRequest(500, "Internal Server Error"))

    def parser_failed(self, exc: Exception, data: bytes) -> None:
        if "PRI/Upgrade" in str(exc) and self.state.h2_upgrade is not None:
            # llhttp stops at the HTTP/2 preface's "PRI * HTTP/2.0" head: a client with prior
            # knowledge (h2c, RFC 9113 §3.3). The check costs an HTTP/1.1 request nothing.
            # The head may have come in several reads: what came before `data` this message
            # can only be the preface's start (llhttp accepted it).
            before = self.head_bytes - len(data)
            sent = PREFACE[:before] + data
            if sent[: len(PREFACE)] == PREFACE[: len(sent)] and self.cycle is None:
                self.to_h2(sent)
                return
        if "after `Connection: close`" in str(exc):
            # Bytes after a request that closes the connection: RFC 9112 §9.6 says they must
            # not be processed, so they are dropped (no answer) and the connection closes
            # after the response.
            self.pause_reading()
            return
        self.reject(RejectRequest(400, parser_reason(exc)))

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.state.limit_request_line:
            raise RejectRequest(414, "Request-URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Hot: three to ten calls a request. The field count is checked once the head is
        # complete (until then the list is bounded by one read, or by head_bytes).
        if len(name) + len(value) > self.state.limit_request_field_size:
            raise RejectRequest(431, "Request header field too large")
        name = name.lower()
        if name in WATCHED_REQUEST_HEADERS:
            if name == b"host" and not self.has_host and self.parsing is None:
                self.has_host = True  # every request has one: no watch_header() call
                if value != self.valid_host:  # (a connection's requests name one host)
                    check_host(value)
                    self.valid_host = value
            else:
                self.watch_header(name, value)
        if self.parsing is None:
            # llhttp strips leading whitespace, not trailing (RFC 9110 §5.5: OWS around
            # values). Trailer fields (parsing is set) are dropped: httptools reports them
            # like header fields, ASGI has no place for them, and keeping them would let a
            # client grow a list without bound.
            self.headers.append((name, value.rstrip(b" \t")))

    def watch_header(self, name: bytes, value: bytes) -> None:
        if self.parsing is not None and name in FRAMING_HEADERS:
            # A trailer (httptools reports them like headers): framing and routing fields are
            # forbidden there (RFC 9110 §6.5.1); other trailers are dropped (ASGI has none).
            raise RejectRequest(400, "Forbidden trailer field")
        if name == b"expect":
            if value.strip().lower() == b"100-continue":
                self.expect_100 = True
        elif name == b"host":
            if self.has_host:
                raise RejectRequest(400, "Several Host headers")
            self.has_host = True
        elif name == b"upgrade":
            self.upgrade = value.strip().lower()
        elif name == b"transfer-encoding":
            self.te = value if self.te is None else self.te + b"," + value
        elif name == b"content-length":
            # llhttp has validated the digits (and rejects a second Content-Length).
            limit = self.state.limit_request_body
            if limit is not None and int(value) > limit:
                raise RejectRequest(413, "Request body too large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        state = self.state
        http_version = self.version_hint
        if http_version is None:
            http_version = parser.get_http_version()
        else:
            self.version_hint = None  # for this message only (not a pipelined next one)
        method_bytes = parser.get_method()
        url = self.url
        method = METHODS.get(method_bytes)
        if method is None:
            method = other_method(method_bytes, url)
        if len(self.headers) > state.limit_request_fields:
            raise RejectRequest(431, "Too many request header fields")
        if http_version != "1.1":
            if http_version == "0.9":
                # llhttp's reading of a request-line without an HTTP-version, which RFC 9112
                # §3 requires: an invalid request-line, not a version we lack.
                raise RejectRequest(400, "Invalid request line: no HTTP version")
            if http_version != "1.0":  # llhttp lets "2.0" and "3.0" through
                raise RejectRequest(505, "HTTP version not supported")
        elif not self.has_host:
            raise RejectRequest(400, "Missing Host header")  # RFC 9112 §3.2
        if self.te is not None:
            self.check_transfer_encoding(http_version)
        if 35 in url:  # b"#": a fragment is no part of a request-target (RFC 9112 §3.2)
            raise RejectRequest(400, "Fragment in request target")
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        elif url == b"*" and method == "OPTIONS":
            raw_path, query = url, b""
        else:
            raw_path, query = self.other_target(url, method)
        scope = make_scope(
            self.scope_base, state, http_version, method, raw_path, query, self.headers
        )
        # The next message starts from here (on_message_complete gives it a header list).
        self.url = b""
        self.body_received = 0
        self.has_host = False
        expect_100 = self.expect_100
        if expect_100:
            self.expect_100 = False

        upgrade = self.upgrade
        body_head: bytes | None = None
        if upgrade is not None:
            self.upgrade = None
            if parser.should_upgrade():
                # llhttp stops at the end of this head and leaves any body unread.
                # (Not for CONNECT: its request has no content, RFC 9110 §9.3.6, and what
                # follows its head is never read: handle_upgrade.)
                if method != "CONNECT":
                    body_head = skipped_body_head(scope["headers"], parser.should_keep_alive())
                if upgrade == b"websocket" and state.ws_upgrade and body_head is None:
                    # Handed over to the WebSocket protocol when httptools raises
                    # HttpParserUpgrade at the end of this head (see handle_upgrade).
                    self.ws_scope = scope
                    return
        if parser.should_keep_alive():
            keep_alive = self.keep_alive and not state.shutting_down
        else:
            keep_alive = False
            self.last_asked = True  # Connection: close, or HTTP/1.0 without keep-alive
        cycle = RequestCycle(scope, self, state, keep_alive, expect_100 and http_version == "1.1")
        self.parsing = cycle
        if self.cycle is None:
            self.cycle = cycle
            self.phase = BUSY
            # An eager start waits until feed_data() has returned (data_received).
            if admit(cycle, state) and not start(cycle, state, True, False):
                self.starting = cycle
        else:
            self.pipeline.append(cycle)
            self.pause_reading()
        if body_head is not None:
            # Not parsing yet: llhttp's on_message_complete for this head comes at once and
            # must not end a body that has not been read (handle_upgrade resumes it).
            self.parsing = None
            self.skipped = (cycle, body_head)

    def check_transfer_encoding(self, http_version: str) -> None:
        te, self.te = self.te, None
        assert te is not None
        check_transfer_encoding(te, http_version)

    def other_target(self, url: bytes, method: str) -> tuple[bytes, bytes]:
        """Absolute-form (RFC 9112 §3.2.2) and authority-form (§3.2.3) targets."""
        if method == "CONNECT":
            # We are no proxy and never tunnel: the app answers, then the connection closes.
            self.keep_alive = False
            return url, b""
        authority, raw_path, query = split_absolute_target(url)
        # §3.2.2: the target's authority replaces whatever the Host header said.
        self.headers[:] = [(n, authority if n == b"host" else v) for n, v in self.headers]
        return raw_path, query

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        self.body_received += len(body)
        self.body_seen = monotonic()
        limit = self.state.limit_request_body
        if limit is not None and self.body_received > limit:
            raise RejectRequest(413, "Request body too large")  # a chunked body grew too big
        cycle.feed_body(body)
        if cycle.body_size > HIGH_WATER and not self.read_paused:
            self.pause_reading()

    def on_message_complete(self) -> None:
        self.headers = []  # for the next message's head
        cycle = self.parsing
        if cycle is not None:
            self.parsing = None
            cycle.more_body = False  # cycle.end_body(), inlined for the common case
            if cycle.waiter is not None:
                cycle.end_body()
            if self.cycle is None and self.phase == BODY:
                # Answered before its body ended: now the connection is idle.
                self.set_deadline(IDLE, self.state.timeout_keep_alive)

    # -- the request layer's calls (Channel) -----------------------------------------------

    def cycle_done(self, cycle: RequestCycle) -> None:
        """The app of `cycle` has returned: run the next pipelined request or go idle."""
        if self.closed:
            return
        self.cycle = None
        if (
            cycle.keep_alive
            and self.keep_alive
            and cycle.response_complete
            and self.parsing is None
            and not self.pipeline
            and not self.read_paused
            and self.pending_error is None
        ):
            # The common case, inlined: the request is done, wait for the next one.
            self.phase = IDLE
            self.deadline = deadline = monotonic() + self.state.timeout_keep_alive
            if self.timer is None or deadline < self.timer_at:
                self.set_deadline(IDLE, self.state.timeout_keep_alive)
            if self.state.shutting_down:
                self.close_idle()
            return
        reusable = cycle.response_complete and cycle.keep_alive and self.keep_alive
        if (
            self.pending_error is not None
            and not self.pipeline  # valid requests before the bad one are answered first
            and (reusable or not cycle.head_sent)
        ):
            # (Not after a response that said the connection closes, or whose body the close
            # delimits: the error answer would land inside it.)
            self.reject(self.pending_error)
            return
        if not reusable:
            if (
                self.last_asked
                and self.parsing is None
                and not self.read_paused  # (as it is while requests are pipelined)
            ):
                # The client said this request was its last, and all of it has been read: it
                # must not send more (RFC 9112 §9.6), so no input can be left unread for the
                # kernel to answer with a reset. A plain close: no half-close, no wait for
                # the client's FIN (a shutdown(), a read and a Lingering per connection).
                self.close()
            elif cycle.response_complete:
                # FIN first, and unread input drained: closing with input unread makes the
                # kernel send a reset, which can destroy the response (RFC 9112 §9.6).
                self.close_idle()
            else:
                self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.pop(0)
            self.cycle = nxt
            if not admit(nxt, self.state):
                return  # refused (503): cycle_done() ran for it already
            start(nxt, self.state, False, True)
            if nxt is self.parsing:
                # Its body is still on its way: --timeout-request-body runs from now (the
                # armed timer may be a later one: the first request's head or keep-alive).
                self.set_deadline(BUSY, self.state.timeout_request_body)
            if (
                not self.pipeline
                and self.read_paused
                and nxt.body_size <= HIGH_WATER
                and self.pending_error is None
                and not self.eof
            ):
                self.resume_reading()
            return
        if self.eof:
            self.close()  # every request the client sent before its FIN is answered
            return
        if self.read_paused:
            self.resume_reading()
        if self.parsing is not None:
            self.set_deadline(BODY, self.state.timeout_request_body)
        else:
            self.set_deadline(IDLE, self.state.timeout_keep_alive)
        if self.state.shutting_down:
            self.close_idle()

    def body_consumed(self, cycle: RequestCycle) -> None:
        if self.read_paused and not self.pipeline and cycle is self.parsing:
            self.resume_reading()

    # -- bytes out -------------------------------------------------------------------------------

    def start_response(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        """Write the head, and with it the first piece of body (one write for small ones)."""
        state = self.state
        head, rest, tail, self.chunked = frame_response(cycle, body, final, self.keep_alive, state)
        if rest:
            self.write_pieces([head, rest, tail] if tail else [head, rest])
        elif final and state.eager:
            # Held to the end of the loop pass (see "Eager start").
            state.outbox.hold(self.transport, head)
        else:
            self.flush_held()
            self.transport.write(head)
        if final and not cycle.keep_alive:
            self.keep_alive = False

    def send_body(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        self.flush_held()
        if self.transport.is_closing():
            # The peer is gone but connection_lost() is only scheduled: a streaming app whose
            # sends never wait would produce its whole body (and asyncio would log a warning
            # per failed write). ASGI 2.4: send() raises an OSError.
            raise ClientDisconnected("client disconnected")
        if not cycle.no_body:
            pieces = frame_body(body, final, self.chunked)
            if len(pieces) == 1:
                self.transport.write(pieces[0])
            elif pieces:
                self.write_pieces(pieces)
        if final and not cycle.keep_alive:
            self.keep_alive = False

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]]) -> None:
        self.flush_held()
        if self.transport.is_closing():
            raise ClientDisconnected("client disconnected")
        if self.chunked:
            # The last chunk, then the trailer section (RFC 9112 §7.1.2). A body framed by
            # its length, or by the close (HTTP/1.0), has no place for them.
            self.chunked = False
            self.transport.write(last_chunk(fields))
        if not cycle.keep_alive:
            self.keep_alive = False

    async def send_file(self, cycle: RequestCycle, fd: int, offset: int, count: int) -> None:
        """A file into the socket by the kernel (os.sendfile), where the connection is plain
        TCP; under TLS it goes through the process like any body (Channel's default)."""
        transport = self.transport
        sock = None
        if CAN_ZERO_COPY and transport.get_extra_info("sslcontext") is None:
            sock = transport.get_extra_info("socket")
        if sock is None:
            await copy(cycle, self, fd, offset, count)
            return
        try:
            await zero_copy(cycle, transport, sock.fileno(), fd, offset, count)
        except ClientDisconnected:
            self.abort()  # part of the body is out: the connection cannot carry another
            raise

    def must_wait(self) -> bool:
        return self.write_paused

    async def wait_writable(self) -> None:
        await self.drain()

    def write_pieces(self, pieces: list[bytes]) -> None:
        """A large body beside its framing: one writev() where writelines() is safe."""
        self.flush_held()
        if self.join_pieces:
            self.transport.write(b"".join(pieces))
        else:
            self.transport.writelines(pieces)

    def flush_held(self) -> None:
        """Held responses go first ("Eager start"): bytes leave a connection in order."""
        outbox = self.state.outbox
        if outbox.items:
            outbox.flush()

    def send_continue(self) -> None:
        self.flush_held()
        self.transport.write(CONTINUE)

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.cycle is not None and self.cycle.scope["http_version"] == "1.1":
            # (HTTP/1.0 clients do not expect 1xx responses: RFC 9110 §15.2.)
            self.flush_held()
            self.transport.write(informational_head(status, headers))

    def abort(self) -> None:
        """The response cannot be completed: drop the connection."""
        self.keep_alive = False
        if not self.closed:
            self.flush_held()
            self.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.keep_alive = False
            self.flush_held()
            self.transport.close()

    def stopped(self) -> bool:  # FlowControl
        return self.closed

    # -- timeouts, errors, shutdown ---------------------------------------------------------

    def set_deadline(self, phase: int, seconds: float) -> None:
        """Move the connection's single deadline. The timer is only re-armed when the new
        deadline comes before the armed one: a keep-alive connection serving requests
        back to back creates no timer per request (it fires once per timeout period and
        re-arms itself for the remainder)."""
        self.phase = phase
        self.deadline = deadline = monotonic() + seconds
        timer = self.timer
        if timer is None or deadline < self.timer_at:
            if timer is not None:
                timer.cancel()
            self.timer_at = deadline
            self.timer = self.state.loop.call_later(seconds, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        if self.phase == BUSY:
            self.check_body_progress()
            return
        remaining = self.deadline - monotonic()
        if remaining > 0:
            self.timer_at = self.deadline
            self.timer = self.state.loop.call_later(remaining, self.on_timer)
            return
        if self.phase == HEAD:
            self.reject(RejectRequest(408, "Request header timeout"))
        elif self.phase == IDLE:
            self.close_idle()
        elif self.phase == BODY and self.cycle is None:
            self.close()

    def check_body_progress(self) -> None:
        """The app runs while its request body still arrives: --timeout-request-body is how
        long the body may stall (not counting time reading is paused for the app)."""
        cycle = self.cycle
        if cycle is None or cycle is not self.parsing:
            return  # no body on its way; the next phase arms the timer again
        timeout = self.state.timeout_request_body
        now = monotonic()
        remaining = max(cycle.start_time, self.body_seen) + timeout - now
        if remaining <= 0 and not self.read_paused:
            self.reject(RejectRequest(408, "Request body timeout"))
            return
        delay = remaining if remaining > 0 else timeout
        self.timer_at = now + delay
        self.timer = self.state.loop.call_later(delay, self.on_timer)

    def reject(self, error: RejectRequest) -> None:
        """Answer a bad request with its 4xx, close, and log one line (no traceback)."""
        if self.closed:
            return
        body_of = self.parsing
        if body_of is not None and body_of.response_complete:
            # Answered already, but its request body goes on and is broken (malformed, too
            # large, too slow): no second response, the connection just closes.
            self.parsing = None
            body_of.lost()
            client = self.client or ("-", 0)
            log.info("%s:%s - closed: %d %s", *client, error.status, error.reason)
            if self.state.metrics is not None:
                self.state.metrics.refused(error.status)
            self.close()
            return
        if self.cycle is not None:
            # An earlier request is still being answered: reply in order, after it.
            # (Keep-alive stays on: the responses before the error say nothing of closing,
            # the error response does; the connection closes after it.)
            self.pending_error = error
            self.pause_reading()
            broken = self.parsing
            if broken is self.cycle:
                # The running app's own request body is broken: its receive() gets
                # http.disconnect instead of waiting forever (reading is paused now, so
                # neither more body nor the client's FIN would reach it), and the 4xx goes
                # out once it returns (unless it had answered: then the connection closes).
                self.cycle.lost()
            elif broken is not None:
                # Pipelined behind the running one (always the last in line): its app must
                # never run, since it would wait for a body that will not come. The 4xx is
                # its answer, after the answers to the requests before it.
                self.parsing = None
                self.pipeline.remove(broken)
                broken.lost()
            return
        self.pending_error = None
        self.send_error(error)

    def send_error(self, error: RejectRequest) -> None:
        log.info("%s:%s - rejected: %d %s", *(self.client or ("-", 0)), error.status, error.reason)
        if self.state.metrics is not None:
            self.state.metrics.refused(error.status)
        self.flush_held()
        self.transport.write(error_response(error, self.state))
        self.linger()

    def linger(self, seconds: float = LINGER_SECONDS) -> None:
        """Half-close after an error answer and drain the input (see linger.py), so that a
        client still sending does not get a reset that destroys the answer."""
        transport = self.transport
        if not transport.can_write_eof():  # TLS cannot half-close
            self.close()
            return
        self.flush_held()
        self.connection_lost(None)  # this protocol is done: cycles, timer, counts
        transport.set_protocol(Lingering(transport, self.state, seconds))
        try:
            transport.write_eof()
        except OSError:  # the peer is gone already (ENOTCONN): nothing to linger for
            transport.close()
            return
        transport.resume_reading()

    def close_idle(self) -> None:
        """Close between requests (keep-alive timeout, server shutdown): FIN first, then drop
        what still comes for a moment. A request the client sent before it saw our FIN then
        meets a clean close, which clients retry on a reused connection, not a reset."""
        if not self.closed:
            self.keep_alive = False
            self.linger(IDLE_LINGER_SECONDS)

    def handle_upgrade(self, rest: bytes) -> None:
        """llhttp stopped after a head asking to switch protocols (`rest` is what followed).

        WebSocket handshakes go to the WebSocket protocol. Any other Upgrade (h2c, foo, or
        websocket with --ws none or with a body) is not performed: RFC 9110 §7.8 makes the
        request an ordinary HTTP/1.1 one, framed by its Content-Length or chunked coding
        (RFC 9112 §6). llhttp skipped that body, so a fresh parser reads it: it is fed a
        stand-in head carrying the same framing, whose callbacks go nowhere (`AfterSkip`),
        then the rest of the bytes. Treating the body as the next request would let a
        client smuggle a request past whatever inspected this one."""
        scope = self.ws_scope
        if scope is not None:
            self.ws_scope = None
            if self.cycle is not None or self.pipeline:
                # Pipelined behind a request still being answered: clients never do this.
                error = RejectRequest(400, "WebSocket upgrade pipelined behind another request")
                self.reject(error)
                return
            upgrade = self.state.ws_upgrade  # the --ws entry (protocols/__init__.py)
            assert upgrade is not None
            # Reading is on here: every pause_reading() above either comes with a request
            # still being answered (self.cycle, or a pipelined one) or closes the connection,
            # and cycle_done() resumes reading before the connection goes idle. Writing may be
            # paused (an earlier response the client has not read yet): that goes with it.
            write_paused = self.write_paused
            transport = self.detach()
            upgrade(self.state, scope, transport, rest, write_paused)
            return
        if self.parser.get_method() == b"CONNECT":
            self.pause_reading()  # what follows is tunnel data: never parsed as requests
            return
        self.headers = []
        skipped = self.skipped
        if skipped is None:
            self.parser = httptools.HttpRequestParser(self)
        else:
            self.skipped = None
            cycle, body_head = skipped
            self.parsing = cycle
            callbacks = AfterSkip(self)
            self.parser = httptools.HttpRequestParser(callbacks)
            self.parser.feed_data(body_head)  # a complete head: no body callbacks yet
            callbacks.in_head = False
        if rest and not self.closed:
            self.data_received(rest)

    def to_h2(self, data: bytes) -> None:
        """Hand the connection over to HTTP/2 (h2.py) with what the client sent so far."""
        upgrade = self.state.h2_upgrade
        assert upgrade is not None
        client, server = self.client, self.server
        upgrade(self.state, self.detach(), client, server, data)

    def detach(self) -> asyncio.Transport:
        """Give the transport up to another protocol (the WebSocket one): this protocol stops
        counting as a connection and its timer and callbacks stop acting."""
        self.flush_held()
        self.closed = True
        self.parser = DETACHED_PARSER
        self.state.connections.discard(self)
        self.forget_fresh()  # (TLS with ALPN h2: handed over from connection_made)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return self.transport

    @property
    def idle(self) -> bool:
        return self.cycle is None and self.phase != HEAD

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self.cycle.task if self.cycle is not None else None

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their response.

        A connection that has not sent a byte yet gets IDLE_LINGER_SECONDS to send its first
        request, which is served (then the connection closes): it was accepted just before
        the listener closed, and its client may be sending that request now. Closed at once,
        the client would read an EOF on a new connection, which clients do not retry (they
        do on a reused one)."""
        self.keep_alive = False
        if self.cycle is None:
            if self.head_bytes == 0 and self.phase == IDLE:  # (0 until the first read)
                self.set_deadline(IDLE, IDLE_LINGER_SECONDS)
            else:
                self.close_idle()

    def cancel(self) -> None:
        """The graceful timeout passed: cancel the running app, drop the connection."""
        cycle = self.cycle
        if cycle is not None and cycle.task is not None:
            cycle.task.cancel()
        else:
            self.close()


class AfterSkip:
    """httptools callbacks of the parser that reads a body llhttp skipped (handle_upgrade):
    the stand-in head's callbacks go nowhere, every later one goes to the protocol (one call
    more per callback, on such connections only)."""

    __slots__ = ("conn", "in_head")

    def __init__(self, conn: HTTP1Protocol) -> None:
        self.conn = conn
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        if not self.in_head:
            self.conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self.conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self.in_head:
            self.conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()
