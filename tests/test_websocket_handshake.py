"""WebSockets over a real server on both loops: the opening handshake (subprotocols, denial,
refusals, permessage-deflate, plain HTTP upgrades, limits, the access log) and how server
shutdown closes open connections (RFC 6455 §4, §7.4.1)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.apps.core_apps import Probe
from tests.apps.ws_apps import (
    RawWS,
    closed_code,
    crash_after_accept,
    crash_before_accept,
    deny_app,
    echo_app,
    headers,
    hold_after_disconnect,
    reject_app,
    ws_connect,
)
from tests.helpers import Serve, error_log, until_closed

# -- handshake ------------------------------------------------------------------------------


def test_subprotocol_negotiation(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe)) as srv:
        with ws_connect(srv.port, "/?sub=b", subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b"
            assert probe.get()["subprotocols"] == ["a", "b"]
        with ws_connect(srv.port, "/") as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in headers(ws)


@pytest.mark.parametrize(
    "parts", [[b"not allowed"], [b"not ", b"", b"allowed"]], ids=["one", "streamed"]
)
def test_denial_response(serve: Serve, parts: list[bytes]) -> None:
    with serve(deny_app(401, parts)) as srv:
        with pytest.raises(InvalidStatus) as info:
            ws_connect(srv.port)
        assert info.value.response.status_code == 401
        assert info.value.response.headers["x-denied"] == "1"
        # Raw: framed as any HTTP/1.1 response (http1_head.py): Content-Length when whole,
        # chunked when streamed; the connection closes after it.
        with RawWS(srv.port) as raw:
            assert raw.status == 401
            body = raw.buffer + until_closed(raw.sock)
        assert b"connection: close" in raw.head.lower()
        if len(parts) == 1:
            assert b"content-length: 11" in raw.head.lower()
            assert body == b"not allowed"
        else:
            assert b"transfer-encoding: chunked" in raw.head.lower()
            assert body == b"4\r\nnot \r\n7\r\nallowed\r\n0\r\n\r\n"


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_a_denial_with_an_interim_status_is_a_500(serve: Serve, status: int) -> None:
    """A 1xx is no final response (RFC 9110 §15.2): as on the HTTP path, the app broke the
    protocol and the client gets a 500 (it once got "HTTP/1.1 100 Continue" and a body)."""
    with (
        serve(deny_app(status, [b"body"])) as srv,
        error_log() as records,
        RawWS(srv.port) as raw,
    ):
        assert raw.status == 500
        body = raw.buffer + until_closed(raw.sock)
    assert body == b"Internal Server Error"
    assert any("invalid status" in str(r.exc_info[1]) for r in records if r.exc_info)


@pytest.mark.parametrize("status", [204, 304])
def test_a_denial_with_a_bodiless_status_has_no_body(serve: Serve, status: int) -> None:
    """RFC 9110 §15.3.5 / §15.4.5: 204 and 304 end at their head."""
    with serve(deny_app(status, [b"not ", b"allowed"])) as srv:
        with RawWS(srv.port) as raw:
            assert raw.status == status
            body = raw.buffer + until_closed(raw.sock)
        head = raw.head.lower()
    assert body == b""
    assert b"transfer-encoding" not in head
    assert b"content-length" not in head


def test_close_before_accept_is_403(serve: Serve) -> None:
    with serve(reject_app) as srv:
        with pytest.raises(InvalidStatus) as info:
            ws_connect(srv.port)
        assert info.value.response.status_code == 403


def test_app_exception_before_accept_is_500(serve: Serve) -> None:
    with serve(crash_before_accept) as srv, error_log() as errors:
        with pytest.raises(InvalidStatus) as info:
            ws_connect(srv.port)
        assert info.value.response.status_code == 500
        assert any(r.exc_info and "boom before accept" in str(r.exc_info[1]) for r in errors)


def test_app_exception_after_accept_closes_with_1011(serve: Serve) -> None:
    with serve(crash_after_accept) as srv, error_log() as errors, ws_connect(srv.port) as ws:
        ws.send("go")
        assert closed_code(ws)[0] == 1011
        assert any(r.exc_info and "boom after accept" in str(r.exc_info[1]) for r in errors)


def test_invalid_handshake_is_refused_without_running_the_app(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe)) as srv, srv.connect() as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: too-short\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = until_closed(sock)
        assert response.startswith(b"HTTP/1.1 400 ")
        assert probe.events.empty()


@pytest.mark.parametrize("deflate", [True, False])
def test_per_message_deflate(serve: Serve, deflate: bool) -> None:
    text = "compressible " * 5000
    with serve(echo_app(), ws_per_message_deflate=deflate) as srv:
        with ws_connect(srv.port) as ws:
            negotiated = headers(ws).get("sec-websocket-extensions") or ""
            assert ("permessage-deflate" in negotiated) == deflate
            ws.send(text)
            assert ws.recv(timeout=5) == text
        with ws_connect(srv.port, compression=None) as ws:  # the client declines
            assert "sec-websocket-extensions" not in headers(ws)
            ws.send(text)
            assert ws.recv(timeout=5) == text


def test_non_websocket_upgrade_is_served_as_http(serve: Serve) -> None:
    with serve(echo_app()) as srv, srv.connect() as sock:
        request = (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        sock.sendall(request + b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = until_closed(sock)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert data.count(b"plain http") == 2  # the next request on the connection too


def test_limit_concurrency_counts_open_websockets(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe), limit_concurrency=1) as srv:
        with ws_connect(srv.port) as ws:
            probe.get()
            with pytest.raises(InvalidStatus) as info:
                ws_connect(srv.port)
            assert info.value.response.status_code == 503
            ws.send("still served")
            assert ws.recv(timeout=5) == "still served"
        probe.get()  # its app saw the disconnect and returns: the slot frees up
        deadline = time.monotonic() + 5
        while True:
            try:
                with ws_connect(srv.port) as again:
                    again.send("x")
                    assert again.recv(timeout=5) == "x"
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "the slot was never released"
                time.sleep(0.01)


def test_ws_none_serves_upgrades_as_http(serve: Serve) -> None:
    with serve(echo_app(), ws="none") as srv, RawWS(srv.port) as raw:
        assert raw.status == 200


def test_access_log_line_for_handshakes(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    options: dict[str, Any] = {"access_log": True, "log_level": "info"}
    with serve(echo_app(), **options) as srv, ws_connect(srv.port, "/chat?room=1") as ws:
        ws.send("x")
        ws.recv(timeout=5)
    with serve(reject_app, **options) as srv, pytest.raises(InvalidStatus):
        ws_connect(srv.port, "/nope")
    out = capsys.readouterr().out
    assert re.search(r'"GET /chat\?room=1 HTTP/1.1" 101 ', out), out
    assert re.search(r'"GET /nope HTTP/1.1" 403 ', out), out


# -- shutdown -------------------------------------------------------------------------------


@pytest.mark.parametrize(("restarting", "code"), [(False, 1001), (True, 1012)])
def test_shutdown_closes_open_websockets(serve: Serve, restarting: bool, code: int) -> None:
    probe = Probe()
    app = hold_after_disconnect(probe)
    graceful = 2.0
    with serve(app, timeout_graceful_shutdown=graceful) as srv, ExitStack() as stack:
        clients = [stack.enter_context(ws_connect(srv.port)) for _ in range(3)]
        for _ in clients:
            assert probe.get() == "accepted"
        assert srv.server.state is not None
        srv.server.state.restarting = restarting
        asked = time.monotonic()
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        for ws in clients:
            assert closed_code(ws)[0] == code
            assert probe.get()["code"] == code
        # The apps still run (held for 20 s): the server waits for them for the graceful
        # timeout, not less, then cancels them and stops, not much later.
        srv.thread.join(15)
        stopped = time.monotonic() - asked
        assert not srv.thread.is_alive(), "the server did not stop"
        assert [probe.get() for _ in clients] == ["cancelled"] * 3
    assert graceful - 0.05 <= stopped < graceful + 5  # (0.05: uvloop's clock is in ms)


@pytest.mark.timeout(30)
def test_sigterm_closes_websockets_with_1001_and_exits() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastserve",
            "tests.apps.ws_apps:print_disconnect",
            "--port",
            "0",
            "--lifespan",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert proc.stderr is not None
        port = 0
        while not port:
            line = proc.stderr.readline()
            assert line, "server exited before listening"
            match = re.search(r"running on http://127.0.0.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        with ws_connect(port) as ws:
            proc.send_signal(signal.SIGTERM)
            assert closed_code(ws)[0] == 1001
        stdout, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "disconnect 1001" in stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
