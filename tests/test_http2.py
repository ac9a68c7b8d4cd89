"""HTTP/2 over real sockets, on both loops: the `h2` library is the client (raw frames where
the protocol matters), httpx and curl where behaviour matters.

Each stream is one ASGI http request through the same request layer as HTTP/1.1; these tests
check what the app received and what a client sees: prior knowledge (h2c) and ALPN, bodies
both ways, cookies, stream limits, malformed requests and resets, flow control, errors,
GOAWAY on shutdown and when idle, and rapid reset.
"""

from __future__ import annotations

import asyncio
import logging
import select
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest

from tests.apps.core_apps import App, Probe, Receive, Scope, Send, read_body
from tests.helpers import (
    Serve,
    error_log,
    sent_and_read,
    settle,
    until_closed,
    until_closed_cleanly,
    wait_in_flight,
    wait_until,
)
from tests.test_http2_frames import ACK, DATA, END_STREAM, GOAWAY, PING, Frames, RawH2, frame

pytest.importorskip("zttp")


OPEN_CLIENTS: list[H2Client] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """A test that fails half-way still closes its sockets (no ResourceWarning later)."""
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


class H2Client:
    """A raw HTTP/2 client on a plain socket (prior knowledge), driven by the h2 library."""

    def __init__(
        self, port: int, window: int | None = None, receive_buffer: int | None = None
    ) -> None:
        """`window`: SETTINGS_INITIAL_WINDOW_SIZE; `receive_buffer`: SO_RCVBUF (small: the
        kernel holds little of what the server sends and we do not read)."""
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        OPEN_CLIENTS.append(self)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.conn.initiate_connection()
        self.flush()
        self.events: list[h2.events.Event] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        open_body: bool = False,
        send: bool = True,
    ) -> int:
        """Open a stream; `body` ends it, `open_body` leaves it open for DATA to come;
        `send=False` leaves the frames for a later flush()."""
        stream_id: int = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http")]
        fields += [(":authority", "test"), *(headers or [])]
        self.conn.send_headers(stream_id, fields, end_stream=body is None and not open_body)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        if send:
            self.flush()
        return stream_id

    def read(self, timeout: float = 5.0) -> None:
        """One socket read's worth of events (a timeout is a failure, EOF sets `closed`)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError("the server sent nothing in time") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        self.events += self.conn.receive_data(data)
        self.flush()

    def until(self, what: type, stream_id: int | None = None) -> Any:
        """Read until an event of type `what` (for `stream_id`) arrives; return it."""
        while True:
            for event in self.events:
                if isinstance(event, what) and (
                    stream_id is None or getattr(event, "stream_id", None) == stream_id
                ):
                    return event
            if self.closed:
                raise AssertionError(f"connection closed before {what.__name__}: {self.events}")
            self.read()

    def response(self, stream_id: int) -> tuple[dict[str, str], bytes]:
        """The whole response of `stream_id`: its headers and body."""
        head = self.until(h2.events.ResponseReceived, stream_id)
        self.until(h2.events.StreamEnded, stream_id)
        body = b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )
        return dict(head.headers), body

    def close(self) -> None:
        self.sock.close()


def echo_app(probe: Probe | None = None) -> App:
    """Reports the scope and each message; answers `version method path body-length`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        if probe is not None:
            probe.put((scope, messages))
        size = sum(len(m.get("body", b"")) for m in messages)
        text = f"{scope['http_version']} {scope['method']} {scope['path']} {size}"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Echo", b"1")]})
        await send({"type": "http.response.body", "body": text.encode()})

    return app


