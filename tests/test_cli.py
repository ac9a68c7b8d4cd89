"""The `fastserve` command and the Python API, as a user runs them: real subprocesses on port 0,
signals, exit codes, and what they print."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

import fastserve
from fastserve.cli import main as cli_main
from fastserve.config import config_fields
from tests.apps.core_apps import core_app

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STARTUP = re.compile(r"fastserve running on (\S+)")
HELLO = "examples.hello:app"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSERVE_", "UVICORN_"))}
    env.pop("WEB_CONCURRENCY", None)
    env.update(extra)
    return env


class ServerProcess:
    """A fastserve subprocess whose stdout/stderr lines are collected by reader threads."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> None:
        self.proc = subprocess.Popen(
            cmd,
            cwd=kw.pop("cwd", REPO),
            env=env or clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, lines: list[str] | None = None, timeout: float = 15) -> str:
        """The first line (of stderr by default) matching `pattern`."""
        lines = self.err if lines is None else lines
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not any(r.is_alive() for r in self.readers):
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}; stderr: {self.err}")

    def url(self) -> str:
        match = STARTUP.search(self.wait_for(STARTUP.pattern))
        assert match is not None
        return match.group(1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def fastserve_cmd(*args: str) -> list[str]:
    return [str(BIN / "fastserve"), *args]


def run_cli(*args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fastserve_cmd(*args),
        cwd=REPO,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- starting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["script", "python -m"])
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_starts_prints_one_line_and_serves(how: str, loop: str) -> None:
    base = fastserve_cmd() if how == "script" else [sys.executable, "-m", "fastserve"]
    with ServerProcess([*base, HELLO, "--port", "0", "--loop", loop]) as server:
        url = server.url()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert httpx.get(url).text == "Hello, world!"
        assert server.stop() == 0
    assert len([line for line in server.err if "running on" in line]) == 1
    assert not any("Traceback" in line for line in server.err)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert fastserve.__version__ in result.stdout


def test_help_lists_every_config_field() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for f in config_fields():
        name = f.metadata.get("cli", "--" + f.name.replace("_", "-"))
        assert name in result.stdout, f"Config.{f.name} has no CLI option"


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_colon_here", "module:attribute"),
        ("no_such_module_xyz:app", "cannot import module 'no_such_module_xyz'"),
        ("examples.hello:nope", "has no attribute"),
        ("examples.hello:app.nope", "has no attribute"),
        ("tests.apps.core_apps:make_app", "--factory"),  # a factory without --factory
    ],
)
def test_bad_app_is_one_error_line_and_exit_3(app: str, message: str) -> None:
    result = run_cli(app, "--port", "0")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_port_in_use_is_one_error_line_and_exit_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli(HELLO, "--port", str(taken.getsockname()[1]))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "address already in use" in errors[0]


@pytest.mark.parametrize("app", ["lifespan_failing_app", "lifespan_raising_app"])
def test_lifespan_startup_failure_exits_3(app: str) -> None:
    result = run_cli(f"tests.apps.core_apps:{app}", "--port", "0", "--lifespan", "on")
    assert result.returncode == 3
    assert "startup failed" in result.stderr
    assert "running on" not in result.stderr


def test_lifespan_auto_with_an_app_without_lifespan_logs_one_info_line() -> None:
    with ServerProcess(fastserve_cmd("tests.apps.core_apps:no_lifespan_app", "--port", "0")) as s:
        assert httpx.get(s.url() + "/hello").text == "hello"
        assert s.stop() == 0
    unsupported = [line for line in s.err if "unsupported" in line]
    assert len(unsupported) == 1 and unsupported[0].startswith("INFO")
    assert not any("Traceback" in line for line in s.err)


def test_lifespan_startup_and_shutdown_run() -> None:
    cmd = fastserve_cmd("tests.apps.core_apps:lifespan_app", "--port", "0", "--lifespan", "on")
    with ServerProcess(cmd) as server:
        server.url()
        assert server.stop() == 0
    assert server.out[:1] == ["lifespan startup ran"]
    assert "lifespan shutdown ran" in server.out


