"""What a mutation pass (mutmut 3, docs/testing.md) over server/protocols/request.py and
server/protocols/http1_head.py found unchecked: every test here failed against at least one
mutant the rest of the suite let live. Over real sockets on both loops where the rule shows
on the wire (the scope an app sees, the 503 refusal, the response framing); by direct calls
where it is pure logic (the status lines, a later piece of a body, the last chunk, an interim
head) or where the wire cannot tell (a large body handed on without being copied).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

import pytest

from fastserve.protocols import http1_head
from fastserve.protocols.http1_head import (
    COPY_LIMIT,
    frame_body,
    informational_head,
    last_chunk,
    status_line,
)
from tests.apps.core_apps import Probe, scope_app, under_task_factory
from tests.apps.ws_apps import RawWS
from tests.helpers import (
    Serve,
    Wire,
    request,
    requests_read_in_one_pass,
    status_of,
    until_closed,
    wait_until,
)
from tests.test_limits import counting_app, holding_app
from tests.test_proxy import where_app

# -- request.py: the scope ---------------------------------------------------------------------

SCOPE_KEYS = {
    "type", "asgi", "http_version", "scheme", "method", "path", "raw_path", "query_string",
    "root_path", "headers", "client", "server", "state", "extensions",
}  # fmt: skip


def test_the_http_scope_has_exactly_the_asgi_keys_and_extensions(serve: Serve) -> None:
    """ASGI HTTP scope (spec 2.4): these keys and no other; the extensions the server
    serves over plain HTTP/1.1 by name, and no "tls"."""
    with serve(scope_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        for data in (request("/a?b=c", "POST", "Content-Length: 0\r\n"), b"GET / HTTP/1.0\r\n\r\n"):
            wire.send(data)
            scope = json.loads(wire.response().body)
            assert set(scope) == SCOPE_KEYS, scope
            assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
            assert scope["extensions"] == {
                "http.response.early_hint": {},
                "http.response.trailers": {},
                "http.response.pathsend": {},
            }
            assert scope["type"] == "http" and scope["scheme"] == "http"
            if data.startswith(b"GET"):
                break
            assert (scope["method"], scope["raw_path"], scope["query_string"]) == (
                "POST",
                "/a",
                "b=c",
            )
            assert ["content-length", "0"] in scope["headers"], scope["headers"]


def test_a_request_whose_only_field_is_forwarded_is_rewritten(serve: Serve) -> None:
    """--proxy-headers with RFC 7239 on: a Forwarded field from a trusted peer sets the
    client and scheme, also when it is the request's only header field (HTTP/1.0 needs no
    Host), and the next request without one keeps the real peer."""
    with serve(where_app, forwarded_rfc7239=True) as srv:
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nForwarded: for=198.51.100.7;proto=https\r\n\r\n")
            raw = until_closed(sock)
        seen = json.loads(raw.partition(b"\r\n\r\n")[2])
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            plain = json.loads(until_closed(sock).partition(b"\r\n\r\n")[2])
    assert (seen["client"][0], seen["scheme"]) == ("198.51.100.7", "https"), seen
    assert (plain["client"][0], plain["scheme"]) == ("127.0.0.1", "http"), plain


REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


def test_a_pipelined_request_starts_clean_under_an_apps_task_factory(serve: Serve) -> None:
    """With a loop task factory (instrumentation), a pipelined request is started from the
    previous request's task: its task must still get the server's context, not a copy of
    that request's (whose context variables would leak into it)."""
    seen: list[tuple[str, str]] = []
    made: list[asyncio.Task[Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["path"], REQUEST_VAR.get()))
        REQUEST_VAR.set(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve(under_task_factory(app, made), lifespan="on") as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"".join(request(path) for path in ("/p1", "/p2", "/p3")))
        assert [wire.response().body for _ in range(3)] == [b"ok"] * 3
    assert seen == [("/p1", "unset"), ("/p2", "unset"), ("/p3", "unset")]
    assert len(made) >= 3  # the requests' tasks came from the factory


# -- request.py: admission ---------------------------------------------------------------------


