"""Logging: the access log (default, named-field and JSON formats), escaping of request data,
--log-config in JSON / YAML / INI, --use-colors, and one-line rejections."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastserve import Config
from fastserve.accesslog import AccessLog
from tests.apps.core_apps import core_app
from tests.conftest import run_server
from tests.helpers import Serve, Wire, fetch, request, until_closed

ROOT = Path(__file__).resolve().parent.parent


def exchange(srv: Any, data: bytes, method: str = "GET") -> int:
    return fetch(srv, data, method).status


def access_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line]


def test_default_access_log_line(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    with serve(core_app, access_log=True, log_level="info", use_colors=False) as srv:
        exchange(srv, request("/hello?x=1"))
        port = srv.port
    (line,) = access_lines(capsys)
    pattern = r'INFO:     127\.0\.0\.1:\d+ - "GET /hello\?x=1 HTTP/1\.1" 200 5 \d+\.\d\dms'
    assert re.fullmatch(pattern, line), line
    assert str(port) not in line.split(" - ")[0].split(":")[0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.00ms"),
        (0.000_004_9, "0.00ms"),
        (0.000_006, "0.01ms"),
        (0.012_346, "12.35ms"),
        (0.999_994, "999.99ms"),
        (0.999_995, "1000.00ms"),
        (1.234_567, "1234.57ms"),
        (61.0, "61000.00ms"),
    ],
)
def test_default_line_duration_text(seconds: float, text: str) -> None:
    """The duration's text (whole milliseconds from a table below 1,000, str() above, then
    the hundredths, rounded): pure logic, on the AccessLog itself."""
    loop = asyncio.new_event_loop()
    try:
        access = AccessLog(Config(app=core_app, access_log=True), loop)
        scope = {
            "raw_path": b"/x",
            "query_string": b"",
            "method": "GET",
            "http_version": "1.1",
            "client": ("127.0.0.1", 5000),
        }
        access.add(scope, 200, 13, 0.0, seconds)  # (start and end: monotonic readings)
        line = "".join(access.pending)
    finally:
        loop.close()
    assert line == f'127.0.0.1:5000 - "GET /x HTTP/1.1" 200 13 {text}\n'


def test_access_log_lines_follow_each_request_of_a_connection(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default line's text is remembered per client: it must change whenever the
    method, target, query, status or size of the next request on the connection does.
    (The size is the body the app gave: for HEAD too, though none goes on the wire.)"""
    sequence = [
        (request("/hello"), "GET", '"GET /hello HTTP/1.1" 200 5 '),
        (request("/hello"), "GET", '"GET /hello HTTP/1.1" 200 5 '),
        (request("/hello?x=1"), "GET", '"GET /hello?x=1 HTTP/1.1" 200 5 '),
        (
            request("/status?code=201&body=abc"),
            "GET",
            '"GET /status?code=201&body=abc HTTP/1.1" 201 3 ',
        ),
        (
            request("/status?code=201&body=abc", "HEAD"),
            "HEAD",
            '"HEAD /status?code=201&body=abc HTTP/1.1" 201 3 ',
        ),
        (
            request("/echo", "POST", "Content-Length: 2\r\n", b"ab"),
            "POST",
            '"POST /echo HTTP/1.1" 200 2 ',
        ),
        (
            request("/echo", "POST", "Content-Length: 3\r\n", b"abc"),
            "POST",
            '"POST /echo HTTP/1.1" 200 3 ',
        ),
        (request("/hello"), "GET", '"GET /hello HTTP/1.1" 200 5 '),
    ]
    options = {"access_log": True, "log_level": "info", "use_colors": False}
    with serve(core_app, **options) as srv, srv.connect() as sock:
        wire = Wire(sock)
        for data, method, _ in sequence:
            wire.send(data)
            assert wire.response(method).status in (200, 201)
        port = sock.getsockname()[1]
    lines = access_lines(capsys)
    assert len(lines) == len(sequence), lines
    for line, (_, _, expected) in zip(lines, sequence, strict=True):
        assert line.startswith(f"INFO:     127.0.0.1:{port} - "), line
        assert expected in line, (expected, line)
        assert re.search(r" \d+\.\d\dms$", line), line


