"""What a connection costs before and after its requests: the deadlines kept on the server's
shared timers (a new connection's keep-alive wait in `state.idle_conns`, a lingering close in
`state.lingering(seconds)`, protocols/idle.py) and the scope base made once per connection
(request.connection_scope). Over real sockets; the server's lists are read on its own loop.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from fastserve.protocols.linger import IDLE_LINGER_SECONDS, LINGER_SECONDS
from fastserve.sockets import fixed_address
from tests.apps.core_apps import Probe
from tests.conftest import RunningServer
from tests.helpers import Serve, Wire, on_server_loop, request, until_closed, wait_until

pytestmark = pytest.mark.timeout(60)


def hello_app(probe: Probe | None = None) -> Any:
    """Answers "hi". With a `probe`: reports each scope, and whether its nested dicts held
    what the app writes into them next (an app's own keys in `extensions` and `asgi`)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if probe is not None:
            probe.put((scope, "written" in scope["extensions"] or "written" in scope["asgi"]))
            scope["extensions"]["written"] = scope["asgi"]["written"] = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    return app


def kinds(srv: RunningServer, what: str) -> list[str]:
    """The type names of the connections in one of the server's lists, read on its loop:
    `idle` (state.idle_conns), `open` (state.connections), or a lingering duration."""

    async def read() -> list[str]:
        state = srv.server.state
        assert state is not None
        if what == "idle":
            conns: Any = state.idle_conns.deadlines
        elif what == "open":
            conns = state.connections
        else:
            lingering = state.lingerers.get(float(what))
            conns = {} if lingering is None else lingering.deadlines
        return sorted(type(conn).__name__ for conn in conns)

    return on_server_loop(srv, read)


def test_a_new_connection_waits_on_the_shared_keep_alive_timer_until_its_first_request(
    serve: Serve,
) -> None:
    """Accepted, it is in the server's keep-alive list; its first request takes it out, and
    one closed before any request leaves it too (not at the next sweep, seconds later)."""
    with (
        serve(hello_app(), timeout_keep_alive=60) as srv,
        srv.connect() as silent,
        srv.connect() as used,
    ):
        wait_until(lambda: kinds(srv, "idle").count("HTTP1Protocol") == 2, "two new ones")
        wire = Wire(used)
        wire.send(request("/"))
        assert wire.response().body == b"hi"
        assert kinds(srv, "idle") == ["HTTP1Protocol"]  # the silent one only
        silent.close()
        wait_until(lambda: kinds(srv, "open") == ["HTTP1Protocol"], "the silent one gone")
        assert kinds(srv, "idle") == []


def test_a_connection_that_never_sends_is_closed_at_the_keep_alive_timeout(
    serve: Serve,
) -> None:
    with serve(hello_app(), timeout_keep_alive=0.3) as srv, srv.connect() as sock:
        assert until_closed(sock, timeout=10) == b""
        wait_until(lambda: kinds(srv, "idle") == [], "the list emptied")


def test_a_stalled_body_after_the_first_read_gets_408_at_the_body_timeout(
    serve: Serve,
) -> None:
    """The first read holds a head and part of its body: the body's deadline applies from
    there, although the keep-alive and head deadlines are far off."""
    with (
        serve(
            hello_app(), timeout_keep_alive=60, timeout_request_header=60, timeout_request_body=0.3
        ) as srv,
        srv.connect() as sock,
    ):
        sock.sendall(request("/", "POST", "Content-Length: 10\r\n", b"abc"))
        raw = until_closed(sock, timeout=10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert raw.endswith(b"Request body timeout")


async def closing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers "hi" with `connection: close` of its own: the server closes after it, though
    the client asked for nothing."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"connection", b"close")]}
    )
    await send({"type": "http.response.body", "body": b"hi"})


@pytest.mark.parametrize(
    ("ask", "seconds"),
    [("", IDLE_LINGER_SECONDS), ("Content-Length: x\r\n", LINGER_SECONDS)],
    ids=["after-the-apps-close-response", "after-an-error"],
)
def test_a_lingering_close_leaves_its_list_when_the_client_closes(
    serve: Serve, ask: str, seconds: float
) -> None:
    """The response, the server's FIN, the connection kept on its duration's shared timer
    while it drains (the client may have sent its next request already); the client's close
    takes it out."""
    with serve(closing_app, timeout_keep_alive=60) as srv:
        sock = srv.connect()
        try:
            sock.sendall(request("/", headers=ask))
            raw = until_closed(sock, timeout=10)  # (to the server's FIN: it lingers)
            assert raw.startswith(
                b"HTTP/1.1 200 " if seconds == IDLE_LINGER_SECONDS else b"HTTP/1.1 400 "
            )
            assert kinds(srv, str(seconds)) == ["Lingering"]
        finally:
            sock.close()
        wait_until(lambda: kinds(srv, "open") == [], "the close")
        assert kinds(srv, str(seconds)) == []


@pytest.mark.parametrize(
    "ask", ["GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET / HTTP/1.0\r\n\r\n"]
)
def test_a_client_that_asked_to_close_gets_a_plain_close(serve: Serve, ask: str) -> None:
    """`Connection: close` (or HTTP/1.0 without keep-alive) from the client, its request
    read whole: it must send nothing more (RFC 9112 §9.6), so the server closes outright,
    without lingering: while the client still holds its end open, the server has let go."""
    with serve(hello_app(), timeout_keep_alive=60) as srv, srv.connect() as sock:
        sock.sendall(ask.encode())
        raw = until_closed(sock, timeout=10)
        assert raw.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
        assert raw.endswith(b"hi")
        # (A lingering close would be on this list from before its FIN until the client
        # closes or a second passes: the client holds its end open.)
        assert kinds(srv, str(IDLE_LINGER_SECONDS)) == []
        wait_until(lambda: kinds(srv, "open") == [], "the server's close")


def test_a_client_that_asked_to_close_with_more_bytes_behind_gets_a_lingering_close(
    serve: Serve,
) -> None:
    """Bytes after the request that asked to close (a client breaking the rule): they may
    be followed by more, so the server lingers as after any close of its own."""
    with serve(hello_app(), timeout_keep_alive=60) as srv:
        sock = srv.connect()
        try:
            sock.sendall(request("/", headers="Connection: close\r\n") + request("/"))
            raw = until_closed(sock, timeout=10)
            assert raw.startswith(b"HTTP/1.1 200 ")
            assert raw.count(b"HTTP/1.1 ") == 1
            assert kinds(srv, str(IDLE_LINGER_SECONDS)) == ["Lingering"]
        finally:
            sock.close()
        wait_until(lambda: kinds(srv, "open") == [], "the close")


async def early_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers "early" without reading the request body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"early"})


