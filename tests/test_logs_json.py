"""The access log as operators read it: --access-log-json lines are JSON and nothing else,
escaped once, with a timestamp and a request id; a response that does not complete (client
gone, app crash mid-stream, cancelled at shutdown) still gets its line, saying how it ended;
a --log-config written for uvicorn configures fastserve's loggers. Real sockets, both loops
in process; the --log-config test runs the command in a subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.apps.cli_procs import ServerProcess, fastserve_cmd
from tests.helpers import Serve, Wire, abandon_request, abort, request, until_closed, wait_until

CHUNK = b"x" * 65536
TOTAL = 1024 * len(CHUNK)  # 64 MiB: far more than socket buffers hold
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # RFC 3339, UTC, ms


class Output:
    """What the server wrote on stdout, accumulated across capsys reads."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    def lines(self) -> list[str]:
        self.text += self.capsys.readouterr().out
        return [line for line in self.text.splitlines() if line]

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def endless(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A download of TOTAL bytes, in CHUNKs; the client is expected to leave long before."""
    if scope["type"] != "http":
        return
    length = str(TOTAL).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
    )
    for i in range(TOTAL // len(CHUNK)):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": i + 1 < 1024})


async def crash_mid_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom")


async def stuck_mid_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    await asyncio.Event().wait()  # until the server cancels it


async def long_poll(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers nothing until the client leaves."""
    if scope["type"] != "http":
        return
    while (await receive())["type"] != "http.disconnect":
        pass


async def return_mid_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


def test_json_lines_are_json_escaped_once(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    agent = 'Mozilla "quoted" \\ back'
    with serve(hello, access_log=True, access_log_json=True, log_level="info") as srv:
        headers = f"User-Agent: {agent}\r\nReferer: https://ref.example/a\r\nX-Request-ID: r-42\r\n"
        with srv.connect() as sock:
            wire = Wire(sock)
            wire.send(request("/path?q=1&b=%22", "GET", headers))
            assert wire.response().status == 200
            wire.send(request("/second"))
            assert wire.response().status == 200
            wire.send(request("/third", "HEAD"))
            assert wire.response("HEAD").status == 200
            # Alike but for the request id, then for the agent (lines of a connection share
            # their unchanged fields: each must still say its own).
            wire.send(request("/second", "GET", "X-Request-ID: r-43\r\n"))
            assert wire.response().status == 200
            wire.send(request("/second", "GET", "User-Agent: other\r\n"))
            assert wire.response().status == 200
            port = sock.getsockname()[1]
    first, second, third, fourth, fifth = Output(capsys).json()  # every line parses, whole
    assert (fourth["path"], fourth["request_id"], fourth["user_agent"]) == ("/second", "r-43", None)
    assert (fifth["path"], fifth["user_agent"]) == ("/second", "other")
    assert fifth["request_id"] not in ("r-43", second["request_id"], third["request_id"])
    assert first["user_agent"] == agent  # escaped once, by JSON
    assert first["referer"] == "https://ref.example/a"
    assert first["request_id"] == "r-42"
    assert (first["method"], first["path"], first["query"]) == ("GET", "/path", "q=1&b=%22")
    assert (first["version"], first["status"], first["bytes"]) == ("1.1", 200, 5)
    assert first["client"] == f"127.0.0.1:{port}"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert (first["completed"], first["ended"]) == (True, None)
    assert LINE.match(first["timestamp"]), first["timestamp"]
    stamp = datetime.fromisoformat(first["timestamp"])
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert second["user_agent"] is None and second["referer"] is None
    ids = {second["request_id"], third["request_id"]}
    assert len(ids) == 2 and "" not in ids and "r-42" not in ids  # generated, one per request
    assert third["method"] == "HEAD"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_aborted_download_is_logged(
    serve: Serve, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """The client leaves mid-stream: a line with what was sent and `client gone`."""
    options = {"access_log": True, "log_level": "info", "use_colors": False}
    output = Output(capsys)
    with serve(endless, access_log_json=fmt == "json", **options) as srv:
        sock = srv.connect()
        sock.sendall(request("/download"))
        received = b""
        while len(received) < 4 * len(CHUNK):
            data = sock.recv(65536)
            assert data, "the server closed early"
            received += data
        abort(sock)
        wait_until(lambda: bool(output.lines()), "the access line of the aborted download")
    body = len(received) - received.index(b"\r\n\r\n") - 4
    (line,) = output.lines()
    if fmt == "json":
        (entry,) = output.json()
        assert (entry["completed"], entry["ended"], entry["status"]) == (False, "client gone", 200)
        sent = entry["bytes"]
    else:
        match = re.fullmatch(
            r'INFO:     127\.0\.0\.1:\d+ - "GET /download HTTP/1\.1" 200 (\d+) '
            r"\d+\.\d\dms \[incomplete: client gone\]",
            line,
        )
        assert match, line
        sent = int(match.group(1))
    assert body <= sent < TOTAL


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_app_crash_mid_stream_is_logged(
    serve: Serve, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    options = {"access_log": True, "log_level": "info", "use_colors": False}
    with (
        serve(crash_mid_stream, access_log_json=fmt == "json", **options) as srv,
        srv.connect() as sock,
    ):
        sock.sendall(request("/crash", headers="X-Request-ID: crash-1\r\n"))
        raw = until_closed(sock)  # the response is cut off: an abort
    assert raw.startswith(b"HTTP/1.1 200 ") and b"partial" in raw
    (line,) = Output(capsys).lines()
    if fmt == "json":
        entry = json.loads(line)
        assert (entry["completed"], entry["ended"]) == (False, "app error")
        assert (entry["status"], entry["bytes"], entry["request_id"]) == (200, 7, "crash-1")
    else:
        pattern = r'"GET /crash HTTP/1\.1" 200 7 \d+\.\d\dms \[incomplete: app error\]$'
        assert re.search(pattern, line), line


def test_client_gone_before_any_response_is_logged(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"access_log": True, "access_log_json": True, "log_level": "info"}
    output = Output(capsys)
    with serve(long_poll, **options) as srv:
        abandon_request(srv, "/poll")
        wait_until(lambda: bool(output.lines()), "the access line of the abandoned request")
    (entry,) = output.json()
    assert (entry["completed"], entry["ended"]) == (False, "client gone")
    assert (entry["status"], entry["bytes"], entry["path"]) == (None, 0, "/poll")


def test_app_returning_mid_stream_is_logged(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"access_log": True, "log_level": "info", "use_colors": False}
    with serve(return_mid_stream, **options) as srv, srv.connect() as sock:
        sock.sendall(request("/short"))
        assert b"partial" in until_closed(sock)
    (line,) = Output(capsys).lines()
    pattern = r'"GET /short HTTP/1\.1" 200 7 \d+\.\d\dms \[incomplete: app error\]$'
    assert re.search(pattern, line), line


def test_response_cancelled_at_shutdown_is_logged(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {"access_log": True, "access_log_json": True, "log_level": "info"}
    with serve(stuck_mid_stream, timeout_graceful_shutdown=0.2, **options) as srv:
        sock = srv.connect()
        sock.sendall(request("/stuck"))
        received = b""
        while b"partial" not in received:
            data = sock.recv(65536)
            assert data, "the server closed early"
            received += data
    # (the block's end stopped the server: the graceful timeout passed, the app was cancelled)
    sock.close()
    (entry,) = Output(capsys).json()
    assert (entry["completed"], entry["ended"]) == (False, "cancelled")
    assert (entry["status"], entry["bytes"], entry["path"]) == (200, 7, "/stuck")


# -- a --log-config written for uvicorn ----------------------------------------------------------

UVICORN_DICT: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        },
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
        },
    },
    "handlers": {
        "default": {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {"formatter": "access", "class": "logging.FileHandler", "filename": "LOG"},
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}

UVICORN_INI = """\
[loggers]
keys=root,uvicorn,uvicorn_error,uvicorn_access

[handlers]
keys=default,access

[formatters]
keys=default,access

[logger_root]
handlers=

[logger_uvicorn]
qualname=uvicorn
handlers=default
level=INFO
propagate=0

[logger_uvicorn_error]
qualname=uvicorn.error
handlers=
level=INFO
propagate=1

[logger_uvicorn_access]
qualname=uvicorn.access
handlers=access
level=INFO
propagate=0

[handler_default]
class=StreamHandler
formatter=default
args=(sys.stderr,)

[handler_access]
class=FileHandler
formatter=access
args=('LOG',)

[formatter_default]
class=uvicorn.logging.DefaultFormatter
format=%(levelprefix)s %(message)s

[formatter_access]
class=uvicorn.logging.AccessFormatter
format=%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s
"""


def wait_for_text(path: Path, pattern: str, timeout: float = 15) -> str:
    found: list[str] = []

    def present() -> bool:
        text = path.read_text() if path.exists() else ""
        found[:] = [text]
        return re.search(pattern, text, re.MULTILINE) is not None

    try:
        wait_until(present, f"{pattern!r} in {path}", timeout)
    except AssertionError:
        raise AssertionError(f"{pattern!r} not in {path}: {found}") from None
    return found[0]


@pytest.mark.parametrize("kind", ["json", "ini"])
def test_uvicorn_log_config_configures_fastserve(tmp_path: Path, kind: str) -> None:
    """uvicorn's own LOGGING_CONFIG layout, its formatter classes included: the `uvicorn`
    handler gets the server's lines (stderr), `uvicorn.access`'s file the access lines."""
    import httpx

    log = tmp_path / "access.log"
    if kind == "json":
        config = tmp_path / "logging.json"
        config.write_text(json.dumps(UVICORN_DICT).replace('"LOG"', json.dumps(str(log))))
    else:
        config = tmp_path / "logging.ini"
        config.write_text(UVICORN_INI.replace("'LOG'", repr(str(log))))
    command = fastserve_cmd("tests.apps.core_apps:core_app", "--port", "0", "--lifespan", "off")
    with ServerProcess([*command, "--log-config", str(config)]) as server:
        url = server.url()  # the startup line reached stderr through uvicorn's handler
        headers = {"user-agent": "probe/1"}
        assert httpx.get(url + "/hello", headers=headers, timeout=10).text == "hello"
        text = wait_for_text(log, r'^INFO: +127\.0\.0\.1:\d+ - "GET /hello HTTP/1\.1" 200 5 ')
        assert server.stop() == 0
    assert "fastserve.access" in " ".join(server.err)  # the mapping is said once
    assert "Logging error" not in "\n".join(server.err), server.err
    assert "Traceback" not in "\n".join(server.err), server.err
    assert len(text.splitlines()) == 1, text


def test_json_access_lines_through_a_log_config_handler(tmp_path: Path) -> None:
    """With a --log-config handler of its own on the access logger (not fastserve's stream
    handler), each JSON line is one logging record: the handler's format wraps each one."""
    log = tmp_path / "access.log"
    config = tmp_path / "logging.json"
    settings = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"rec": {"format": "REC %(message)s"}},
        "handlers": {
            "file": {"formatter": "rec", "class": "logging.FileHandler", "filename": str(log)},
            "err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "fastserve.error": {"handlers": ["err"], "level": "INFO", "propagate": False},
            "fastserve.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
        },
    }
    config.write_text(json.dumps(settings))
    command = fastserve_cmd("tests.apps.core_apps:core_app", "--port", "0", "--lifespan", "off")
    with ServerProcess([*command, "--access-log-json", "--log-config", str(config)]) as server:
        host, port = server.url().removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as sock:
            # Pipelined: the three lines land in one batch of the access log.
            sock.sendall(b"".join(request(f"/hello?n={n}") for n in range(3)))
            received = b""
            while received.count(b"hello") < 3:
                data = sock.recv(65536)
                assert data, "closed before three responses"
                received += data
        text = wait_for_text(log, r"(?:^REC .*\n){3}")
        assert server.stop() == 0
    lines = text.splitlines()
    assert len(lines) == 3 and all(line.startswith("REC {") for line in lines), lines
    entries = [json.loads(line.removeprefix("REC ")) for line in lines]
    assert [entry["query"] for entry in entries] == ["n=0", "n=1", "n=2"]
