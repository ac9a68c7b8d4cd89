"""Request validation (RFC 9112) with hostile input over real sockets, on both loops.

Every refusal must be precise (its own status and a short body), close the connection, log
one info line without a traceback, and leave the server serving others. Valid but unusual
request forms (absolute, asterisk, CONNECT, trailers) must reach the app as the RFC says.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from tests.apps.core_apps import Probe, recording_app
from tests.conftest import LOOPS, RunningServer, run_server
from tests.helpers import (
    Serve,
    Wire,
    assert_serving,
    error_log,
    exchange,
    fetch,
    request,
    status_of,
)

# -- request validation (RFC 9112) ---------------------------------------------------------------

INVALID: dict[str, tuple[bytes, int]] = {
    "missing Host on HTTP/1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two different Content-Lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "Content-Length with a sign": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
        400,
    ),
    "Content-Length as a list": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
        400,
    ),
    "Content-Length overflow": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", 400),
    "whitespace before colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", 400),
    "control char in target": (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "DEL in target": (b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "control char in header value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x07b\r\n\r\n", 400),
    "NUL in header name": (b"GET / HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", 400),
    "bare LF in header": (b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", 400),
    "bare CR in header value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    "chunked not last": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    "only an unknown coding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    "chunked twice": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "unsupported coding before chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "identity before chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "Transfer-Encoding in HTTP/1.0": (
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "bad chunk size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "Host in trailers": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nHost: evil\r\n\r\n",
        400,
    ),
    "HTTP/2.0 request line": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    # llhttp reads both as 0.9; HTTP/0.9 had no version in its request line, so a literal
    # "HTTP/0.9" is as invalid a request-line as a missing version (RFC 9112 §3).
    "HTTP/0.9 version": (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 400),
    "no HTTP version": (b"GET /\r\nHost: x\r\n\r\n", 400),
    "malformed version": (b"GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400),
    "asterisk form with GET": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "authority form with GET": (b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "relative target": (b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # A fragment is no part of any request-target form (RFC 9112 §3.2, RFC 3986 absolute-URI).
    "fragment in the path": (b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "fragment in the query": (b"GET /a?x=1#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "fragment in absolute form": (b"GET http://x/a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "userinfo in absolute form": (b"GET http://u:p@x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "non-http absolute form": (b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "unknown method": (b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "space in target": (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "invalid authority in absolute form": (b"GET http://a,b/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # RFC 9112 §3.2: Host = uri-host [ ":" port ]; an invalid value MUST get 400.
    **{
        f"Host {value!r}": (b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", 400)
        for value in [
            b"bad host",
            b"a,b",  # two values joined (Host is a singleton field)
            b"a/b",
            b"a?b",
            b"a#b",
            b"u@a",
            b"a:x",
            b"a:80:90",
            b"[::1",
            b"::1",
            b'a"b',
            b"a<b>",
            b"[::1]x",
            b"[]:80",
        ]
    },
}

VALID_HOSTS = [
    b"example.com",
    b"example.com:8080",
    b"[::1]:8000",
    b"[::ffff:127.0.0.1]",
    b"127.0.0.1",
    b"xn--bcher-kva.example",
    b"example.com.",
    b"example.com:",  # port = *DIGIT (RFC 3986 §3.2.3)
    b"example.com  ",  # trailing whitespace is OWS (RFC 9110 §5.5)
]


@pytest.fixture(scope="module", params=LOOPS)
def strict(request: pytest.FixtureRequest) -> Iterator[tuple[RunningServer, Probe]]:
    """One server per loop for the validation table (starting ~70 servers would be slow)."""
    probe = Probe()
    with run_server(recording_app(probe), loop=request.param) as srv:
        yield srv, probe


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_request_is_refused(strict: tuple[RunningServer, Probe], case: str) -> None:
    srv, probe = strict
    data, expected = INVALID[case]
    while not probe.events.empty():
        probe.events.get()
    with error_log(logging.INFO) as records:
        raw = exchange(srv, data)
    assert status_of(raw) == expected, raw
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head
    assert 0 < len(body) < 100
    lines = [r for r in records if "rejected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None and lines[0].levelno == logging.INFO
    if "trailers" not in case and "bad chunk" not in case:
        assert probe.events.empty(), "the app must not see a request refused at its head"


@pytest.mark.parametrize("host", VALID_HOSTS)
def test_valid_hosts_reach_the_app(strict: tuple[RunningServer, Probe], host: bytes) -> None:
    srv, probe = strict
    while not probe.events.empty():
        probe.events.get()
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"GET /h HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert wire.response().status == 200
    kind, scope = probe.get()
    assert kind == "scope"
    assert (b"host", host.rstrip()) in scope["headers"]


def test_empty_list_elements_of_transfer_encoding_are_ignored(
    strict: tuple[RunningServer, Probe],
) -> None:
    """RFC 9110 §5.6.1.2: recipients MUST ignore empty list elements: ", chunked" is chunked,
    not an unknown coding (501). ("chunked, " stays 400: llhttp refuses it before we see it,
    and the leniency that would let it through also frames a non-final chunked.)"""
    srv, _ = strict
    body = b"5\r\nhello\r\n0\r\n\r\n"
    for te, status in [(b",chunked", 200), (b" , chunked", 200), (b"chunked, ", 400)]:
        head = b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
        if status == 200:
            response = fetch(srv, head + body, "POST")
            assert (response.status, response.body) == (200, b"5 /te "), te
        else:
            assert status_of(exchange(srv, head + body)) == status, te


def test_absolute_form_maps_to_path_and_its_authority_replaces_host(
    strict: tuple[RunningServer, Probe],
) -> None:
    srv, probe = strict
    while not probe.events.empty():
        probe.events.get()
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"GET http://Example.com:8080/a%20b?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        assert wire.response().body == b"0 /a%20b q=1"
        wire.send(b"GET https://[::1]:8443 HTTP/1.1\r\nHost: other\r\n\r\n")
        assert wire.response().body == b"0 / "
    scopes = []
    while not probe.events.empty():
        event = probe.events.get()
        if isinstance(event, tuple):
            scopes.append(event[1])
    assert scopes[0]["path"] == "/a b"
    assert (b"host", b"Example.com:8080") in scopes[0]["headers"]
    assert (b"host", b"other") not in scopes[0]["headers"]
    assert (b"host", b"[::1]:8443") in scopes[1]["headers"]


def test_asterisk_form_for_options(strict: tuple[RunningServer, Probe]) -> None:
    srv, _ = strict
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        response = wire.response("OPTIONS")
    assert response.status == 200 and response.body == b"0 * "


def test_connect_reaches_the_app_and_the_connection_closes(
    strict: tuple[RunningServer, Probe],
) -> None:
    """We never tunnel: the app answers CONNECT like any request, then the connection closes
    and what the client sent after the head is not parsed as requests."""
    srv, _ = strict
    raw = exchange(srv, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGARBAGE")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert status_of(raw) == 200 and b"connection: close" in raw
    assert raw.endswith(b"0 example.com:443 ")


def test_trailers_are_dropped_not_merged_into_headers(strict: tuple[RunningServer, Probe]) -> None:
    srv, probe = strict
    while not probe.events.empty():
        probe.events.get()
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(
            b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        assert wire.response("POST").body == b"3 /t "
        wire.send(request("/next"))  # the trailer does not leak into the next request either
        assert wire.response().status == 200
        # Far more trailer fields than --limit-request-fields: dropped as they come, so
        # nothing accumulates.
        many = b"".join(b"X-T%d: v\r\n" % i for i in range(5000))
        wire.send(
            b"POST /many HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\n" + many + b"\r\n"
        )
        assert wire.response("POST").body == b"1 /many "
    scopes = [e[1] for e in list(probe.events.queue) if isinstance(e, tuple)]
    for scope in scopes:
        assert all(name != b"x-trailer" for name, _ in scope["headers"])


def test_bytes_after_connection_close_are_not_answered(strict: tuple[RunningServer, Probe]) -> None:
    """RFC 9112 §9.6: nothing after a request with `Connection: close` is processed."""
    srv, _ = strict
    raw = exchange(
        srv,
        b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 ") == 1 and raw.endswith(b"0 /1 ")
    raw = exchange(srv, b"GET /1 HTTP/1.0\r\n\r\nGARBAGE\r\n\r\n")
    assert raw.count(b"HTTP/1.1 ") == 1 and status_of(raw) == 200


@pytest.mark.timeout(30)
def test_hostile_connections_do_not_disturb_a_good_client() -> None:
    """Garbage from many connections at once: each refused, the server keeps serving."""
    with run_server(recording_app(Probe()), limit_request_line=500) as srv:
        results: list[int] = []
        lock = threading.Lock()

        def attack(i: int) -> None:
            payloads = list(INVALID.values())
            data = payloads[i % len(payloads)][0]
            if i % 5 == 0:
                data = request("/" + "z" * 1000)
            try:
                raw = exchange(srv, data, timeout=10)
            except OSError:
                raw = b""
            with lock:
                results.append(status_of(raw) if raw else 0)

        threads = [threading.Thread(target=attack, args=(i,)) for i in range(60)]
        for thread in threads:
            thread.start()
        assert_serving(srv)
        for thread in threads:
            thread.join(20)
        assert len(results) == 60
        assert all(400 <= status < 600 for status in results), results
        assert_serving(srv)


def test_rejection_reason_in_the_log_is_escaped(serve: Serve) -> None:
    """The reason logged is ours (or llhttp's fixed text): request bytes never reach the
    log line verbatim, so a client cannot forge log lines."""
    with serve(recording_app(Probe())) as srv:
        with error_log(logging.INFO) as records:
            assert status_of(exchange(srv, b"GET /\r\nFAKE LOG LINE HTTP/1.1\r\n\r\n")) == 400
            assert status_of(exchange(srv, b"G\nET / HTTP/1.1\r\n\r\n")) == 400
        lines = [r.getMessage() for r in records]
    assert len([line for line in lines if "rejected: 400" in line]) == 2, lines
    for line in lines:
        assert "\n" not in line and "FAKE" not in line
