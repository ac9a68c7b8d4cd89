"""Every HTTP/1.1 response fastserve writes is framed here: app responses, the server's own
answers (500, 503, error answers to bad requests), the 100-continue, and the WebSocket
handshake's 101 and denial responses. One status-line table, one way to add the default
headers, one set of framing rules:

- 1xx, 204 and 304 carry no content (RFC 9110 §6.4.1, §15.3.5, §15.4.5); nor does a HEAD;
- a final piece with no declared length gets a Content-Length; a streamed body without one is
  chunked (HTTP/1.1) or close-delimited (HTTP/1.0, RFC 9112 §6.3);
- `connection: close` goes out whenever the connection will not be reused.

The callers write what these functions return; they decide when (see http1.py's "Eager
start") and through which transport. Header fields from apps are checked by the cycle
(cycle.py `check_field`) before they get here.
"""

from __future__ import annotations

import http
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..state import ServerState
    from .cycle import RequestCycle
    from .http1_rules import RejectRequest

# Bodies from this size on are written beside their framing (writelines), not copied into it.
COPY_LIMIT: Final = 16 * 1024


def status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))


STATUS_LINES: Final[dict[int, bytes]] = {code: status_line(code) for code in range(100, 600)}

CONTINUE: Final = STATUS_LINES[100] + b"\r\n"  # an interim response: no header fields


def end_head(
    parts: list[bytes], headers: list[tuple[bytes, bytes]], own_defaults: bool, state: ServerState
) -> None:
    """The default headers (Date, Server, --header) after the head's own, then the blank
    line. `own_defaults`: the head sets some of them itself (rare): those are left out."""
    if own_defaults:
        names = {n.lower() for n, _ in headers}
        for name, value in state.defaults_without(names):
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
    else:
        parts += (state.default_head, b"\r\n")


def frame_response(
    cycle: RequestCycle, body: bytes, final: bool, reusable: bool, state: ServerState
) -> tuple[bytes, bytes, bytes, bool]:
    """The head of `cycle`'s response with its first piece of body, framed: (head, body,
    tail, chunked). A small body is joined into `head` (body and tail empty: one write); a
    large one is not copied (writelines). `reusable`: the connection could carry another
    request. Sets cycle.keep_alive to whether it still can after this response. (A tuple,
    not a list: compiled, it is returned in registers, no allocation.)"""
    cycle.head_sent = True
    status = cycle.status
    parts = [STATUS_LINES.get(status) or status_line(status)]
    for name, value in cycle.headers:
        parts += (name, b": ", value, b"\r\n")
    http10 = cycle.scope["http_version"] == "1.0"
    chunked = False
    if cycle.no_body:
        if final and cycle.is_head and cycle.expected_length is None and body:
            parts.append(b"content-length: %d\r\n" % len(body))
        body = b""
    elif cycle.expected_length is None:
        if final:
            parts.append(b"content-length: %d\r\n" % len(body))
        elif http10:
            cycle.keep_alive = False  # close-delimited body
        else:
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
    if cycle.expect_100 and cycle.more_body:
        # 100-continue was never sent and the body is not all here: the client may or may
        # not send it now, so the connection cannot be reused (RFC 9110 §10.1.1).
        cycle.keep_alive = False
    if not cycle.keep_alive or not reusable:
        cycle.keep_alive = False
        parts.append(b"connection: close\r\n")
    elif http10:
        parts.append(b"connection: keep-alive\r\n")
    if cycle.own_defaults:
        end_head(parts, cycle.headers, True, state)
    else:
        parts += (state.default_head, b"\r\n")  # end_head(), inlined for the common case
    if len(body) >= COPY_LIMIT:
        # A large body is not copied into the head: writelines() hands the buffers to one
        # writev() on uvloop (asyncio < 3.12 joins them, as we would have).
        if chunked:
            parts.append(b"%x\r\n" % len(body))
            return b"".join(parts), body, b"\r\n0\r\n\r\n" if final else b"\r\n", chunked
        return b"".join(parts), body, b"", chunked
    if chunked:
        if body:
            parts += (b"%x\r\n" % len(body), body, b"\r\n")
        if final:
            parts.append(b"0\r\n\r\n")
    elif body:
        parts.append(body)
    return b"".join(parts), b"", b"", chunked


def frame_body(body: bytes, final: bool, chunked: bool) -> list[bytes]:
    """A later piece of a body, framed as its head said (no pieces: nothing to write)."""
    if not chunked:
        return [body] if body else []
    if len(body) >= COPY_LIMIT:
        return [b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n" if final else b"\r\n"]
    if body:
        if final:
            return [b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)]
        return [b"%x\r\n%b\r\n" % (len(body), body)]
    return [b"0\r\n\r\n"] if final else []


def error_response(error: RejectRequest, state: ServerState) -> bytes:
    """The whole answer to a rejected request: short text body, `connection: close`."""
    body = error.reason.encode("latin-1")
    parts = [
        STATUS_LINES.get(error.status) or status_line(error.status),
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\nconnection: close\r\n" % len(body),
    ]
    end_head(parts, [], False, state)
    parts.append(body)
    return b"".join(parts)


def last_chunk(fields: list[tuple[bytes, bytes]]) -> bytes:
    """The end of a chunked body with its trailer section (RFC 9112 §7.1.2)."""
    parts = [b"0\r\n"]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def informational_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An interim 1xx response (103 Early Hints): header fields only, no defaults."""
    parts = [STATUS_LINES.get(status) or status_line(status)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def switching_head(headers: list[tuple[bytes, bytes]], state: ServerState) -> bytes:
    """101 Switching Protocols (the WebSocket handshake): no content, no framing."""
    parts = [STATUS_LINES[101]]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    names = {n.lower() for n, _ in headers}
    end_head(parts, headers, b"server" in names or b"date" in names, state)
    return b"".join(parts)