def test_access_log_with_named_fields(capsys: pytest.CaptureFixture[str]) -> None:
    template = (
        "%(client_addr)s|%(method)s|%(path)s|%(query)s|%(protocol)s|%(status)s|%(bytes)s|"
        "%(duration_us)s|%(referer)s|%(user_agent)s|%({x-request-id}i)s|%({absent}i)s|%(pid)s"
    )
    options = {"access_log": True, "log_level": "info", "access_log_format": template}
    with run_server(core_app, use_colors=False, **options) as srv:
        headers = (
            "Referer: https://ref.example/\r\nUser-Agent: tester/1.0\r\nX-Request-Id: r-42\r\n"
        )
        exchange(srv, request("/hello?a=b", "GET", headers))
    (line,) = access_lines(capsys)
    fields = line.removeprefix("INFO:     ").split("|")
    assert fields[:8] == ["127.0.0.1", "GET", "/hello", "a=b", "HTTP/1.1", "200", "5", fields[7]]
    assert fields[7].isdigit()
    assert fields[8:12] == ["https://ref.example/", "tester/1.0", "r-42", "-"]
    assert fields[12].isdigit()


def test_access_log_json(capsys: pytest.CaptureFixture[str]) -> None:
    options = {"access_log": True, "log_level": "info", "access_log_json": True}
    with run_server(core_app, use_colors=False, **options) as srv:
        exchange(srv, request("/hello"))
        exchange(srv, request("/echo", "POST", "Content-Length: 3\r\n", b"abc"), "POST")
    first, second = (json.loads(line.removeprefix("INFO:     ")) for line in access_lines(capsys))
    assert first["request_line"] == "GET /hello HTTP/1.1" and first["status"] == 200
    assert first["bytes"] == 5 and first["client_addr"] == "127.0.0.1"
    assert isinstance(first["duration_ms"], float) and isinstance(first["duration_us"], int)
    assert second["method"] == "POST" and second["bytes"] == 3


def test_request_data_cannot_forge_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """Header values may carry HTAB, quotes, backslashes and obs-text (NEL is U+0085): all
    escaped, so one request is exactly one line, in every format."""
    hostile = b'evil\t"quoted" \\ \x85FAKE LINE'
    for options in ({"access_log_format": '%({user-agent}i)s "%(user_agent)s"'}, {}):
        with run_server(core_app, access_log=True, log_level="info", **options) as srv:
            data = b"GET /hello HTTP/1.1\r\nHost: x\r\nUser-Agent: " + hostile + b"\r\n\r\n"
            assert exchange(srv, data) == 200
        lines = access_lines(capsys)
        assert len(lines) == 1, lines
        assert "\t" not in lines[0] and "\x85" not in lines[0]
    with run_server(core_app, access_log=True, access_log_json=True, log_level="info") as srv:
        data = b"GET /hello HTTP/1.1\r\nHost: x\r\nUser-Agent: " + hostile + b"\r\n\r\n"
        exchange(srv, data)
    (line,) = access_lines(capsys)
    # One JSON object per line, escaped once: the value comes back exactly (issue 14).
    assert json.loads(line)["user_agent"] == hostile.decode("latin-1")


def test_colours(capsys: pytest.CaptureFixture[str]) -> None:
    with run_server(core_app, access_log=True, log_level="info", use_colors=True) as srv:
        exchange(srv, request("/hello"))
    captured = capsys.readouterr()
    assert captured.out.startswith("\x1b[32mINFO:     \x1b[0m127.0.0.1:")
    assert "\x1b[32mINFO:     \x1b[0mfastserve running on" in captured.err
    with run_server(core_app, access_log=True, log_level="info", use_colors=False) as srv:
        exchange(srv, request("/hello"))
    captured = capsys.readouterr()
    assert "\x1b[" not in captured.out + captured.err