def test_limit_concurrency_counts_every_request_in_flight(serve: Serve) -> None:
    """--limit-concurrency 2: two held requests are both counted (the third is refused),
    and the count is back to 0 once they are answered."""
    probe = Probe()
    with serve(holding_app(probe), limit_concurrency=2) as srv:
        state = srv.server.state
        assert state is not None
        holders = [srv.connect() for _ in range(2)]
        try:
            for sock in holders:
                sock.sendall(request("/hold"))
                assert probe.get() == "holding"
            assert state.in_flight == 2
            with srv.connect() as sock:
                wire = Wire(sock)
                wire.send(request("/quick"))
                assert wire.response().status == 503
            probe.release.set()
            assert [Wire(sock).response().status for sock in holders] == [200, 200]
            wait_until(lambda: state.in_flight == 0, "the count back to 0")
        finally:
            probe.release.set()
            for sock in holders:
                sock.close()


def test_a_retiring_worker_serves_requests_past_its_limit_read_in_the_same_pass(
    serve: Serve,
) -> None:
    """--limit-max-requests in a worker the supervisor is replacing (`restarting`): requests
    read in the same loop pass as the last one are served, not refused (a failed request
    costs more than one past the limit); each closes its connection."""
    seen: list[str] = []
    with serve(counting_app(seen), limit_max_requests=2) as srv:
        state = srv.server.state
        assert state is not None
        state.restarting = True
        raws = requests_read_in_one_pass(srv, 3)
    assert [status_of(raw) for raw in raws] == [200] * 3, raws
    assert sorted(seen) == ["/0", "/1", "/2"]


# -- http1_head.py: pure framing ------------------------------------------------------------------


def test_status_lines() -> None:
    """The reason phrase is the registered one; a code without one gets an empty phrase
    (RFC 9112 §4: `reason-phrase` may be empty, the space before it stays)."""
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(418) == b"HTTP/1.1 418 I'm a Teapot\r\n"
    assert status_line(299) == b"HTTP/1.1 299 \r\n"
    assert status_line(600) == b"HTTP/1.1 600 \r\n"


def test_a_later_piece_of_a_length_framed_body_is_written_as_is() -> None:
    body = b"x" * 10
    assert frame_body(body, False, False) == [body]
    assert frame_body(body, True, False) == [body]
    assert frame_body(b"", True, False) == []
    assert frame_body(b"", False, False) == []


def test_a_later_piece_of_a_chunked_body() -> None:
    """RFC 9112 §7.1: the size in hex (lower case here, either is allowed: this pins what
    is written), the data, CRLF; the last chunk `0` and the empty trailer section."""
    body = b"y" * 26  # 0x1a: a size with a hex letter in it
    assert frame_body(body, False, True) == [b"1a\r\n" + body + b"\r\n"]
    assert frame_body(body, True, True) == [b"1a\r\n" + body + b"\r\n0\r\n\r\n"]
    assert frame_body(b"", True, True) == [b"0\r\n\r\n"]
    assert frame_body(b"", False, True) == []  # an empty piece is no chunk (it would end it)


def test_a_large_later_piece_is_not_copied() -> None:
    """From COPY_LIMIT on, the body goes out beside its framing (writelines), the very
    object the app sent; below it, one joined buffer."""
    for size in (COPY_LIMIT, COPY_LIMIT + 10):  # (0x4000, 0x400a)
        body = b"z" * size
        pieces = frame_body(body, False, True)
        assert pieces == [b"%x\r\n" % size, body, b"\r\n"]
        assert pieces[1] is body
        pieces = frame_body(body, True, True)
        assert pieces == [b"%x\r\n" % size, body, b"\r\n0\r\n\r\n"]
        assert pieces[1] is body
    assert frame_body(b"z" * 0x400A, True, True)[0] == b"400a\r\n"
    small = b"z" * (COPY_LIMIT - 1)
    assert len(frame_body(small, False, True)) == 1


def test_the_last_chunk_carries_the_trailer_section() -> None:
    """RFC 9112 §7.1.2: `0` CRLF, the trailer fields, CRLF."""
    assert last_chunk([]) == b"0\r\n\r\n"
    fields = [(b"x-checksum", b"abc"), (b"x-count", b"2")]
    assert last_chunk(fields) == b"0\r\nx-checksum: abc\r\nx-count: 2\r\n\r\n"


def test_an_interim_head_has_its_fields_only() -> None:
    link = [(b"link", b"</a.css>; rel=preload"), (b"link", b"</b.js>; rel=preload")]
    assert informational_head(103, link) == (
        b"HTTP/1.1 103 Early Hints\r\n"
        b"link: </a.css>; rel=preload\r\nlink: </b.js>; rel=preload\r\n\r\n"
    )
    assert informational_head(100, []) == b"HTTP/1.1 100 Continue\r\n\r\n"
    # Outside the status-line table (100-599): made on the spot.
    assert informational_head(600, []) == b"HTTP/1.1 600 \r\n\r\n"


