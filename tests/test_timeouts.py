"""Timeouts: request head (slowloris), keep-alive, request body; over real sockets.

The connection has one timer whose deadline moves with the phase (head, busy, idle, body);
these tests drive each phase with a client that stalls. Times are short (fractions of a
second) and every wait is bounded; nothing asserts how fast the server is.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from typing import Any

import pytest

from tests.apps.core_apps import Probe, count_body
from tests.helpers import Serve, Wire, request, until_closed


def body_app(probe: Probe) -> Any:
    """Reads the body (reporting each message), answers with its size."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(1.0)
        if scope["path"] == "/late-reader":
            await asyncio.sleep(1.0)  # reading pauses meanwhile: that is not the client's stall
        size = 0 if scope["path"] == "/no-read" else await count_body(receive, probe)
        if size is None:
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})

    return app


def test_request_head_must_arrive_in_time(serve: Serve) -> None:
    with serve(body_app(Probe()), timeout_request_header=0.5) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ...and never the blank line
        raw = until_closed(sock, timeout=10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert raw.endswith(b"Request header timeout")


def test_the_head_deadline_does_not_move_with_each_byte(serve: Serve) -> None:
    """Dribbling one byte at a time does not buy time: the whole head has the deadline."""
    with serve(body_app(Probe()), timeout_request_header=0.6) as srv, srv.connect() as sock:
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        sock.settimeout(0.1)
        start = time.monotonic()
        raw = b""
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
                raw = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if raw or time.monotonic() - start > 15:
                break
        raw += until_closed(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 408 ")


@pytest.mark.timeout(60)
def test_slowloris_does_not_starve_other_clients(serve: Serve) -> None:
    """200 connections dribbling a head byte by byte: each is cut off with 408 when its
    head deadline passes, and meanwhile a normal client is served without trouble."""
    count = 200
    with serve(body_app(Probe()), timeout_request_header=1.0) as srv:
        attackers = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            sock.setblocking(False)
            attackers.append(sock)
        outcome: dict[socket.socket, bytes] = {}
        stop = threading.Event()

        def dribble() -> None:
            selector = selectors.DefaultSelector()
            for sock in attackers:
                selector.register(sock, selectors.EVENT_READ)
            head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
            position = 0
            deadline = time.monotonic() + 20
            while len(outcome) < count and time.monotonic() < deadline and not stop.is_set():
                for sock in attackers:
                    if sock not in outcome:
                        try:
                            sock.send(head[position : position + 1])
                        except OSError:
                            outcome[sock] = b"reset"
                position += 1
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj  # type: ignore[assignment]
                    if sock in outcome:
                        continue
                    try:
                        outcome[sock] = sock.recv(4096) or b"eof"
                    except BlockingIOError:
                        continue
                    except OSError:
                        outcome[sock] = b"reset"
                    selector.unregister(sock)
            selector.close()

        thread = threading.Thread(target=dribble)
        thread.start()
        served = 0
        try:
            # The good client, on a fresh connection each time, while the attack runs.
            while thread.is_alive() and served < 200:
                with srv.connect() as sock:
                    wire = Wire(sock)
                    wire.send(request("/", "POST", "Content-Length: 2\r\n", b"ok"))
                    assert wire.response("POST", timeout=5).body == b"2"
                served += 1
        except BaseException:
            stop.set()
            raise
        finally:
            thread.join(30)
            for sock in attackers:
                sock.close()
    assert served > 0
    assert len(outcome) == count
    refused = [raw for raw in outcome.values() if raw.startswith(b"HTTP/1.1 408 ")]
    assert len(refused) == count, {raw[:20] for raw in outcome.values()}


def test_idle_keep_alive_connection_is_closed(serve: Serve) -> None:
    with serve(body_app(Probe()), timeout_keep_alive=1.0) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/", "POST", "Content-Length: 1\r\n", b"x"))
        assert wire.response("POST").status == 200
        time.sleep(0.2)  # well within the keep-alive timeout: the connection is reused
        wire.send(request("/", "POST", "Content-Length: 1\r\n", b"x"))
        assert wire.response("POST").status == 200
        assert wire.closed(timeout=10)  # then nothing more: closed without a response


def test_silent_new_connection_is_closed_without_a_response(serve: Serve) -> None:
    with serve(body_app(Probe()), timeout_keep_alive=0.5) as srv, srv.connect() as sock:
        assert until_closed(sock, timeout=10) == b""


def test_stalled_request_body_gets_408_and_the_app_a_disconnect(serve: Serve) -> None:
    """(The first body check happens at the head deadline, hence both timeouts short.)"""
    probe = Probe()
    short = {"timeout_request_body": 0.5, "timeout_request_header": 0.5}
    with serve(body_app(probe), **short) as srv, srv.connect() as sock:
        sock.sendall(request("/", "POST", "Content-Length: 100\r\n", b"x" * 10))
        assert probe.get()["body"] == b"x" * 10
        assert probe.get(timeout=10)["type"] == "http.disconnect"
        raw = until_closed(sock, timeout=10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert raw.endswith(b"Request body timeout")


def test_slow_but_steady_body_is_not_a_stall(serve: Serve) -> None:
    probe = Probe()
    short = {"timeout_request_body": 0.8, "timeout_request_header": 0.8}
    with serve(body_app(probe), **short) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/", "POST", "Content-Length: 8\r\n"))
        for _ in range(8):  # 8 x 0.25 s: twice the timeout in total, never a 0.8 s gap
            time.sleep(0.25)
            wire.send(b"y")
        response = wire.response("POST", timeout=10)
    assert response.status == 200 and response.body == b"8"


def test_paused_reading_is_not_the_clients_stall(serve: Serve) -> None:
    """The app waits before reading a large body: reading pauses (flow control), which must
    not count as the client stalling."""
    body = b"z" * (1024 * 1024)
    short = {"timeout_request_body": 0.3, "timeout_request_header": 0.3}
    with serve(body_app(Probe()), **short) as srv, srv.connect() as sock:
        wire = Wire(sock)
        sender = threading.Thread(
            target=wire.send,
            args=(request("/late-reader", "POST", f"Content-Length: {len(body)}\r\n", body),),
        )
        sender.start()
        response = wire.response("POST", timeout=15)
        sender.join(10)
    assert response.status == 200 and response.body == b"%d" % len(body)


def test_body_stalling_after_the_response_closes_the_connection(serve: Serve) -> None:
    short = {"timeout_request_body": 0.5, "timeout_request_header": 0.5}
    with serve(body_app(Probe()), **short) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/no-read", "POST", "Content-Length: 100\r\n", b"x" * 10))
        assert wire.response("POST").status == 200
        assert wire.closed(timeout=10)


def test_a_slow_app_is_not_timed_out(serve: Serve) -> None:
    options = {"timeout_request_header": 0.3, "timeout_keep_alive": 0.3}
    app = body_app(Probe())
    with serve(app, timeout_request_body=0.3, **options) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/slow", "POST", "Content-Length: 1\r\n", b"x"))
        assert wire.response("POST", timeout=10).status == 200


def test_a_connection_accepted_before_shutdown_gets_its_first_request_served(
    serve: Serve,
) -> None:
    """Shutdown (or a worker's retirement) can come between a connection's accept and its
    first request: that request is served, with `connection: close`. An EOF on a new
    connection is an error clients do not retry (seen as a flaky failure of
    test_limit_max_requests_replaces_the_worker_first)."""
    from tests.apps.core_apps import core_app
    from tests.helpers import wait_until

    with serve(core_app) as srv, srv.connect() as sock:
        state = srv.server.state
        assert state is not None
        wait_until(lambda: len(state.connections) == 1, "the connection accepted")
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        wait_until(lambda: state.shutting_down, "the shutdown to start")
        sock.sendall(request("/"))
        raw = until_closed(sock, timeout=10)
        assert raw.startswith(b"HTTP/1.1 200 "), raw
        assert b"\r\nconnection: close\r\n" in raw.lower()
