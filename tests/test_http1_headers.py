"""Response headers of the core server, over real sockets, on both loops: the defaults (Date,
Server, extra headers) and the refusal of headers that would split the response (RFC 9110
§5.5, RFC 9112 §2.2). Responses are parsed by h11 (see `tests.helpers.Wire`).
"""

from __future__ import annotations

import email.utils
import logging
import time

import pytest

from tests.apps.core_apps import BAD_HEADERS, core_app
from tests.helpers import Serve, Wire, error_log, fetch, request, until_closed

# -- default headers --------------------------------------------------------------------------


def test_date_and_server_headers_by_default(serve: Serve) -> None:
    with serve(core_app) as srv:
        response = fetch(srv, request("/hello"))
    assert response.all(b"server") == [b"fastserve"]
    [date] = response.all(b"date")
    parsed = email.utils.parsedate_to_datetime(date.decode())
    assert abs(parsed.timestamp() - time.time()) < 5


def test_date_header_is_refreshed(serve: Serve) -> None:
    """The Date line is cached, but follows the clock (refreshed once a second)."""
    with serve(core_app) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello"))
        first = wire.response().header(b"date")
        dates = {first}
        deadline = time.monotonic() + 5
        while len(dates) == 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            wire.send(request("/hello"))
            dates.add(wire.response().header(b"date"))
    assert len(dates) == 2


def test_date_and_server_headers_can_be_switched_off(serve: Serve) -> None:
    with serve(core_app, server_header=False, date_header=False) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello") + request("/bad-header?kind=nul"))
        ok, failed = wire.response(), wire.response()
    for response in (ok, failed):
        assert response.header(b"server") is None
        assert response.header(b"date") is None


def test_extra_default_headers(serve: Serve) -> None:
    extra = ["X-Frame-Options: DENY", "X-Served-By:  edge-1 "]
    with serve(core_app, headers=extra) as srv, srv.connect() as sock:
        wire = Wire(sock)
        wire.send(request("/hello") + request("/own-server-date"))
        plain, own = wire.response(), wire.response()
    for response in (plain, own):
        assert response.all(b"x-frame-options") == [b"DENY"]
        assert response.all(b"x-served-by") == [b"edge-1"]


@pytest.mark.parametrize("name", [b"server", b"date"])
def test_a_header_option_replaces_the_default_of_that_name(serve: Serve, name: bytes) -> None:
    """--header "Server: mine" (or Date) is sent instead of the server's own, never beside
    it: on app responses and on the server's own answers (a 500 here, and a 400 refusal)."""
    other = b"date" if name == b"server" else b"server"
    option = name.decode().title() + ": mine/1.0"
    with serve(core_app, headers=[option]) as srv:
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/hello") + request("/bad-header?kind=nul"))
            responses = [wire.response(), wire.response()]
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused by the server
            raw = until_closed(sock)
    assert [r.status for r in responses] == [200, 500]
    for response in responses:
        assert response.all(name) == [b"mine/1.0"]
        assert len(response.all(other)) == 1  # the other default is still there, once
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert head.count(b"\r\n" + name + b":") == 1 and b"\r\n" + name + b": mine/1.0" in head


def test_response_headers_from_any_iterable(serve: Serve) -> None:
    with serve(core_app) as srv:
        response = fetch(srv, request("/iterable-headers"))
    assert (response.all(b"x-gen-0"), response.all(b"x-gen-1")) == ([b"0"], [b"1"])
    assert response.body == b"gen"


def test_app_set_server_and_date_are_not_duplicated(serve: Serve) -> None:
    with serve(core_app) as srv:
        response = fetch(srv, request("/own-server-date"))
    assert response.all(b"server") == [b"custom/1.0"]
    assert response.all(b"date") == [b"Mon, 01 Jan 2001 00:00:00 GMT"]


# -- response header validation ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_HEADERS))
def test_invalid_response_header_is_a_500_and_nothing_is_split(serve: Serve, kind: str) -> None:
    with serve(core_app) as srv, srv.connect() as sock, error_log() as records:
        wire = Wire(sock)
        wire.send(request(f"/bad-header?kind={kind}"))
        response = wire.response()
        assert wire.closed()
    assert response.status == 500
    assert b"x-injected" not in wire.raw.lower()
    assert b"never" not in wire.raw
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
