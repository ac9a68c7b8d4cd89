"""Startup checks of what the options name: the protocol registry (`--http`, `--ws`, see
server/protocols/__init__.py) and `--header`. Through the CLI in a subprocess where the log
lines and the exit code are the behaviour, in-process on both loops where only serving is."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fastserve import Config, ConfigError
from fastserve.protocols import HTTP, REGISTRIES, WS, Registry
from tests.apps.cli_procs import HELLO, REPO, ServerProcess, clean_env, fastserve_cmd, run_cli
from tests.apps.ws_apps import RawWS, echo_app, ws_connect
from tests.helpers import Serve, wait_until

ECHO = ["--factory", "tests.apps.ws_apps:echo_app"]


def warnings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("WARNING")]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- the tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("registry", [HTTP, WS], ids=lambda r: r.field)
def test_every_entry_imports(registry: Registry) -> None:
    """A typo in a "module:attr" would otherwise surface only when someone picks that name."""
    for name, target in registry.table.items():
        if target is not None:
            module, _, attr = target.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), name
    for name, chosen in registry.instead.items():
        assert chosen in registry.table and name not in registry.table, name


def test_help_lists_the_registered_names() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for registry in REGISTRIES.values():
        names = "[" + "|".join(registry.names()) + "]"
        assert names in result.stdout.replace("\n", ""), registry.option


# -- names uvicorn users pass: served, with one warning line ------------------------------------


@pytest.mark.parametrize(
    "mode", [[], ["--workers", "2"], ["--reload"]], ids=["single", "workers", "reload"]
)
def test_http_h11_warns_once_and_serves(mode: list[str], tmp_path: Path) -> None:
    """Once in all: not again in each worker, nor in the --reload server process."""
    if mode == ["--reload"]:
        mode = [*mode, "--reload-dir", str(tmp_path)]  # nothing in it changes
    with ServerProcess(fastserve_cmd(HELLO, "--port", "0", "--http", "h11", *mode)) as server:
        url = server.url()
        expected = 2 if "--workers" in mode else 1

        def all_running() -> bool:
            return sum("running on" in line for line in server.err) == expected

        wait_until(all_running, "every worker's startup line", timeout=15)
        assert httpx.get(url).text == "Hello, world!"
        assert server.stop() == 0
    found = warnings(server.err)
    assert len(found) == 1, server.err
    assert "--http h11" in found[0] and "httptools" in found[0]


def test_ws_wsproto_warns_once_and_websockets_work() -> None:
    with ServerProcess(fastserve_cmd(*ECHO, "--port", "0", "--ws", "wsproto")) as server:
        with ws_connect(port_of(server.url())) as ws:
            ws.send("over websockets-sansio")
            assert ws.recv(timeout=5) == "over websockets-sansio"
        assert server.stop() == 0
    found = warnings(server.err)
    assert len(found) == 1, server.err
    assert "--ws wsproto" in found[0] and "websockets-sansio" in found[0]


def test_ws_none_refuses_the_handshake() -> None:
    """The upgrade reaches the app as a plain HTTP request: no 101, the app's 200."""
    with ServerProcess(fastserve_cmd(*ECHO, "--port", "0", "--ws", "none")) as server:
        with RawWS(port_of(server.url())) as raw:
            assert raw.status == 200
        assert server.stop() == 0
    assert warnings(server.err) == []


@pytest.mark.parametrize("ws", ["auto", "websockets", "websockets-sansio", "wsproto", "none"])
def test_every_ws_name_in_process(serve: Serve, ws: str) -> None:
    """The embedded Server (no CLI, no serve_config) resolves names the same way."""
    with serve(echo_app(), ws=ws, http="h11") as srv, RawWS(srv.port) as raw:
        assert raw.status == (200 if ws == "none" else 101)


# -- the websockets library: checked at startup, imported on a worker's first handshake ---------

