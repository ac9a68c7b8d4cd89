"""The `fastserve` command and the Python API, as a user runs them: real subprocesses on port 0,
exit codes, and what they print. (Stopping and signals: test_cli_shutdown.py.)"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import os
import platform
import re
import signal
import socket
import ssl
import subprocess
import sys
import typing
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

import fastserve
import fastserve.protocols
from fastserve import loops
from fastserve.cli import HELP_GROUPS, OTHER, GroupedCommand, help_place, hot_path_compiled
from fastserve.cli import main as cli_main
from fastserve.config import Config, ConfigError, config_fields
from fastserve.loops import get_loop_factory
from fastserve.protocols import implemented
from tests.apps.cli_procs import (
    BIN,
    HELLO,
    REPO,
    ServerProcess,
    clean_env,
    fastserve_cmd,
    run_cli,
)
from tests.apps.core_apps import core_app
from tests.helpers import until_closed

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


def installed_build() -> str:
    """Which build of the hot path is installed, read off the files (not asked of the code
    that prints it): Python imports a module's compiled extension in preference to its .py."""
    protocols = Path(fastserve.protocols.__file__ or "").parent
    compiled = [p for s in EXTENSION_SUFFIXES for p in protocols.glob("http1" + s)]
    return "compiled" if compiled else "pure Python"


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    python = f"{platform.python_implementation()} {platform.python_version()}"
    http2 = (
        "HTTP/2" if importlib.util.find_spec("zttp") else "no HTTP/2 (install fastserve[standard])"
    )
    expected = f"fastserve {fastserve.__version__} ({python}, {http2}, {installed_build()})\n"
    assert result.stdout == expected
    assert hot_path_compiled() is (installed_build() == "compiled")


@pytest.mark.skipif(
    "FASTSERVE_EXPECT_COMPILED" not in os.environ, reason="CI's wheel install sets it"
)
def test_wheel_install_runs_the_compiled_hot_path() -> None:
    """.ci/run installs a wheel for its second run: the suite must then test the compiled
    modules (a failed compile falls back to pure Python silently, see setup.py)."""
    expected = os.environ["FASTSERVE_EXPECT_COMPILED"] == "1"
    assert hot_path_compiled() is expected


def test_http_h11_starts_a_server_that_serves() -> None:
    """uvicorn's `--http h11` picks its h11 implementation; fastserve has one HTTP/1.1
    implementation and runs the same command line with it (parsing the option is not
    enough: the server must start and answer)."""
    with ServerProcess(fastserve_cmd(HELLO, "--port", "0", "--http", "h11")) as server:
        assert httpx.get(server.url()).text == "Hello, world!"
        assert server.stop() == 0
    assert not any("Traceback" in line for line in server.err)


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


def serves_hello_on_port_0_without_access_log(env: dict[str, str]) -> None:
    """Run `fastserve` with no arguments: everything comes from `env`."""
    with ServerProcess(fastserve_cmd(), env=env) as server:
        url = server.url()
        assert not url.endswith(":8000")
        assert httpx.get(url).text == "Hello, world!"
        assert server.stop() == 0
    assert not any("GET /" in line for line in server.out)


def test_environment_variables() -> None:
    env = clean_env(FASTSERVE_PORT="0", FASTSERVE_ACCESS_LOG="false", FASTSERVE_APP=HELLO)
    serves_hello_on_port_0_without_access_log(env)


def test_uvicorn_environment_variables_are_honoured() -> None:
    """A deployment configured through UVICORN_* variables keeps its settings; FASTSERVE_*
    wins where both are set."""
    env = clean_env(
        UVICORN_APP=HELLO, UVICORN_PORT="8000", FASTSERVE_PORT="0", UVICORN_ACCESS_LOG="false"
    )
    serves_hello_on_port_0_without_access_log(env)


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


# uvicorn options fastserve deliberately does not accept, and why: none (every one is accepted,
# with uvicorn's meaning or one warning line saying what runs instead).
NOT_SUPPORTED: dict[str, str] = {}


