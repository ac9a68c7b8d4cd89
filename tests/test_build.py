"""The build (setup.py, pyproject.toml, MANIFEST.in) as a release and its users meet it: the
sdist, `pip install` of it, a compile that fails half-way, an editable install.

Each test is a real pip build, with build isolation, in a subprocess, from a copy of this
checkout (so that nothing is written into it). They take 10-40 s each: the C compiler is a
wrapper that adds -O0 (after mypyc's -O3, so it wins); .ci/run runs this file once, with the
README's test command, and not again for each Python it tests the compiled build on.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.apps.cli_procs import ServerProcess, clean_env

REPO = Path(__file__).resolve().parents[1]
# Not the project's files: never copied, and MANIFEST.in keeps them out of an sdist.
SCRATCH = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]", "*.so",
    ".mypy_cache", ".ruff_cache", ".pytest_cache",
)  # fmt: skip
NOT_SHIPPED = ("perf/results/",)  # measurements, not source (MANIFEST.in)
CC = (sysconfig.get_config_var("CC") or "cc").split()
BUILD_TIMEOUT = 600  # s; a build takes 10-40 s here, 30-80 s with -O3

needs_a_compiler = pytest.mark.skipif(
    shutil.which(CC[0]) is None or sys.implementation.name != "cpython",
    reason="mypyc compiles for CPython, with a C compiler",
)


def copy_checkout(dest: Path) -> Path:
    shutil.copytree(REPO, dest, symlinks=True, ignore=SCRATCH)
    return dest


def run(*cmd: str | Path, timeout: float = BUILD_TIMEOUT, env: dict[str, str] | None = None) -> str:
    """Run a command (with `env` added to ours) to success; its output is the result."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def pip(*args: str | Path, env: dict[str, str] | None = None) -> str:
    """pip, building with isolation as a user's `pip install` does, never from its cache."""
    return run(sys.executable, "-m", "pip", *args, "--no-deps", "--no-cache-dir", env=env)


def compiler(tmp: Path, fail_on: str = "") -> str:
    """The C compiler as a script: quick (-O0), and failing on sources named *`fail_on`."""
    script = tmp / "cc"
    refuse = f'    case "$arg" in *{fail_on}) echo "test cc: no $arg" >&2; exit 1;; esac\n'
    script.write_text(
        "#!/bin/sh\n"
        + (f'for arg in "$@"; do\n{refuse}done\n' if fail_on else "")
        + f'exec {" ".join(CC)} "$@" -O0\n'
    )
    script.chmod(0o755)
    return str(script)


def build_of(target: Path) -> str:
    """`fastserve --version`'s build note for the fastserve installed in `target`."""
    out = run(
        sys.executable, "-m", "fastserve", "--version", timeout=60, env={"PYTHONPATH": str(target)}
    )
    note = re.search(r", (compiled|pure Python)\)", out)  # "... (CPython 3.11.7, compiled)"
    assert note, out
    return note[1]


def compiled_leftovers(tree: Path) -> list[str]:
    """What a compile (mypyc's C sources, objects, build/) would have left in a source tree."""
    found = [str(p.relative_to(tree)) for p in tree.rglob("*") if p.suffix in (".c", ".o")]
    return found + (["build/"] if (tree / "build").exists() else [])


class Sdist(NamedTuple):
    path: Path
    tree: Path  # the copy of the checkout it was made from


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Sdist:
    tree = copy_checkout(tmp_path_factory.mktemp("sdist") / "fastserve")
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "--outdir", out, tree)
    (path,) = out.glob("fastserve-*.tar.gz")
    return Sdist(path, tree)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_the_sdist_ships_the_checkout_and_compiles_nothing(sdist: Sdist) -> None:
    with tarfile.open(sdist.path) as tar:
        shipped = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    expected = {
        str(Path(root, name).relative_to(sdist.tree))
        for root, _, files in os.walk(sdist.tree, followlinks=True)
        for name in files
    }
    expected = {f for f in expected if not f.startswith(NOT_SHIPPED) and ".egg-info/" not in f}
    # Everything the build and the tests need: conftest.py, helpers.py, apps/, examples/...
    assert sorted(expected - shipped) == []
    assert "tests/conftest.py" in shipped and "tools/mypy/fastserve/protocols/http1.py" in shipped
    # Making an sdist runs neither mypy nor a compiler (it used to take 48-80 s).
    assert compiled_leftovers(sdist.tree) == []


