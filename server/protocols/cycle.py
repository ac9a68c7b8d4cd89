"""One request/response exchange, as ASGI sees it: `receive()` and `send()`.

This module owns the ASGI rules (message order, header validation, Content-Length accounting,
HEAD and bodiless statuses, the 500/abort policy). What carries the exchange is a `Channel`:
an HTTP/1.1 connection (http1.py) is one, an HTTP/2 stream would be another. The channel owns
the wire format; the cycle only calls the few methods below, and waits on the channel when it
says so. How a request starts (scope, limits, counters, task, access log) is request.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import trait

from ..accesslog import APP_ERROR, CANCELLED, CLIENT_GONE
from ..types import ClientDisconnected, Message, Scope, SendMessage
from .sendfile import copy

if TYPE_CHECKING:
    from ..state import ServerState

__all__ = ["Channel", "ClientDisconnected", "RequestCycle"]

log = logging.getLogger("fastserve.error")
monotonic: Final = time.monotonic  # (Final: see http1.py)

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                          "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TOKEN_CHARS: Final = (
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Statuses that never carry content (RFC 9110 §6.4.1).
NO_BODY_STATUSES: Final = frozenset([*range(100, 200), 204, 304])

DISCONNECT: Final[Message] = {"type": "http.disconnect"}

TRAILERS_ANNOUNCED: Final = 1
TRAILERS_NEXT: Final = 2
# Fields that frame or route a message: never trailers (RFC 9110 §6.5.1).
FRAMING_TRAILERS: Final = frozenset(
    [b"content-length", b"transfer-encoding", b"host", b"content-type", b"content-encoding"]
)

# Shared and never mutated: a cycle makes its own lists only once it has body or headers
# (two allocations less for every request without a body).
NO_BODY: Final[list[bytes]] = []
NO_HEADERS: Final[list[tuple[bytes, bytes]]] = []


@trait
class Channel:
    """What carries one exchange: an HTTP/1.1 connection, or one HTTP/2 stream. Not an
    asyncio.Protocol: a stream has no transport of its own.

    A trait (mypy_extensions), so that HTTP1Protocol can be an asyncio protocol and a Channel
    at once; compiled (setup.py), a cycle's calls into its channel are then direct calls."""

    # Both write one piece of the response; `final` ends it. Neither waits: when the channel
    # holds more than it should (a full transport buffer, a closed HTTP/2 window), must_wait()
    # says so and the cycle awaits wait_writable() before the app may send more.
    def start_response(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        raise NotImplementedError

    def send_body(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        raise NotImplementedError

    def must_wait(self) -> bool:
        raise NotImplementedError

    async def wait_writable(self) -> None:
        raise NotImplementedError

    def send_continue(self) -> None:
        """100 Continue: the app wants the body the client holds back (RFC 9110 §10.1.1)."""
        raise NotImplementedError

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """An interim 1xx response (103 Early Hints) before the final one, where the peer
        can take one."""
        raise NotImplementedError

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]]) -> None:
        """End a response whose body is out with trailer fields (none: just end it)."""
        raise NotImplementedError

    async def send_file(self, cycle: RequestCycle, fd: int, offset: int, count: int) -> None:
        """`count` bytes of the file `fd` from `offset` as body (not the last piece: the
        cycle ends the response). By default read and sent piece by piece (send_body); a
        channel that can hand the file to the kernel does (HTTP/1.1 on plain TCP)."""
        await copy(cycle, self, fd, offset, count)

    def body_consumed(self, cycle: RequestCycle) -> None:
        """The app took the buffered body: reading (or window credit) may resume."""
        raise NotImplementedError

    def cycle_done(self, cycle: RequestCycle) -> None:
        """The app has returned."""
        raise NotImplementedError

    def abort(self) -> None:
        """The response cannot be completed (it started): end it abruptly."""
        raise NotImplementedError


