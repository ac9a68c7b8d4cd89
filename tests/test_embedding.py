"""The Python API as uvicorn's is used in the wild: `Config`, `Server`, `serve()`, `run()`.

Each script in tests/apps/embed_*.py is written for uvicorn; it runs as a subprocess as it is
(uvicorn 0.54 is the reference) and with `uvicorn` replaced by `fastserve` in its import and
its `uvicorn.Config/Server/run` calls, nothing else. Both must do the same, signals included
(real ones, sent to the subprocess). Then the Config checks, in-process.
"""

from __future__ import annotations

import configparser
import logging
import re
import signal
import ssl
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from fastserve import Config
from fastserve.config import ConfigError, ConfigTypeError
from tests.apps.cli_procs import REPO, ServerProcess, clean_env

APPS = Path(__file__).parent / "apps"
SERVERS = ["uvicorn", "fastserve"]
RUNNING = r"running on http://127\.0\.0\.1:(\d+)"


def script(name: str, server: str, tmp_path: Path) -> Path:
    """tests/apps/`name`, for `server`: uvicorn's as written, or with only its name changed."""
    text = (APPS / name).read_text()
    if server == "fastserve":
        text = re.sub(r"^import uvicorn$", "import fastserve", text, flags=re.MULTILINE)
        text = re.sub(r"\buvicorn\.(Config|Server|run)\b", r"fastserve.\1", text)
        # What is left of the name: the logger names of a log config written for uvicorn.
        assert "import uvicorn" not in text and "uvicorn.Config" not in text
    path = tmp_path / f"{server}_{name}"
    path.write_text(text)
    return path


def start(name: str, server: str, tmp_path: Path, *args: str) -> ServerProcess:
    return ServerProcess([sys.executable, str(script(name, server, tmp_path)), *args], cwd=REPO)


@pytest.mark.parametrize("server", SERVERS)
def test_config_server_and_serve_in_asyncio_run(server: str, tmp_path: Path) -> None:
    """uvicorn-typed settings work: header pairs (once each, beside one Server header), an
    int log level, a dictConfig dict whose `uvicorn.error` logger prints the startup line."""
    with start("embed_serve.py", server, tmp_path) as proc:
        assert proc.wait(30) == 0, proc.err
    response = eval(proc.wait_for(r"^RESPONSE ", proc.out).removeprefix("RESPONSE "))
    head, _, body = response.partition(b"\r\n\r\n")
    head = head.lower() + b"\r\n"
    assert response.startswith(b"HTTP/1.1 200") and b"hello" in body  # (uvicorn: chunked)
    assert head.count(b"\r\nx-a: 1\r\n") == 1 and head.count(b"\r\nserver: ") == 1
    assert re.search(r"^CUSTOM .*" + RUNNING, "\n".join(proc.out), re.MULTILINE), proc.out
    assert "SERVE RETURNED" in proc.out


@pytest.mark.parametrize("server", SERVERS)
def test_the_classic_install_signal_handlers_override(server: str, tmp_path: Path) -> None:
    """`class Server(uvicorn.Server): def install_signal_handlers(self): pass`, run in a
    thread, then served in the main thread. (uvicorn since 0.29 no longer calls the method,
    so there its override changes nothing; fastserve honours it: no handler is installed.)"""
    with start("embed_override.py", server, tmp_path) as proc:
        assert proc.wait(30) == 0, proc.err
    assert proc.out[:2] == ["RESPONSE from a thread", "THREAD DONE"]
    assert proc.out[-1] == "MAIN DONE"
    untouched = proc.wait_for("SIGTERM HANDLER UNTOUCHED", proc.out)
    if server == "fastserve":
        assert untouched.endswith("True")
    assert not [line for line in proc.err if "Traceback" in line], proc.err


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_reaches_the_programs_own_handler_after_serve(server: str, tmp_path: Path) -> None:
    """The signal stops the server, serve() returns, the program's handler is back and is
    called with the signal (raised again), and with the next one."""
    with start("embed_signals.py", server, tmp_path, "host") as proc:
        proc.wait_for("^READY$", proc.out, timeout=20)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.err
    assert proc.out[1:] == [
        f"HOST HANDLER {signal.SIGTERM.value}",
        f"SERVE RETURNED [{signal.SIGTERM.value}]",
        "HANDLERS RESTORED True",
        f"HOST HANDLER {signal.SIGTERM.value}",
        f"AFTERWARDS [{signal.SIGTERM.value}, {signal.SIGTERM.value}]",
    ]


