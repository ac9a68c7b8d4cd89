"""ASGI's `http.response.pathsend` extension (server/protocols/sendfile.py): Starlette's
FileResponse over HTTP/1.1 (zero-copy with os.sendfile), TLS and HTTP/2 (read and sent),
HEAD and range requests, a path the app got wrong, a client that leaves mid-file and one that
stops reading."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

from fastserve.protocols.http1 import HTTP1Protocol
from tests.helpers import (
    Serve,
    error_log,
    exchange,
    request,
    stalled,
    status_of,
    until_closed,
    wait_until,
)
from tests.test_tls import Certs

pytestmark = pytest.mark.timeout(60)

SIZE = 3 * 1024 * 1024 + 17  # not a multiple of any piece size
CLOSING_HELLO = request("/hello", "GET", "Connection: close\r\n")


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "blob.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 MiB, sparse: more than any socket buffer holds, written in no time."""
    path = tmp_path_factory.mktemp("files") / "big.bin"
    with path.open("wb") as f:
        f.truncate(256 * 1024 * 1024)
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sendfile_bytes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Bytes that went through os.sendfile() in this process (the server runs in a thread
    of it): the real call, counted."""
    real = os.sendfile
    total = [0]

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        total[0] += sent
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    return lambda: total[0]


def starlette_app(path: Path) -> Starlette:
    async def file(_request: Any) -> FileResponse:
        return FileResponse(path)

    async def hello(_request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/file", file, methods=["GET", "HEAD"]), Route("/", hello)])


def pathsend_app(path: str, **start: Any) -> Any:
    """Sends `path` with pathsend, after a start without Content-Length (unless given)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        if scope["path"] == "/hello":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hello"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [], **start})
        await send({"type": "http.response.pathsend", "path": path})

    return app


def test_starlette_file_response_zero_copy(
    serve: Serve, blob: Path, sendfile_bytes: Callable[[], int]
) -> None:
    with serve(starlette_app(blob)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        for _ in range(3):  # the connection is reused after each file
            response = http.get("/file")
            assert response.status_code == 200
            assert response.headers["content-length"] == str(SIZE)
            assert response.content == blob.read_bytes()
        assert http.get("/").text == "hello"
    assert sendfile_bytes() == 3 * SIZE  # every byte by the kernel, none through the process


def test_head_sends_the_length_and_no_body(serve: Serve, blob: Path) -> None:
    with serve(starlette_app(blob)) as srv:
        # The HEAD's response, then the next request's on the same connection: a body sent
        # after the HEAD's head would show up in between.
        raw = exchange(
            srv, request("/file", "HEAD") + request("/", "GET", "Connection: close\r\n"), timeout=10
        )
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert b"\r\ncontent-length: %d\r\n" % SIZE in head
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
        assert rest.endswith(b"\r\n\r\nhello")


def test_head_of_a_pathsend_without_length_gets_the_files(serve: Serve, blob: Path) -> None:
    with serve(pathsend_app(str(blob))) as srv:
        raw = exchange(srv, request("/file", "HEAD") + CLOSING_HELLO, timeout=10)
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ncontent-length: %d\r\n" % SIZE in head
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"hello")


def test_range_request(serve: Serve, blob: Path) -> None:
    """Starlette answers ranges with body messages: pathsend offered changes nothing there."""
    with serve(starlette_app(blob)) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        response = http.get("/file", headers={"range": "bytes=1000-1999"})
        assert response.status_code == 206
        assert response.content == blob.read_bytes()[1000:2000]


def test_length_added_and_pipelined_request_after(serve: Serve, blob: Path) -> None:
    with serve(pathsend_app(str(blob))) as srv:
        sock = srv.connect(timeout=10)
        with sock:
            sock.sendall(
                request("/file")
                + request("/hello")
                + request("/hello", "GET", "Connection: close\r\n")
            )
            raw = until_closed(sock, timeout=10)
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ncontent-length: %d\r\n" % SIZE in head
        assert rest[:SIZE] == blob.read_bytes()
        after = rest[SIZE:]
        assert after.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert after.endswith(b"hello") and after.count(b"hello") == 2


