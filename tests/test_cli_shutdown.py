"""Stopping the `fastserve` command: SIGTERM lets requests in flight finish, the graceful
shutdown timeout cancels them, a second SIGINT forces the exit, --limit-max-requests stops a
single process. Real subprocesses on port 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from typing import Any

import httpx
import pytest

from tests.apps.cli_procs import HELLO, ServerProcess, fastserve_cmd

# -- graceful shutdown ------------------------------------------------------------------------


def slow_server(*extra: str) -> ServerProcess:
    return ServerProcess(fastserve_cmd("tests.apps.core_apps:slow_app", "--port", "0", *extra))


def start_slow_request(url: str, seconds: float) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def fetch() -> None:
        try:
            result.append(httpx.get(f"{url}/slow?s={seconds}", timeout=30))
        except httpx.HTTPError as exc:
            result.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread, result


def test_sigterm_lets_the_request_in_flight_finish() -> None:
    """Stop accepting, close idle keep-alive connections at once, let the busy one finish
    (then close it), and only then run the lifespan shutdown."""
    with slow_server() as server:
        url = server.url()
        host, port = url.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)), timeout=10)
        idle.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        thread, result = start_slow_request(url, 1.5)
        server.wait_for("slow request started", server.out)
        server.proc.send_signal(signal.SIGTERM)
        # The idle keep-alive connection is closed at once, long before the slow response.
        assert idle.recv(4096) == b""
        assert not result, "the idle connection outlived the in-flight request"
        idle.close()
        thread.join(15)
        assert server.wait() == 0
    [response] = result
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200 and response.text == "slow s=1.5"
    assert response.headers["connection"] == "close"
    order = [
        "lifespan startup ran",
        "slow request started",
        '"GET /slow?s=1.5 HTTP/1.1" 200',
        "lifespan shutdown ran",
    ]
    positions = [next(i for i, line in enumerate(server.out) if text in line) for text in order]
    assert positions == sorted(positions), server.out


def test_graceful_shutdown_timeout_cancels() -> None:
    with slow_server("--timeout-graceful-shutdown", "0.5") as server:
        url = server.url()
        thread, result = start_slow_request(url, 60)
        server.wait_for("slow request started", server.out)
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        thread.join(15)
    [outcome] = result
    # The cancelled app had not started its response: the client gets a 500 (or a close).
    assert isinstance(outcome, httpx.HTTPError) or outcome.status_code == 500
    assert any("timed out" in line for line in server.err)


def test_second_sigint_forces_exit() -> None:
    with slow_server() as server:
        url = server.url()
        thread, result = start_slow_request(url, 60)
        server.wait_for("slow request started", server.out)
        server.proc.send_signal(signal.SIGINT)
        server.wait_for("Shutting down")
        with pytest.raises(subprocess.TimeoutExpired):
            server.proc.wait(0.5)  # the first SIGINT waits for the slow request
        server.proc.send_signal(signal.SIGINT)
        assert server.wait(15) == 0  # a forced stop is still a stop the operator asked for
        thread.join(15)
    [outcome] = result
    # The slow app was cancelled before its response began: a 500 (or a close), no answer.
    assert isinstance(outcome, httpx.HTTPError) or outcome.status_code == 500
    assert "lifespan shutdown ran" not in server.out  # forcing waits for nothing, not even that


def test_limit_max_requests_stops_a_single_process() -> None:
    """Without workers, --limit-max-requests stops the server (exit 0) once it is reached."""
    cmd = fastserve_cmd(HELLO, "--port", "0", "--limit-max-requests", "3")
    with ServerProcess(cmd) as server:
        url = server.url()
        with httpx.Client() as client:
            for _ in range(3):
                assert client.get(url, headers={"connection": "close"}).status_code == 200
        assert server.wait(10) == 0
    assert any("Maximum request limit of 3" in line for line in server.err)
