"""Event loop factories, chosen by name. No global policy is installed: the chosen factory is
handed to `asyncio.Runner(loop_factory=...)`."""

from __future__ import annotations

import asyncio as _asyncio  # not `asyncio`: the submodule of that name lives here
import importlib
from collections.abc import Callable

LoopFactory = Callable[[], _asyncio.AbstractEventLoop]

LOOPS: dict[str, str] = {
    "auto": "fastserve.loops.auto:factory",
    "uvloop": "fastserve.loops.uvloop:factory",
    "asyncio": "fastserve.loops.asyncio:factory",
    "proactor": "fastserve.loops.proactor:factory",
}


def get_loop_factory(name: str) -> LoopFactory:
    """The loop factory registered as `name` (ImportError if its library is missing)."""
    module, _, attr = LOOPS[name].partition(":")
    factory: LoopFactory = getattr(importlib.import_module(module), attr)
    return factory
