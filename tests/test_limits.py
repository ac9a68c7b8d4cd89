"""Limits and request validation with hostile input over real sockets, on both loops.

Every refusal must be precise (its own status and a short body), close the connection, log
one info line without a traceback, and leave the server serving others.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.apps.core_apps import Probe, Wire, request
from tests.conftest import LOOPS, RunningServer, recv_all, run_server

Serve = Callable[..., Any]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def error_log() -> Iterator[list[logging.LogRecord]]:
    """What "fastserve.error" logs (enter after the server started: it resets handlers)."""
    handler = Records()
    logger = logging.getLogger("fastserve.error")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def exchange(srv: RunningServer, data: bytes | list[bytes], timeout: float = 5.0) -> bytes:
    """Send raw bytes (a list: in separate writes) and read until the server closes."""
    with srv.connect() as sock:
        for part in [data] if isinstance(data, bytes) else data:
            sock.sendall(part)
        return recv_all(sock, timeout)


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    return int(raw[9:12])


def recording_app(probe: Probe) -> Any:
    """Reads the whole body, answers 200 with what it saw; reports each message."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        probe.put(("scope", scope))
        size = 0
        while True:
            message = await receive()
            probe.put(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"%d %s %s" % (size, scope["raw_path"], scope["query_string"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def assert_serving(srv: RunningServer) -> None:
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/after", "POST", "Content-Length: 2\r\n", b"ok"))
        assert wire.response("POST").status == 200


# -- size limits ----------------------------------------------------------------------------


def test_request_line_too_long_is_414(serve: Serve) -> None:
    probe = Probe()
    with serve(recording_app(probe), limit_request_line=200) as srv:
        with error_log() as records:
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
            raw = recv_all(sock)
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
        raw = recv_all(sock)
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
        raw = recv_all(sock)
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
            raw = recv_all(sock)
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


# -- request validation (RFC 9112) ---------------------------------------------------------------

H = "Host: x\r\n"
INVALID: dict[str, tuple[bytes, int]] = {
    "missing Host on HTTP/1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two different Content-Lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "Content-Length with a sign": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
        400,
    ),
    "Content-Length as a list": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
        400,
    ),
    "Content-Length overflow": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", 400),
    "whitespace before colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", 400),
    "control char in target": (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "DEL in target": (b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "control char in header value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x07b\r\n\r\n", 400),
    "NUL in header name": (b"GET / HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", 400),
    "bare LF in header": (b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    "bare CR in header value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    "chunked not last": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    "only an unknown coding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    "chunked twice": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "unsupported coding before chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "identity before chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "Transfer-Encoding in HTTP/1.0": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "bad chunk size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "Host in trailers": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nHost: evil\r\n\r\n",
        400,
    ),
    "HTTP/2.0 request line": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/0.9 version": (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    "malformed version": (b"GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400),
    "asterisk form with GET": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "authority form with GET": (b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "relative target": (b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "userinfo in absolute form": (b"GET http://u:p@x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "non-http absolute form": (b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "unknown method": (b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "space in target": (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
}


@pytest.fixture(scope="module", params=LOOPS)
def strict(request: pytest.FixtureRequest) -> Iterator[tuple[RunningServer, Probe]]:
    """One server per loop for the validation table (starting ~70 servers would be slow)."""
    probe = Probe()
    with run_server(recording_app(probe), loop=request.param) as srv:
        yield srv, probe


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_request_is_refused(strict: tuple[RunningServer, Probe], case: str) -> None:
    srv, probe = strict
    data, expected = INVALID[case]
    while not probe.events.empty():
        probe.events.get()
    with error_log() as records:
        raw = exchange(srv, data)
    assert status_of(raw) == expected, raw
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head
    assert 0 < len(body) < 100
    lines = [r for r in records if "rejected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None and lines[0].levelno == logging.INFO
    if "trailers" not in case and "bad chunk" not in case:
        assert probe.events.empty(), "the app must not see a request refused at its head"


def test_absolute_form_maps_to_path_and_its_authority_replaces_host(
    strict: tuple[RunningServer, Probe],
) -> None:
    srv, probe = strict
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"GET http://Example.com:8080/a%20b?q=1#frag HTTP/1.1\r\nHost: other\r\n\r\n")
        assert wire.response().body == b"0 /a%20b q=1"
        wire.send(b"GET https://[::1]:8443 HTTP/1.1\r\nHost: other\r\n\r\n")
        assert wire.response().body == b"0 / "
    scopes = []
    while not probe.events.empty():
        event = probe.events.get()
        if isinstance(event, tuple):
            scopes.append(event[1])
    assert scopes[0]["path"] == "/a b"
    assert (b"host", b"Example.com:8080") in scopes[0]["headers"]
    assert (b"host", b"other") not in scopes[0]["headers"]
    assert (b"host", b"[::1]:8443") in scopes[1]["headers"]


def test_asterisk_form_for_options(strict: tuple[RunningServer, Probe]) -> None:
    srv, _ = strict
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        response = wire.response("OPTIONS")
    assert response.status == 200 and response.body == b"0 * "


def test_connect_reaches_the_app_and_the_connection_closes(
    strict: tuple[RunningServer, Probe],
) -> None:
    """We never tunnel: the app answers CONNECT like any request, then the connection closes
    and what the client sent after the head is not parsed as requests."""
    srv, _ = strict
    raw = exchange(srv, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGARBAGE")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert status_of(raw) == 200 and b"connection: close" in raw
    assert raw.endswith(b"0 example.com:443 ")


def test_trailers_are_dropped_not_merged_into_headers(strict: tuple[RunningServer, Probe]) -> None:
    srv, probe = strict
    while not probe.events.empty():
        probe.events.get()
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(
            b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        assert wire.response("POST").body == b"3 /t "
        wire.send(request("/next"))  # the trailer does not leak into the next request either
        assert wire.response().status == 200
        # Far more trailer fields than --limit-request-fields: dropped as they come, so
        # nothing accumulates.
        many = b"".join(b"X-T%d: v\r\n" % i for i in range(5000))
        wire.send(
            b"POST /many HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\n" + many + b"\r\n"
        )
        assert wire.response("POST").body == b"1 /many "
    scopes = [e[1] for e in list(probe.events.queue) if isinstance(e, tuple)]
    for scope in scopes:
        assert all(name != b"x-trailer" for name, _ in scope["headers"])


def test_bytes_after_connection_close_are_not_answered(strict: tuple[RunningServer, Probe]) -> None:
    """RFC 9112 §9.6: nothing after a request with `Connection: close` is processed."""
    srv, _ = strict
    raw = exchange(
        srv,
        b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 ") == 1 and raw.endswith(b"0 /1 ")
    raw = exchange(srv, b"GET /1 HTTP/1.0\r\n\r\nGARBAGE\r\n\r\n")
    assert raw.count(b"HTTP/1.1 ") == 1 and status_of(raw) == 200


@pytest.mark.timeout(30)
def test_hostile_connections_do_not_disturb_a_good_client() -> None:
    """Garbage from many connections at once: each refused, the server keeps serving."""
    with run_server(recording_app(Probe()), limit_request_line=500) as srv:
        results: list[int] = []
        lock = threading.Lock()

        def attack(i: int) -> None:
            payloads = list(INVALID.values())
            data = payloads[i % len(payloads)][0]
            if i % 5 == 0:
                data = request("/" + "z" * 1000)
            try:
                raw = exchange(srv, data, timeout=10)
            except OSError:
                raw = b""
            with lock:
                results.append(status_of(raw) if raw else 0)

        threads = [threading.Thread(target=attack, args=(i,)) for i in range(60)]
        for thread in threads:
            thread.start()
        assert_serving(srv)
        for thread in threads:
            thread.join(20)
        assert len(results) == 60
        assert all(400 <= status < 600 for status in results), results
        assert_serving(srv)


def test_rejection_reason_in_the_log_is_escaped(serve: Serve) -> None:
    """The reason logged is ours (or llhttp's fixed text): request bytes never reach the
    log line verbatim, so a client cannot forge log lines."""
    with serve(recording_app(Probe())) as srv:
        with error_log() as records:
            exchange(srv, b"GET /\r\nFAKE LOG LINE HTTP/1.1\r\n\r\n")
            exchange(srv, b"G\nET / HTTP/1.1\r\n\r\n")
        for record in records:
            assert "\n" not in record.getMessage() and "FAKE" not in record.getMessage()