def test_app_dir(tmp_path: Path) -> None:
    (tmp_path / "elsewhere_app.py").write_text((REPO / "examples/hello.py").read_text())
    cmd = fastserve_cmd("elsewhere_app:app", "--app-dir", str(tmp_path), "--port", "0")
    with ServerProcess(cmd) as server:
        assert httpx.get(server.url()).text == "Hello, world!"
        assert server.stop() == 0


def test_factory() -> None:
    cmd = fastserve_cmd("tests.apps.core_apps:make_app", "--factory", "--port", "0")
    with ServerProcess(cmd) as server:
        assert httpx.get(server.url()).text == "from factory"
        assert server.stop() == 0


def test_environment_variables() -> None:
    env = clean_env(FASTSERVE_PORT="0", FASTSERVE_ACCESS_LOG="false", FASTSERVE_APP=HELLO)
    with ServerProcess(fastserve_cmd(), env=env) as server:
        url = server.url()
        assert not url.endswith(":8000")
        assert httpx.get(url).text == "Hello, world!"
        assert server.stop() == 0
    assert not any("GET /" in line for line in server.out)


def test_uvicorn_environment_variables_are_honoured() -> None:
    """A deployment configured through UVICORN_* variables keeps its settings; FASTSERVE_*
    wins where both are set."""
    env = clean_env(
        UVICORN_APP=HELLO, UVICORN_PORT="8000", FASTSERVE_PORT="0", UVICORN_ACCESS_LOG="false"
    )
    with ServerProcess(fastserve_cmd(), env=env) as server:
        url = server.url()
        assert not url.endswith(":8000")
        assert httpx.get(url).text == "Hello, world!"
        assert server.stop() == 0
    assert not any("GET /" in line for line in server.out)


# -- options: every Config field, and uvicorn's names ------------------------------------------


def cli_options() -> dict[str, click.Parameter]:
    return {opt: p for p in cli_main.params for opt in (*p.opts, *p.secondary_opts)}


def test_every_config_field_has_a_cli_option() -> None:
    by_name = {p.name for p in cli_main.params}
    missing = [f.name for f in config_fields() if f.name not in by_name]
    assert not missing, f"Config fields without a CLI option: {missing}"


def env_value(param: click.Parameter) -> str:
    """A valid, non-default value for `param`, as an environment variable would spell it."""
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[-1])
    if isinstance(param, click.Option) and (param.is_flag or param.type is click.BOOL):
        return "false" if param.default else "true"
    if param.type is click.INT:
        return "7"
    if param.type is click.FLOAT:
        return "7.5"
    return "x"


def test_every_option_reads_fastserve_name_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = [p for p in cli_main.params if p.name and p.name not in ("app", "version")]
    for param in params:
        assert param.name is not None
        monkeypatch.setenv(f"FASTSERVE_{param.name.upper()}", env_value(param))
    ctx = cli_main.make_context("fastserve", [HELLO])
    from_env = click.core.ParameterSource.ENVIRONMENT
    missed = [p.name for p in params if ctx.get_parameter_source(p.name or "") != from_env]
    assert not missed, f"options not read from FASTSERVE_<NAME>: {missed}"


# uvicorn options fastserve deliberately does not accept, and why.
NOT_SUPPORTED = {
    "--http2": "uvicorn's HTTP/2 needs its own 'zttp' implementation; not part of fastserve",
    "--reset-contextvars": "not needed: every request already starts from a clean context "
    "(the server's, never the lifespan's or a previous request's)",
    "--ssl-version": "the context is PROTOCOL_TLS_SERVER with TLS 1.2 as the minimum; "
    "pinning a protocol constant is deprecated in Python's ssl module",
    "--reload-include": "--reload watches Python files (watchfiles' PythonFilter) only",
    "--reload-exclude": "--reload already skips __pycache__, .git and virtualenvs",
    "--reload-delay": "--reload restarts on watchfiles' own debounced batches",
}


