"""HTTP/1.1 rules of server/protocols/http1.py that the mutation passes (docs/testing.md) had
left open: each test here failed against a mutant the rest of the suite let live. Over real
sockets; the server's loop is read (on_server_loop) only for what the client cannot see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import struct
import time

import pytest

from fastserve.protocols.http1 import HIGH_WATER
from tests.apps.core_apps import Probe, Receive, Scope, Send, read_body, respond
from tests.apps.workers_procs import listeners
from tests.helpers import (
    Serve,
    Wire,
    error_log,
    loop_held,
    on_server_loop,
    request,
    sent_and_read,
    settle,
    wait_until,
)
from tests.test_http1_mutants import client_of, the_connection
from tests.test_tls import Certs, certs, tls_socket
from tests.test_workers import start, wait_children

__all__ = ["certs"]  # (the fixture, imported for the TLS test)

KEEP_ALIVE = 0.2  # the deadline a lost connection must not arm


def cut_short(sock: ssl.SSLSocket) -> None:
    """A POST's head and half its body, then the client's close_notify (the server's is not
    awaited)."""
    sock.sendall(request("/b", "POST", "Content-Length: 10\r\n", b"12345"))
    sock.setblocking(False)
    with contextlib.suppress(ssl.SSLWantReadError):
        sock.unwrap()


def test_an_app_returning_after_its_connection_was_reset_leaves_the_connection_alone(
    serve: Serve,
) -> None:
    """The app answers, then runs on while the client resets the connection. When it returns,
    the connection is gone: no keep-alive deadline is armed for it, and nothing closes it a
    second time (one "connection reset" line, no later "connection closed"), and the server
    still stops."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await respond(send, 200, b"ok")
        await probe.wait_release()

    async def in_flight() -> int:
        state = srv.server.state
        assert state is not None
        return int(state.in_flight)

    with (
        serve(app, log_level="debug", timeout_keep_alive=KEEP_ALIVE) as srv,
        error_log() as records,
    ):
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/"))
            assert wire.response().status == 200
            who = client_of(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(
            lambda: any(r.getMessage() == f"{who} - connection reset" for r in records),
            "the server to see the reset",
        )
        probe.release.set()
        wait_until(lambda: on_server_loop(srv, in_flight) == 0, "the app to return")
        # A barrier past any keep-alive deadline armed when the app returned (timers fire
        # in deadline order).
        on_server_loop(srv, lambda: asyncio.sleep(KEEP_ALIVE * 2))
        lines = [r.getMessage() for r in records if r.getMessage().startswith(who + " - conn")]
        assert lines == [f"{who} - connection open", f"{who} - connection reset"]
    # (and the server stops: a lost connection closed again would leave its Lingering
    # protocol counted among the connections, with no connection_lost() to come)


def test_a_pipelined_request_with_exactly_the_high_water_mark_buffered_resumes_reading(
    serve: Serve,
) -> None:
    """A request pipelined behind a running one pauses reading at its head; the body bytes
    of the same read are buffered for it. When the running request ends and the pipelined
    one starts with exactly HIGH_WATER (64 KiB) buffered, reading resumes at once, before
    its app reads anything (pausing is for MORE than HIGH_WATER buffered)."""
    first, second = Probe(), Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        probe = first if scope["path"] == "/a" else second
        probe.put(scope["path"])
        await probe.wait_release()
        await respond(send, 200, b"%d" % len(await read_body(receive)))

    async def buffered() -> tuple[int, int, bool]:
        return len(conn.pipeline), conn.pipeline[0].body_size, conn.read_paused

    with serve(app) as srv, srv.connect() as sock:
        sent_and_read(sock, request("/a"))
        assert first.get() == "/a"
        conn = the_connection(srv)
        # The pipelined head and 64 KiB of its body, in one read of the server:
        with loop_held(srv, sock):
            sock.sendall(request("/b", "POST", f"Content-Length: {HIGH_WATER + 10}\r\n"))
            sock.sendall(b"a" * HIGH_WATER)
        assert on_server_loop(srv, buffered) == (1, HIGH_WATER, True)
        first.release.set()
        assert second.get() == "/b"  # started, its body not read yet
        sent_and_read(sock, b"b" * 10)  # times out if reading stayed paused
        second.release.set()
        wire = Wire(sock)
        assert wire.response().body == b"0"
        assert wire.response("POST").body == b"%d" % (HIGH_WATER + 10)


def test_a_pipelined_request_cut_short_by_a_tls_close_notify_never_runs(
    serve: Serve, certs: Certs
) -> None:
    """Under TLS the client's close_notify can be read with a pipelined request's head and
    part of its body (one read of the server, held while they arrive): asyncio's TLS layer
    reports the end of input at once, though reading is paused. That request's body never
    ends: it is dropped without running, the running one sees its client leave, and nothing
    goes wrong on the way (no error logged)."""
    started = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started.put(scope["path"])
        await read_body(receive)
        message = await receive()  # the running request: until its client leaves
        started.put(message["type"])

    with (
        serve(app, **certs.options()) as srv,
        error_log(name="asyncio") as loop_records,
        error_log() as records,
    ):
        with tls_socket(srv.port, certs.client_context()) as sock:
            sock.sendall(request("/a"))
            assert started.get() == "/a"
            with loop_held(srv, sock):
                cut_short(sock)
            assert started.get() == "http.disconnect"
        settle(srv)
    assert started.events.empty()  # /b never ran
    errors = [r.getMessage() for r in loop_records + records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize("loop_name", ["asyncio"])  # (uvloop runs due timers before reads)
def test_a_request_ending_right_after_a_tls_close_notify_does_not_start_the_cut_one(
    serve: Serve, certs: Certs
) -> None:
    """As above, and the running request ends in the very next pass, before the connection
    is lost (its timer was due while the loop was held: asyncio runs it after the read).
    The pipelined request whose body was cut short must not start then."""
    started = Probe()
    nap = 2.0  # (room for the hold on a loaded machine: it must come before the timer)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/a":
            started.put(("/a", asyncio.get_running_loop().time() + nap))
            await asyncio.sleep(nap)
            await respond(send, 200, b"a")
            started.put("/a answered")
        else:
            started.put(scope["path"])

    with serve(app, **certs.options()) as srv, error_log(name="asyncio") as loop_records:
        with tls_socket(srv.port, certs.client_context()) as sock:
            sock.sendall(request("/a"))
            path, due = started.get()
            assert path == "/a"
            with loop_held(srv, sock):
                # (held before the app's timer was due, or the test proves nothing)
                assert time.monotonic() < due, "the app's timer was due before the hold"
                cut_short(sock)
                wait_until(lambda: time.monotonic() > due, "the app's timer to be due")
            assert started.get() == "/a answered"
        settle(srv)
    assert started.events.empty()  # /b never ran
    assert [r.getMessage() for r in loop_records if r.levelno >= logging.ERROR] == []


# -- supervisor.py worker_main: a worker's own bind failing under --reuse-port -------------------


def test_a_worker_that_cannot_bind_its_reuse_port_listener_logs_why() -> None:
    """Under --reuse-port each worker binds its own listener. The supervisor is stopped
    while its workers die, and a listener without SO_REUSEPORT takes the port (the
    supervisor's own socket holds it but never listens). The replacement worker cannot bind:
    it logs the reason, in the supervisor's one line format, and the server stops (exit 3).
    (Two workers: with one, there is no supervisor.)"""
    with start(2, "--reuse-port") as server:
        port = server.wait_running(2)
        workers = wait_children(server, 2)
        taken = socket.socket()
        try:
            server.signal(signal.SIGSTOP)
            try:
                for worker in workers:
                    os.kill(worker, signal.SIGKILL)
                wait_until(lambda: listeners(port) == 0, "the workers' listeners to close")
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                taken.bind(("127.0.0.1", port))
                taken.listen()
            finally:
                server.signal(signal.SIGCONT)
            assert server.wait() == 3, server.log()
        finally:
            taken.close()
    lines = [line for line in server.log().splitlines() if "address already in use" in line]
    assert lines, server.log()
    reason = f"cannot bind 127.0.0.1:{port}: address already in use"
    # (one ERROR line per worker that tried: no traceback, no "Logging error" report)
    assert all(line.startswith("ERROR:") and line.endswith(reason) for line in lines), lines