def test_a_get_is_one_request_with_an_empty_body(serve: Serve) -> None:
    probe = Probe()
    with serve(echo_app(probe)) as srv:
        client = H2Client(srv.port)
        stream = client.request("/a%20b?x=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        headers, body = client.response(stream)
        client.close()
    assert headers[":status"] == "200"
    assert headers["x-echo"] == "1"  # names lower-cased (RFC 9113 §8.2.1)
    assert headers["content-length"] == str(len(body))
    assert body == b"2 GET /a b 0"
    scope, messages = probe.get()
    assert messages == [{"type": "http.request", "body": b"", "more_body": False}]
    assert scope["http_version"] == "2"
    assert (scope["raw_path"], scope["query_string"]) == (b"/a%20b", b"x=1")
    assert (b"host", b"test") in scope["headers"]
    assert (b"cookie", b"a=1; b=2") in scope["headers"]  # RFC 9113 §8.2.3
    assert scope["scheme"] == "http"


def test_bodies_both_ways_and_streams_side_by_side(serve: Serve) -> None:
    with serve(echo_app()) as srv:
        client = H2Client(srv.port)
        streams = [client.request(f"/{i}", "POST", b"x" * (1000 * i)) for i in range(1, 11)]
        for i, stream in enumerate(streams, 1):
            assert client.response(stream)[1] == b"2 POST /%d %d" % (i, 1000 * i)
        client.close()


def test_httpx_with_http2(serve: Serve) -> None:
    with serve(echo_app()) as srv, httpx.Client(http1=False, http2=True, timeout=5) as http:
        for _ in range(3):
            response = http.post(srv.url + "/p", content=b"hello")
            assert response.http_version == "HTTP/2"
            assert response.text == "2 POST /p 5"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_prior_knowledge(serve: Serve) -> None:
    with serve(echo_app()) as srv:
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "-d", "abc", srv.url + "/c"],
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert out.stdout == b"2 POST /c 3"


def test_streams_past_the_limit_are_refused_and_the_connection_lives_on(serve: Serve) -> None:
    release = threading.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            while not release.is_set():
                await asyncio.sleep(0.005)
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})

    with serve(held, http2_max_concurrent_streams=2) as srv:
        client = H2Client(srv.port)
        # Sent before the server's SETTINGS are read: the client does not know the limit yet.
        first, second, third = client.request("/1"), client.request("/2"), client.request("/3")
        settings = client.until(h2.events.RemoteSettingsChanged)
        limit = settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
        assert limit.new_value == 2
        # RFC 8441 (WebSockets over HTTP/2) is offered: WebSockets are on by default
        # (tests/test_http2_websocket.py; without them, tests/test_http2_frames.py).
        offered = settings.changed_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]
        assert offered.new_value == 1
        reset = client.until(h2.events.StreamReset, third)
        assert reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        release.set()
        for stream in (first, second):
            assert client.response(stream)[0][":status"] == "204"
        fourth = client.request("/4")
        assert client.response(fourth)[0][":status"] == "204"
        client.close()


def test_a_malformed_request_is_reset_and_the_connection_lives_on(serve: Serve) -> None:
    with serve(echo_app()) as srv:
        client = H2Client(srv.port)
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        bad = client.request("/", headers=[("connection", "close")])  # RFC 9113 §8.2.2
        assert client.until(h2.events.StreamReset, bad).error_code == 1  # PROTOCOL_ERROR
        good = client.request("/ok")
        assert client.response(good)[1] == b"2 GET /ok 0"
        client.close()