def uvicorn_options() -> set[str]:
    result = subprocess.run(
        [str(BIN / "uvicorn"), "--help"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    options: set[str] = set()
    for line in result.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            # "--access-log / --no-access-log  Enable..." or "--port INTEGER  Bind..."
            spec = re.split(r"\s{2,}", stripped)[0]
            options.update(re.findall(r"--[a-z0-9][a-z0-9-]*", spec))
    assert {"--host", "--port", "--no-access-log"} <= options
    return options


def test_uvicorn_option_names_are_accepted() -> None:
    ours = set(cli_options()) | {"--help", "--version"}
    missing = uvicorn_options() - ours - set(NOT_SUPPORTED)
    assert not missing, f"uvicorn options fastserve does not accept: {sorted(missing)}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ws-per-message-deflate", "false"], {"ws_per_message_deflate": False}),
        (["--workers", "4"], {"workers": "4"}),
        (["--timeout-keep-alive", "7"], {"timeout_keep_alive": 7.0}),
        (["--header", "X-A:1", "--header", "X-B:2"], {"headers": ("X-A:1", "X-B:2")}),
        (["--no-access-log", "--no-server-header"], {"access_log": False, "server_header": False}),
        (["--forwarded-allow-ips", "*", "--proxy-headers"], {"forwarded_allow_ips": "*"}),
        (["--http", "h11", "--loop", "asyncio"], {"http": "h11", "loop": "asyncio"}),
        (["--reload-dir", "a", "--reload-dir", "b"], {"reload_dirs": ("a", "b")}),
    ],
)
def test_uvicorn_style_values_parse(args: list[str], expected: dict[str, Any]) -> None:
    """Same name, same meaning: a uvicorn command line's values mean the same here."""
    ctx = cli_main.make_context("fastserve", [HELLO, *args])
    for key, value in expected.items():
        assert ctx.params[key] == value, key


# -- other ways to listen -----------------------------------------------------------------------


def test_uds(tmp_path: Path) -> None:
    path = str(tmp_path / "fs.sock")
    with ServerProcess(fastserve_cmd(HELLO, "--uds", path)) as server:
        assert server.url() == f"unix:{path}"
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport) as client:
            assert client.get("http://localhost/").text == "Hello, world!"
        assert server.stop() == 0


def test_fd() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    cmd = fastserve_cmd(HELLO, "--fd", str(sock.fileno()))
    with sock, ServerProcess(cmd, pass_fds=(sock.fileno(),)) as server:
        server.url()
        sock.close()  # the child has its own copy
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "Hello, world!"
        assert server.stop() == 0


# -- graceful shutdown ------------------------------------------------------------------------


def slow_server(*extra: str) -> ServerProcess:
    return ServerProcess(fastserve_cmd("tests.apps.core_apps:slow_app", "--port", "0", *extra))


def start_slow_request(url: str, seconds: float) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def fetch() -> None:
        try:
            result.append(httpx.get(f"{url}/slow?s={seconds}", timeout=30))
        except httpx.HTTPError as exc:
            result.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread, result


def test_sigterm_lets_the_request_in_flight_finish() -> None:
    """Stop accepting, close idle keep-alive connections at once, let the busy one finish
    (then close it), and only then run the lifespan shutdown."""
    with slow_server() as server:
        url = server.url()
        host, port = url.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)), timeout=10)
        idle.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        thread, result = start_slow_request(url, 1.5)
        server.wait_for("slow request started", server.out)
        server.proc.send_signal(signal.SIGTERM)
        # The idle keep-alive connection is closed at once, long before the slow response.
        assert idle.recv(4096) == b""
        assert not result, "the idle connection outlived the in-flight request"
        idle.close()
        thread.join(15)
        assert server.wait() == 0
    [response] = result
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200 and response.text == "slow s=1.5"
    assert response.headers["connection"] == "close"
    order = [
        "lifespan startup ran",
        "slow request started",
        '"GET /slow?s=1.5 HTTP/1.1" 200',
        "lifespan shutdown ran",
    ]
    positions = [next(i for i, line in enumerate(server.out) if text in line) for text in order]
    assert positions == sorted(positions), server.out


def test_graceful_shutdown_timeout_cancels() -> None:
    with slow_server("--timeout-graceful-shutdown", "0.5") as server:
        url = server.url()
        thread, result = start_slow_request(url, 60)
        server.wait_for("slow request started", server.out)
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        thread.join(15)
    [outcome] = result
    # The cancelled app had not started its response: the client gets a 500 (or a close).
    assert isinstance(outcome, httpx.HTTPError) or outcome.status_code == 500
    assert any("timed out" in line for line in server.err)