def test_rejections_are_one_info_line_without_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with run_server(core_app, log_level="info", use_colors=False) as srv:
        with srv.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert until_closed(sock).startswith(b"HTTP/1.1 400 ")
        err = capsys.readouterr().err
    rejected = [line for line in err.splitlines() if "rejected" in line]
    assert rejected == [rejected[0]] and "Traceback" not in err
    assert re.fullmatch(
        r"INFO:     127\.0\.0\.1:\d+ - rejected: 400 Missing Host header", rejected[0]
    )


# -- --log-config and bad settings, in a real process -------------------------------------------


def start(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The server process, stopped (SIGTERM, then kill) when the caller is done with it."""
    command = [sys.executable, "-m", "fastserve", "tests.apps.core_apps:core_app", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--lifespan", "off", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            assert proc.stderr is not None
            proc.stderr.close()


def wait_for(path: Path, pattern: str, timeout: float = 15) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            match = re.search(pattern, path.read_text())
            if match:
                return match
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in {path}: {path.read_text() if path.exists() else ''}")


DICT_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(name)s|%(levelname)s|%(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "LOG", "formatter": "plain"}},
    "loggers": {
        "fastserve.error": {"handlers": ["file"], "level": "INFO", "propagate": False},
        "fastserve.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
    },
}

INI_CONFIG = """\
[loggers]
keys=root,error,access

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
handlers=

[logger_error]
qualname=fastserve.error
handlers=file
level=INFO
propagate=0

[logger_access]
qualname=fastserve.access
handlers=file
level=INFO
propagate=0

[handler_file]
class=FileHandler
formatter=plain
args=('LOG',)

[formatter_plain]
format=%(name)s|%(levelname)s|%(message)s
"""


def write_config(tmp_path: Path, kind: str, log: Path) -> Path:
    if kind == "ini":
        path = tmp_path / "logging.ini"
        path.write_text(INI_CONFIG.replace("LOG", str(log)))
        return path
    data = json.loads(json.dumps(DICT_CONFIG).replace("LOG", str(log)))
    if kind == "json":
        path = tmp_path / "logging.json"
        path.write_text(json.dumps(data))
    else:
        import yaml

        path = tmp_path / "logging.yaml"
        path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config(tmp_path: Path, kind: str) -> None:
    import httpx

    log = tmp_path / "server.log"
    config = write_config(tmp_path, kind, log)
    for proc in start("--log-config", str(config)):
        match = wait_for(log, r"fastserve\.error\|INFO\|fastserve running on (\S+)")
        assert httpx.get(match.group(1) + "/hello").text == "hello"
        wait_for(log, r'fastserve\.access\|INFO\|127\.0\.0\.1:\d+ - "GET /hello HTTP/1\.1" 200')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()


BAD_SETTINGS = {
    "missing --log-config": ["--log-config", "/nonexistent/logging.json"],
    "broken JSON": ["--log-config", "BROKEN.json"],
    "broken YAML": ["--log-config", "BROKEN.yaml"],
    "broken INI": ["--log-config", "BROKEN.ini"],
    "unknown handler class": ["--log-config", "BADCLASS.json"],
    "unknown access log field": ["--access-log-format", "%(stauts)s"],
    "bad format character": ["--access-log-format", "%(status)z"],
}


@pytest.mark.timeout(120)
def test_bad_logging_settings_are_one_line_and_exit_3(tmp_path: Path) -> None:
    (tmp_path / "BROKEN.json").write_text("{not json")
    (tmp_path / "BROKEN.yaml").write_text("a: [unclosed")
    (tmp_path / "BROKEN.ini").write_text("no section header\n")
    bad_class = {**DICT_CONFIG, "handlers": {"file": {"class": "nowhere.Handler"}}}
    (tmp_path / "BADCLASS.json").write_text(json.dumps(bad_class))
    for case, args in BAD_SETTINGS.items():
        args = [str(tmp_path / a) if a.startswith(("BROKEN", "BADCLASS")) else a for a in args]
        command = [sys.executable, "-m", "fastserve", "tests.apps.core_apps:core_app"]
        result = subprocess.run(
            [*command, "--port", "0", "--lifespan", "off", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 3, (case, result.stderr)
        assert "Traceback" not in result.stderr, (case, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and ("log-config" in lines[0] or "log-format" in lines[0]), (
            case,
            lines,
        )


def test_tracebacks_name_compiled_modules_by_their_installed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiled module's traceback entry says `fastserve/protocols/cycle.py` (what mypyc was
    given, setup.py); the error log's formatter shows the installed file and its line, for
    chained exceptions too. (The real compiled case: tests/test_build.py.)"""
    from fastserve import logs

    installed = tmp_path / "fastserve" / "protocols" / "cycle.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("def send():\n    raise RuntimeError('from compiled code')\n")
    monkeypatch.setattr(logs, "PACKAGE_PARENT", str(tmp_path))
    namespace: dict[str, Any] = {}
    # A code object named as mypyc names a compiled module's (its file is not found as is).
    exec(compile(installed.read_text(), "fastserve/protocols/cycle.py", "exec"), namespace)
    try:
        try:
            namespace["send"]()
        except RuntimeError as exc:
            raise ValueError("while handling it") from exc
    except ValueError:
        ei = sys.exc_info()
    text = logs.DefaultFormatter("%(message)s").formatException(ei)
    entry = f"  File \"{installed}\", line 2, in send\n    raise RuntimeError('from compiled code')"
    assert entry in text, text
    assert 'File "fastserve/' not in text
    assert text.endswith("ValueError: while handling it")
    json_text = logs.JsonFormatter().formatException(ei)
    assert entry in json_text


BASE_SCOPE: dict[str, Any] = {
    "raw_path": b"/a",
    "query_string": b"",
    "method": "GET",
    "http_version": "1.1",
    "client": ("127.0.0.1", 5000),
    "headers": [],
}
# One field changed at a time, each change kept for the next request (one client's lines):
# (what changes, status, bytes sent, how it ended) -> the line must show it.
CHANGES: list[tuple[dict[str, Any], int, int, str | None]] = [
    ({}, 200, 13, None),
    ({"raw_path": b"/b"}, 200, 13, None),
    ({"query_string": b"q=1"}, 200, 13, None),
    ({"method": "POST"}, 200, 13, None),
    ({"http_version": "1.0"}, 200, 13, None),
    ({}, 404, 13, None),
    ({}, 404, 9, None),
    ({"headers": [(b"user-agent", b"curl/8")]}, 404, 9, None),
    ({"headers": [(b"user-agent", b"curl/8"), (b"referer", b"/r")]}, 404, 9, None),
    ({}, 404, 9, "client gone"),
    ({}, 404, 9, None),
]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_clients_next_line_shows_every_field_that_changed(fmt: str) -> None:
    """The texts made for a client's line are reused while its request's fields stay the
    same (accesslog.Head, JsonParts): each field that changes must show in the next line."""
    loop = asyncio.new_event_loop()
    try:
        json_format = fmt == "json"
        access = AccessLog(Config(app=core_app, access_log_json=json_format), loop)
        scope = dict(BASE_SCOPE)
        for change, status, sent, ended in CHANGES:
            scope.update(change)
            access.pending.clear()
            if json_format:
                access.add_json(scope, status, sent, 1.0, ended, 0.0)
                line = json.loads("".join(access.pending))
                agent = dict(scope["headers"]).get(b"user-agent")
                referer = dict(scope["headers"]).get(b"referer")
                seen = (
                    line["method"],
                    line["path"],
                    line["query"],
                    line["version"],
                    line["status"],
                    line["bytes"],
                    line["user_agent"],
                    line["referer"],
                    line["ended"],
                )
                assert seen == (
                    scope["method"],
                    scope["raw_path"].decode(),
                    scope["query_string"].decode(),
                    scope["http_version"],
                    status,
                    sent,
                    agent.decode() if agent else None,
                    referer.decode() if referer else None,
                    ended,
                )
            elif ended is None:
                access.add(scope, status, sent, 0.0, 0.0)
                query = scope["query_string"]
                target = scope["raw_path"] + (b"?" + query if query else b"")
                request_line = f"{scope['method']} {target.decode()} HTTP/{scope['http_version']}"
                assert "".join(access.pending) == (
                    f'127.0.0.1:5000 - "{request_line}" {status} {sent} 0.00ms\n'
                )
    finally:
        loop.close()
