"""ASGI's `http.response.trailers` extension over real sockets, on both loops: trailer fields
after the body, sent when the client asked (`te: trailers`), as a chunked trailer section on
HTTP/1.1 and a trailing HEADERS frame on HTTP/2; dropped (the response still ends) when it did
not ask or the framing has no place for them.
"""

from __future__ import annotations

import h2.events
import h11
import pytest

from tests.apps.core_apps import Receive, Scope, Send
from tests.helpers import Serve, until_closed
from tests.test_http2 import H2Client, close_clients  # noqa: F401 (the fixture)


async def trailers_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        assert "http.response.trailers" in scope["extensions"]
        start = {"type": "http.response.start", "status": 200, "trailers": True}
        await send(start)
        await send({"type": "http.response.body", "body": b"part1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})
        trailer = {"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]}
        await send({**trailer, "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})


def h11_exchange(sock_data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.receive_data(sock_data)
    body, trailers = b"", []
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            trailers = list(event.headers)
            return body, trailers
        elif event is h11.NEED_DATA:
            raise AssertionError(f"incomplete response: {sock_data!r}")


@pytest.mark.parametrize("asked", [True, False])
def test_trailers_over_http11(serve: Serve, asked: bool) -> None:
    te = "TE: trailers\r\n" if asked else ""
    with serve(trailers_app) as srv, srv.connect() as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n{te}Connection: close\r\n\r\n".encode())
        raw = until_closed(sock)
    body, trailers = h11_exchange(raw)
    assert body == b"part1part2"
    expected = [(b"x-checksum", b"abc"), (b"grpc-status", b"0")] if asked else []
    assert trailers == expected


def test_trailers_over_http2(serve: Serve) -> None:
    with serve(trailers_app) as srv:
        client = H2Client(srv.port)
        stream = client.request("/", headers=[("te", "trailers")])
        _, body = client.response(stream)
        trailers = client.until(h2.events.TrailersReceived, stream)
        client.close()
    assert body == b"part1part2"
    assert dict(trailers.headers) == {"x-checksum": "abc", "grpc-status": "0"}


def test_a_framing_field_is_no_trailer(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "trailers": True})
            await send({"type": "http.response.body", "body": b"x"})
            bad = [(b"content-length", b"5")]
            await send({"type": "http.response.trailers", "headers": bad})

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        raw = until_closed(sock)
    # The head and the body piece were out: the broken response is cut off (no last chunk).
    assert raw.startswith(b"HTTP/1.1 200 ") and not raw.endswith(b"0\r\n\r\n"), raw