@pytest.mark.parametrize(
    "bad", ["relative/path.bin", "/no/such/file", "<dir>", "<fifo>", "<length>"]
)
def test_wrong_path_is_a_500(serve: Serve, blob: Path, bad: str, tmp_path: Path) -> None:
    start: dict[str, Any] = {}
    path = bad
    if bad == "<dir>":
        path = str(blob.parent)
    elif bad == "<fifo>":  # opening it must not wait for a writer (with the loop blocked)
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    elif bad == "<length>":  # a Content-Length that is not the file's size
        path = str(blob)
        start = {"headers": [(b"content-length", b"10")]}
    with serve(pathsend_app(path, **start)) as srv, error_log() as records:
        raw = exchange(srv, request("/file"))
        assert status_of(raw) == 500
        wait_until(lambda: any(r.exc_info for r in records), "the traceback logged")
        assert exchange(srv, CLOSING_HELLO).endswith(b"hello")


def test_client_leaves_mid_file(serve: Serve, big: Path) -> None:
    with serve(pathsend_app(str(big))) as srv:
        assert exchange(srv, CLOSING_HELLO).endswith(b"hello")
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            sock = srv.connect(timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(request("/file"))
            got = 0
            while got < 1024 * 1024:
                got += len(sock.recv(65536))
            sock.close()
        assert exchange(srv, CLOSING_HELLO).endswith(b"hello")
        # The file and the duplicate of each socket are closed, as are the sockets.
        wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds, "descriptors back")
        wait_until(lambda: not srv.server.state.connections, "the connections closed")


def transports(srv: Any) -> Iterator[Any]:
    for conn in srv.server.state.connections:
        if isinstance(conn, HTTP1Protocol):
            yield conn.transport


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_reader_that_stops_holds_little(
    serve: Serve, big: Path, certs: Certs, tls: bool, sendfile_bytes: Callable[[], int]
) -> None:
    """A client that stops reading: the server stops sending, and holds at most about one
    piece beyond the transport's limit (TLS: read and sent), or nothing (sendfile)."""
    options = certs.options() if tls else {}
    size = big.stat().st_size
    with serve(pathsend_app(str(big)), **options) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock: socket.socket = raw
        if tls:
            sock = certs.client_context().wrap_socket(raw, server_hostname="localhost")
        with sock:
            sock.sendall(request("/file"))
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            got = len(buf.partition(b"\r\n\r\n")[2])

            def buffered() -> int:
                return sum(t.get_write_buffer_size() for t in transports(srv))

            held = stalled(srv, buffered, "the server to stop sending")
            assert held <= 2 * 1024 * 1024
            if not tls:
                assert held == 0
                assert sendfile_bytes() < 64 * 1024 * 1024  # kernel buffers, not the file
            # Reading on, the client gets all of it.
            while got < size:
                chunk = sock.recv(1024 * 1024)
                assert chunk, f"closed after {got} of {size} bytes"
                got += len(chunk)
            assert got == size
        if not tls:  # (counted once the call returns, which can be after the client read)
            wait_until(lambda: sendfile_bytes() == size, "every byte through sendfile")


def test_tls_copies_the_file(
    serve: Serve, blob: Path, certs: Certs, sendfile_bytes: Callable[[], int]
) -> None:
    ctx = certs.client_context()
    with (
        serve(starlette_app(blob), **certs.options()) as srv,
        httpx.Client(base_url=f"https://localhost:{srv.port}", verify=ctx, timeout=10) as http,
    ):
        response = http.get("/file")
        assert response.content == blob.read_bytes()
    assert sendfile_bytes() == 0


def test_http2_stream(serve: Serve, blob: Path) -> None:
    with (
        serve(starlette_app(blob)) as srv,
        httpx.Client(base_url=srv.url, http1=False, http2=True, timeout=10) as http,
    ):
        for _ in range(2):
            response = http.get("/file")
            assert response.http_version == "HTTP/2"
            assert response.headers["content-length"] == str(SIZE)
            assert response.content == blob.read_bytes()