@pytest.mark.parametrize("server", SERVERS)
def test_an_unhandled_sigterm_ends_the_program_after_the_shutdown(
    server: str, tmp_path: Path
) -> None:
    """No handler of the program's: the server shuts down, then the default action ends the
    process by the signal (what a supervisor like systemd or Kubernetes sees)."""
    with start("embed_signals.py", server, tmp_path, "none") as proc:
        proc.wait_for("^READY$", proc.out, timeout=20)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == -signal.SIGTERM
    assert proc.out == ["READY"]


@pytest.mark.parametrize("server", SERVERS)
def test_sigint_becomes_keyboard_interrupt_from_asyncio_run(server: str, tmp_path: Path) -> None:
    with start("embed_signals.py", server, tmp_path, "none") as proc:
        proc.wait_for("^READY$", proc.out, timeout=20)
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.err
    assert proc.out == ["READY", "KEYBOARD INTERRUPT", "HANDLERS RESTORED True"]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    ("mode", "sig", "seen"),
    [("none", signal.SIGINT, []), ("host", signal.SIGTERM, [signal.SIGTERM.value])],
)
def test_run_as_uvicorn_run(
    server: str, mode: str, sig: signal.Signals, seen: list[int], tmp_path: Path
) -> None:
    """run(app, host=..., port=0, ...): it serves with the given settings (`Server: mine`
    replaces the default), and a signal returns from it; a SIGTERM handler the program had is
    called."""
    with start("embed_run.py", server, tmp_path, mode) as proc:
        port = re.search(RUNNING, proc.wait_for(RUNNING, timeout=20))
        assert port is not None
        response = httpx.get(f"http://127.0.0.1:{port.group(1)}/", timeout=10)
        proc.proc.send_signal(sig)
        assert proc.wait(20) == 0, proc.err
    assert response.text == "run"
    assert response.headers.get_list("x-a") == ["1"]
    assert response.headers.get_list("server") == ["mine"]
    assert proc.out[-1] == f"RUN RETURNED {seen}"


# -- Config: what uvicorn's takes, checked when it is made ----------------------------------------


