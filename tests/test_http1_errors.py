"""HTTP/1.1 error paths of the core server, over real sockets, on both loops: app errors
before and after the head, malformed requests, and clients that disconnect.

Each failure must be contained to its own connection: a precise answer where one can still be
sent (500 or 400, with `Connection: close`), one error log line, and the server serving on.
"""

from __future__ import annotations

import logging
import socket
import struct

import h11
import pytest

from tests.apps.core_apps import (
    Probe,
    answer_while_receiving,
    core_app,
    download_until_gone,
    receive_after_response,
    until_disconnect,
)
from tests.helpers import Serve, Wire, error_log, request, settle

# -- app errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["/raise-before", "/no-response", "/start-only", "/cl-longer", "/cl-shorter"]
)
def test_app_error_before_the_head_was_written_is_a_500(serve: Serve, target: str) -> None:
    with serve(core_app) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        wire.send(request(target))
        response = wire.response()
        assert wire.closed()
    assert response.status == 500
    assert response.header(b"connection") == b"close"
    assert response.body == b"Internal Server Error"
    assert len([r for r in records if r.levelno >= logging.ERROR]) == 1


@pytest.mark.parametrize("status", ['"200"', "99", "1000", "200.0", "null"])
def test_invalid_status_is_a_500(serve: Serve, status: str) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request(f"/bad-status?status={status}") + request("/body-first"))
        assert wire.response().status == 500
        assert wire.closed()
        assert b"never" not in wire.raw


@pytest.mark.parametrize("second", ["5", "6"])
def test_repeated_content_length_is_an_app_error(serve: Serve, second: str) -> None:
    """Recipients may reject repeated lengths, or frame by either (RFC 9110 §8.6): a client
    and a proxy could disagree, so the server answers 500 instead."""
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request(f"/two-lengths?second={second}"))
        assert wire.response().status == 500
        assert wire.closed()
    assert wire.raw.count(b"content-length") == 1  # the 500's own


def test_body_before_start_is_a_500(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/body-first"))
        assert wire.response().status == 500
        assert b"never" not in wire.raw


@pytest.mark.parametrize("target", ["/raise-after", "/cl-longer-streamed", "/cl-shorter-streamed"])
def test_app_error_after_the_head_was_written_aborts(serve: Serve, target: str) -> None:
    with serve(core_app) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        wire.send(request(target))
        with pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):
            wire.response()  # an incomplete body, then EOF or RST
    assert b"ABC" not in wire.raw and b"567" not in wire.raw  # the bad piece was not sent
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


def test_a_failing_request_does_not_affect_a_concurrent_neighbour(serve: Serve) -> None:
    with serve(core_app) as srv, srv.connect() as slow_sock, srv.connect() as bad_sock:
        slow, bad = Wire(slow_sock), Wire(bad_sock)
        slow.send(request("/slow?s=0.5"))
        bad.send(request("/raise-before"))
        assert bad.response().status == 500
        assert slow.response().body == b"slow s=0.5"
        slow.send(request("/hello"))
        assert slow.response().body == b"hello"


# -- malformed requests -----------------------------------------------------------------------

MALFORMED = {
    "garbage": b"GARBAGE\r\n\r\n",
    "bad-header-line": b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
    "bad-content-length": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    # The app is already reading the body when the bad chunk arrives: its receive() must
    # not wait forever, and the client still gets the 400.
    "bad-chunk-size": (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    ),
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_is_a_400_with_one_log_line(serve: Serve, name: str) -> None:
    with serve(core_app, log_level="info") as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        wire.send(MALFORMED[name])
        response = wire.response()
        assert wire.closed()
    assert response.status == 400
    assert response.header(b"connection") == b"close"
    assert (response.header(b"content-type") or b"").startswith(b"text/plain")
    assert 0 < len(response.body) < 200
    assert len(records) == 1
    assert records[0].exc_info is None
    assert "400" in records[0].getMessage()


def test_malformed_request_after_good_ones_is_answered_in_order(serve: Serve) -> None:
    """Pipelined: the good requests get their responses (which do not announce a close),
    then the bad one its 400 with `Connection: close`, then the connection closes."""
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/slow?s=0.2") + request("/hello") + MALFORMED["garbage"])
        first, second, error = wire.response(), wire.response(), wire.response()
        assert wire.closed()
    assert (first.body, second.body) == (b"slow s=0.2", b"hello")
    assert first.header(b"connection") is None and second.header(b"connection") is None
    assert (error.status, error.header(b"connection")) == (400, b"close")


# -- disconnects ------------------------------------------------------------------------------


def test_disconnect_mid_body_reaches_receive(serve: Serve) -> None:
    probe = Probe()
    with serve(until_disconnect(probe)) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", "Content-Length: 100\r\n", b"x" * 10))
        first = probe.get()
        assert (first["body"], first["more_body"]) == (b"x" * 10, True)
        sock.close()
        assert probe.get() == {"type": "http.disconnect"}


def test_send_raises_oserror_once_the_client_is_gone(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A client leaves mid-download while send() waits for the buffer to drain: the waiting
    send() wakes, the next raises an OSError (ASGI 2.4), and nothing is logged as an error."""
    probe = Probe()
    with serve(download_until_gone(probe)) as srv, error_log() as records:
        with srv.connect() as sock:
            sock.sendall(request("/"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            # Close with a reset (linger 0), as a client that crashed or gave up would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert probe.get().startswith("OSError")
        wire = Wire(srv.connect())
        with wire.sock:
            wire.send(request("/"))  # the server still serves
            wire.sock.settimeout(5)
            assert wire.sock.recv(100).startswith(b"HTTP/1.1 200")
    assert [r for r in records if r.levelno >= logging.WARNING] == []
    # No "socket.send() raised exception." from asyncio: the app stopped writing at once.
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_receive_waits_for_the_disconnect_once_the_body_is_read(serve: Serve) -> None:
    """After the last http.request, receive() blocks until the client leaves (apps poll it to
    detect disconnects; returning the empty body again would spin them)."""
    probe = Probe()
    with serve(until_disconnect(probe)) as srv, srv.connect() as sock:
        sock.sendall(request("/"))
        assert probe.get()["more_body"] is False
        settle(srv)  # the server's loop went round and round: receive() did not return
        assert probe.events.empty()
        sock.close()
        assert probe.get() == {"type": "http.disconnect"}


def test_receive_after_the_response_is_disconnect(serve: Serve) -> None:
    probe = Probe()
    with serve(receive_after_response(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().body == b"done"
        assert probe.get() == {"type": "http.disconnect"}


def test_pending_receive_is_woken_by_the_response(serve: Serve) -> None:
    probe = Probe()
    with serve(answer_while_receiving(probe)) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/"))
        assert wire.response().body == b"answered"
        assert probe.get() == {"type": "http.disconnect"}
