"""The HTTP/1.1 wire behaviour of the core server, over real sockets, on both loops: request
bodies, response framing, keep-alive, pipelining, 100-continue and flow control. (Response
headers: test_http1_headers.py; app errors, malformed requests, disconnects:
test_http1_errors.py.)

Requests are written as raw bytes (so the tests control framing, splitting and pipelining);
responses are parsed by h11 (see `Wire`), an independent HTTP/1.1 implementation, so a framing
mistake by the server fails the parse instead of slipping past a substring check.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from tests.apps.core_apps import (
    Probe,
    core_app,
    counted_download,
    hold_then_count,
    recording_echo,
)
from tests.helpers import Serve, Wire, fetch, request, stalled

# -- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["content-length", "chunked"])
def test_request_body_delivered_in_pieces_as_they_arrive(serve: Serve, encoding: str) -> None:
    probe = Probe()
    pieces = [b"a" * 10, b"b" * 10, b"c" * 10]
    with serve(recording_echo(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        if encoding == "chunked":
            wire.send(request("/", "POST", "Transfer-Encoding: chunked\r\n"))
            frames = [b"a\r\n" + p + b"\r\n" for p in pieces[:-1]]
            frames.append(b"a\r\n" + pieces[-1] + b"\r\n0\r\n\r\n")
        else:
            wire.send(request("/", "POST", "Content-Length: 30\r\n"))
            frames = pieces
        for i, frame in enumerate(frames):
            wire.send(frame)
            message = probe.get()  # the app sees each piece before the next is even sent
            assert message["type"] == "http.request"
            assert message["body"] == pieces[i]
            assert message["more_body"] is (i < 2)
        response = wire.response("POST")
    assert response.status == 200
    assert response.body == b"".join(pieces)


# -- response framing -------------------------------------------------------------------------


def test_chunked_response_when_the_app_gives_no_length(serve: Serve) -> None:
    with serve(core_app) as srv:
        response = fetch(srv, request("/stream?n=3"))
    assert response.header(b"transfer-encoding") == b"chunked"
    assert response.header(b"content-length") is None
    assert response.body == b"chunk0\nchunk1\nchunk2\n"


def test_content_length_added_when_the_body_is_one_message(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello"))
        response = wire.response()
        wire.send(request("/stream-cl"))  # the app's own Content-Length, streamed
        streamed = wire.response()
    assert response.all(b"content-length") == [b"5"]
    assert response.header(b"transfer-encoding") is None
    assert response.body == b"hello"
    assert streamed.all(b"content-length") == [b"10"]
    assert streamed.header(b"transfer-encoding") is None
    assert streamed.body == b"0123456789"


def test_http10_streaming_response_is_close_delimited(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"GET /stream?n=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = wire.response()  # h11 reads an unframed body up to EOF
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"content-length") is None
    assert response.header(b"connection") == b"close"
    assert response.body == b"chunk0\nchunk1\n"


@pytest.mark.parametrize("target", ["/hello", "/stream?n=2", "/stream-cl"])
def test_head_sends_no_body(serve: Serve, target: str) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request(target, "HEAD") + request("/hello"))
        head = wire.response("HEAD")
        after = wire.response()  # parses only if the HEAD response had no body bytes
    assert head.status == 200
    assert head.body == b""
    if target == "/hello":
        assert head.header(b"content-length") == b"5"
    assert after.body == b"hello"


@pytest.mark.parametrize("target", ["/status?code=204&body=x", "/status?code=304&cl=7&body=x"])
def test_bodiless_statuses_carry_no_body(serve: Serve, target: str) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request(target) + request("/hello"))
        first = wire.response()
        after = wire.response()
        assert b"\r\n\r\nHTTP/1.1 200" in wire.raw  # nothing between the two responses
    assert first.status in (204, 304)
    assert first.header(b"transfer-encoding") is None
    assert after.body == b"hello"


def test_informational_status_as_final_response_is_an_app_error(serve: Serve) -> None:
    """A 1xx is interim (RFC 9110 §15.2): as the final response it would leave the client
    waiting for one that never comes."""
    with serve(core_app) as srv:
        response = fetch(srv, request("/status?code=103"))
    assert response.status == 500
    assert response.informational == []


# -- keep-alive and Connection ----------------------------------------------------------------


@pytest.mark.parametrize("given", [False, True], ids=["bound", "given"])
def test_accepted_connections_send_small_writes_at_once(serve: Serve, given: bool) -> None:
    """TCP_NODELAY on the server's side of every TCP connection, on both loops: without it a
    small write behind an unacknowledged one waits for the client's delayed ACK (up to 40 ms
    on Linux). asyncio sets it only on sockets made with proto IPPROTO_TCP (uvloop always),
    and an accepted socket takes the listening socket's proto: so also for a listening
    socket made with proto 0 and given to the server (gunicorn's, an embedder's), which
    stays the caller's, open and as it was."""
    options: dict[str, Any] = {}
    if given:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        options["sockets"] = [listener]
    with serve(core_app, **options) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().status == 200
        state = srv.server.state
        assert state is not None
        mine = sock.getsockname()
        (server_side,) = [
            peer
            for conn in state.connections
            if (peer := conn.transport.get_extra_info("socket")) is not None
            and peer.getpeername() == mine
        ]
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    if given:
        assert listener.proto == 0 and listener.fileno() >= 0  # not closed under its owner
        listener.close()


