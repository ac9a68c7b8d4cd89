"""The ASGI rules of server/protocols/cycle.py that a mutation pass (mutmut 3, docs/testing.md)
found unchecked: every test here failed against at least one mutant the rest of the suite let
live. Over real sockets on both loops where the rule shows on the wire (the 500 or the abort,
the reason logged, the headers, flow control); by direct calls where it is pure logic (header
validation) or where only a race would reach it through a socket (a channel that finds the
client gone while the response ends). Two bugs found on the way are fixed: a refused
WebSocket handshake's two Date fields, and the error for trailers sent before the body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import h11
import pytest

from fastserve.protocols import cycle as cycle_module
from fastserve.protocols.cycle import RequestCycle, _check_name, check_field
from fastserve.types import ClientDisconnected
from tests.apps.core_apps import Probe, Receive, Scope, Send, core_app, recording_echo
from tests.helpers import (
    Serve,
    Wire,
    abandon_request,
    abort,
    error_log,
    request,
    sent_and_read,
    settle,
    stalled,
    status_of,
    unacknowledged,
    unread_by_server,
    until_closed,
    wait_until,
)
from tests.test_metrics import samples, total, value

Message = dict[str, Any]
START: Message = {"type": "http.response.start", "status": 200, "headers": []}
COMPILED = not cycle_module.__file__.endswith(".py")


def script(*messages: Message) -> Callable[[Scope, Receive, Send], Any]:
    """An app that sends `messages` in order (its exceptions reach the server)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        for message in messages:
            await send(message)

    return app


def app_errors(records: list[logging.LogRecord]) -> list[BaseException]:
    """The exceptions of the "Exception in ASGI application" records (any other error
    record fails the test)."""
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert [r.msg for r in errors] == ["Exception in ASGI application"] * len(errors), errors
    return [r.exc_info[1] for r in errors if r.exc_info and r.exc_info[1]]


# -- the app's mistakes: a 500 before the head, an abort after it, and the reason logged -------

ABORTED = "aborted"


def misuse_cases(tmp: Path) -> dict[str, tuple[list[Message], int | str, str]]:
    """name -> (messages, 500 or ABORTED, the exception's message)."""
    blob = tmp / "blob.bin"  # (10 bytes, written by the test)
    trailers_start = {**START, "trailers": True}
    return {
        "body-before-start": (
            [{"type": "http.response.body", "body": b"never"}],
            500,
            "expected 'http.response.start', got 'http.response.body'",
        ),
        "longer-than-its-length": (
            [
                {**START, "headers": [(b"content-length", b"2")]},
                {"type": "http.response.body", "body": b"abc"},
            ],
            500,
            "response body longer than its Content-Length",
        ),
        "shorter-than-its-length": (
            [
                {**START, "headers": [(b"content-length", b"2")]},
                {"type": "http.response.body", "body": b"a"},
            ],
            500,
            "response body shorter than its Content-Length",
        ),
        "trailers-not-announced": (
            [START, {"type": "http.response.trailers", "headers": []}],
            500,
            "expected 'http.response.body', got 'http.response.trailers'",
        ),
        "unknown-type": (
            [START, {"type": "http.response.nonsense"}],
            500,
            "expected 'http.response.body', got 'http.response.nonsense'",
        ),
        "body-after-the-last-body": (
            [
                trailers_start,
                {"type": "http.response.body", "body": b"x"},
                {"type": "http.response.body", "body": b"y"},
            ],
            ABORTED,
            "expected 'http.response.trailers', got 'http.response.body'",
        ),
        "framing-trailer": (
            [
                trailers_start,
                {"type": "http.response.body", "body": b"x"},
                {"type": "http.response.trailers", "headers": [(b"content-length", b"1")]},
            ],
            ABORTED,
            "b'content-length' is not allowed as a trailer (RFC 9110 §6.5.1)",
        ),
        "bad-value": (
            [{**START, "headers": [(b"x-bad", b"a\r\nb")]}],
            500,
            "invalid response header value for b'x-bad'",
        ),
        "bad-length": (
            [{**START, "headers": [(b"content-length", b"abc")]}],
            500,
            "invalid content-length b'abc'",
        ),
        "two-lengths": (
            [{**START, "headers": [(b"content-length", b"1")] * 2}],
            500,
            "several content-length headers",
        ),
        "pathsend-after-body": (
            [
                START,
                {"type": "http.response.body", "body": b"x", "more_body": True},
                {"type": "http.response.pathsend", "path": str(blob)},
            ],
            ABORTED,
            "'http.response.pathsend' after the body started",
        ),
        "pathsend-relative": (
            [START, {"type": "http.response.pathsend", "path": "blob.bin"}],
            500,
            "'http.response.pathsend' needs an absolute path, got 'blob.bin'",
        ),
        "pathsend-bytes": (  # an absolute path, but not a str
            [START, {"type": "http.response.pathsend", "path": os.fsencode(blob)}],
            500,
            f"'http.response.pathsend' needs an absolute path, got {os.fsencode(blob)!r}",
        ),
        "pathsend-directory": (
            [START, {"type": "http.response.pathsend", "path": str(tmp)}],
            500,
            f"'http.response.pathsend': {str(tmp)!r} is not a file",
        ),
        "pathsend-wrong-length": (
            [
                {**START, "headers": [(b"content-length", b"4")]},
                {"type": "http.response.pathsend", "path": str(blob)},
            ],
            500,
            "the file's size (10) is not the response's Content-Length (4)",
        ),
        "hint-bad-link": (
            [{"type": "http.response.early_hint", "links": [b"</a>\r\nx: y"]}, START],
            500,
            "invalid response header value for b'link'",
        ),
    }