@functools.cache
def uvicorn_help() -> str:
    result = subprocess.run(
        [str(BIN / "uvicorn"), "--help"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    return result.stdout


def uvicorn_options() -> set[str]:
    options: set[str] = set()
    for line in uvicorn_help().splitlines():
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


# -- uvicorn's values, the grouped --help, --reset-contextvars, --ssl-version (issue 15) --------

# uvicorn's Literal types (uvicorn/config.py) per option: they also hold values its --help
# leaves out (`--loop none`, `--ws none`).
UVICORN_LITERALS = {
    "--loop": "LoopFactoryType",
    "--http": "HTTPProtocolType",
    "--ws": "WSProtocolType",
    "--lifespan": "LifespanType",
    "--interface": "InterfaceType",
}


def uvicorn_choices() -> dict[str, set[str]]:
    """Every value uvicorn accepts for an option with a fixed set of values: those its --help
    shows ("--loop [auto|asyncio|uvloop|zuvloop]", "--ws-per-message-deflate BOOLEAN") and
    those of its types."""
    import uvicorn.config

    choices: dict[str, set[str]] = {}
    for line in uvicorn_help().splitlines():
        if m := re.match(r"\s*(--[a-z0-9-]+) \[([a-z0-9|-]+)\]", line):
            choices[m[1]] = set(m[2].split("|"))
        elif m := re.match(r"\s*(--[a-z0-9-]+) BOOLEAN", line):
            choices[m[1]] = {"true", "false", "1", "0"}
    for option, name in UVICORN_LITERALS.items():
        choices.setdefault(option, set()).update(typing.get_args(getattr(uvicorn.config, name)))
    choices["--log-level"] |= set(uvicorn.config.LOG_LEVELS)
    assert {"zttp", "h11"} <= choices["--http"] and {"zuvloop", "none"} <= choices["--loop"]
    assert "wsproto" in choices["--ws"] and "BOOLEAN" not in str(choices)
    return choices


def test_every_uvicorn_choice_value_is_accepted() -> None:
    """Not only the names: each value is parsed, makes a Config, and names an implementation
    fastserve runs (a substitute's warning is test_uvicorn_substitutes_warn_once...)."""
    refused: list[str] = []
    for option, values in sorted(uvicorn_choices().items()):
        for value in sorted(values):
            try:
                ctx = cli_main.make_context("fastserve", [HELLO, option, value])
                params: dict[str, Any] = {
                    k: list(v) if isinstance(v, tuple) else v for k, v in ctx.params.items()
                }
                config = loops.implemented(implemented(Config(**params)))
                get_loop_factory(config.loop)().close()
            except (click.UsageError, ConfigError, ImportError) as exc:
                refused.append(f"{option} {value}: {exc}")
    assert not refused


def test_uvicorn_substitutes_warn_once_and_serve() -> None:
    """`--http zttp --http2 --loop zuvloop --ws wsproto` from a uvicorn 0.54 command line
    (its HTTP/2 needs both): served (HTTP/1.1 and h2c, on uvloop), with one warning line each,
    not one per worker."""
    cmd = fastserve_cmd(HELLO, "--port", "0", "--workers", "2", "--http", "zttp", "--http2")
    cmd += ["--loop", "zuvloop", "--ws", "wsproto", "--no-access-log"]
    with ServerProcess(cmd) as server:
        url = server.url()
        assert httpx.get(url).text == "Hello, world!"
        with httpx.Client(http1=False, http2=True) as h2c:
            response = h2c.get(url)
        assert response.http_version == "HTTP/2" and response.text == "Hello, world!"
        assert server.stop() == 0
    warnings = [line for line in server.err if line.startswith("WARNING")]
    expected = [
        "--http zttp is not implemented in fastserve; running httptools instead",
        "--loop zuvloop is not implemented in fastserve; running uvloop instead",
        "--ws wsproto is not implemented in fastserve; running websockets-sansio instead",
    ]
    assert sorted(w.split(None, 1)[1] for w in warnings) == expected, server.err


def test_loop_none_runs_the_policy_loop() -> None:
    """uvicorn's `--loop none`: the loop asyncio's policy makes, whatever that is."""

    class Marked(asyncio.SelectorEventLoop):
        pass

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return Marked()

    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        loop = get_loop_factory("none")()
        assert isinstance(loop, Marked)
        loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


def help_sections(text: str) -> dict[str, list[str]]:
    """--help's options by section heading ("Binding:" ...), in order."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if m := re.fullmatch(r"(\S[^:]*):", line):
            current = sections.setdefault(m[1], [])
        elif m := re.match(r"  (--[a-z0-9-]+)", line):
            current.append(m[1])
    return sections


def test_help_is_grouped_and_names_the_environment() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    sections = help_sections(result.stdout)
    titles = [title for title, _ in HELP_GROUPS]
    assert list(sections) == [t for t in titles if sections.get(t)], list(sections)
    for f in config_fields():
        name = f.metadata.get("cli", "--" + f.name.replace("_", "-"))
        assert name in sections[help_place(f.name)[0]], f.name
    assert OTHER not in sections
    assert sections["Binding"][:2] == ["--host", "--port"] and "--help" in sections["General"]
    variables = ("FASTSERVE_<OPTION>", "UVICORN_<OPTION>", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")
    for words in (*variables, "FASTSERVE_APP"):
        assert words in result.stdout


def test_every_option_is_in_a_named_help_group() -> None:
    """A new Config field must be given a group (cli.HELP_GROUPS), not left in OTHER."""
    unplaced = [f.name for f in config_fields() if help_place(f.name)[0] == OTHER]
    assert not unplaced, f"add these fields to a group in cli.HELP_GROUPS: {unplaced}"


def test_an_option_of_no_group_is_still_shown() -> None:
    command = GroupedCommand("x", params=[click.Option(["--brand-new"], help="Not grouped.")])
    text = command.get_help(click.Context(command))
    assert help_sections(text) == {"Other options": ["--brand-new"], "General": ["--help"]}


@pytest.mark.parametrize("reset", [False, True])
def test_reset_contextvars(reset: bool) -> None:
    """Each request's context: never the lifespan's or a previous request's (pipelined or
    not, HTTP/1.1 or HTTP/2); what was set before serving (at import) unless
    --reset-contextvars, which starts each request from an empty context (uvicorn's)."""
    app = "tests.apps.contextvar_app:app"
    cmd = fastserve_cmd(app, "--port", "0", "--lifespan", "on", "--no-access-log")
    with ServerProcess(cmd + (["--reset-contextvars"] if reset else [])) as server:
        url = server.url()
        with httpx.Client() as client:
            seen = [client.get(url).text for _ in range(2)]
        with httpx.Client(http1=False, http2=True) as h2c:
            seen += [h2c.get(url).text for _ in range(2)]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            get = b"GET / HTTP/1.1\r\nHost: x\r\n"
            sock.sendall(get + b"\r\n" + get + b"Connection: close\r\n\r\n")  # pipelined
            raw = until_closed(sock)
        assert server.stop() == 0
    seen += [body.decode() for body in re.findall(rb"\r\n\r\n([^\r\n]*?)(?=HTTP/1.1|$)", raw)]
    assert seen == ["- - -" if reset else "import - -"] * 6, seen


def test_ssl_version_is_uvicorns(tmp_path: Path) -> None:
    """--ssl-version 5 (PROTOCOL_TLSv1_2) serves TLS 1.2 only; 3 (TLS 1.0) is one warning
    line for all workers and TLS 1.2+; a client protocol (16) is one error line, exit 3."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    tls = ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), "--port", "0"]

    def negotiated(port: int, version: ssl.TLSVersion) -> str | None:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.minimum_version = ctx.maximum_version = version
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as s:
                return s.version()
        except ssl.SSLError:
            return None

    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    for version, expected in [("17", ["TLSv1.2", "TLSv1.3"]), ("5", ["TLSv1.2", None])]:
        with ServerProcess(fastserve_cmd(HELLO, *tls, "--ssl-version", version)) as server:
            port = int(server.url().rsplit(":", 1)[1])
            assert [negotiated(port, v12), negotiated(port, v13)] == expected, version
            assert server.stop() == 0
    with ServerProcess(fastserve_cmd(HELLO, *tls, "--ssl-version", "3", "--workers", "2")) as s:
        port = int(s.url().rsplit(":", 1)[1])
        assert negotiated(port, v13) == "TLSv1.3"
        assert s.stop() == 0
    warnings = [line for line in s.err if line.startswith("WARNING")]
    assert len(warnings) == 1 and "--ssl-version 3 (TLS 1.0 only)" in warnings[0], s.err
    result = run_cli(HELLO, *tls, "--ssl-version", "16")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "--ssl-version 16: not a server protocol" in errors[0]


EMBEDDED_RUN = """
import fastserve
from tests.apps.core_apps import core_app
for loop in ("zuvloop", "none"):
    config = fastserve.Config(app=core_app, port=0, loop=loop, lifespan="off")
    server = fastserve.Server(config)
    server.on_started = lambda s: setattr(s, "should_exit", True)
    server.run()
    print(loop, "served")
"""


def test_embedded_server_run_takes_uvicorns_loop_names() -> None:
    """`Server(Config(loop="zuvloop")).run()` (no CLI in between): one warning, uvloop."""
    result = subprocess.run(
        [sys.executable, "-c", EMBEDDED_RUN],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["zuvloop served", "none served", ""]
    warnings = [line for line in result.stderr.splitlines() if "--loop" in line]
    assert warnings == ["--loop zuvloop is not implemented in fastserve; running uvloop instead"]


def test_the_migration_guide_has_a_row_for_every_uvicorn_option() -> None:
    """docs/migrating-from-uvicorn.md: one row per option of the installed uvicorn."""
    text = (REPO / "docs" / "migrating-from-uvicorn.md").read_text()
    first_cells = re.findall(r"^\| ([^|]*) \|", text, re.MULTILINE)
    documented = {name for cell in first_cells for name in re.findall(r"--[a-z0-9-]+", cell)}
    missing = uvicorn_options() - documented
    assert not missing, f"no row in docs/migrating-from-uvicorn.md for {sorted(missing)}"


def test_env_file_is_read_when_the_config_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As uvicorn's Config: --env-file's variables are there for what the Config reads from
    the environment ($FORWARDED_ALLOW_IPS); a variable already set wins (python-dotenv's)."""
    environ = {k: v for k, v in os.environ.items() if k != "FORWARDED_ALLOW_IPS"}
    monkeypatch.setattr(os, "environ", environ)
    env_file = tmp_path / ".env"
    env_file.write_text("# proxies\nexport FORWARDED_ALLOW_IPS='10.1.2.3'\nALREADY=file\n")
    environ["ALREADY"] = "process"
    config = Config(app=HELLO, env_file=str(env_file))
    assert config.forwarded_allow_ips == "10.1.2.3"
    assert environ["ALREADY"] == "process"
    with pytest.raises(ConfigError, match="cannot read --env-file"):
        Config(app=HELLO, env_file=str(tmp_path / "missing"))


def test_every_uvicorn_environment_variable_is_read() -> None:
    """uvicorn reads UVICORN_<PARAMETER NAME> for every option (click's auto_envvar_prefix):
    fastserve reads the same names, from its parameters' names, which are uvicorn's."""
    uvicorn_command: click.Command = importlib.import_module("uvicorn.main").main
    theirs = {
        f"UVICORN_{p.name.upper()}"
        for p in uvicorn_command.params
        if p.name and isinstance(p, click.Option) and not p.is_eager  # not --version, --help
    }
    theirs.add("UVICORN_APP")
    ours = {var for p in cli_main.params for var in (p.envvar or ())}
    assert len(theirs) > 40 and not theirs - ours, sorted(theirs - ours)


# Command lines as uvicorn deployments write them (Heroku/Render Procfiles, Dockerfile CMDs),
# run with only the binary's name changed. $PORT as a Procfile runner expands it (0: a free
# port here).
PROCFILE_LINES = [
    "web: uvicorn examples.hello:app --host 127.0.0.1 --port $PORT --workers 2 --proxy-headers"
    " --forwarded-allow-ips '*' --log-level info --timeout-keep-alive 5 --no-server-header",
    "web: uvicorn --factory tests.apps.core_apps:make_app --host=127.0.0.1 --port=$PORT"
    " --limit-concurrency 100 --backlog 128 --no-access-log --timeout-graceful-shutdown 10",
]


@pytest.mark.parametrize("line", PROCFILE_LINES, ids=["workers", "factory"])
def test_a_uvicorn_procfile_line_runs_with_only_the_name_changed(line: str) -> None:
    command = line.removeprefix("web: ").replace("uvicorn ", f"{BIN / 'fastserve'} ", 1)
    env = clean_env(PORT="0")
    with ServerProcess(["sh", "-c", f"exec {command}"], env=env) as server:
        url = server.url()
        response = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.7"})
        assert response.status_code == 200
        assert response.text == ("from factory" if "--factory" in line else "Hello, world!")
        if "--no-server-header" in line:
            assert "server" not in response.headers
        assert server.stop() == 0
