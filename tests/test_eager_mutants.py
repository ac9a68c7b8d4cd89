"""Tests written in the mutation pass over the --eager-start code paths (issue 16), and one
for an HTTP/2 connection that closes before its first read.

An eager start is visible from outside through --limit-concurrency: an app that answers
without waiting runs, and leaves the count, inside the read callback that parsed its request,
so a request on another connection read in the same loop pass finds the slot free again.
Started as a plain task, it runs in the next pass, after every read of this one. The same
holds for HTTP/2 streams taken from one read. (request.py `start_eagerly`'s `eager_start`
False/None/left out; http1.py `on_headers_complete`'s and h2.py `take`'s `fresh_context=True`,
which turn the eager start off.)

(h2.py `__init__` 32, `flush_handle = ""`: connection_made's flush is then never scheduled,
and a connection closing before its first read would call `"".cancel()` in connection_lost.)
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps.core_apps import Probe
from tests.helpers import (
    Serve,
    error_log,
    loop_held,
    request,
    requests_read_in_one_pass,
    status_of,
    statuses_of,
    until_closed,
    wait_until,
)
from tests.test_tls import Certs, scope_app


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(Path(tmp_path_factory.mktemp("tls")))


def test_an_h2_connection_closed_right_after_the_tls_handshake_logs_nothing(
    serve: Serve, certs: Certs
) -> None:
    """ALPN picks h2, and the client closes before sending a byte: the server's SETTINGS
    frame goes out, the connection is forgotten without an error, and the server serves on."""
    with serve(scope_app(Probe()), **certs.options()) as srv:
        state = srv.server.state
        assert state is not None
        with error_log(logging.DEBUG, "asyncio") as loop_errors, error_log() as errors:
            ctx = certs.client_context()
            ctx.set_alpn_protocols(["h2"])
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                assert sock.selected_alpn_protocol() == "h2"
                # The server speaks first (RFC 9113 §3.4): its SETTINGS, before any read.
                head = b""
                while len(head) < 9:
                    chunk = sock.recv(9 - len(head))
                    assert chunk, "closed before the server's SETTINGS"
                    head += chunk
                assert head[3] == 0x4 and head[4] & 0x1 == 0  # SETTINGS, not an ACK
            wait_until(lambda: not state.connections, "the connection to be forgotten")
            with httpx.Client(verify=certs.client_context(), http2=True, timeout=5) as client:
                response = client.get(f"https://127.0.0.1:{srv.port}/")
            assert (response.http_version, response.status_code) == ("HTTP/2", 200)
        bad = [r for r in loop_errors + errors if r.levelno >= logging.WARNING]
        assert not bad, [r.getMessage() for r in bad]


async def at_once_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers without waiting for anything."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("eager_start", [True, False])
def test_an_eager_app_that_answers_at_once_frees_its_slot_before_the_next_read(
    serve: Serve, eager_start: bool
) -> None:
    """--limit-concurrency 1, three requests read in one loop pass. Eager start (Python
    3.12+): each app runs and returns inside its own read callback, so all three are served.
    Without it (the control: the three reads do land in one pass), the first read takes the
    slot until the next pass and the other two get a 503."""
    if eager_start and sys.version_info < (3, 12):
        pytest.skip("eager tasks need Python 3.12+")
    # (A short keep-alive: the helper reads until the server closes, and a 503 for the
    # concurrency limit keeps the connection open.)
    options = {"limit_concurrency": 1, "eager_start": eager_start, "timeout_keep_alive": 0.2}
    with serve(at_once_app, **options) as srv:
        raws = requests_read_in_one_pass(srv, 3)
    statuses = sorted(status_of(raw) for raw in raws)
    assert statuses == ([200, 200, 200] if eager_start else [200, 503, 503]), raws


@pytest.mark.parametrize("eager_start", [True, False])
def test_an_eager_h2_app_that_answers_at_once_frees_its_slot_before_the_next_stream(
    serve: Serve, eager_start: bool
) -> None:
    """The same over HTTP/2: three streams in one read (the server's loop is held while they
    arrive), --limit-concurrency 1. An eager app runs and returns as its stream is taken,
    before the next stream is; a plain task holds the slot while the other two are refused."""
    if eager_start and sys.version_info < (3, 12):
        pytest.skip("eager tasks need Python 3.12+")
    pytest.importorskip("zttp")
    from tests.test_http2 import H2Client

    with serve(at_once_app, limit_concurrency=1, eager_start=eager_start) as srv:
        client = H2Client(srv.port)
        with loop_held(srv, client.sock):
            streams = [client.request(f"/{i}", send=False) for i in range(3)]
            client.flush()
        statuses = sorted(int(client.response(stream)[0][":status"]) for stream in streams)
        client.close()
    assert statuses == ([200, 200, 200] if eager_start else [200, 503, 503])


# Found in this pass (Python 3.12+, --eager-start, the default), fixed in http1.py
# eof_received. An answer from an app started as a plain task is held (outbox.py) all the
# same (`state.eager`), and that task runs in a later pass than the read. Two pipelined
# requests and the client's FIN: the first app runs eagerly inside the read, the second
# starts as a plain task (fresh context), and reading resumes. Next pass: the second app
# answers (held), its cycle_done() finds the connection idle, and then the FIN is read:
# eof_received() sees no request in progress and returns None, so the transport closes, and
# at the end of the pass Outbox.flush() skipped the closing transport: the answer was lost
# (RFC 9112 §9.6: every request received before the FIN is answered). With
# --reset-contextvars every request starts as a plain task: a single request and its FIN.
@pytest.mark.parametrize(
    ("paths", "options"),
    [(["/a", "/b"], {}), (["/a"], {"reset_contextvars": True})],
    ids=["pipelined", "reset-contextvars"],
)
def test_requests_then_a_fin_read_in_one_pass_get_every_answer(
    serve: Serve, paths: list[str], options: dict[str, Any]
) -> None:
    """The requests and the FIN are in the server's socket before it reads (its loop is held
    while they arrive)."""
    with serve(at_once_app, eager_start=True, **options) as srv, srv.connect() as sock:
        state = srv.server.state
        assert state is not None
        wait_until(lambda: len(state.connections) == 1, "the server to take the connection")
        with loop_held(srv, sock):
            sock.sendall(b"".join(request(path) for path in paths))
            sock.shutdown(socket.SHUT_WR)
        raw = until_closed(sock)
    assert statuses_of(raw) == [200] * len(paths), raw