class RequestCycle:
    # Plain attributes with __slots__: the cycle is created once per request.
    __slots__ = (
        "body",
        "body_done",
        "body_size",
        "bytes_sent",
        "conn",
        "disconnected",
        "expect_100",
        "expected_length",
        "head_sent",
        "headers",
        "is_head",
        "keep_alive",
        "more_body",
        "no_body",
        "own_defaults",
        "peer_eof",
        "response_complete",
        "response_started",
        "scope",
        "start_time",
        "state",
        "status",
        "task",
        "trailer_fields",
        "trailers",
        "waiter",
    )

    def __init__(
        self,
        scope: Scope,
        conn: Channel,
        state: ServerState,
        keep_alive: bool,
        expect_100: bool,
    ) -> None:
        self.scope = scope
        self.conn = conn
        self.state = state
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.is_head = scope["method"] == "HEAD"
        self.body = NO_BODY
        self.body_size = 0
        self.more_body = True
        self.body_done = False  # the last http.request message was delivered
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.peer_eof = False
        self.response_started = False
        self.response_complete = False
        self.status = 0
        self.headers = NO_HEADERS
        self.expected_length: int | None = None
        self.own_defaults = False
        self.no_body = self.is_head
        self.head_sent = False
        self.trailers = 0  # TRAILERS_ANNOUNCED by the start, TRAILERS_NEXT after the body
        self.trailer_fields = NO_HEADERS
        self.bytes_sent = 0
        self.start_time = monotonic()
        self.task: asyncio.Task[None] | None = None

    # -- fed by the protocol ----------------------------------------------------------------

    def feed_body(self, data: bytes) -> None:
        if self.response_complete:
            return  # the app answered without reading: the rest of the body is discarded
        if self.body is NO_BODY:
            self.body = [data]
        else:
            self.body.append(data)
        self.body_size += len(data)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end_body(self) -> None:
        self.more_body = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def peer_closed(self) -> None:
        """The client half-closed (FIN): the response is still delivered, but receive() now
        reports http.disconnect once the body is read. A FIN looks the same whether the
        client only stopped sending or left, and apps that watch receive() for a disconnect
        (long polls) must not wait for a client that may be gone."""
        self.peer_eof = True
        waiter = self.waiter
        if self.body_done and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        """The connection is gone: wake a pending receive(), make send() fail."""
        self.disconnected = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI --------------------------------------------------------------------------------

    def app_returned(self) -> None:
        """The app returned: a response it left unfinished is a 500, or an abort once its
        head is out."""
        if not self.response_complete and not self.disconnected:
            if self.head_sent:
                log.error("ASGI app returned without completing the response")
                self.conn.abort()
                self.unfinished(APP_ERROR)
            else:
                log.error("ASGI app returned without sending a response")
                self.send_500()
        elif not self.response_complete:
            self.unfinished(CLIENT_GONE)

    def app_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ClientDisconnected) or self.disconnected:
            log.debug("app raised after the client disconnected: %r", exc)
            if not self.response_complete:
                self.unfinished(CLIENT_GONE)
            return
        if isinstance(exc, asyncio.CancelledError):
            log.warning("request cancelled (server shutting down)")
        else:
            log.error("Exception in ASGI application", exc_info=exc)
        if self.response_complete:
            return
        # Nothing written yet (an invalid header or a body longer than its Content-Length is
        # caught before the write): the client still gets a proper 500.
        if self.head_sent:
            self.conn.abort()
            self.unfinished(CANCELLED if isinstance(exc, asyncio.CancelledError) else APP_ERROR)
        else:
            self.send_500()

    def unfinished(self, ended: str) -> None:
        """The response will not complete: its access log line says so, and how it ended."""
        state = self.state
        now = monotonic()  # (one reading: the log line and the histogram agree)
        if state.access_log is not None:
            state.access_log.log_unfinished(self, now, ended)
        if state.metrics is not None:
            state.metrics.request_unfinished(self, now, ended)

    def send_500(self) -> None:
        self.answer(500, b"Internal Server Error", close=True)

    def answer(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
    ) -> None:
        """A whole response from the server itself (500, a 503 refusal, a WebSocket handshake
        refused): through the same channel call, and logged, as an app's."""
        self.status = status
        self.headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if headers:
            self.headers += headers
        self.expected_length = None
        # Extra fields (a WebSocket library's refusal has its own Date): the defaults they
        # name are left out, as for an app's (RFC 9110 §6.6.1: one Date).
        self.own_defaults = bool(headers)
        self.no_body = self.is_head
        if close:
            self.keep_alive = False
        self.response_started = True
        self.response_complete = True
        self.bytes_sent = len(body)  # for the access log
        self.conn.start_response(self, body, True)
        self.logged()

    def logged(self) -> None:
        """The last byte was handed to the channel: the exchange goes to the access log
        and the metrics."""
        state = self.state
        now = monotonic()  # (one reading: the log line and the histogram agree)
        if state.access_log is not None:
            state.access_log.log(self, now)
        if state.metrics is not None:
            state.metrics.request_done(self, now)

    async def receive(self) -> Message:
        if self.response_complete or self.disconnected:
            return DISCONNECT
        if not self.body and (self.more_body or self.body_done):
            # Wait for more body or, once the last http.request was delivered, for the client
            # to leave or the response to complete: apps poll receive() to detect a
            # disconnect, so it must block rather than repeat an empty body.
            if self.body_done and self.peer_eof:
                return DISCONNECT
            if self.expect_100:
                self.expect_100 = False
                if not self.head_sent:  # (http.response.start alone writes nothing)
                    self.conn.send_continue()
            self.waiter = self.state.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
            if self.disconnected or self.response_complete or self.body_done:
                return DISCONNECT
        body = self.body
        if len(body) == 1:
            data = body[0]
        else:
            data = b"".join(body)
        self.body = NO_BODY
        self.body_size = 0
        self.conn.body_consumed(self)
        more_body = self.more_body
        if not more_body:
            self.body_done = True
        return {"type": "http.request", "body": data, "more_body": more_body}

    async def send(self, message: SendMessage) -> None:
        # Apps send dicts; any other mapping is read through a copy (compiled, reads from a
        # value typed dict are direct dict operations, not method lookups).
        msg = message if type(message) is dict else dict(message)
        mtype = msg["type"]
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        if not self.response_started:
            if mtype != "http.response.start":
                if mtype == "http.response.early_hint":
                    self.early_hint(msg)
                    return
                raise RuntimeError(f"expected 'http.response.start', got {mtype!r}")
            self.response_started = True
            self.set_status_and_headers(msg)
            return
        if self.response_complete:
            raise RuntimeError(f"{mtype!r} sent after the response was complete")
        if mtype != "http.response.body" or self.trailers == TRAILERS_NEXT:
            if mtype == "http.response.pathsend" and self.trailers != TRAILERS_NEXT:
                await self.send_path(msg)
            else:
                self.send_trailers(msg, mtype)
            return
        body: bytes = msg.get("body", b"")
        final = not msg.get("more_body", False)
        if self.expected_length is not None and not self.no_body:
            sent = self.bytes_sent + len(body)
            if sent > self.expected_length:
                raise RuntimeError("response body longer than its Content-Length")
            if final and sent < self.expected_length:
                raise RuntimeError("response body shorter than its Content-Length")
        if final and self.trailers:
            final = False  # the response ends with its trailers
            self.trailers = TRAILERS_NEXT
        if final:
            self.response_complete = True
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)  # a receive() waiting in another task: disconnect
        conn = self.conn
        self.bytes_sent += len(body)
        if self.head_sent:
            try:
                conn.send_body(self, body, final)
            except ClientDisconnected:
                self.bytes_sent -= len(body)
                if final:  # (complete already, so app_failed() would not log it)
                    self.unfinished(CLIENT_GONE)
                raise
        else:
            conn.start_response(self, body, final)
        if final:
            state = self.state
            if state.access_log is not None or state.metrics is not None:
                self.logged()
        if conn.must_wait():
            # The final piece too: a channel never holds more than its limit for us (an
            # HTTP/2 window smaller than the last body, a full transport buffer).
            await conn.wait_writable()

    def send_trailers(self, message: dict[str, Any], mtype: str) -> None:
        """ASGI's `http.response.trailers` extension: after a `trailers: True` start and the
        body, trailer fields end the response. They reach the client only if it asked
        (`te: trailers`, RFC 9110 §10.1.4) and the framing can carry them (chunked HTTP/1.1,
        HTTP/2); otherwise they are dropped and the response ends all the same."""
        if mtype != "http.response.trailers" or self.trailers != TRAILERS_NEXT:
            expected = (
                "http.response.trailers" if self.trailers == TRAILERS_NEXT else "http.response.body"
            )
            raise RuntimeError(f"expected {expected!r}, got {mtype!r}")
        fields = list(message.get("headers", ()))
        for name, value in fields:
            if check_field(name, value) in FRAMING_TRAILERS:
                raise RuntimeError(f"{name!r} is not allowed as a trailer (RFC 9110 §6.5.1)")
        if message.get("more_trailers", False):
            self.trailer_fields = self.trailer_fields + fields
            return
        fields = self.trailer_fields + fields
        if not self.wants_trailers():
            fields = []
        self.trailers = 0
        self.response_complete = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        try:
            self.conn.send_trailers(self, fields)
        except ClientDisconnected:
            self.unfinished(CLIENT_GONE)  # (complete already: app_failed() would not log it)
            raise
        self.logged()

    async def send_path(self, message: dict[str, Any]) -> None:
        """ASGI's `http.response.pathsend` extension: the body is the file at `path` (an
        absolute path), sent whole by the channel (sendfile.py: zero-copy where it can). A
        response without a Content-Length gets the file's size as its length."""
        if self.head_sent:
            raise RuntimeError("'http.response.pathsend' after the body started")
        path = message.get("path")
        if type(path) is not str or not os.path.isabs(path):
            raise RuntimeError(f"'http.response.pathsend' needs an absolute path, got {path!r}")
        # O_NONBLOCK: a FIFO would block the loop in open() until a writer came (a regular
        # file ignores it); S_ISREG below refuses it then.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise RuntimeError(f"'http.response.pathsend': {path!r} is not a file")
            size = info.st_size
            length = self.expected_length
            if length is None and self.status not in NO_BODY_STATUSES:
                # (A HEAD too: its head says what a GET would get, RFC 9110 §9.3.2.)
                self.headers = [*self.headers, (b"content-length", b"%d" % size)]
                self.expected_length = length = size
            if length is not None and length != size and not self.no_body:
                raise RuntimeError(
                    f"the file's size ({size}) is not the response's Content-Length ({length})"
                )
            if self.no_body or size == 0:
                # Nothing to send but the head: the plain body path frames it.
                os.close(fd)
                fd = -1
                await self.send({"type": "http.response.body", "body": b""})
                return
            conn = self.conn
            conn.start_response(self, b"", False)
            await conn.send_file(self, fd, 0, size)
        finally:
            if fd >= 0:
                os.close(fd)
        if self.trailers:
            self.trailers = TRAILERS_NEXT  # the response ends with its trailers
            return
        self.response_complete = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        try:
            conn.send_body(self, b"", True)
        except ClientDisconnected:
            self.unfinished(CLIENT_GONE)  # (complete already: app_failed() would not log it)
            raise
        self.logged()
        if conn.must_wait():
            await conn.wait_writable()

    def wants_trailers(self) -> bool:
        for name, value in self.scope["headers"]:
            if name == b"te" and b"trailers" in value.lower():
                return True
        return False

    def early_hint(self, message: dict[str, Any]) -> None:
        """ASGI's `http.response.early_hint` extension: `links` (link field values) as a 103
        Early Hints (RFC 8297) before the response."""
        links = [(b"link", value) for value in message.get("links", ())]
        for name, value in links:
            check_field(name, value)
        if links:
            self.conn.send_informational(103, links)

    def set_status_and_headers(self, message: dict[str, Any]) -> None:
        status = message["status"]
        # 1xx are interim (RFC 9110 §15.2): as the final response they would leave the
        # client waiting for one that never comes.
        if type(status) is not int or not 200 <= status <= 999:
            raise RuntimeError(f"invalid status {status!r}")
        self.status = status
        headers = message.get("headers", ())
        if type(headers) is not list:
            # ASGI allows any iterable (a generator is read once); it is walked twice here.
            headers = list(headers)
        dropped = False
        for name, value in headers:
            # check_field(), inlined (one call per header less: ~0.1k instructions a request).
            lname = _VALID_NAMES.get(name)
            if lname is None:
                lname = _check_name(name)
            if 10 in value or 13 in value or 0 in value:
                raise RuntimeError(f"invalid response header value for {name!r}")
            if lname in SPECIAL_RESPONSE_HEADERS:
                if lname == b"content-length":
                    if not value.isdigit():
                        raise RuntimeError(f"invalid content-length {value!r}")
                    if self.expected_length is not None:
                        # Recipients may reject repeated lengths or frame by either one
                        # (RFC 9110 §8.6): a client and a proxy could disagree.
                        raise RuntimeError("several content-length headers")
                    self.expected_length = int(value)
                elif lname == b"connection" or lname == b"transfer-encoding":
                    # The server decides the framing and the connection's fate.
                    if lname == b"connection" and b"close" in value.lower():
                        self.keep_alive = False
                    dropped = True
                else:
                    self.own_defaults = True
        if message.get("trailers", False):
            self.trailers = TRAILERS_ANNOUNCED
        if status in NO_BODY_STATUSES:
            self.no_body = True
            if status != 304:
                if self.expected_length is not None:
                    headers = self.drop_content_length(headers, status)
                # 1xx and 204 have no content (RFC 9110 §6.4.1), so their length is 0: the
                # body is not checked (no_body) and the protocol must not frame the app's
                # discarded bytes either (for a HEAD it adds a length when this is None).
                self.expected_length = 0
        if dropped:
            headers = [(n, v) for n, v in headers if n.lower() not in _SERVER_DECIDES]
        self.headers = headers

    def drop_content_length(
        self, headers: list[tuple[bytes, bytes]], status: int
    ) -> list[tuple[bytes, bytes]]:
        # RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any
        # response with a status code of 1xx (Informational) or 204 (No Content)." A 304 is
        # exempt: its Content-Length is the would-be length of the 200 (§15.4.5), kept as sent.
        # Reached only for such a status with a length: a 200 pays nothing for this rule.
        log.debug("content-length dropped from a %d response (RFC 9110 §8.6)", status)
        return [(n, v) for n, v in headers if n.lower() != b"content-length"]