def test_a_client_that_asked_to_close_with_its_body_unread_gets_a_lingering_close(
    serve: Serve,
) -> None:
    """The app answered before the body arrived: the rest of it is still coming, and a plain
    close would answer it with a reset that can destroy the response. The server lingers."""
    with serve(early_app, timeout_keep_alive=60) as srv:
        sock = srv.connect()
        try:
            sock.sendall(request("/", "POST", "Connection: close\r\nContent-Length: 100\r\n", b"x"))
            raw = until_closed(sock, timeout=10)
            assert raw.startswith(b"HTTP/1.1 200 ")
            assert raw.endswith(b"early")
            assert kinds(srv, str(IDLE_LINGER_SECONDS)) == ["Lingering"]
        finally:
            sock.close()
        wait_until(lambda: kinds(srv, "open") == [], "the close")


def get_on_new_connections(srv: RunningServer, count: int) -> None:
    """`count` GET requests, each on a connection of its own."""
    for _ in range(count):
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/"))
            assert wire.response().body == b"hi"


def test_each_connection_has_scope_dicts_of_its_own(serve: Serve) -> None:
    """An app that writes into its scope's nested dicts (asgi, extensions) changes nothing
    another connection sees."""
    probe = Probe()
    with serve(hello_app(probe)) as srv:
        get_on_new_connections(srv, 2)
        (first, seen), (second, seen_again) = probe.get(), probe.get()
    assert not seen and not seen_again
    assert first["asgi"] is not second["asgi"]
    assert first["extensions"] is not second["extensions"]
    for ext in ("http.response.early_hint", "http.response.trailers", "http.response.pathsend"):
        assert first["extensions"][ext] is not second["extensions"][ext]
    assert (
        first["asgi"]
        == second["asgi"]
        == {"version": "3.0", "spec_version": "2.4", "written": True}
    )
    assert first["scheme"] == "http" and "tls" not in first["extensions"]
    assert list(first) == list(second)


def test_connections_reset_before_their_first_request_leave_the_keep_alive_list(
    serve: Serve,
) -> None:
    with serve(hello_app(), timeout_keep_alive=60) as srv:
        socks = [srv.connect() for _ in range(3)]
        try:
            wait_until(lambda: len(kinds(srv, "idle")) == 3, "three new ones")
            for sock in socks[:2]:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                sock.close()
            wait_until(lambda: len(kinds(srv, "open")) == 1, "two resets")
            assert kinds(srv, "idle") == ["HTTP1Protocol"]
        finally:
            for sock in socks:
                sock.close()


def bound(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock


def test_a_listener_on_one_address_gives_it_as_every_connections_server_address() -> None:
    """fixed_address: an IP listener bound to one address is every accepted connection's
    local address; a wildcard, a transparent or a UNIX listener is not."""
    with bound(socket.AF_INET, "127.0.0.1") as one, bound(socket.AF_INET, "0.0.0.0") as anyv4:
        assert fixed_address(one) == ("127.0.0.1", one.getsockname()[1])
        assert fixed_address(anyv4) is None
        try:
            one.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT (needs CAP_NET_ADMIN)
        except PermissionError:
            pass
        else:
            assert fixed_address(one) is None
    if socket.has_ipv6:
        with bound(socket.AF_INET6, "::1") as six, bound(socket.AF_INET6, "::") as anyv6:
            assert fixed_address(six) == ("::1", six.getsockname()[1])
            assert fixed_address(anyv6) is None
    left, right = socket.socketpair()
    with left, right:
        assert fixed_address(left) is None


def test_connections_of_a_one_address_listener_share_its_address(serve: Serve) -> None:
    """The scope's `server` of each connection is the listener's, read once (not one
    getsockname() per connection): the same tuple, with the right value."""
    probe = Probe()
    with serve(hello_app(probe)) as srv:
        get_on_new_connections(srv, 2)

        async def servers() -> list[Any]:
            state = srv.server.state
            assert state is not None
            return [conn.server for conn in state.connections]

        with srv.connect(), srv.connect():
            wait_until(lambda: len(kinds(srv, "open")) == 2, "two connections")
            first, second = on_server_loop(srv, servers)
        assert first is second
        assert first == ("127.0.0.1", srv.port)
        assert probe.get()[0]["server"] == probe.get()[0]["server"] == ("127.0.0.1", srv.port)
