"""Upgrade requests that are not performed stay ordinary HTTP/1.1 (RFC 9110 §7.8).

llhttp stops at the end of a head that asks for an upgrade and leaves its body unread. If the
server then parsed that body as the next request, a client could smuggle a request past
anything that inspected the first one (a proxy, a WAF): the app would see `POST /a` with an
empty body and then a request nobody sent. These tests assert what the APP received, for each
Upgrade value we do not perform, each body framing, the body in the same read or later ones,
and pipelined requests after it; and that a bad request pipelined after an upgrade request
gets its 4xx with one log line.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
from typing import Any

import pytest

from tests.apps.core_apps import App, Probe, Receive, Scope, Send, read_body, respond
from tests.helpers import Serve, Wire, error_log, request, statuses_of, until_closed

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"  # 35 bytes
CHUNKED_SMUGGLED = b"23\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"

# (Upgrade header value, extra server options): upgrades fastserve does not perform.
NOT_PERFORMED = {
    "h2c": ("h2c", {}),
    "foo": ("foo", {}),
    "websocket-ws-none": ("websocket", {"ws": "none"}),
    # A handshake with a body is no WebSocket handshake (RFC 6455 §4.1: a GET, no content).
    "websocket-with-body": ("websocket", {}),
}
WS_HEADERS = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def seen_app(probe: Probe) -> App:
    """Reports ("start", path) as it starts; reads the whole body; reports and answers
    (method, path, body)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        probe.put(("start", scope["path"]))
        body = await read_body(receive)
        probe.put((scope["method"], scope["path"], body))
        await respond(send, 200, json.dumps([scope["method"], scope["path"]]).encode())

    return app


def upgrade_head(value: str, framing: str) -> bytes:
    return (
        f"POST /a HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: {value}\r\n"
        f"{WS_HEADERS if value == 'websocket' else ''}{framing}\r\n"
    ).encode()


def seen(probe: Probe) -> list[Any]:
    """The requests the app read so far (call after the last response was read: the app
    reports before it answers)."""
    items: list[Any] = []
    while True:
        try:
            item = probe.events.get_nowait()
        except queue.Empty:
            return items
        if item[0] != "start":
            items.append(item)


def nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@pytest.mark.parametrize("upgrade", list(NOT_PERFORMED))
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("arrival", ["one-write", "body-later"])
def test_the_body_of_an_upgrade_not_performed_is_its_body(
    serve: Serve, upgrade: str, framing: str, arrival: str
) -> None:
    value, options = NOT_PERFORMED[upgrade]
    if framing == "chunked":
        head, body = upgrade_head(value, "Transfer-Encoding: chunked\r\n"), CHUNKED_SMUGGLED
    else:
        head, body = upgrade_head(value, "Content-Length: 35\r\n"), SMUGGLED
    probe = Probe()
    pipelined = request("/after") + request("/end")
    with serve(seen_app(probe), **options) as srv, nodelay(srv.connect()) as sock:
        wire = Wire(sock)
        if arrival == "one-write":
            wire.send(head + body + pipelined)
        else:
            wire.send(head)
            # The app starts at the end of the head: once it has, the body can only reach
            # the server in later reads.
            assert probe.get() == ("start", "/a")
            for i in range(0, len(body), 10):
                wire.send(body[i : i + 10])
            wire.send(pipelined)
        statuses = [wire.response("POST").status, wire.response().status, wire.response().status]
    assert statuses == [200, 200, 200]
    assert seen(probe) == [
        ("POST", "/a", SMUGGLED),
        ("GET", "/after", b""),
        ("GET", "/end", b""),
    ]


@pytest.mark.parametrize("upgrade", ["h2c", "foo"])
def test_an_upgrade_without_a_body_is_served_and_the_next_request_too(
    serve: Serve, upgrade: str
) -> None:
    probe = Probe()
    head = f"GET /u HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
    with serve(seen_app(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(head.encode() + request("/next"))
        assert [wire.response().status, wire.response().status] == [200, 200]
    assert seen(probe) == [("GET", "/u", b""), ("GET", "/next", b"")]


def test_upgrade_with_connection_close_ends_the_connection_after_its_body(serve: Serve) -> None:
    probe = Probe()
    head = (
        b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: close, upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 35\r\n\r\n"
    )
    with serve(seen_app(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(head + SMUGGLED + request("/after"))
        response = wire.response("POST")
        assert wire.closed()
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    assert seen(probe) == [("POST", "/a", SMUGGLED)]


def test_a_failed_websocket_handshake_pipelines_nothing(serve: Serve) -> None:
    """A WebSocket handshake the library refuses (no key) is answered 400 and the connection
    closes: what followed it is never a request."""
    probe = Probe()
    head = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with serve(seen_app(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(head + SMUGGLED)
        response = wire.response()
        assert wire.closed()
    assert response.status == 400
    assert seen(probe) == []


@pytest.mark.parametrize(
    ("second", "status", "reason"),
    [
        (b"GET /n HTTP/2.0\r\nHost: h\r\n\r\n", 505, b"HTTP version not supported"),
        # No HTTP-version: an invalid request-line (RFC 9112 §3), not an unknown version.
        (b"GET /n\r\nHost: h\r\n\r\n", 400, b"Invalid request line: no HTTP version"),
        (b"GET /n HTTP/1.1\r\n\r\n", 400, b"Missing Host header"),
    ],
)
def test_a_bad_request_after_an_upgrade_request_gets_its_4xx_and_one_log_line(
    serve: Serve, second: bytes, status: int, reason: bytes
) -> None:
    probe = Probe()
    first = b"GET /u HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"
    with (
        serve(seen_app(probe)) as srv,
        error_log(logging.INFO) as records,
        srv.connect() as sock,
    ):
        sock.sendall(first + second)
        raw = until_closed(sock)
    assert statuses_of(raw) == [200, status], raw
    assert raw.endswith(b"\r\n\r\n" + reason)
    lines = [r.getMessage() for r in records]
    assert [r for r in records if r.exc_info or r.levelno >= logging.ERROR] == [], lines
    assert sum(f"rejected: {status}" in line for line in lines) == 1, lines
    assert seen(probe) == [("GET", "/u", b"")]