PLAIN_WS = ["tests.apps.plain_ws:app", "--port", "0", "--lifespan", "off"]
# The fastserve command with the websockets library made unimportable (as if not installed).
WITHOUT_WEBSOCKETS = [
    sys.executable,
    "-c",
    "import sys; sys.modules['websockets'] = None; "
    "from fastserve.cli import main; sys.argv[0] = 'fastserve'; main()",
]


@pytest.mark.timeout(30)
def test_websockets_is_imported_on_the_first_handshake_not_at_startup() -> None:
    with ServerProcess(fastserve_cmd(*PLAIN_WS)) as server:
        url = server.url()
        assert httpx.get(url).text == "not loaded"
        with ws_connect(port_of(url)) as ws:
            ws.send("first")
            assert ws.recv(timeout=5) == "first"
        assert httpx.get(url).text == "loaded"
        with ws_connect(port_of(url)) as ws:  # the second handshake: the same, loaded once
            ws.send("second")
            assert ws.recv(timeout=5) == "second"
        assert server.stop() == 0
    assert "protocols HTTP/1.1" in "\n".join(server.err) and warnings(server.err) == []


@pytest.mark.timeout(30)
def test_without_the_websockets_library_auto_serves_the_handshake_as_http() -> None:
    with ServerProcess([*WITHOUT_WEBSOCKETS, *PLAIN_WS]) as server:
        url = server.url()
        with RawWS(port_of(url)) as raw:
            assert raw.status == 200  # the app's answer: no 101
        assert server.stop() == 0
    started = [line for line in server.err if "protocols" in line]
    assert len(started) == 1 and "WebSocket" not in started[0], server.err


@pytest.mark.timeout(30)
def test_without_the_websockets_library_naming_it_is_one_error_line_and_exit_3() -> None:
    result = subprocess.run(
        [*WITHOUT_WEBSOCKETS, *PLAIN_WS, "--ws", "websockets"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR"), result.stderr
    assert "--ws websockets needs the 'websockets' package" in lines[0]


# -- names nothing implements: one error line, exit 3 -------------------------------------------


@pytest.mark.parametrize(
    ("option", "listed"),
    [(["--http", "h2"], "auto, httptools, h11"), (["--ws", "foo"], "websockets-sansio, none")],
)
def test_unknown_name_is_one_error_line_and_exit_3(option: list[str], listed: str) -> None:
    result = run_cli(HELLO, "--port", "0", *option)
    assert result.returncode == 3
    # Checked before the app is loaded: the error is all there is.
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR"), result.stderr
    assert f"{option[0]} {option[1]}: unknown" in lines[0] and listed in lines[0]


@pytest.mark.parametrize("option", [{"http": "h2"}, {"ws": "foo"}])
def test_unknown_name_in_process_is_a_config_error(serve: Serve, option: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="unknown"), serve(echo_app(), **option):
        pass


# -- --header: checked when the Config is made ------------------------------------------------


BAD_HEADERS = [
    "no colon",
    "Bad Name: x",
    ": no name",
    "X-Split: a\r\nSet-Cookie: injected=1",
    "X-Nul: a\x00b",
    "X-Snow: \u2603",
]


@pytest.mark.parametrize("item", BAD_HEADERS)
def test_bad_header_is_a_config_error_when_the_config_is_made(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(headers=["X-Fine: 1", item])
    assert "--header" in str(info.value) and "\n" not in str(info.value)


def test_bad_header_on_the_command_line_is_one_error_line_and_exit_3() -> None:
    result = run_cli(HELLO, "--port", "0", "--header", "X-Split: a\r\nSet-Cookie: x=1")
    assert result.returncode == 3
    # Nothing started before it (it used to fail after lifespan startup).
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR"), result.stderr
    assert re.search(r"--header 'X-Split: a\\r\\nSet-Cookie: x=1'", lines[0]), lines[0]


def test_encoded_headers() -> None:
    config = Config(headers=["X-Frame-Options: DENY", "  X-Served-By :  edge-1 ", "X-Empty:"])
    assert config.encoded_headers == [
        (b"x-frame-options", b"DENY"),
        (b"x-served-by", b"edge-1"),
        (b"x-empty", b""),
    ]
