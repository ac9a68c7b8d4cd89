"""Mutants of the code changed since the last mutation pass of http1.py, cycle.py and
request.py (session 14, helper-40): each test kills mutants the existing tests let live.
Real servers over real sockets, raw bytes where the protocol matters."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

from fastserve.state import GC_OBJECTS_PER_REQUEST, GC_THRESHOLD
from tests.apps.cli_procs import ServerProcess, fastserve_cmd
from tests.apps.core_apps import Probe
from tests.helpers import (
    Serve,
    Wire,
    error_log,
    request,
    sent_and_read,
    until_closed,
    wait_in_flight,
    wait_until,
)


async def where_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the scope's addresses."""
    body = json.dumps({"client": scope["client"], "server": scope["server"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_a_proxy_header_without_addresses_leaves_both_addresses_to_the_socket(
    serve: Serve,
) -> None:
    """PROXY UNKNOWN hands the connection over with no addresses (proxy_protocol.hand_over:
    no listener's `local` either), so connection_made asks the transport for both: the scope's
    `client` is the peer's address, its `server` the socket's own. Kills connection_made
    9-13 (client) and 15-19 (the sockname branch no other test reaches: every other
    connection gets the listener's fixed address)."""
    with serve(where_app, proxy_protocol=True) as srv, srv.connect() as sock:
        sock.sendall(b"PROXY UNKNOWN\r\n")
        wire = Wire(sock)
        wire.send(request("/"))
        seen = json.loads(wire.response().body)
        assert seen["client"] == ["127.0.0.1", sock.getsockname()[1]]
        assert seen["server"] == ["127.0.0.1", srv.port]


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_a_first_head_split_over_two_reads_is_answered(serve: Serve) -> None:
    """The first read of a new connection holds half a head: arm_after_first_read arms the
    head deadline from `deadline` (now + --timeout-request-header). Kills data_received 11
    (the deadline set in the past: the timer fires at once and answers 408)."""
    with serve(hello_app, timeout_request_header=30) as srv, srv.connect() as sock:
        sent_and_read(sock, b"GET / HTTP/1.1\r\n")
        wire = Wire(sock)
        wire.send(b"Host: x\r\n\r\n")
        response = wire.response()
        assert response.status == 200 and response.body == b"hello"


def pipelined_app(probe: Probe) -> Any:
    """`/first` answers at once; `/second` reads its (empty) body, then waits, unanswered,
    for the disconnect and reports it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/second":
            probe.put("second started")
            probe.put((await receive())["type"])
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first"})

    return app


def test_a_request_started_from_the_pipeline_hears_its_client_reset(serve: Serve) -> None:
    """Two requests in one packet: the second waits in the pipeline and cycle_done starts it
    when the first ends (`self.cycle = nxt`). The client then resets the connection:
    connection_lost tells the running cycle, whose app (not answered yet) sees
    `http.disconnect`. Kills cycle_done 40 (`self.cycle = None`: the started request is no
    one's, connection_lost tells nobody, and the app's receive() never returns)."""
    probe = Probe()
    with serve(pipelined_app(probe)) as srv, srv.connect() as sock:
        sock.sendall(request("/first") + request("/second"))
        assert Wire(sock).response().body == b"first"
        assert probe.get() == "second started"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        sock.close()  # a reset
        assert probe.get(timeout=10) == "http.disconnect"


def test_the_young_generation_grows_at_the_first_request_past_the_watermark() -> None:
    """--gc-tune (the default): the watermark starts at GC_THRESHOLD // (2 * per request)
    (109); admit raises the threshold once MORE requests than that are in flight, to twice
    what they hold: 110 together read 2 * 32 * 110 = 7040. Kills admit 31 (`>=`: the raise
    comes at 109, wants 6976 < 7000 and sets nothing, and moves the watermark to 218, so 110
    together read 7000) and 32 (`grow_gc_room(None)`: a TypeError at the 110th)."""
    watermark = GC_THRESHOLD // (2 * GC_OBJECTS_PER_REQUEST)
    together = watermark + 1
    cmd = fastserve_cmd("tests.apps.core_apps:gc_threshold_app", "--port", "0")
    with ServerProcess(cmd) as server:
        host, port = server.url().removeprefix("http://").rsplit(":", 1)
        socks = [socket.create_connection((host, int(port)), timeout=20) for _ in range(together)]
        try:
            for sock in socks:
                sock.sendall(f"GET /together?n={together} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            during = {int(Wire(sock).response(timeout=20).body) for sock in socks}
        finally:
            for sock in socks:
                sock.close()
    assert during == {2 * GC_OBJECTS_PER_REQUEST * together}


def test_a_connection_closed_without_an_error_is_logged_as_closed(serve: Serve) -> None:
    """--log-level debug: a connection whose request said `Connection: close` ends cleanly,
    and its last line says "connection closed", never "reset". Kills connection_lost 5
    ("reset" whatever `exc`), 9 and 10 (the word changed)."""
    with serve(hello_app, log_level="debug") as srv, error_log() as records:
        with srv.connect() as sock:
            port = sock.getsockname()[1]
            sock.sendall(request("/", headers="Connection: close\r\n"))
            assert until_closed(sock).startswith(b"HTTP/1.1 200 ")

        def lines() -> list[str]:
            mine = f"127.0.0.1:{port} - connection "
            return [r.getMessage() for r in list(records) if r.getMessage().startswith(mine)]

        wait_until(lambda: len(lines()) == 2, "the open and the close lines")
    assert lines() == [
        f"127.0.0.1:{port} - connection open",
        f"127.0.0.1:{port} - connection closed",
    ]


def test_a_unix_socket_connection_is_logged_without_an_address(
    serve: Serve, tmp_path: Path
) -> None:
    """A UNIX socket's peer has no (host, port) (`client` is None): the connection lines
    say "-:0". Kills connection_lost 19 ("XX-XX") and 20 (port 1)."""
    path = str(tmp_path / "s.sock")
    with (
        serve(hello_app, uds=path, log_level="debug") as _srv,
        error_log() as records,
        socket.socket(socket.AF_UNIX) as sock,
    ):
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(request("/", headers="Connection: close\r\n"))
        assert until_closed(sock).startswith(b"HTTP/1.1 200 ")

        def lines() -> list[str]:
            return [r.getMessage() for r in list(records) if " - connection " in r.getMessage()]

        wait_until(lambda: len(lines()) == 2, "the open and the close lines")
    assert lines() == ["-:0 - connection open", "-:0 - connection closed"]


def holding_app(probe: Probe) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await probe.wait_release()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"held"})

    return app


def test_a_fin_inside_the_body_of_a_refused_request_closes_without_an_error(
    serve: Serve,
) -> None:
    """--limit-concurrency 1, one request held: a second connection's POST is refused (503)
    while its body is still on its way, so it is the request being read but neither the
    running one nor a pipelined one. The client's FIN then: eof_received returns None (the
    transport closes), nothing logged at ERROR. Kills eof_received 4 (`... or broken in
    self.pipeline`: `pipeline.remove()` of a request never queued raises ValueError out of
    eof_received, which the event loop logs as a fatal error)."""
    probe = Probe()
    with serve(holding_app(probe), limit_concurrency=1) as srv, srv.connect() as held:
        held.sendall(request("/"))
        wait_in_flight(srv)
        with error_log(name="asyncio") as records, srv.connect() as sock:
            sock.sendall(request("/", "POST", "Content-Length: 10\r\n", b"abc"))
            assert Wire(sock).response().status == 503
            sock.shutdown(socket.SHUT_WR)
            until_closed(sock)
            probe.release.set()
            assert Wire(held).response().body == b"held"
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []


def test_a_connection_refused_a_request_under_the_concurrency_limit_serves_the_next(
    serve: Serve,
) -> None:
    """--limit-concurrency 1, one request held: another connection's GET gets the 503 and the
    connection stays (admit's cycle_done(cycle): the refused exchange is complete, keep-alive);
    once the held one is answered, that connection's next request is served, and nothing is
    logged at ERROR. Kills admit 13 (`cycle_done(None)`: an AttributeError out of the parser
    callback, "Exception while parsing a request" and the connection closed)."""
    probe = Probe()
    with serve(holding_app(probe), limit_concurrency=1) as srv, srv.connect() as held:
        held.sendall(request("/"))
        wait_in_flight(srv)
        with error_log() as records, srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/"))
            assert wire.response().status == 503
            probe.release.set()
            assert Wire(held).response().body == b"held"
            wait_in_flight(srv, 0)
            wire.send(request("/"))
            assert wire.response().body == b"held"
        assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
