"""The benchmark's own virtual environment: one per interpreter, under perf/.venv-<version>/.

fastserve is installed from the repository as a snapshot (not editable): the working tree may
change while a long run is in progress, and every round of one run must serve the same code.
Each peer is installed on its own, so one that cannot be installed is skipped, not fatal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent

# What each server needs besides itself; the load and measurement tools come last.
PEERS: dict[str, list[str]] = {
    "uvicorn": ["uvicorn", "httptools", "uvloop"],
    "granian": ["granian"],
    "hypercorn": ["hypercorn", "uvloop"],
}
TOOLS = ["matplotlib", "websockets", "py-spy"]


@dataclass
class BenchEnv:
    """A ready venv: its interpreter, and which servers and tools it has."""

    root: Path
    python: Path
    python_version: str
    installed: dict[str, str] = field(default_factory=dict)  # distribution -> version
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def has(self, dist: str) -> bool:
        return dist in self.installed


def find_python(spec: str | None) -> Path:
    """`3.11` / `3.13` (a pyenv version prefix), a path, or None for the current interpreter."""
    if not spec:
        return Path(sys.executable)
    as_path = Path(spec)
    if as_path.exists():
        return as_path
    found = shutil.which(f"python{spec}")
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = Path(subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip())
        versions = sorted((root / "versions").glob(f"{spec}*"), key=_version_key, reverse=True)
        for candidate in versions:
            exe = candidate / "bin" / "python3"
            if exe.exists():
                return exe
    if found:
        return Path(found)
    raise SystemExit(f"no Python {spec!r}: give a pyenv version (3.11, 3.13) or a path")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in path.name.split("."))


def interpreter_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def prepare(python_spec: str | None, *, reinstall_fastserve: bool = True) -> BenchEnv:
    """Create (or reuse) the venv for this interpreter and install what is missing."""
    base = find_python(python_spec)
    version = interpreter_version(base)
    root = PERF_DIR / f".venv-{'.'.join(version.split('.')[:2])}"
    py = root / "bin" / "python"
    if not py.exists():
        print(f"[venv] creating {root.relative_to(REPO)} from {base} (Python {version})")
        subprocess.run([str(base), "-m", "venv", str(root)], check=True)
        _pip(py, ["install", "-q", "--upgrade", "pip"])
    env = BenchEnv(root=root, python=py, python_version=version)
    have = installed_versions(py)
    if reinstall_fastserve or "fastserve" not in have:
        print("[venv] installing fastserve from the working tree (snapshot)")
        if _pip(py, ["install", "-q", "--force-reinstall", "--no-deps", str(REPO)]) != 0:
            raise SystemExit("[venv] could not install fastserve from the repository")
        _pip(py, ["install", "-q", str(REPO)])  # its dependencies, if missing
    for name, dists in PEERS.items():
        _ensure(py, name, dists, have, env)
    for tool in TOOLS:
        _ensure(py, tool, [tool], have, env)
    env.installed = installed_versions(py)
    return env


def _ensure(py: Path, name: str, dists: list[str], have: dict[str, str], env: BenchEnv) -> None:
    missing = [d for d in dists if d.lower() not in have]
    if not missing:
        return
    print(f"[venv] installing {' '.join(missing)}")
    if _pip(py, ["install", "-q", *missing]) != 0:
        reason = f"pip could not install {' '.join(missing)}"
        print(f"[venv] SKIP {name}: {reason}")
        env.skipped[name] = reason


def _pip(py: Path, args: list[str]) -> int:
    """Run pip quietly; its output is shown only when it fails."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([str(py), "-m", "pip", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print((proc.stdout + proc.stderr).strip()[-2000:])
    return proc.returncode


def installed_versions(py: Path) -> dict[str, str]:
    """Lower-cased distribution name -> version, as the venv's own interpreter sees them."""
    code = (
        "import json, importlib.metadata as m\n"
        "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    versions: dict[str, str] = json.loads(out.stdout)
    return versions