def test_config_takes_uvicorn_typed_values(tmp_path: Path) -> None:
    # (Through Any: these are uvicorn's annotations, wider than fastserve's.)
    uvicorn_typed: dict[str, Any] = {
        "headers": [("X-A", "1"), "X-B: 2"],
        "log_level": logging.DEBUG,
        "log_config": {"version": 1},
        "workers": 4,
        "reload_dirs": "src",
        "reload_includes": "*.tmpl",
        "reload_excludes": None,
        "reload_delay": 1,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "ssl_certfile": tmp_path / "cert.pem",
        "http2": False,
        "timeout_graceful_shutdown": 5,
        "forwarded_allow_ips": ["10.0.0.1", "10.0.0.2"],
    }
    config = Config(**uvicorn_typed)
    assert config.headers == ["X-A: 1", "X-B: 2"]
    assert config.encoded_headers == [(b"x-a", b"1"), (b"x-b", b"2")]
    assert config.log_level == 10 and config.log_config == {"version": 1}
    assert config.workers == "4" and config.reload_dirs == ["src"]
    assert config.reload_includes == ["*.tmpl"] and config.reload_excludes == []
    assert config.ssl_version == 17 and type(config.ssl_version) is int
    assert config.ssl_certfile == str(tmp_path / "cert.pem")
    assert config.forwarded_allow_ips == "10.0.0.1,10.0.0.2"
    assert Config(log_level="WARNING").log_level == "warning"
    parser: Any = configparser.RawConfigParser()
    unset: Any = None
    assert Config(log_level=unset).log_level == "info"  # uvicorn's default: levels untouched
    assert Config(log_config=parser).log_config is parser
    assert Config().replace(port=1).port == 1  # a Config made from a made one


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"port": "8000"}, ConfigTypeError, "Config port: expected int, got str '8000'"),
        ({"port": True}, ConfigTypeError, "Config port: expected int"),
        ({"access_log": "no"}, ConfigTypeError, "Config access_log: expected bool"),
        ({"timeout_keep_alive": None}, ConfigTypeError, "Config timeout_keep_alive"),
        ({"headers": [("X-A", 1)]}, ConfigTypeError, "Config headers: expected text"),
        ({"headers": ["no colon"]}, ConfigError, "is not 'Name: value'"),
        ({"log_level": "loud"}, ConfigError, "Config log_level: 'loud' is not one of"),
        ({"lifespan": "maybe"}, ConfigError, "Config lifespan: 'maybe' is not one of"),
        ({"log_config": 3}, ConfigTypeError, "Config log_config"),
        ({"reload_dirs": [1]}, ConfigTypeError, "Config reload_dirs: expected str"),
        ({"ssl_version": "TLSv1_2"}, ConfigTypeError, "Config ssl_version: expected int"),
    ],
)
def test_config_refuses_a_bad_value_when_made(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        Config(**options)
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("server", SERVERS)
def test_an_unknown_setting_is_a_type_error(server: str) -> None:
    """As uvicorn's Config: an unexpected keyword, named."""
    module: Any = pytest.importorskip(server)
    with pytest.raises(TypeError, match="no_such_setting"):
        module.Config(app=None, no_such_setting=1)


def test_a_bad_value_from_run_is_one_line_and_exit_code_3(tmp_path: Path) -> None:
    """fastserve.run() with a bad value: the command line's treatment (one error line, no
    traceback, SystemExit(3)), before anything starts."""
    path = tmp_path / "bad.py"
    path.write_text("import fastserve\nfastserve.run('examples.hello:app', port='80')\n")
    with ServerProcess([sys.executable, str(path)], env=clean_env(), cwd=REPO) as proc:
        assert proc.wait(20) == 3
    assert proc.err == ["ERROR:    Config port: expected int, got str '80'"]


def test_the_check_of_annotations_config_has_no_field_of_yet() -> None:
    """A field added later with another kind of annotation is checked as it says, not
    refused whatever its value (a class, a callable, Any)."""
    from collections.abc import Callable

    from fastserve.config import _check

    def callback() -> None:
        pass

    assert _check("f", callback, Callable[[], None] | None) is callback
    assert _check("f", None, Callable[[], None] | None) is None
    assert _check("f", Path("/a"), Path) == Path("/a")
    assert _check("f", object, Any) is object
    with pytest.raises(ConfigTypeError, match="Config f: expected Path, got str 'a'"):
        _check("f", "a", Path)
    with pytest.raises(ConfigTypeError, match="Config f: expected int, got bool True"):
        _check("f", True, int)


def test_callback_notify_is_awaited_while_serving() -> None:
    """uvicorn's callback_notify / timeout_notify (its gunicorn worker's heartbeat)."""
    from tests.apps.core_apps import core_app
    from tests.conftest import run_server
    from tests.helpers import wait_until

    calls: list[float] = []

    async def notify() -> None:
        calls.append(1.0)

    with run_server(core_app, callback_notify=notify, timeout_notify=0.02):
        wait_until(lambda: len(calls) >= 3, "three notifications")
    with pytest.raises(ConfigTypeError, match="Config callback_notify"):
        Config(callback_notify=cast(Any, "not callable"))
