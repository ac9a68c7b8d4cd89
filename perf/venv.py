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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent

# What each server needs besides itself; the load and measurement tools come last.
PEERS: dict[str, list[str]] = {
    "uvicorn": ["uvicorn", "httptools", "uvloop"],
    # `uvicorn --http zttp` (uvicorn 0.54+): its parser is the zttp package (a Zig core).
    "uvicorn-zttp": ["uvicorn", "zttp"],
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


def _create(base: Path, root: Path) -> BenchEnv:
    version = interpreter_version(base)
    py = root / "bin" / "python"
    if not py.exists():
        print(f"[venv] creating {root.relative_to(REPO)} from {base} (Python {version})")
        subprocess.run([str(base), "-m", "venv", str(root)], check=True)
        _pip(py, ["install", "-q", "--upgrade", "pip"])
    return BenchEnv(root=root, python=py, python_version=version)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def prepare(
    python_spec: str | None,
    *,
    reinstall_fastserve: bool = True,
    peers: bool = True,
    fastserve_rev: str | None = None,
) -> BenchEnv:
    """Create (or reuse) the venv for this interpreter and install what is missing.

    fastserve comes from the working tree, or from git revision `fastserve_rev` (when the
    tree holds someone else's unfinished edits). `peers=False` installs fastserve alone
    (perf/instructions.py needs nothing else)."""
    base = find_python(python_spec)
    env = _create(base, PERF_DIR / f".venv-{_minor(interpreter_version(base))}")
    py = env.python
    have = installed_versions(py)
    if fastserve_rev is not None:
        full, short = resolve_rev(fastserve_rev)
        print(f"[venv] installing fastserve at {short} (git archive)")
        with tempfile.TemporaryDirectory(prefix=f"fastserve-{short}-") as tmp:
            export_tree(full, Path(tmp))
            _install_fastserve(py, Path(tmp))
    elif reinstall_fastserve or "fastserve" not in have:
        print("[venv] installing fastserve from the working tree (snapshot)")
        _install_fastserve(py, REPO)
    if peers:
        for name, dists in PEERS.items():
            _ensure(py, name, dists, have, env)
        for tool in TOOLS:
            _ensure(py, tool, [tool], have, env)
    env.installed = installed_versions(py)
    return env


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve_rev(rev: str) -> tuple[str, str]:
    """A revision -> (full commit id, 7-digit short id)."""
    full = git("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    return full, full[:7]


def prepare_baseline(python_spec: str | None, rev: str) -> BenchEnv:
    """fastserve as it was at git revision `rev`, built as a wheel (compiled, as the working
    tree's build is) into its own venv perf/.venv-<X.Y>-<shortrev>/.

    The revision's files come from `git archive` into a temporary directory: the working tree
    and its index are never touched (other people edit them while a run goes on). The venv is
    reused while its marker file names the same commit."""
    full, short = resolve_rev(rev)
    base = find_python(python_spec)
    root = PERF_DIR / f".venv-{_minor(interpreter_version(base))}-{short}"
    env = _create(base, root)
    marker = root / "fastserve-commit"
    have = installed_versions(env.python)
    if "fastserve" not in have or not marker.exists() or marker.read_text().strip() != full:
        print(f"[venv] building fastserve at {short} into {root.relative_to(REPO)}")
        with tempfile.TemporaryDirectory(prefix=f"fastserve-{short}-") as tmp:
            export_tree(full, Path(tmp))
            _install_fastserve(env.python, Path(tmp))
        marker.write_text(full + "\n")
    env.installed = installed_versions(env.python)
    return env


def export_tree(commit: str, dest: Path) -> None:
    """`git archive COMMIT | tar -x -C DEST`: the files of a commit, no checkout."""
    archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
    assert archive.stdout is not None
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"[venv] could not export {commit[:7]} with git archive")


def fastserve_build(env: BenchEnv) -> str:
    """`fastserve --version`'s build note, e.g. "CPython 3.11.7, compiled" (mypyc) or
    "CPython 3.11.7, pure Python"; "?" when it printed none."""
    out = subprocess.run(
        [str(env.python), "-m", "fastserve", "--version"], capture_output=True, text=True
    ).stdout
    return out[out.find("(") + 1 : out.rfind(")")] if "(" in out else "?"


def require_compiled(env: BenchEnv, label: str) -> str:
    """A same-run before/after comparison means nothing if one side runs pure Python (the
    compiled build is ~1.8x fewer instructions per request): refuse to go on."""
    build = fastserve_build(env)
    if not build.endswith(", compiled"):
        raise SystemExit(f"[venv] {label} is not the compiled build ({build}); see setup.py")
    return build


def _install_fastserve(py: Path, source: Path) -> None:
    """Build one wheel (setup.py compiles the hot path with mypyc) and install it; then its
    dependencies from the wheel's metadata, so the source is built once, not twice."""
    with tempfile.TemporaryDirectory(prefix="fastserve-wheel-") as out:
        if _pip(py, ["wheel", "-q", "--no-deps", "-w", out, str(source)]) != 0:
            raise SystemExit(f"[venv] could not build fastserve from {source}")
        wheel = str(next(Path(out).glob("fastserve-*.whl")))
        if _pip(py, ["install", "-q", "--force-reinstall", "--no-deps", wheel]) != 0:
            raise SystemExit(f"[venv] could not install {wheel}")
        # Its dependencies, if missing, with the extras the scenarios use (WebSocket and
        # HTTP/2 engines, prometheus-client for --metrics; an older revision without one of
        # these extras gets a warning from pip, not a failure).
        if _pip(py, ["install", "-q", f"{wheel}[standard,metrics]"]) != 0:
            raise SystemExit("[venv] could not install fastserve's dependencies")


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