CASES = list(misuse_cases(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASES)
def test_an_app_mistake_is_a_500_or_an_abort_with_its_reason_logged(
    serve: Serve, tmp_path: Path, case: str
) -> None:
    (tmp_path / "blob.bin").write_bytes(b"0123456789")
    messages, outcome, reason = misuse_cases(tmp_path)[case]
    with serve(script(*messages)) as srv, srv.connect() as sock, error_log() as records:
        sock.sendall(request("/"))
        raw = until_closed(sock)
        wait_until(lambda: bool(records), "the error logged")
    if outcome == ABORTED:
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw
        assert not raw.endswith(b"0\r\n\r\n"), raw  # no last chunk: the client sees the cut
    else:
        assert status_of(raw) == outcome, raw
        assert raw.endswith(b"\r\n\r\nInternal Server Error"), raw
        assert raw.count(b"HTTP/1.1 ") == 1, raw  # (no 103 either)
    (exc,) = app_errors(records)
    assert str(exc) == reason


def test_trailers_before_the_body_name_the_body_as_expected(serve: Serve) -> None:
    app = script({**START, "trailers": True}, {"type": "http.response.trailers"})
    with serve(app) as srv, srv.connect() as sock, error_log() as records:
        sock.sendall(request("/"))
        assert status_of(until_closed(sock)) == 500
        wait_until(lambda: bool(records), "the error logged")
    (exc,) = app_errors(records)
    assert str(exc) == "expected 'http.response.body', got 'http.response.trailers'"


def test_an_app_that_returns_early_is_logged_as_such(serve: Serve) -> None:
    streamed = {"type": "http.response.body", "body": b"partial", "more_body": True}
    with serve(script()) as srv, srv.connect() as sock, error_log() as records:
        sock.sendall(request("/"))
        assert status_of(until_closed(sock)) == 500
        wait_until(lambda: bool(records), "the error logged")
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.ERROR, "ASGI app returned without sending a response")
    ]
    with serve(script(START, streamed)) as srv, srv.connect() as sock, error_log() as records:
        sock.sendall(request("/"))
        assert b"partial" in until_closed(sock)
        wait_until(lambda: bool(records), "the error logged")
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.ERROR, "ASGI app returned without completing the response")
    ]