def test_second_sigint_forces_exit() -> None:
    with slow_server() as server:
        url = server.url()
        thread, result = start_slow_request(url, 60)
        server.wait_for("slow request started", server.out)
        server.proc.send_signal(signal.SIGINT)
        server.wait_for("Shutting down")
        with pytest.raises(subprocess.TimeoutExpired):
            server.proc.wait(0.5)  # the first SIGINT waits for the slow request
        server.proc.send_signal(signal.SIGINT)
        server.wait(15)
        thread.join(15)
    assert result


# -- access log -------------------------------------------------------------------------------

ACCESS_LINE = re.compile(r'127\.0\.0\.1:\d+ - "GET /hello\?x=1 HTTP/1\.1" 200 5 [\d.]+ms$')


@pytest.mark.parametrize("flag", [None, "--access-log", "--no-access-log"])
def test_access_log(flag: str | None) -> None:
    args = ["tests.apps.core_apps:core_app", "--port", "0", *([flag] if flag else [])]
    with ServerProcess(fastserve_cmd(*args)) as server:
        url = server.url()
        with httpx.Client() as client:
            for _ in range(3):
                assert client.get(url + "/hello?x=1").text == "hello"
        if flag != "--no-access-log":
            server.wait_for("GET /hello", server.out)
        assert server.stop() == 0
    lines = [line for line in server.out if "GET /hello" in line]
    if flag == "--no-access-log":
        assert lines == []
    else:
        assert len(lines) == 3
        assert all(ACCESS_LINE.search(line) for line in lines), lines


def test_access_log_line_for_a_server_generated_500() -> None:
    with ServerProcess(fastserve_cmd("tests.apps.core_apps:core_app", "--port", "0")) as server:
        assert httpx.get(server.url() + "/raise-before").status_code == 500
        line = server.wait_for("GET /raise-before", server.out)
        assert server.stop() == 0
    assert re.search(r'"GET /raise-before HTTP/1.1" 500 21 [\d.]+ms$', line), line
    assert any("Traceback" in line for line in server.err)  # an app error: logged in full


# -- the Python API ---------------------------------------------------------------------------


def test_fastserve_run() -> None:
    code = "import fastserve; fastserve.run('examples.hello:app', port=0, lifespan='off')"
    with ServerProcess([sys.executable, "-c", code]) as server:
        assert httpx.get(server.url()).text == "Hello, world!"
        assert server.stop(signal.SIGINT) == 0


def test_fastserve_run_startup_failure_raises_system_exit_3() -> None:
    code = "import fastserve; fastserve.run('no_such_module_xyz:app', port=0)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, timeout=20
    )
    assert result.returncode == 3
    assert b"Traceback" not in result.stderr


def test_server_embedded_in_an_existing_loop() -> None:
    async def embedded() -> str:
        config = fastserve.Config(
            app=core_app, port=0, lifespan="off", access_log=False, install_signal_handlers=False
        )
        server = fastserve.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve())
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{server.port}/hello")).text
        server.should_exit = True  # the uvicorn-compatible way to stop an embedded server
        await asyncio.wait_for(task, 10)
        return text

    assert asyncio.run(embedded()) == "hello"


def test_import_server_does_not_work_outside_the_repo(tmp_path: Path) -> None:
    def python(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=20
        )

    assert python("import fastserve, fastserve.server").returncode == 0
    failed = python("import server")
    assert failed.returncode != 0
    assert "ModuleNotFoundError" in failed.stderr


def test_limit_max_requests_stops_a_single_process() -> None:
    """Without workers, --limit-max-requests stops the server (exit 0) once it is reached."""
    cmd = fastserve_cmd(HELLO, "--port", "0", "--limit-max-requests", "3")
    with ServerProcess(cmd) as server:
        url = server.url()
        with httpx.Client() as client:
            for _ in range(3):
                assert client.get(url, headers={"connection": "close"}).status_code == 200
        assert server.wait(10) == 0
    assert any("Maximum request limit of 3" in line for line in server.err)
