"""Build: the hot-path modules are compiled to C extensions with mypyc where that can work.

Everything else about the package (name, dependencies, the `server/` -> `fastserve` mapping)
is in pyproject.toml; this file only adds the extensions.

The request-path modules (bytes in -> scope -> app -> bytes out) are plain, strictly typed
Python and are compiled as they are: a wheel built here carries both the .py files and the
compiled modules, and Python imports the compiled ones. Measured on this machine
(perf/README.md, "the compiled hot path"): 66k -> 37k instructions per request on 3.11, and
plaintext from 1.7x to 2.0x uvicorn's req/s (2.1-2.2x on 3.12 and 3.13).

Only a wheel build compiles (`pip install .`, `pip wheel .`, `python -m build`), and only once
its `build` step runs: the extension list is made there, so metadata, the sdist, `setup.py
egg_info` and editable installs never start mypy (mypy + mypyc take ~30 s, the C compile
30-60 s more).

The compile is all or nothing: the modules call each other through one shared C library
(fastserve__mypyc), so a wheel with some of them compiled does not import. If any step fails
(mypy's type check, a compiler error or warning under mypyc's -Werror, no compiler, no Python
headers, a compiler killed for memory or time), nothing is compiled, the build prints
"fastserve: WARNING ..." and the wheel is pure Python, tagged `py3-none-any` (a compiled one
is `cp3XY-cp3XY-<platform>`): pip shows the wheel's name in its normal output. The pure-Python
modules are also used, with the same behaviour, when:
- the install is editable (`pip install -e .`): the source you edit is the code that runs;
- FASTSERVE_PURE_PYTHON=1 is set at build time;
- the interpreter is not CPython.
`fastserve --version` says which build runs.

A wheel build works in a temporary directory of its own, not in ./build: builds from one
checkout can run at once (.ci/run builds one per Python version in parallel).
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import sys
import tempfile
from typing import Any

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

# Compiled together, into one extension (they call each other's methods natively). mypyc
# cannot compile subclasses of builtin exceptions and containers: ClientDisconnected lives in
# types.py and the access log's FieldMap in logs.py, neither of them compiled. A module that
# subclasses a compiled class must be compiled too (linger, proxy_protocol: NoAppRunning).
COMPILED = [
    "accesslog.py",
    "counters.py",
    "protocols/connection.py",
    "protocols/cycle.py",
    "protocols/flow.py",
    "protocols/h2.py",
    "protocols/http1.py",
    "protocols/http1_head.py",
    "protocols/http1_rules.py",
    "protocols/idle.py",
    "protocols/linger.py",
    "protocols/outbox.py",
    "protocols/proxy_protocol.py",
    "protocols/request.py",
    "protocols/websocket.py",
    "state.py",
]


def say(message: str) -> None:
    print(f"fastserve: {message}", file=sys.stderr, flush=True)


def fall_back(reason: str) -> None:
    say(f"WARNING: {reason}")
    say("WARNING: nothing is compiled; this build is pure Python (py3-none-any), ~1.8x slower")


def why_not_compiled() -> str | None:
    if os.environ.get("FASTSERVE_PURE_PYTHON"):
        return "FASTSERVE_PURE_PYTHON is set"
    if platform.python_implementation() != "CPython":
        return f"mypyc compiles for CPython, not {platform.python_implementation()}"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:  # a build without isolation: pyproject.toml's build requirements have it
        return "mypy (mypyc) is not installed"
    return None


def mypyc_extensions(work: str) -> list[Any]:
    """Type-check and translate the COMPILED modules to C under `work`; their Extensions."""
    from mypyc.build import mypycify

    work = os.path.abspath(work)  # build_temp may be relative (--build-base); we chdir below
    # mypyc names each module after its path: it reads a copy of server/ named fastserve/.
    source = os.path.join(work, "fastserve")
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(os.path.join(HERE, "server"), source, ignore=ignore, dirs_exist_ok=True)
    # The paths are given relative to `work`, from `work`: mypyc writes each path as it got it
    # into the C code, as the file name of the compiled functions' traceback entries. So a
    # traceback names `fastserve/protocols/cycle.py`, not this build's temporary directory,
    # which exists on no user's machine; the installed path is not known when the wheel is
    # built, and the error log's formatter (logs.format_exception) puts it in front, which also
    # shows the source line (the wheel ships the .py files beside the compiled ones).
    # --python-version: the interpreter building the wheel, not pyproject's 3.11 (mypy would
    # otherwise compile the `sys.version_info >= (3, 12)` branches away). --config-file "":
    # not the project's mypy settings; --cache-dir: not the checkout's .mypy_cache.
    args = ["--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}"]
    args += ["--config-file", "", "--cache-dir", os.path.join(work, "mypy-cache")]
    args += ["--ignore-missing-imports", *(os.path.join("fastserve", p) for p in COMPILED)]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        exts: list[Any] = mypycify(
            args, opt_level="3", group_name="fastserve", target_dir=os.path.join(work, "c")
        )
    finally:
        os.chdir(cwd)
    return exts


class Build(build):
    """Makes the extension list when the build runs (see the module docstring)."""

    def run(self) -> None:
        reason = why_not_compiled()
        if reason is not None:
            say(f"{reason}: the pure-Python modules are used")
        else:
            try:
                self.distribution.ext_modules = mypyc_extensions(
                    os.path.join(self.build_temp, "mypyc")
                )
            except (Exception, SystemExit) as exc:  # mypy's errors end in sys.exit(1)
                fall_back(f"mypy/mypyc failed ({exc!r})")
        super().run()


class BuildExtensions(build_ext):
    """All or nothing: one extension that fails to compile drops them all."""

    def build_extensions(self) -> None:
        # No `optional=True` on the extensions: setuptools would skip just the one that fails.
        try:
            super().build_extensions()
        except Exception as exc:
            for ext in self.extensions:  # those built before the failure
                built = self.get_ext_fullpath(ext.name)
                if os.path.exists(built):
                    os.remove(built)
            self.extensions = self.distribution.ext_modules = []
            fall_back(f"compiling failed ({exc})")


class BdistWheel(bdist_wheel):
    """A wheel built in its own temporary directory and tagged by what the build made."""

    def finalize_options(self) -> None:
        # Unless told otherwise (--build-base), each wheel build gets its own build/ and
        # egg-info directories: builds from one checkout, for several Pythons, can run at once.
        if "build_base" not in self.distribution.get_option_dict("build"):
            base = tempfile.mkdtemp(prefix="fastserve-build-")
            atexit.register(shutil.rmtree, base, ignore_errors=True)
            ours = ("setup.py", base)
            self.distribution.get_option_dict("build")["build_base"] = ours
            self.distribution.get_option_dict("egg_info").setdefault("egg_base", ours)
        super().finalize_options()

    def run_command(self, command: str) -> None:
        super().run_command(command)
        if command == "build":  # what it compiled is known now: the tag follows it
            self.root_is_pure = not self.distribution.has_ext_modules()


setup(cmdclass={"build": Build, "build_ext": BuildExtensions, "bdist_wheel": BdistWheel})
