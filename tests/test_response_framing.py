"""Content-Length on bodiless statuses, over real sockets, on both loops (parsed by h11).

RFC 9110 §8.6: a server MUST NOT send Content-Length in a 1xx or 204 response, so one the
app sets there is dropped; a 304 may carry the would-be length of the 200 (§15.4.5), so the
app's value is kept. The bodiless response must leave the connection usable.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import pytest

from tests.apps.core_apps import Receive, Scope, Send, core_app
from tests.helpers import Serve, Wire, error_log, request


async def declared_length_app(scope: Scope, receive: Receive, send: Send) -> None:
    """/<status>?body=<text>: that status with `content-length: 5` (none with `&undeclared`)
    and that body."""
    if scope["type"] != "http" or scope["path"] == "/hello":
        await core_app(scope, receive, send)
        return
    status = int(scope["path"].strip("/"))
    query = parse_qs(scope["query_string"].decode(), keep_blank_values=True)
    body = query.get("body", [""])[0].encode()
    headers = [(b"content-type", b"text/plain"), (b"etag", b'"v1"')]
    if "undeclared" not in query:
        headers.append((b"Content-Length", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/204"),  # declared 5, sent nothing: no "shorter than its Content-Length"
        ("GET", "/204?body=hello"),  # a body on a 204 is discarded, never framed
        ("HEAD", "/204?body=hello"),
        # Nothing declared: the discarded body must not become a length either.
        ("HEAD", "/204?body=hello&undeclared"),
    ],
)
def test_content_length_is_dropped_from_a_204(serve: Serve, method: str, target: str) -> None:
    with serve(declared_length_app) as srv, srv.connect() as sock:
        with error_log(logging.DEBUG) as records:
            wire = Wire(sock)
            wire.send(request(target, method))
            response = wire.response(method)
        # The same connection serves the next request: nothing unframed was left on it.
        wire.send(request("/hello"))
        after = wire.response()
    assert response.status == 204
    assert response.header(b"content-length") is None, response.headers
    assert b"content-length" not in bytes(wire.raw).lower().split(b"\r\n\r\n")[0]
    assert response.header(b"etag") == b'"v1"'  # the other headers are untouched
    assert response.body == b""
    assert (after.status, after.body) == (200, b"hello")
    dropped = [r.levelno for r in records if "content-length dropped" in r.getMessage()]
    assert dropped == ([] if "undeclared" in target else [logging.DEBUG])


def test_a_304_keeps_the_apps_content_length(serve: Serve) -> None:
    with serve(declared_length_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/304"))
        response = wire.response()
        wire.send(request("/hello"))
        after = wire.response()
    assert response.status == 304
    assert response.all(b"content-length") == [b"5"]
    assert response.body == b""
    assert (after.status, after.body) == (200, b"hello")