def test_keep_alive_is_the_default_for_http11(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        for _ in range(3):
            wire.send(request("/hello"))
            response = wire.response()
            assert response.body == b"hello"
            assert response.header(b"connection") is None


def test_http10_keep_alive_on_request(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        for _ in range(2):
            wire.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = wire.response()
            assert response.header(b"connection") == b"keep-alive"
            assert response.body == b"hello"
        wire.send(b"GET /hello HTTP/1.0\r\n\r\n")  # 1.0 without keep-alive: closed
        assert wire.response().header(b"connection") == b"close"
        assert wire.closed()


def test_connection_close_from_the_client(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello", headers="Connection: close\r\n"))
        response = wire.response()
        assert response.all(b"connection") == [b"close"]
        assert wire.closed()


def test_connection_close_from_the_app(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/close"))
        response = wire.response()
        assert response.all(b"connection") == [b"close"]
        assert response.body == b"bye"
        assert wire.closed()


# -- pipelining -------------------------------------------------------------------------------


def test_pipelined_responses_in_request_order_even_when_the_first_is_slow(serve: Serve) -> None:
    batch = (
        request("/slow?s=0.3")
        + request("/echo", "POST", "Content-Length: 4\r\n", b"ping")
        + request("/stream?n=1")
        + request("/hello")
    )
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(batch)  # one write
        bodies = [wire.response(m).body for m in ("GET", "POST", "GET", "GET")]
    assert bodies == [b"slow s=0.3", b"ping", b"chunk0\n", b"hello"]


def test_unread_body_is_skipped_before_the_next_request(serve: Serve) -> None:
    """The app answers without reading a 1 MiB body: the body is discarded, not parsed as the
    next request, and the connection stays usable."""
    size = 1 << 20
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello", "POST", f"Content-Length: {size}\r\n"))
        assert wire.response("POST").body == b"hello"
        wire.send(b"G" * size + request("/echo", "POST", "Content-Length: 2\r\n", b"ok"))
        assert wire.response("POST").body == b"ok"


def test_nothing_is_answered_after_connection_close(serve: Serve) -> None:
    """RFC 9112 §9.6: a request with `Connection: close` is the last one answered."""
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello", headers="Connection: close\r\n") + request("/echo"))
        assert wire.response().body == b"hello"
        assert wire.closed()


def test_many_pipelined_requests(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"".join(request(f"/slow?s=0&i={i}") for i in range(50)))
        bodies = [wire.response().body for _ in range(50)]
    assert bodies == [b"slow s=0&i=%d" % i for i in range(50)]


# -- Expect: 100-continue (RFC 9110 §10.1.1) ---------------------------------------------------


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, "connection closed"
        data += chunk
    return data


def test_100_continue_sent_when_the_app_first_reads(serve: Serve) -> None:
    probe = Probe()
    with serve(hold_then_count(probe)) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", "Content-Length: 5\r\nExpect: 100-continue\r\n"))
        assert probe.get() == "started"
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # the app has not called receive() yet: no 100
        probe.release.set()
        sock.settimeout(5)
        assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        wire = Wire(sock)
        wire.send(b"12345")
        response = wire.response("POST")
    assert response.body == b"5"


def test_100_continue_when_the_app_reads_after_starting_its_response(serve: Serve) -> None:
    """`http.response.start` writes nothing by itself: until the head is written, a first
    receive() still owes the client its 100 (else it waits for a body that never comes)."""
    with serve(core_app) as srv, srv.connect() as sock:
        sock.sendall(
            request("/start-then-echo", "POST", "Content-Length: 5\r\nExpect: 100-continue\r\n")
        )
        assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        wire = Wire(sock)
        wire.send(b"12345")
        assert wire.response("POST").body == b"12345"


def test_no_100_continue_when_the_app_answers_without_reading(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello", "POST", "Content-Length: 5\r\nExpect: 100-continue\r\n"))
        response = wire.response("POST")
        assert response.informational == []
        assert response.body == b"hello"
        # The client may or may not send the announced body now: the next bytes cannot be
        # parsed unambiguously, so the server must close (and say so).
        assert response.header(b"connection") == b"close"
        assert wire.closed()


# -- flow control -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_unread_upload_pauses_reading(serve: Serve) -> None:
    """The app does not read: after the kernel buffers fill, the client's send blocks."""
    total = 50 * 1024 * 1024
    probe = Probe()
    piece = b"u" * 65536
    with serve(hold_then_count(probe)) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", f"Content-Length: {total}\r\n"))
        assert probe.get() == "started"
        sock.settimeout(1.0)
        sent = 0
        while sent < total:
            try:
                sent += sock.send(piece[: min(len(piece), total - sent)])
            except TimeoutError:
                break
        # Loopback kernel buffers hold a few MiB; the server holds ~64 KiB more.
        assert sent < total // 4, f"the server swallowed {sent} bytes of an unread body"
        probe.release.set()
        sock.settimeout(10)
        while sent < total:
            sent += sock.send(piece[: min(len(piece), total - sent)])
        response = Wire(sock).response("POST", timeout=10)
    assert response.body == str(total).encode()


@pytest.mark.timeout(60)
def test_slow_reader_makes_send_wait(serve: Serve) -> None:
    pieces, size = 32, 1024 * 1024
    probe = Probe()
    with serve(counted_download(probe, pieces, size)) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(10)
        with sock:
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(request("/"))
            first = sock.recv(1024)
            assert first.startswith(b"HTTP/1.1 200")
            sent = stalled(srv, lambda: probe.counter, "the app's send() calls to stop returning")
            # A few MiB sit in kernel buffers; the rest must wait for the client to read.
            assert sent < pieces // 2, f"send() returned {sent} times for a non-reader"
            wire = Wire(sock)
            wire.conn.receive_data(first)
            response = wire.response(timeout=10)
    assert probe.counter == pieces
    assert len(response.body) == pieces * size


# -- several connections at once ---------------------------------------------------------------


def test_concurrent_connections_are_served_independently(serve: Serve) -> None:
    results: list[bytes] = []

    def client(i: int) -> None:
        with srv.connect() as sock:
            wire = Wire(sock)
            for j in range(5):
                wire.send(
                    request(f"/echo?{i}", "POST", "Content-Length: 6\r\n", b"%03d%03d" % (i, j))
                )
                results.append(wire.response("POST").body)

    with serve(core_app) as srv:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert sorted(results) == sorted(b"%03d%03d" % (i, j) for i in range(8) for j in range(5))