@pytest.mark.parametrize("code", [100, 101, 103, 199, 200, 404, 599])
def test_the_status_line_table_is_status_line(code: int) -> None:
    assert http1_head.STATUS_LINES[code] == status_line(code)


# -- http1_head.py: heads and first pieces on the wire --------------------------------------------


def test_the_answer_to_a_malformed_request_is_framed_exactly(serve: Serve) -> None:
    """A rejected request's answer (error_response): status line, text/plain, its length,
    `connection: close`, the default headers once, then the reason as its body."""
    with serve(scope_app, date_header=False) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        raw = until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 400 Bad Request",
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"server: fastserve",
    ], raw
    assert body and body.isascii(), raw


BIG = 0x400A  # over COPY_LIMIT, and a chunk size with a hex letter in it


async def pieces_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/whole: one final body of BIG bytes; /<a>,<b>,...: a streamed body of those sizes
    (the last piece ends it)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] == "/whole":
        await send({"type": "http.response.body", "body": b"w" * BIG})
        return
    sizes = [int(n) for n in scope["path"].strip("/").split(",")]
    for i, size in enumerate(sizes):
        more = i < len(sizes) - 1
        await send({"type": "http.response.body", "body": b"s" * size, "more_body": more})


@pytest.mark.parametrize(
    ("target", "framed"),
    [
        ("/whole", b"w" * BIG),
        ("/26,0", b"1a\r\n" + b"s" * 26 + b"\r\n0\r\n\r\n"),
        ("/16394,3", b"400a\r\n" + b"s" * BIG + b"\r\n3\r\nsss\r\n0\r\n\r\n"),
    ],
    ids=["large-whole", "small-first-chunk", "large-first-chunk"],
)
def test_the_first_piece_of_a_body_is_framed_exactly(
    serve: Serve, target: str, framed: bytes
) -> None:
    """The head and the first piece of body (frame_response): a whole body gets its
    Content-Length and nothing after it; a streamed one is chunked, the sizes in hex
    (RFC 9112 §7.1), whether the first piece is joined into the head or written beside it
    (from COPY_LIMIT on)."""
    with serve(pieces_app, date_header=False) as srv, srv.connect() as sock:
        sock.sendall(request(target, headers="Connection: close\r\n"))
        raw = until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    framing = b"content-length: %d" % BIG if target == "/whole" else b"transfer-encoding: chunked"
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        framing,
        b"connection: close",
        b"server: fastserve",
    ], head
    assert body == framed, (len(body), body[:40], body[-40:])


# -- http1_head.py: the 101 of a WebSocket handshake ---------------------------------------------


def accept_with(fields: list[tuple[bytes, bytes]]) -> Any:
    """A WebSocket app that accepts with `fields` as extra response headers."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept", "headers": fields})
            await receive()  # until the client goes

    return app


def head_fields(head: bytes) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        found.setdefault(name.lower(), []).append(value)
    return found


@pytest.mark.parametrize(
    ("fields", "server"),
    [([], b"fastserve"), ([(b"Server", b"mine")], b"mine")],
    ids=["none", "server"],
)
def test_a_101_has_one_server_and_one_date(
    serve: Serve, fields: list[tuple[bytes, bytes]], server: bytes
) -> None:
    """Server is the app's when it sets one in websocket.accept (in any case: field names
    are case-insensitive, RFC 9110 §5.1), else the server's; so is Date (the WebSocket
    library's own is left out): never a second (a singleton field, RFC 9110 §5.3, §6.6.1)."""
    with serve(accept_with(fields)) as srv, RawWS(srv.port) as ws:
        assert ws.status == 101, ws.head
        found = head_fields(ws.head)
    assert found[b"server"] == [server], ws.head
    assert len(found[b"date"]) == 1, ws.head
    assert found[b"upgrade"] == [b"websocket"], ws.head


def test_a_101_with_the_apps_date_has_one_date(serve: Serve) -> None:
    app_date = b"Tue, 01 Dec 2026 00:00:00 GMT"
    with serve(accept_with([(b"date", app_date)])) as srv, RawWS(srv.port) as ws:
        assert ws.status == 101, ws.head
        found = head_fields(ws.head)
    assert found[b"date"] == [app_date], ws.head