def test_an_app_raising_after_the_client_left_is_a_debug_line(serve: Serve) -> None:
    """The client resets mid-download; the app lets send()'s OSError out: one DEBUG line
    naming the exception, nothing at WARNING or above."""

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send(START)
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})

    with serve(endless) as srv, error_log(logging.DEBUG) as records:
        sock = srv.connect()
        sock.sendall(request("/"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        abort(sock)
        wait_until(lambda: any(r.args for r in records), "the debug line")
    (line,) = [r for r in records if "after the client disconnected" in str(r.msg)]
    assert line.levelno == logging.DEBUG
    assert line.msg == "app raised after the client disconnected: %r"
    assert isinstance(line.args, tuple) and isinstance(line.args[0], ClientDisconnected)
    assert [r for r in records if r.levelno >= logging.WARNING] == []


def test_a_request_cancelled_at_shutdown_is_one_warning(serve: Serve) -> None:
    async def stuck(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send(START)
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            await asyncio.Event().wait()

    with serve(stuck, timeout_graceful_shutdown=0.1) as srv, error_log() as records:
        sock = srv.connect()
        sock.sendall(request("/"))
        received = b""
        while b"partial" not in received:
            data = sock.recv(65536)
            assert data, "the server closed early"
            received += data
        srv.stop()  # the graceful timeout passes: the app is cancelled
        sock.close()
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert (logging.WARNING, "request cancelled (server shutting down)") in lines, lines
    assert (logging.WARNING, "graceful shutdown timed out: cancelling 1 tasks") in lines, lines
    assert [r for r in records if r.levelno >= logging.ERROR] == []


def test_a_message_after_the_complete_response_is_an_error_logged(serve: Serve) -> None:
    done = {"type": "http.response.body", "body": b"done"}
    with serve(script(START, done, done)) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().body == b"done"  # complete: it stands
        wait_until(lambda: bool(records), "the error logged")
    (exc,) = app_errors(records)
    assert str(exc) == "'http.response.body' sent after the response was complete"


def test_send_after_the_client_left_raises_an_oserror_saying_so(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await send(START)
        except OSError as exc:
            probe.put(exc)

    with serve(app) as srv:
        abandon_request(srv)
        exc = probe.get()
    assert isinstance(exc, ClientDisconnected) and str(exc) == "client disconnected"


# -- the server's own answers --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_500_is_plain_text_and_a_head_gets_no_body(
    serve: Serve, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"access_log": True, "log_level": "info", "use_colors": False}
    with serve(core_app, **options) as srv, srv.connect() as sock:
        sock.sendall(request("/raise-before", method))
        raw = until_closed(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), raw
    assert b"\r\ncontent-type: text/plain; charset=utf-8\r\n" in head, raw
    assert b"\r\ncontent-length: 21\r\n" in head and b"\r\nconnection: close" in head, raw
    assert body == (b"" if method == "HEAD" else b"Internal Server Error")
    lines = [line for line in capsys.readouterr().out.splitlines() if '"' in line]
    assert re.search(rf'"{method} /raise-before HTTP/1\.1" 500 21 ', lines[-1]), lines


def test_a_503_refusal_keeps_the_connection(serve: Serve) -> None:
    """--limit-concurrency: the refused request gets a 503 and its connection stays open
    (only a retiring server closes it)."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            probe.put("held")
            await probe.wait_release()
        await core_app(scope, receive, send)

    with serve(app, limit_concurrency=1) as srv, srv.connect() as held, srv.connect() as sock:
        held.sendall(request("/hold"))
        assert probe.get() == "held"
        wire = Wire(sock)
        wire.send(request("/"))
        refused = wire.response()
        assert (refused.status, refused.header(b"connection")) == (503, None)
        assert refused.header(b"content-type") == b"text/plain; charset=utf-8"
        probe.release.set()
        assert Wire(held).response().status == 200
        state = srv.server.state
        assert state is not None
        wait_until(lambda: state.in_flight == 0, "the held request to end")
        wire.send(request("/hello"))
        assert wire.response().body == b"hello"


BAD_HANDSHAKE = request(
    "/", headers="Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
)  # no Sec-WebSocket-Key: a 400 from the WebSocket library, with its own headers


def test_a_refused_websocket_handshake_keeps_the_plain_text_type(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        sock.sendall(BAD_HANDSHAKE)
        raw = until_closed(sock)
    head = raw.partition(b"\r\n\r\n")[0]
    assert status_of(raw) == 400, raw
    assert head.count(b"\r\ncontent-type: text/plain; charset=utf-8\r\n") == 1, raw


def test_a_refused_websocket_handshake_has_one_date(serve: Serve) -> None:
    """Date is a singleton field (RFC 9110 §5.3, §6.6.1)."""
    with serve(core_app) as srv, srv.connect() as sock:
        sock.sendall(BAD_HANDSHAKE)
        raw = until_closed(sock)
    assert raw.lower().count(b"\r\ndate: ") == 1, raw


def test_the_servers_own_answers_are_counted(serve: Serve, tmp_path: Path) -> None:
    """--metrics counts a 500 the server wrote, and responses ended by trailers, a file or
    a body."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"file")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/trailers":
            await send({**START, "trailers": True})
            await send({"type": "http.response.body", "body": b"x"})
            await send({"type": "http.response.trailers", "headers": []})
        elif path == "/file":
            await send(START)
            await send({"type": "http.response.pathsend", "path": str(blob)})
        elif path == "/plain":
            await send(START)
            await send({"type": "http.response.body", "body": b"hello"})
        else:
            raise RuntimeError("boom")

    with serve(app, metrics=True, metrics_port=0) as srv:
        metrics = srv.server.metrics
        assert metrics is not None
        for path in ("/raise", "/trailers", "/file", "/plain"):
            with srv.connect() as sock:
                sock.sendall(request(path, headers="Connection: close\r\n"))
                assert status_of(until_closed(sock)) == (500 if path == "/raise" else 200)
        found = samples(metrics.port)
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="5xx") == 1
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="2xx") == 3
    assert value(found, "fastserve_response_body_bytes_total") == 21 + 1 + 4 + 5
    assert value(found, "fastserve_requests_unfinished_total", ended="app error") == 0


def test_an_unfinished_response_is_counted_by_how_it_ended(serve: Serve) -> None:
    with serve(core_app, metrics=True, metrics_port=0) as srv:
        metrics = srv.server.metrics
        assert metrics is not None
        with srv.connect() as sock:
            sock.sendall(request("/raise-after"))
            assert b"partial" in until_closed(sock)
        wait_until(
            lambda: (
                value(
                    samples(metrics.port), "fastserve_requests_unfinished_total", ended="app error"
                )
                == 1
            ),
            "the aborted response counted",
        )
        found = samples(metrics.port)
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="2xx") == 1
    assert value(found, "fastserve_response_body_bytes_total") == len(b"partial")