_VALID_NAMES: Final[dict[bytes, bytes]] = {}  # response header name -> its lower-case form
_SERVER_DECIDES: Final = (b"connection", b"transfer-encoding")


def check_field(name: bytes, value: bytes) -> bytes:
    """A response header field from an app (every response path: app responses, WebSocket
    accept and denial), validated before anything is written: a bad one is an app error,
    never a split response. Returns the lower-case name. Valid names are remembered (apps
    send the same few names over and over): a dict hit costs a fraction of a translate()."""
    lname = _VALID_NAMES.get(name)
    if lname is None:
        lname = _check_name(name)
    # `10 in value` is ~10x faster than `b"\n" in value` (memchr, no buffer protocol).
    if type(value) is not bytes or 10 in value or 13 in value or 0 in value:
        raise RuntimeError(f"invalid response header value for {name!r}")
    return lname


def _check_name(name: bytes) -> bytes:
    """Validate a response header name (RFC 9110 §5.1: a token) and remember it."""
    if type(name) is not bytes or not name or name.translate(None, TOKEN_CHARS):
        raise RuntimeError(f"invalid response header name {name!r}")
    lname = name.lower()
    if len(_VALID_NAMES) < 4096:  # bounded: an app inventing names can't grow it forever
        _VALID_NAMES[name] = lname
    return lname


SPECIAL_RESPONSE_HEADERS: Final = frozenset(
    [b"content-length", b"connection", b"transfer-encoding", b"server", b"date"]
)