@needs_a_compiler
@pytest.mark.timeout(BUILD_TIMEOUT)
def test_pip_install_of_the_sdist_compiles(sdist: Sdist, tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip("install", "--target", target, sdist.path, env={"CC": compiler(tmp_path)})
    assert list(target.glob("fastserve__mypyc.*"))
    assert build_of(target) == "compiled"
    # A traceback through compiled code names the module's installed file (with its source
    # line), not the build's temporary directory: mypyc records `fastserve/protocols/cycle.py`,
    # the error log puts the site directory in front (logs.format_exception).
    frames = compiled_frames_of_an_app_error(target, tmp_path)
    assert frames, "no traceback entry from fastserve"
    for name, _ in frames:
        assert Path(name).is_absolute() and Path(name).is_file(), frames
        assert Path(name).is_relative_to(target), frames
    cycle = str(target / "fastserve" / "protocols" / "cycle.py")
    # send(), where the app's mistake is found, compiled: the line is read from the .py file.
    assert (
        cycle,
        "raise RuntimeError(f\"expected 'http.response.start', got {mtype!r}\")",
    ) in frames


def compiled_frames_of_an_app_error(target: Path, tmp_path: Path) -> list[tuple[str, str]]:
    """(file, source line) of fastserve's frames in the traceback the server logs for an app
    that sends a body before the response start (cycle.py's send() raises, compiled)."""
    (tmp_path / "bad_order.py").write_text(
        "async def app(scope, receive, send):\n"
        "    await send({'type': 'http.response.body', 'body': b'x'})\n"
    )
    env = clean_env(PYTHONPATH=f"{target}{os.pathsep}{tmp_path}")
    cmd = [sys.executable, "-m", "fastserve", "bad_order:app", "--port", "0", "--lifespan", "off"]
    with ServerProcess(cmd, env=env, cwd=tmp_path) as server:
        host, port = server.url().removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 500 ")
        server.wait_for("^RuntimeError: expected 'http.response.start'")
        assert server.stop() == 0
    lines = server.err
    return [
        (m[1], lines[i + 1].strip())
        for i, line in enumerate(lines[:-1])
        if (m := re.match(r'  File "([^"]*fastserve/[^"]*)"', line))
    ]


@needs_a_compiler
@pytest.mark.timeout(BUILD_TIMEOUT)
@pytest.mark.parametrize(
    "fail_on",
    [
        "__native_fastserve.c",  # the shared library, compiled first: nothing else is built
        "/protocols/websocket.c",  # the last module: everything else is built, then removed
    ],
)
def test_a_failed_compile_makes_a_whole_pure_python_wheel(tmp_path: Path, fail_on: str) -> None:
    tree = copy_checkout(tmp_path / "fastserve")
    wheels = tmp_path / "wheels"
    log = pip("wheel", "-v", "-w", wheels, tree, env={"CC": compiler(tmp_path, fail_on)})
    assert "test cc: no" in log  # the compile did fail
    # Pure Python and tagged so: no cp311-linux wheel in pip's cache that holds no C.
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == "fastserve-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        assert [n for n in zf.namelist() if n.endswith(".so")] == []
        assert "Root-Is-Purelib: true" in zf.read("fastserve-0.1.0.dist-info/WHEEL").decode()
    target = tmp_path / "site"
    pip("install", "--target", target, wheel)
    assert build_of(target) == "pure Python"  # it imports (no fastserve__mypyc needed)
    assert "fastserve: WARNING: compiling failed" in log  # and the build said why
    # The build worked in a directory of its own: concurrent builds from one checkout do not
    # share build/ (nor mypyc's C sources).
    assert compiled_leftovers(tree) == []


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_an_editable_install_compiles_nothing(tmp_path: Path) -> None:
    tree = copy_checkout(tmp_path / "fastserve")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    log = pip("--python", python, "install", "-v", "-e", tree)
    assert "building 'fastserve" not in log  # setuptools' line for each extension
    assert compiled_leftovers(tree) == []
    # The package is the tree's server/ itself: the code you edit is the code that runs.
    where = "import importlib.util as u; print(u.find_spec('fastserve').origin)"
    assert run(python, "-c", where).strip() == str(tree / "server" / "__init__.py")