def test_a_client_gone_before_any_response_is_counted(serve: Serve) -> None:
    async def long_poll(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    with serve(long_poll, metrics=True, metrics_port=0) as srv:
        metrics = srv.server.metrics
        assert metrics is not None
        abandon_request(srv)
        wait_until(
            lambda: (
                value(
                    samples(metrics.port),
                    "fastserve_requests_unfinished_total",
                    ended="client gone",
                )
                == 1
            ),
            "the abandoned request counted",
        )
        found = samples(metrics.port)
    # With the requests, by status class (none sent: 0), and in the duration histogram.
    assert total(found, "fastserve_requests_total") == 1
    assert value(found, "fastserve_request_duration_seconds_count") == 1


# -- the app's headers ----------------------------------------------------------------------------


def test_status_999_is_a_final_status(serve: Serve) -> None:
    app = script({**START, "status": 999}, {"type": "http.response.body"})
    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        response = wire.response()
    assert (response.status, response.body) == (999, b"")  # (a body message without "body")


def test_a_header_name_never_seen_before_is_checked_and_sent(serve: Serve) -> None:
    name = b"x-fresh-" + uuid.uuid4().hex.encode()  # not in the valid-names cache yet
    app = script({**START, "headers": [(name, b"v")]}, {"type": "http.response.body"})
    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().header(name) == b"v"


def test_an_apps_field_named_like_a_header_default_goes_alongside_it(serve: Serve) -> None:
    """--header adds default fields; an app's field of the same name does not replace it (as
    uvicorn's default headers): only Server and Date are the app's to replace."""
    app = script(
        {**START, "headers": [(b"x-policy", b"app")]},
        {"type": "http.response.body", "body": b"ok"},
    )
    with serve(app, headers=["X-Policy: default"]) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        response = wire.response()
    assert response.all(b"x-policy") == [b"app", b"default"]
    assert len(response.all(b"date")) == 1 and len(response.all(b"server")) == 1


def test_the_apps_connection_close_closes_once(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        sock.sendall(request("/close") + request("/hello"))
        raw = until_closed(sock)
    assert raw.lower().count(b"\r\nconnection: ") == 1 and b"\r\nconnection: close\r\n" in raw
    assert raw.endswith(b"bye") and raw.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("te", [b"chunked", b"close"])
def test_the_apps_transfer_encoding_is_dropped_whatever_it_says(serve: Serve, te: bytes) -> None:
    """The server frames the response (RFC 9112 §6.1 is its job): the app's transfer-encoding
    goes, whatever its value, and leaves the connection open."""
    app = script(
        {**START, "headers": [(b"transfer-encoding", te)]},
        {"type": "http.response.body", "body": b"hello"},
    )
    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)  # (h11 refuses a response with both framings)
        wire.send(request("/"))
        response = wire.response()
        wire.send(request("/"))
        again = wire.response()
    assert (response.body, response.header(b"transfer-encoding")) == (b"hello", None)
    assert response.header(b"content-length") == b"5" and again.body == b"hello"


def test_content_length_dropped_from_a_204_is_a_debug_line(serve: Serve) -> None:
    app = script(
        {**START, "status": 204, "headers": [(b"content-length", b"0")]},
        {"type": "http.response.body"},
    )
    with serve(app) as srv, srv.connect() as sock, error_log(logging.DEBUG) as records:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 204
    dropped = [(r.levelno, r.getMessage()) for r in records if "dropped" in str(r.msg)]
    assert dropped == [
        (logging.DEBUG, "content-length dropped from a 204 response (RFC 9110 §8.6)")
    ]


# -- early hints ----------------------------------------------------------------------------------


def test_early_hints_carry_the_links_and_none_without_links(serve: Serve) -> None:
    hinted = script(
        {"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload", b"</b.js>"]},
        {"type": "http.response.early_hint"},  # no links: no 103
        START,
        {"type": "http.response.body", "body": b"page"},
    )
    with serve(hinted) as srv, srv.connect() as sock:
        sock.sendall(request("/", headers="Connection: close\r\n"))
        raw = until_closed(sock)
    hint = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nlink: </b.js>\r\n\r\n"
    assert raw.startswith(hint + b"HTTP/1.1 200 OK\r\n"), raw
    assert raw.count(b"HTTP/1.1 ") == 2 and raw.endswith(b"page")


