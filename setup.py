"""Build: the hot-path modules are compiled to C extensions with mypyc where that can work.

Everything else about the package (name, dependencies, the `server/` -> `fastserve` mapping)
is in pyproject.toml; this file only adds the extensions.

The request-path modules (bytes in -> scope -> app -> bytes out) are plain, strictly typed
Python and are compiled as they are: a wheel built here carries both the .py files and the
compiled modules, and Python imports the compiled ones. Measured on this machine
(perf/README.md, "the compiled hot path"): 66k -> 37k instructions per request on 3.11, and
plaintext from 1.7x to 2.0x uvicorn's req/s (2.1-2.2x on 3.12 and 3.13).

The pure-Python modules are used instead, with the same behaviour, when:
- the install is editable (`pip install -e .`): the source you edit is the code that runs;
- FASTSERVE_PURE_PYTHON=1 is set at build time;
- the interpreter is not CPython, or the build fails (no C compiler, no Python headers):
  each extension is optional and the install goes on without it.
`fastserve --version` says which build runs.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Compiled together, into one extension (they call each other's methods natively). mypyc
# cannot compile subclasses of builtin exceptions and containers: ClientDisconnected lives in
# types.py and the access log's FieldMap in logs.py, neither of them compiled. A module that
# subclasses a compiled class must be compiled too (linger, proxy_protocol: NoAppRunning).
COMPILED = [
    "accesslog.py",
    "protocols/cycle.py",
    "protocols/flow.py",
    "protocols/http1.py",
    "protocols/http1_head.py",
    "protocols/http1_rules.py",
    "protocols/linger.py",
    "protocols/proxy_protocol.py",
    "protocols/request.py",
    "protocols/websocket.py",
    "state.py",
]


class BuildExtensions(build_ext):
    """Optional extensions: an editable install or a failed compile leaves pure Python."""

    def run(self) -> None:
        if getattr(self, "editable_mode", False) or self.inplace:
            print("fastserve: editable install, the pure-Python modules are used")
            return
        super().run()

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except Exception as exc:  # a compiler error: drop every extension, not just one
            print(f"fastserve: compiling failed ({exc}); the pure-Python modules are used")
            self.extensions = []


def extensions() -> list[Any]:
    if os.environ.get("FASTSERVE_PURE_PYTHON") or platform.python_implementation() != "CPython":
        return []
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return []  # no need to run mypy for an editable install
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    # tools/mypy/fastserve is a symlink to server/: mypyc names the modules fastserve.*.
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join("tools", "mypy", "fastserve", p) for p in COMPILED]
    if not all(os.path.exists(os.path.join(here, p)) for p in paths):
        return []
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    # --python-version: the interpreter building the wheel, not pyproject's 3.11 (mypy
    # would otherwise compile the `sys.version_info >= (3, 12)` branches away).
    exts: list[Any] = mypycify(
        ["--python-version", version, "--config-file", "", "--ignore-missing-imports", *paths],
        opt_level="3",
        group_name="fastserve",
    )
    for ext in exts:
        ext.optional = True
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtensions})
