"""The shared deadline timers (server/protocols/idle.py: state.idle_conns and the lingering
lists), the protocol registry (server/protocols/__init__.py) and the peer-address cache
(connection.py `address`) where a mutation pass (mutmut 3, docs/testing.md, session 14
helper-39) found them unchecked: every test here failed against at least one mutant the rest
of the suite let live. Over real sockets; the server's lists are read on its own loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from time import monotonic
from typing import Any

import pytest

from fastserve import Config
from fastserve.protocols import connection, implemented
from fastserve.protocols.connection import address
from tests.apps.cli_procs import HELLO, REPO, clean_env, run_cli
from tests.apps.core_apps import Probe
from tests.conftest import RunningServer
from tests.helpers import (
    Serve,
    Wire,
    error_log,
    on_server_loop,
    request,
    until_closed,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def keep_alive_deadlines(srv: RunningServer) -> tuple[list[float], float]:
    """The deadlines in the server's keep-alive list, in its order, and the time, read on the
    server's loop."""

    async def read() -> tuple[list[float], float]:
        state = srv.server.state
        assert state is not None
        return list(state.idle_conns.deadlines.values()), monotonic()

    return on_server_loop(srv, read)


# -- idle.py: one timer for many deadlines ------------------------------------------------------


def test_a_connection_accepted_later_outlives_an_earlier_ones_keep_alive_deadline(
    serve: Serve,
) -> None:
    """Two connections that never send, the second accepted when half the first one's wait
    is gone: its deadline is a full timeout from its own accept (not from the list's first
    entry, not in the past), the first is closed at its deadline while the second still
    waits, and the second at its own."""
    timeout = 2.0
    with serve(hello, timeout_keep_alive=timeout) as srv, srv.connect() as first:
        wait_until(lambda: len(keep_alive_deadlines(srv)[0]) == 1, "the first one listed")
        [first_due], _ = keep_alive_deadlines(srv)
        wait_until(lambda: monotonic() >= first_due - timeout / 2, "half its wait", timeout=5)
        with srv.connect() as second:
            wait_until(lambda: len(keep_alive_deadlines(srv)[0]) == 2, "the second one listed")
            (due, second_due), now = keep_alive_deadlines(srv)
            assert due == first_due
            assert now < second_due <= now + timeout  # (its own full wait, still ahead)
            assert second_due - first_due >= timeout / 2
            assert until_closed(first, timeout=10) == b""
            # The first one's sweep left the second alone: it is not due for a while.
            assert keep_alive_deadlines(srv)[0] == [second_due]
            assert until_closed(second, timeout=10) == b""
            wait_until(lambda: keep_alive_deadlines(srv)[0] == [], "the list emptied")


# -- connection.py: one host string per peer address -------------------------------------------


def test_connections_from_one_address_share_one_host_string(serve: Serve) -> None:
    """The transport makes a new host string for each connection; the scope's `client` of
    every connection from 127.0.0.1 holds the same one (a string kept per address)."""
    probe = Probe()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        probe.put(scope["client"])
        await hello(scope, receive, send)

    with serve(app) as srv:
        for _ in range(2):
            with srv.connect() as sock:
                wire = Wire(sock)
                wire.send(request("/"))
                assert wire.response().body == b"hi"
        first, second = probe.get(), probe.get()
    assert first[0] == second[0] == "127.0.0.1" and first[1] != second[1]
    assert first[0] is second[0]


def test_the_host_strings_kept_are_at_most_4096() -> None:
    """Direct: 4,097 distinct hosts; the cache never holds more than 4,096 (it starts over)."""
    hosts = [f"10.{i >> 8}.{i & 255}.1" for i in range(4097)]
    for i, host in enumerate(hosts):
        assert address((host, i)) == (host, i)
        assert len(connection._HOSTS) <= 4096
    assert len(connection._HOSTS) < 4096  # it started over (one left over at most)


# -- protocols/__init__.py: what the names resolve to ------------------------------------------


def python_c(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -c code args` from the repository, in the tests' environment (clean_env)."""
    options: dict[str, Any] = {"cwd": REPO, "env": clean_env(**env), "timeout": 20}
    cmd = [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **options)


def test_a_name_served_by_another_entry_warns_in_exactly_these_words() -> None:
    """`--http h11`: one warning line, word for word, then (`--ws foo`) the error, exit 3."""
    result = run_cli(HELLO, "--port", "0", "--http", "h11", "--ws", "foo")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "WARNING:  --http h11 is not implemented in fastserve; running httptools instead",
        "ERROR:    --ws foo: unknown WebSocket implementation "
        "(choose from auto, websockets, websockets-sansio, none, wsproto)",
    ]


def test_a_config_that_names_what_runs_is_kept_as_it_is() -> None:
    """Direct: nothing to rewrite, the Config itself comes back (not a copy made again,
    which would read its --env-file again); a rewritten one, passed again, too, silently."""
    config = Config(app=HELLO)
    assert implemented(config) is config
    with error_log() as records:
        once = implemented(Config(app=HELLO, http="h11"))
        assert implemented(once) is once
    assert once.http == "httptools"
    assert [record.getMessage() for record in records] == [
        "--http h11 is not implemented in fastserve; running httptools instead"
    ]


def test_an_http_library_that_fails_to_import_is_named_by_its_error(tmp_path: Path) -> None:
    """Embedded (the CLI imports httptools itself, first): an httptools whose import raises
    an ImportError of its own, with no module name in it (a broken build). The startup
    error quotes that error."""
    (tmp_path / "httptools.py").write_text('raise ImportError("this httptools build is broken")\n')
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    code = (
        "from fastserve import Config, ConfigError, Server\n"
        "try:\n"
        "    Server(Config(app='examples.hello:app', port=0, lifespan='off')).run()\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = python_c(code, PYTHONPATH=path)
    assert result.stdout.splitlines() == [
        "--http auto needs the 'this httptools build is broken' package "
        "(pip install 'fastserve[standard]')"
    ], result.stderr


def test_http2_insisted_on_without_zttp_is_one_error_line_and_exit_3() -> None:
    """`--http2` with zttp missing (made unimportable): the one line saying what to install."""
    code = (
        "import sys; sys.modules['zttp'] = None; "
        "from fastserve.cli import main; sys.argv[0] = 'fastserve'; main()"
    )
    result = python_c(code, HELLO, "--port", "0", "--lifespan", "off", "--http2")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "ERROR:    --http2 needs zttp: pip install 'fastserve[standard]' (or zttp)"
    ]