# -- the request body -----------------------------------------------------------------------------


def test_the_end_of_a_chunked_body_alone_wakes_the_app(serve: Serve) -> None:
    """The last chunk arrives in a read of its own while the app waits in receive()."""
    probe = Probe()
    with serve(recording_echo(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        head = request("/", "POST", "Transfer-Encoding: chunked\r\n")
        sent_and_read(sock, head + b"5\r\nhello\r\n")
        assert probe.get()["more_body"] is True
        wire.send(b"0\r\n\r\n")
        assert wire.response("POST").body == b"hello"
    assert probe.get() == {"type": "http.request", "body": b"", "more_body": False}


def test_unread_body_pieces_add_up_to_the_pause(serve: Serve) -> None:
    """Each read is under the 64 KiB mark, their sum is not: the server stops reading."""
    probe = Probe()
    piece = b"u" * (40 * 1024)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await probe.wait_release()
        size = 0
        more = True
        while more:
            message = await receive()
            size += len(message["body"])
            more = message["more_body"]
        await send(START)
        await send({"type": "http.response.body", "body": b"%d" % size})

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", f"Content-Length: {3 * len(piece)}\r\n"))
        sent_and_read(sock, piece)
        sock.sendall(piece)  # past 64 KiB held, somewhere in this piece: reading pauses
        stalled(srv, lambda: unread_by_server(sock), "the server's reads to stop")
        sock.sendall(piece)  # (alone in the server's socket: one read would take it whole)
        unread = stalled(srv, lambda: unread_by_server(sock), "the server's reads to stop")
        assert unread >= len(piece)
        probe.release.set()
        assert Wire(sock).response("POST").body == b"%d" % (3 * len(piece))


def test_a_receive_after_the_half_close_reports_the_disconnect(serve: Serve) -> None:
    """The client's FIN came while the app was busy, not waiting in receive(): the next
    receive() after the body says http.disconnect at once (it will never be woken)."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["more_body"]:
            pass
        probe.put("body read")
        await probe.wait_release()
        probe.put((await asyncio.wait_for(receive(), 5))["type"])
        await send(START)
        await send({"type": "http.response.body", "body": b"still here"})

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(request("/"))
        assert probe.get() == "body read"
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: unacknowledged(sock) == 0, "the FIN acknowledged")
        settle(srv)  # the server's loop went round: it has seen the FIN
        probe.release.set()
        assert probe.get() == "http.disconnect"
        raw = until_closed(sock)
    assert status_of(raw) == 200 and raw.endswith(b"still here"), raw


def test_100_continue_is_sent_once(serve: Serve) -> None:
    """The app waits in receive() twice for a body in two pieces: one 100 Continue."""
    probe = Probe()
    with serve(recording_echo(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        head = request("/", "POST", "Content-Length: 10\r\nExpect: 100-continue\r\n")
        wire.send(head)
        sock.settimeout(5)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sent_and_read(sock, b"01234")
        assert probe.get()["body"] == b"01234"
        wire.send(b"56789")
        response = wire.response("POST")
    assert response.body == b"0123456789"
    assert b"100 Continue" not in wire.raw  # (the first one was read above)


# -- trailers -------------------------------------------------------------------------------------


def trailers_app(probe: Probe | None = None, **trailers: Any) -> Any:
    """A trailers response; with a probe, a second task waits in receive() meanwhile."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        listener = None
        if probe is not None:
            await receive()

            async def listen() -> None:
                probe.put(await receive())

            listener = asyncio.get_running_loop().create_task(listen())
            await asyncio.sleep(0)
        await send({**START, "trailers": True})
        await send({"type": "http.response.body", "body": b"body"})
        await send({"type": "http.response.trailers", **trailers})
        if listener is not None:
            await asyncio.wait_for(listener, 5)

    return app


def chunked_response(wire: Wire) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The next response's body and trailers (h11), read from `wire`'s socket."""
    conn = wire.conn
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "test")]))
    conn.send(h11.EndOfMessage())
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = wire.sock.recv(65536)
            wire.raw += data
            conn.receive_data(data)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return body, list(event.headers)


@pytest.mark.parametrize("te", [True, False])
def test_a_trailers_message_without_headers_ends_the_response_and_the_next_follows(
    serve: Serve, te: bool
) -> None:
    with serve(trailers_app()) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        sock.settimeout(5)
        for _ in range(2):
            wire.send(request("/", headers="TE: trailers\r\n" if te else ""))
            assert chunked_response(wire) == (b"body", [])
    assert records == []


def test_trailers_only_for_a_client_that_asked_with_te(serve: Serve) -> None:
    """Another field whose value says "trailers" is no `te: trailers` (RFC 9110 §10.1.4)."""
    app = trailers_app(headers=[(b"x-checksum", b"abc")])
    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        sock.settimeout(5)
        wire.send(request("/", headers="X-Note: trailers\r\nTE: gzip\r\n"))
        assert chunked_response(wire) == (b"body", [])
        wire.send(request("/", headers="TE: Trailers\r\n"))
        assert chunked_response(wire) == (b"body", [(b"x-checksum", b"abc")])


def test_the_trailers_wake_a_receive_waiting_in_another_task(serve: Serve) -> None:
    probe = Probe()
    with serve(trailers_app(probe, headers=[])) as srv, srv.connect() as sock:
        wire = Wire(sock)
        sock.settimeout(5)
        wire.send(request("/"))
        assert chunked_response(wire) == (b"body", [])
        assert probe.get() == {"type": "http.disconnect"}


# -- pathsend -------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "one").write_bytes(b"1")
    return tmp_path


@pytest.mark.parametrize(("name", "method"), [("empty", "GET"), ("one", "GET"), ("one", "HEAD")])
def test_a_tiny_file_by_pathsend(serve: Serve, files: Path, name: str, method: str) -> None:
    """An empty file, a 1-byte one, and a HEAD (headers only): the right length, no error,
    and the server closes only the file's descriptor (stdout's, 1, is the test's)."""
    stdout = os.fstat(1)
    path = files / name
    app = script(START, {"type": "http.response.pathsend", "path": str(path)})
    with serve(app) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        wire.send(request("/", method))
        response = wire.response(method)
        wire.send(request("/", method))
        assert wire.response(method).status == 200  # the connection is still usable
    size = path.stat().st_size
    assert (response.status, response.header(b"content-length")) == (200, b"%d" % size)
    assert response.body == (b"" if method == "HEAD" else path.read_bytes())
    assert records == []
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (stdout.st_dev, stdout.st_ino)


def holds(fd: int, path: Path) -> bool:
    """Whether descriptor `fd` is open on the file at `path`."""
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except OSError:
        return False


def test_pathsend_closes_a_file_that_got_descriptor_0(serve: Serve, files: Path) -> None:
    """A server started with stdin closed (`fastserve ... <&-`): the file it opens for a
    pathsend may get descriptor 0, which must be closed after the response like any other."""
    probe = Probe()
    path = files / "one"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe.put("started")
        await probe.wait_release()
        await send(START)
        await send({"type": "http.response.pathsend", "path": str(path)})

    stdin = os.dup(0)
    try:
        with serve(app) as srv, srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/"))
            assert probe.get() == "started"
            os.close(0)  # (everything is open already: the file is the next descriptor)
            probe.release.set()
            assert wire.response().body == b"1"  # (its last byte may come before the close)
            wait_until(lambda: not holds(0, path), "descriptor 0 closed")
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)


def test_pathsend_then_trailers(serve: Serve, files: Path) -> None:
    app = script(
        {**START, "trailers": True},
        {"type": "http.response.pathsend", "path": str(files / "one")},
        {"type": "http.response.trailers", "headers": [(b"x-sum", b"1")]},
    )
    with serve(app) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        sock.settimeout(5)
        for _ in range(2):  # (the second: the first ended cleanly, trailers included)
            wire.send(request("/", headers="TE: trailers\r\n"))
            body, trailers = chunked_response(wire)
            # The file set the length: the body is framed by it, the trailers have no place.
            assert (body, trailers) == (b"1", [])
    assert records == []


def test_pathsend_wakes_a_receive_waiting_in_another_task(serve: Serve, files: Path) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

        async def listen() -> None:
            probe.put(await receive())

        listener = asyncio.get_running_loop().create_task(listen())
        await asyncio.sleep(0)
        await send(START)
        await send({"type": "http.response.pathsend", "path": str(files / "one")})
        await asyncio.wait_for(listener, 5)

    with serve(app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().body == b"1"
        assert probe.get() == {"type": "http.disconnect"}


# -- direct calls: header validation --------------------------------------------------------------


@pytest.fixture
def fresh_names() -> Iterator[None]:
    """An empty valid-names cache for the test (the server's requests filled it), restored
    after."""
    cache = cycle_module._VALID_NAMES
    saved = dict(cache)
    cache.clear()
    try:
        yield
    finally:
        cache.clear()
        cache.update(saved)


@pytest.mark.usefixtures("fresh_names")
def test_check_field_lowers_a_valid_name_and_remembers_it() -> None:
    for _ in range(2):  # the second time from the cache
        assert check_field(b"X-Trace-ID", b"v") == b"x-trace-id"
        assert _check_name(b"X-Trace-ID") == b"x-trace-id"
    assert cycle_module._VALID_NAMES == {b"X-Trace-ID": b"x-trace-id"}


@pytest.mark.parametrize("name", [b"", b"bad name", b"a:b", b"caf\xc3\xa9", "str-name", None])
@pytest.mark.usefixtures("fresh_names")
def test_check_field_refuses_a_name_that_is_no_token(name: Any) -> None:
    if COMPILED and not isinstance(name, bytes):
        # Compiled, the argument's type is checked first (a TypeError): a 500 all the same.
        with pytest.raises(TypeError):
            check_field(name, b"v")
        return
    with pytest.raises(RuntimeError) as raised:
        check_field(name, b"v")
    assert str(raised.value) == f"invalid response header name {name!r}"


@pytest.mark.parametrize("value", [b"a\nb", b"a\rb", b"a\x00b", "str-value", None])
@pytest.mark.usefixtures("fresh_names")
def test_check_field_refuses_a_value_that_could_split_the_head(value: Any) -> None:
    if COMPILED and not isinstance(value, bytes):
        with pytest.raises(TypeError):  # (as for a name above)
            check_field(b"x-v", value)
        return
    with pytest.raises(RuntimeError) as raised:
        check_field(b"x-v", value)
    assert str(raised.value) == "invalid response header value for b'x-v'"


@pytest.mark.usefixtures("fresh_names")
def test_check_field_passes_other_bytes_through() -> None:
    """Only CR, LF and NUL are refused (RFC 9110 §5.5: they MUST be; other CTLs are
    invalid too, but a recipient may keep them): HTAB, obs-text and the other controls go
    through as the app sent them."""
    for kept in (b"a\tb", b"\x80\xff", b"\x01", b"\x0b", b"\x0e", b"\x7f", b""):
        assert check_field(b"x-v", kept) == b"x-v", kept


@pytest.mark.usefixtures("fresh_names")
def test_the_valid_names_cache_is_bounded() -> None:
    for i in range(4100):
        _check_name(b"x-n%d" % i)
    assert len(cycle_module._VALID_NAMES) == 4096


# -- direct calls: a channel that finds the client gone as the response ends ----------------------


class GoneChannel:
    """A Channel whose writes fail as a transport already closing does (http1.py), and a
    state whose access log records how each unfinished response ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.calls: list[str] = []

    def start_response(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        self.calls.append("start")

    def send_body(self, cycle: RequestCycle, body: bytes, final: bool) -> None:
        raise ClientDisconnected("client disconnected")

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]]) -> None:
        raise ClientDisconnected("client disconnected")

    async def send_file(self, cycle: RequestCycle, fd: int, offset: int, count: int) -> None:
        self.calls.append("file")

    def must_wait(self) -> bool:
        return False

    def log_unfinished(self, cycle: RequestCycle, now: float, ended: str) -> None:
        self.ended.append(ended)


def gone_cycle(channel: GoneChannel) -> RequestCycle:
    scope = {"method": "GET", "headers": [(b"te", b"trailers")], "http_version": "1.1"}
    state = SimpleNamespace(loop=None, access_log=channel, metrics=None)
    return RequestCycle(scope, cast(Any, channel), cast(Any, state), True, False)


@pytest.mark.skipif(COMPILED, reason="a compiled cycle takes only a compiled Channel")
def test_a_client_gone_at_the_trailers_is_logged_as_client_gone() -> None:
    channel = GoneChannel()
    cycle = gone_cycle(channel)
    asyncio.run(cycle.send({**START, "trailers": True}))
    cycle.head_sent = True  # the body is out (the fake channel writes nothing):
    cycle.trailers = 2  # the trailers are next
    with pytest.raises(ClientDisconnected):
        asyncio.run(cycle.send({"type": "http.response.trailers", "headers": []}))
    assert channel.ended == ["client gone"]


@pytest.mark.skipif(COMPILED, reason="a compiled cycle takes only a compiled Channel")
def test_a_client_gone_at_the_end_of_a_file_is_logged_as_client_gone(files: Path) -> None:
    channel = GoneChannel()
    cycle = gone_cycle(channel)

    async def run() -> None:
        await cycle.send(START)
        await cycle.send({"type": "http.response.pathsend", "path": str(files / "one")})

    with pytest.raises(ClientDisconnected):
        asyncio.run(run())
    assert channel.calls == ["start", "file"]
    assert channel.ended == ["client gone"]


@pytest.mark.skipif(COMPILED, reason="a compiled cycle takes only a compiled Channel")
def test_a_consumed_body_leaves_nothing_counted() -> None:
    """What the cycle holds is what the channel counts for flow control (http1.py pauses
    reading over 64 KiB, h2.py sums it over streams): zero once the app took it all."""

    class Channel(GoneChannel):
        def body_consumed(self, cycle: RequestCycle) -> None:
            pass

    channel = Channel()
    cycle = gone_cycle(channel)
    cycle.feed_body(b"abc")
    cycle.feed_body(b"de")
    assert cycle.body_size == 5
    message = asyncio.run(cycle.receive())
    assert (message["body"], cycle.body_size) == (b"abcde", 0)
