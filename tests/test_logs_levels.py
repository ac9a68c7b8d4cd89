"""What the error log shows: the startup banner (once, also with --workers, whose workers'
lines carry their pid), --log-level debug (connections, requests) and trace (ASGI messages),
--log-json; and the access line of a response whose last send meets a client already gone."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
from typing import Any

import pytest

from tests.apps.cli_procs import ServerProcess, fastserve_cmd
from tests.apps.workers_procs import Fastserve
from tests.helpers import Serve, error_log, fetch, request, wait_until

BANNER = re.compile(
    r"fastserve (\d+\.\d+\S*) \((compiled|pure Python), CPython [\d.]+\), pid (\d+), "
    r"loop (uvloop|asyncio), protocols HTTP/1\.1( HTTP/2)?( WebSocket)?, workers (\d+)$"
)


def test_banner_single_process() -> None:
    with ServerProcess(fastserve_cmd("examples.hello:app", "--port", "0")) as server:
        server.url()
        lines = [line for line in server.err if BANNER.search(line)]
        assert len(lines) == 1, server.err
        match = BANNER.search(lines[0])
        assert match is not None
        assert int(match.group(3)) == server.proc.pid
        assert match.group(7) == "1"
        assert match.group(4) in ("uvloop", "asyncio")
        assert server.stop() == 0


def test_banner_once_with_workers_and_every_worker_line_names_its_pid() -> None:
    args = ["tests.apps.workers_app:app", "--workers", "3", "--port", "0"]
    with Fastserve(args) as server:
        server.wait_running(3)
        assert server.count(BANNER.pattern) == 1, server.log()
        match = next(m for line in server.lines if (m := BANNER.search(line)))
        assert (int(match.group(3)), match.group(7)) == (server.pid, "3")
        running = [line for line in server.lines if "fastserve running on" in line]
        tagged = {int(m.group(1)) for line in running if (m := re.search(r"\[(\d+)\] ", line))}
        assert len(running) == 3 and tagged == set(server.children()), server.log()
        server.signal(15)
        assert server.wait() == 0


def test_worker_access_lines_carry_the_worker_pid() -> None:
    cmd = fastserve_cmd("examples.hello:app", "--port", "0", "--workers", "2")
    with ServerProcess(cmd) as server:
        host, port = server.url().split("//")[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request("/"))
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        line = server.wait_for(r'"GET / HTTP/1\.1" 200', server.out)
        match = re.match(r"INFO:     \[(\d+)\] 127\.0\.0\.1:\d+ - ", line)
        assert match is not None, line
        workers = [int(m.group(1)) for x in server.err if (m := re.search(r"worker \[(\d+)\]", x))]
        assert int(match.group(1)) in workers, (line, server.err)
        assert server.stop() == 0


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def messages(records: list[logging.LogRecord], level: int | None = None) -> list[str]:
    return [r.getMessage() for r in records if level is None or r.levelno == level]


def test_debug_shows_connections_and_requests(serve: Serve) -> None:
    with serve(hello, log_level="debug") as srv, error_log() as records:
        with srv.connect() as sock:
            port = sock.getsockname()[1]
            sock.sendall(request("/path?x=1"))
            assert sock.recv(1000).startswith(b"HTTP/1.1 201")
        who = f"127.0.0.1:{port}"
        wait_until(lambda: f"{who} - connection closed" in messages(records), "the close line")
    lines = messages(records, logging.DEBUG)
    expected = [
        f"{who} - connection open",
        f"{who} - request start: GET /path HTTP/1.1",
        f"{who} - request end: status 201",
        f"{who} - connection closed",
    ]
    assert [line for line in lines if line.startswith(who)] == expected
    assert not messages(records, 5), "trace lines at debug level"


def test_debug_shows_http2_connections(serve: Serve) -> None:
    import httpx

    with serve(hello, log_level="debug") as srv, error_log() as records:
        with httpx.Client(http1=False, http2=True, timeout=5) as http:
            assert http.get(srv.url + "/h2").status_code == 201
        wait_until(
            lambda: any("HTTP/2 connection closed" in m for m in messages(records)),
            "the HTTP/2 close line",
        )
    lines = messages(records, logging.DEBUG)
    assert any(re.search(r" - connection open$", m) for m in lines), lines
    assert any(re.search(r" - request start: GET /h2 HTTP/2$", m) for m in lines), lines
    assert any(re.search(r" - request end: status 201$", m) for m in lines), lines


def test_trace_shows_asgi_messages(serve: Serve) -> None:
    with serve(hello, log_level="trace") as srv, error_log() as records:
        assert fetch(srv, request("/t", "POST", "Content-Length: 3\r\n", b"abc"), "POST").status
        wait_until(lambda: any("Completed" in m for m in messages(records)), "Completed")
    trace = messages(records, 5)
    assert any(re.search(r"ASGI \[\d+\] Started scope=\{.*'type': 'http'", m) for m in trace)
    assert any("Receive {'type': 'http.request', 'body': '<3 bytes>'" in m for m in trace), trace
    assert any("Send {'type': 'http.response.start', 'status': 201" in m for m in trace)
    assert any("Send {'type': 'http.response.body', 'body': '<5 bytes>'" in m for m in trace)


def test_info_level_logs_no_connection_or_request_lines(serve: Serve) -> None:
    with serve(hello, log_level="info") as srv, error_log(logging.DEBUG) as records:
        assert fetch(srv, request("/")).status == 201
        assert srv.server.state is not None and not srv.server.state.log_connections
    assert not [m for m in messages(records) if "connection open" in m or "request start" in m]


def test_log_json_error_log() -> None:
    """--log-json: every error-log line is one JSON object; a traceback stays in it."""
    cmd = fastserve_cmd("tests.apps.core_apps:core_app", "--port", "0", "--log-json")
    with ServerProcess(cmd) as server:
        url = server.wait_for(r'"message": "fastserve running on')
        address = json.loads(url)["message"].split("http://")[1].split()[0]
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request("/raise-before"))
            assert sock.recv(100).startswith(b"HTTP/1.1 500")
        server.wait_for("Exception in ASGI application")
        assert server.stop() == 0
    records = [json.loads(line) for line in server.err]  # every line parses
    assert all({"timestamp", "level", "logger", "message", "pid"} <= set(r) for r in records)
    failure = next(r for r in records if r["message"] == "Exception in ASGI application")
    assert failure["level"] == "ERROR" and failure["pid"] == server.proc.pid
    assert "RuntimeError: boom before the response" in failure["exc_info"]
    access = [line for line in server.out if line.strip()]
    assert json.loads(access[0])["status"] == 500  # the access log is JSON too


def test_final_send_after_the_client_left_is_logged(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client resets while the app runs; the app's next send fails to write (the
    transport starts closing), and its final send then raises ClientDisconnected after the
    response was marked complete: the access line still comes, saying how it ended."""
    reset = threading.Event()
    raised: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a" * 100, "more_body": True})
        reset.wait(10)  # (blocks the loop: the server cannot read the reset before the sends)
        try:
            await send({"type": "http.response.body", "body": b"b" * 100, "more_body": True})
            await send({"type": "http.response.body", "body": b"c" * 100})
        except OSError as exc:
            raised.append(exc)
            raise

    options = {"access_log": True, "access_log_json": True, "log_level": "info"}
    with serve(app, **options) as srv:
        sock = srv.connect()
        sock.sendall(request("/gone"))
        wait_until(lambda: b"a" * 100 in sock.recv(65536, socket.MSG_PEEK), "the first piece")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        reset.set()
        out = ""

        def logged() -> bool:
            nonlocal out
            out += capsys.readouterr().out
            return '"path": "/gone"' in out

        wait_until(logged, "the access line of /gone")
    (line,) = [json.loads(text) for text in out.splitlines() if text.strip()]
    assert raised, "the app's send did not raise"
    assert (line["completed"], line["ended"]) == (False, "client gone")
    assert line["status"] == 200 and 100 <= line["bytes"] < 300