def test_a_client_reset_is_a_disconnect_for_the_app(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put(scope["path"])
            message = await receive()  # on /reset the body never comes: waits
            probe.put(message["type"])
            if message["type"] == "http.request":
                await send({"type": "http.response.start", "status": 204})
                await send({"type": "http.response.body"})

    with serve(app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/reset", "POST", open_body=True)
        assert probe.get() == "/reset"
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        assert probe.get() == "http.disconnect"
        assert client.response(client.request("/after"))[0][":status"] == "204"
        client.close()


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_app_error_is_a_500_or_a_reset(serve: Serve, where: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if where == "after":
                await send({"type": "http.response.start", "status": 200})
                await send({"type": "http.response.body", "body": b"a", "more_body": True})
            raise RuntimeError("boom")

    with serve(app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/")
        if where == "before":
            assert client.response(stream)[0][":status"] == "500"
        else:
            reset = client.until(h2.events.StreamReset, stream)
            assert reset.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        client.close()


def test_a_client_that_does_not_read_holds_the_app_at_its_window(serve: Serve) -> None:
    """send() waits while the stream's bytes wait for window credit: a peer that grants no
    WINDOW_UPDATE makes the server hold about one window, not the whole response."""
    probe = Probe()
    piece = b"y" * 16384

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200})
            for i in range(64):  # 1 MiB
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                probe.put(i)
            await send({"type": "http.response.body"})
            probe.put("done")

    with serve(app) as srv:
        client = H2Client(srv.port)
        client.conn.max_inbound_frame_size = 2**24
        stream = client.request("/big")
        client.until(h2.events.ResponseReceived, stream)
        # The default window is 65,535 bytes: 4 pieces fit, a 5th waits parked.
        sent = [probe.get()]
        while True:
            try:
                sent.append(probe.get(timeout=0.5))
            except Exception:
                break
        assert len(sent) <= 6, sent
        # Credit flows again: everything arrives.
        received = 0
        while "done" not in sent or received < 64 * 16384:
            for event in client.events:
                if isinstance(event, h2.events.DataReceived):
                    client.conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    received += len(event.data)
            client.events = [e for e in client.events if not isinstance(e, h2.events.DataReceived)]
            client.flush()
            if received < 64 * 16384:
                client.read()
            while not probe.events.empty():
                sent.append(probe.events.get())
        assert received == 64 * 16384
        client.close()


def goaways(raw: bytes) -> list[int]:
    """The last-stream ids of the GOAWAY frames in `raw`, whole frames from the server."""
    found = []
    while raw:
        length, kind = int.from_bytes(raw[:3]), raw[3]
        if kind == 0x7:
            found.append(int.from_bytes(raw[9:13]) & 0x7FFFFFFF)
        raw = raw[9 + length :]
    return found


def test_shutdown_sends_goaway_and_lets_streams_finish(serve: Serve) -> None:
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            while not release.is_set():
                await asyncio.sleep(0.005)
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"finished"})

    with serve(app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/slow")
        wait_in_flight(srv)
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        goaway = client.until(h2.events.ConnectionTerminated)  # (its PING is answered)
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == 2**31 - 1  # the first of two (RFC 9113 §6.8)
        release.set()
        # h2 (the client library) takes a GOAWAY as the end: read the rest as raw bytes: the
        # second GOAWAY, naming our stream, and the response (its DATA frame is plain text);
        # then the server closes.
        rest = until_closed_cleanly(client.sock)
        assert goaways(rest) == [stream]
        assert b"finished" in rest
        client.close()


def test_goaway_in_two_steps_serves_a_stream_opened_in_between(serve: Serve) -> None:
    """RFC 9113 §6.8: a PING and GOAWAY(2^31-1) first; a stream that was on its way (opened
    before the client read the GOAWAY) is served; once the PING is acknowledged, the second
    GOAWAY names it as the last stream, and a stream after that is refused."""
    release = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            while scope["path"] == "/slow" and not release.is_set():
                await asyncio.sleep(0.005)
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": scope["path"].encode()})

    with serve(app) as srv:
        raw = RawH2(srv.port)
        frames = Frames()
        raw.send(frames.get(1, "/slow"))
        wait_in_flight(srv)
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        ping = raw.until(PING)[3]
        first = raw.until(GOAWAY)[3]
        assert int.from_bytes(first[:4]) == 2**31 - 1
        raw.send(frames.get(3, "/between"))  # the client had not read the GOAWAY yet
        assert raw.until(DATA, 3)[3] == b"/between"
        sent_and_read(raw.sock, frame(PING, ACK, 0, ping))
        settle(srv, 5)  # the ACK's answer is out: the fallback (1 s later) is not what sent it
        assert select.select([raw.sock], [], [], 0)[0], "no second GOAWAY after the ACK"
        second = raw.until(GOAWAY)[3]
        assert (int.from_bytes(second[:4]), int.from_bytes(second[4:])) == (3, 0)
        raw.send(frames.get(5, "/late"))
        assert raw.reset_code(5) == h2.errors.ErrorCodes.REFUSED_STREAM
        release.set()
        assert raw.until(DATA, 1)[3] == b"/slow"
        until_closed_cleanly(raw.sock)
        raw.close()


def test_the_second_goaway_comes_without_the_ping_ack(serve: Serve) -> None:
    """A client that does not answer the PING gets the second GOAWAY after a second (the
    round trip RFC 9113 §6.8 asks to allow for) and the connection closes."""
    with serve(echo_app()) as srv:
        raw = RawH2(srv.port)
        raw.send(Frames().get(1, "/x"))
        raw.until(DATA, 1)
        srv.loop.call_soon_threadsafe(srv.server.handle_exit)
        assert int.from_bytes(raw.until(GOAWAY)[3][:4]) == 2**31 - 1
        assert int.from_bytes(raw.until(GOAWAY)[3][:4]) == 1
        until_closed_cleanly(raw.sock)
        raw.close()


def test_an_idle_connection_closes_with_goaway(serve: Serve) -> None:
    with serve(echo_app(), timeout_keep_alive=0.3) as srv:
        client = H2Client(srv.port)
        client.response(client.request("/"))
        goaway = client.until(h2.events.ConnectionTerminated)
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        while not client.closed:
            client.read()
        client.close()


def test_rapid_reset_gets_enhance_your_calm_and_others_are_served(serve: Serve) -> None:
    """CVE-2023-44487: streams opened and reset at once, thousands of them. One warning names
    it: the rest of the read is dropped once the connection is closed (not a line per reset
    past the budget, not apps started on the closed connection)."""
    with serve(echo_app()) as srv, error_log() as records:
        attacker = H2Client(srv.port)
        for _ in range(2000):  # (one write: the server may close before a later one)
            stream = attacker.request("/", "POST", open_body=True, send=False)
            attacker.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        try:
            attacker.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        goaway = attacker.until(h2.events.ConnectionTerminated)
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        attacker.close()
        other = H2Client(srv.port)
        assert other.response(other.request("/ok"))[1] == b"2 GET /ok 0"
        other.close()
        wait_until(lambda: bool(records), "the warning")
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert len(lines) == 1, lines
    level, message = lines[0]
    assert level == logging.WARNING
    assert message.endswith(" - HTTP/2 rapid reset: GOAWAY ENHANCE_YOUR_CALM"), message


def test_without_http2_the_preface_is_a_400(serve: Serve) -> None:
    with serve(echo_app(), http2=False) as srv, srv.connect() as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")


def test_the_preface_split_over_writes(serve: Serve) -> None:
    with serve(echo_app()) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        data = conn.data_to_send()
        for at in (0, 5, 16, 20):  # inside "PRI *", the head, and "SM"
            sock.sendall(data[at : {0: 5, 5: 16, 16: 20, 20: len(data)}[at]])
        conn.send_headers(
            1,
            [(":method", "GET"), (":path", "/s"), (":scheme", "http"), (":authority", "t")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        body = b""
        ended = False
        while not ended:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                ended = ended or isinstance(event, h2.events.StreamEnded)
        sock.close()
    assert body == b"2 GET /s 0"


def test_read_body(serve: Serve) -> None:
    """A body in many DATA frames reaches the app whole, in order."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put(await read_body(receive))
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})

    with serve(app) as srv:
        client = H2Client(srv.port)
        body = bytes(range(256)) * 1000
        stream = client.request("/", "POST", open_body=True)
        for at in range(0, len(body), 10000):
            while client.conn.local_flow_control_window(stream) < 10000:
                client.read()  # the server's WINDOW_UPDATEs
            client.conn.send_data(stream, body[at : at + 10000])
            client.flush()
        client.conn.end_stream(stream)
        client.flush()
        assert client.response(stream)[0][":status"] == "204"
        client.close()
    assert probe.get() == body


def test_a_stream_whose_body_never_comes_is_reset_after_the_body_timeout(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put((await receive())["type"])

    with serve(app, timeout_request_body=0.3) as srv:
        client = H2Client(srv.port)
        stream = client.request("/upload", "POST", open_body=True)
        reset = client.until(h2.events.StreamReset, stream)
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL
        assert probe.get() == "http.disconnect"
        assert client.response(client.request("/after"))[0][":status"] == "500"
        client.close()


def test_starlette_and_fastapi_apps_over_http2(serve: Serve) -> None:
    """The same framework apps as the HTTP/1.1 tests, unchanged, through httpx's HTTP/2:
    JSON, path and query params, lifespan state, middleware, streaming, uploads, form data,
    sync endpoints in the thread pool."""
    from tests.apps.framework_apps import fastapi_app, starlette_app

    with (
        serve(starlette_app(Probe()), lifespan="on") as srv,
        httpx.Client(base_url=srv.url, http1=False, http2=True, timeout=5) as http,
    ):
        home = http.get("/")
        assert home.http_version == "HTTP/2"
        assert home.json() == {"hello": "world", "greeting": "hi"}
        assert home.headers["x-stamp"] == "yes"
        assert http.get("/items/7?q=x").json() == {"id": 7, "q": "x"}
        assert http.get("/stream").text == "".join(f"line {i}\n" for i in range(5))
        assert http.post("/upload", content=b"z" * 200_000).text == "200000"
        form = http.post("/form", data={"name": "n"}, files={"file": ("f.txt", b"abc")})
        assert form.json() == {"name": "n", "filename": "f.txt", "size": 3}
    with (
        serve(fastapi_app(Probe())) as srv,
        httpx.Client(base_url=srv.url, http1=False, http2=True, timeout=5) as http,
    ):
        created = http.post("/items", json={"name": "a", "price": 2.5})
        assert created.json() == {"name": "a", "double": 5.0, "who": "anonymous"}
        assert http.post("/items", json={"name": "a"}).status_code == 422
        assert http.get("/sync").json() == {"thread": True}
        assert http.get("/stream").text == "part 0\npart 1\npart 2\n"


async def early_hint_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        assert "http.response.early_hint" in scope["extensions"]
        await send({"type": "http.response.early_hint", "links": [b"</s.css>; rel=preload"]})
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"page"})


def test_early_hints_over_http2(serve: Serve) -> None:
    with serve(early_hint_app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/")
        headers, body = client.response(stream)
        hints = [e for e in client.events if isinstance(e, h2.events.InformationalResponseReceived)]
        client.close()
    fields: list[dict[Any, Any]] = [dict(e.headers) for e in hints]
    assert fields == [{":status": "103", "link": "</s.css>; rel=preload"}]
    assert (headers[":status"], body) == ("200", b"page")


@pytest.mark.parametrize(("version", "hinted"), [("1.1", True), ("1.0", False)])
def test_early_hints_over_http11(serve: Serve, version: str, hinted: bool) -> None:
    """HTTP/1.0 clients do not expect a 1xx (RFC 9110 §15.2): they get the response alone."""
    with serve(early_hint_app) as srv, srv.connect() as sock:
        sock.sendall(f"GET / HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = until_closed(sock)
    hint = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"
    assert raw.startswith(hint) is hinted, raw
    assert raw.endswith(b"page")
    assert raw.count(b"HTTP/1.1 200 OK") == 1


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_h2load_runs_without_errors(serve: Serve) -> None:
    with serve(echo_app()) as srv:
        out = subprocess.run(
            ["h2load", "-n", "2000", "-c", "10", "-m", "10", srv.url + "/load"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    assert "2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="needs nghttp (nghttp2-client)")
def test_nghttp_client(serve: Serve) -> None:
    with serve(echo_app()) as srv:
        out = subprocess.run(
            ["nghttp", "-d", "-", srv.url + "/n"],
            input=b"abcd",
            capture_output=True,
            timeout=20,
            check=True,
        ).stdout
    assert out == b"2 POST /n 4"


def test_a_long_lived_connection_is_retired_with_goaway_and_clients_go_on(serve: Serve) -> None:
    """zttp ends a connection after 4,096 streams as a flood; fastserve retires it before
    (GOAWAY NO_ERROR after 4,000), so a client that reconnects loses no request."""
    connections: set[Any] = set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            connections.add(scope["client"])
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})

    with serve(app) as srv, httpx.Client(http1=False, http2=True, timeout=5) as http:
        statuses = [http.get(srv.url + "/").status_code for _ in range(4200)]
    assert statuses == [204] * 4200
    assert len(connections) == 2


def test_a_body_over_the_limit_gets_413_and_the_app_a_disconnect(serve: Serve) -> None:
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
            probe.put(message["type"])

    with serve(app, limit_request_body=1000) as srv:
        client = H2Client(srv.port)
        stream = client.request("/up", "POST", open_body=True)  # no content-length
        for _ in range(3):
            client.conn.send_data(stream, b"x" * 600)
        client.flush()
        head = client.until(h2.events.ResponseReceived, stream)
        assert dict(head.headers)[":status"] == "413"
        assert probe.get() == "http.disconnect"
        assert client.response(client.request("/ok"))[0][":status"] == "500"  # app: no answer


@pytest.mark.parametrize("name", ["server", "date"])
def test_a_header_option_replaces_the_default_of_that_name(serve: Serve, name: str) -> None:
    """--header "Server: mine" (or Date) replaces the server's own field on HTTP/2 too."""
    other = "date" if name == "server" else "server"
    with serve(echo_app(), headers=[f"{name.title()}: mine/1.0"]) as srv:
        client = H2Client(srv.port)
        head = client.until(h2.events.ResponseReceived, client.request("/"))
        client.close()
    fields = [n for n, _ in head.headers]
    assert (name, "mine/1.0") in head.headers and fields.count(name) == 1
    assert fields.count(other) == 1


@pytest.mark.parametrize("window", [65535, 2**20, 2**31 - 1])
def test_initial_window_size(serve: Serve, window: int) -> None:
    """--http2-initial-window-size: SETTINGS_INITIAL_WINDOW_SIZE for each stream and a
    WINDOW_UPDATE for the connection, so a client may send that much of a body before any
    credit comes back (the h2 client refuses to send past its window: the first 1 MiB goes
    out only if the server granted it up front)."""
    probe = Probe()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe.put(len(await read_body(receive)))
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})

    with serve(app, http2_initial_window_size=window) as srv:
        client = H2Client(srv.port)
        settings = client.until(h2.events.RemoteSettingsChanged)
        changed = settings.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
        assert (changed.new_value if changed else 65535) == window
        if window > 65535:
            client.until(h2.events.WindowUpdated)  # the connection's (stream 0)
        stream = client.request("/up", "POST", open_body=True)
        assert client.conn.local_flow_control_window(stream) == window
        size = min(window, 2**20)
        for at in range(0, size, 16384):
            client.conn.send_data(stream, b"u" * min(16384, size - at))
        client.conn.end_stream(stream)
        client.flush()
        assert client.response(stream)[0][":status"] == "204"
        client.close()
    assert probe.get() == size


@pytest.mark.parametrize("window", [65534, 2**31])
def test_initial_window_size_out_of_range_is_a_config_error(window: int) -> None:
    from fastserve.config import Config, ConfigError

    with pytest.raises(ConfigError, match="--http2-initial-window-size"):
        Config(app="x:y", http2_initial_window_size=window)


def test_a_worker_retiring_under_an_h2_client() -> None:
    """--workers 2 --limit-max-requests 3, one h2c connection: the worker that holds it
    takes a slow request and two quick ones, then retires: the client gets the two GOAWAYs
    (RFC 9113 §6.8) while the slow stream is in flight, the slow stream completes, the
    connection closes cleanly, and a new connection is served (by the other worker or the
    replacement)."""
    from tests.apps.workers_procs import Fastserve

    args = ["tests.apps.workers_app:app", "--workers", "2", "--no-access-log", "--port", "0"]
    with Fastserve([*args, "--limit-max-requests", "3"]) as server:
        port = server.wait_running(2)
        raw = RawH2(port)
        frames = Frames()
        raw.send(frames.get(1, "/slow?3"))
        server.wait_for("slow request started")
        raw.send(frames.get(3, "/") + frames.get(5, "/"))  # the 3rd starts the retirement
        raw.send(frame(PING, ACK, 0, raw.until(PING)[3]))
        while raw.frames[-1][:3] != (DATA, END_STREAM, 1):
            raw.until(DATA, 1)
        until_closed_cleanly(raw.sock)
        raw.close()
        kinds = [(kind, stream) for kind, _, stream, _ in raw.frames]
        goaways = [int.from_bytes(f[3][:4]) for f in raw.frames if f[0] == GOAWAY]
        assert goaways == [2**31 - 1, 5]
        assert kinds.index((GOAWAY, 0)) < kinds.index((DATA, 1))  # the slow one in flight
        bodies = {
            s: b"".join(f[3] for f in raw.frames if f[:1] == (DATA,) and f[2] == s)
            for s in (1, 3, 5)
        }
        pid = bodies[3].decode()
        assert bodies == {1: f"{pid} slow done".encode(), 3: bodies[3], 5: bodies[3]}
        server.wait_for("reached --limit-max-requests")
        again = RawH2(port)
        answer = again.served(Frames(), 1)
        again.close()
        assert answer.isdigit() and answer.decode() != pid
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
