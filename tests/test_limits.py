"""Size, body and concurrency limits with hostile input over real sockets, on both loops.

Every refusal must be precise (its own status and a short body), close the connection, log
one info line without a traceback, and leave the server serving others. (Requests refused
for breaking RFC 9112 rather than a limit: test_validation.py.)
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

import pytest

from tests.apps.core_apps import Probe, recording_app
from tests.conftest import run_server
from tests.helpers import (
    Serve,
    Wire,
    assert_serving,
    error_log,
    exchange,
    request,
    status_of,
    until_closed,
)

# -- size limits ----------------------------------------------------------------------------


def test_request_line_too_long_is_414(serve: Serve) -> None:
    probe = Probe()
    with serve(recording_app(probe), limit_request_line=200) as srv:
        with error_log(logging.INFO) as records:
            raw = exchange(srv, request("/" + "a" * 300))
        assert status_of(raw) == 414
        assert raw.endswith(b"\r\n\r\nRequest-URI too long")
        assert b"connection: close" in raw
        rejected = [r for r in records if "rejected" in r.getMessage()]
        assert len(rejected) == 1
        assert rejected[0].levelno == logging.INFO and rejected[0].exc_info is None
        assert "127.0.0.1:" in rejected[0].getMessage() and "414" in rejected[0].getMessage()
        assert probe.events.empty()  # the app never ran
        assert_serving(srv)
        # Exactly at the limit is fine.
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/" + "a" * 199, "POST", "Content-Length: 0\r\n"))
            assert wire.response("POST").status == 200


def test_too_many_header_fields_is_431(serve: Serve) -> None:
    with serve(recording_app(Probe()), limit_request_fields=5) as srv:
        # Host + 4 = 5 fields: accepted; Host + 5 = 6: refused.
        ok = "".join(f"X-{i}: {i}\r\n" for i in range(4))
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/", "GET", ok))
            assert wire.response().status == 200
        bad = "".join(f"X-{i}: {i}\r\n" for i in range(5))
        raw = exchange(srv, request("/", "GET", bad))
        assert status_of(raw) == 431
        assert raw.endswith(b"Too many request header fields")
        assert_serving(srv)


def test_header_field_too_large_is_431(serve: Serve) -> None:
    with serve(recording_app(Probe()), limit_request_field_size=100) as srv:
        raw = exchange(srv, request("/", "GET", "X-Big: " + "v" * 200 + "\r\n"))
        assert status_of(raw) == 431
        assert raw.endswith(b"Request header field too large")
        assert_serving(srv)


def test_head_dribbled_in_many_reads_is_refused(serve: Serve) -> None:
    """Small fields, each under the size limit, in separate writes and without an end: the
    head is refused once it passes the whole-head cap, line + fields x (field size + 2).
    (The cap bounds what is counted; a first read of up to 256 KiB may come on top.)"""
    options = {"limit_request_fields": 100, "limit_request_field_size": 100}
    with serve(recording_app(Probe()), limit_request_line=100, **options) as srv:
        pieces = [b"GET / HTTP/1.1\r\nHost: x\r\n"]
        pieces += [b"X-%06d: %s\r\n" % (i, b"v" * 80) for i in range(4000)]  # ~360 KB
        with srv.connect() as sock:
            try:
                for piece in pieces:
                    sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass
            raw = until_closed(sock)
        assert status_of(raw) == 431
        assert raw.endswith(b"Request header fields too large")
        assert_serving(srv)


# -- body limit -----------------------------------------------------------------------------


def test_content_length_over_the_body_limit_is_413_before_the_app_runs(serve: Serve) -> None:
    probe = Probe()
    with serve(recording_app(probe), limit_request_body=1000) as srv:
        raw = exchange(srv, request("/", "POST", "Content-Length: 1001\r\n"))
        assert status_of(raw) == 413
        assert raw.endswith(b"Request body too large")
        assert probe.events.empty()
        # With Expect: 100-continue the client is told before it sends anything.
        raw = exchange(
            srv, request("/", "POST", "Content-Length: 5000\r\nExpect: 100-continue\r\n")
        )
        assert status_of(raw) == 413 and b"100 Continue" not in raw
        with srv.connect() as sock:  # exactly the limit is fine
            wire = Wire(sock)
            wire.send(request("/", "POST", "Content-Length: 1000\r\n", b"x" * 1000))
            response = wire.response("POST")
        assert response.status == 200 and response.body.startswith(b"1000 ")


def test_a_refused_upload_still_reads_its_413(serve: Serve) -> None:
    """The client keeps sending the body it was refused for: it still gets the 413. (Closing
    with unread input resets the connection, which can destroy the answer before the client
    reads it; the server half-closes and drains instead, RFC 9112 §9.6.)"""
    with serve(recording_app(Probe()), limit_request_body=1000) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", "Content-Length: 2000000\r\n"))
        try:
            for _ in range(100):
                sock.sendall(b"u" * 8000)  # 800 KB after the answer is out
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = until_closed(sock)
    assert status_of(raw) == 413


def test_chunked_body_crossing_the_limit_is_413_and_the_app_sees_a_disconnect(
    serve: Serve,
) -> None:
    probe = Probe()
    with serve(recording_app(probe), limit_request_body=1000) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"258\r\n" + b"a" * 600 + b"\r\n")
        assert probe.get()[0] == "scope"
        assert probe.get()["body"] == b"a" * 600
        sock.sendall(b"258\r\n" + b"b" * 600 + b"\r\n")  # 1200 > 1000
        assert probe.get()["type"] == "http.disconnect"
        raw = until_closed(sock)
    assert status_of(raw) == 413
    assert raw.endswith(b"Request body too large")


def streaming_then_reading(probe: Probe) -> Any:
    """Starts a streamed response at once, then reads its request body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        while True:
            message = await receive()
            probe.put(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        try:
            await send({"type": "http.response.body", "body": b"end"})
        except OSError:
            probe.put("send failed")

    return app


def test_body_limit_crossed_after_the_response_started_closes_the_connection(
    serve: Serve,
) -> None:
    probe = Probe()
    with serve(streaming_then_reading(probe), limit_request_body=100) as srv:
        with srv.connect() as sock:
            sock.sendall(request("/", "POST", "Transfer-Encoding: chunked\r\n"))
            sock.sendall(b"50\r\n" + b"a" * 80 + b"\r\n")
            assert probe.get()["body"] == b"a" * 80
            sock.sendall(b"50\r\n" + b"b" * 80 + b"\r\n")
            assert probe.get()["type"] == "http.disconnect"
            assert probe.get() == "send failed"
            raw = until_closed(sock)
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert b"started" in raw and b"413" not in raw
        assert not raw.endswith(b"0\r\n\r\n")  # the chunked body is visibly cut short
        assert_serving(srv)


# -- concurrency -------------------------------------------------------------------------------


def holding_app(probe: Probe) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            probe.put("holding")
            await probe.wait_release()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


def test_limit_concurrency_refuses_in_flight_requests_over_the_limit(serve: Serve) -> None:
    probe = Probe()
    with serve(holding_app(probe), limit_concurrency=1) as srv:
        # An idle keep-alive connection does not count against the limit.
        idle = srv.connect()
        idle_wire = Wire(idle)
        idle_wire.send(request("/quick"))
        assert idle_wire.response().status == 200
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/quick"))
            assert wire.response().status == 200
        holder = srv.connect()
        holder.sendall(request("/hold"))
        assert probe.get() == "holding"
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/quick"))
            refused = wire.response()
        assert refused.status == 503
        assert refused.body == b"Service Unavailable"
        probe.release.set()
        assert Wire(holder).response().status == 200
        idle_wire.send(request("/quick"))  # the slot is free again
        assert idle_wire.response().status == 200
        holder.close()
        idle.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs iproute2's ss")
def test_backlog_reaches_the_listening_socket() -> None:
    with run_server(recording_app(Probe()), backlog=37) as srv:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{srv.port}"], capture_output=True, text=True, timeout=10
        ).stdout
    # For a listening socket, ss shows the backlog in the Send-Q column.
    assert out.split()[2] == "37", out
