"""Event loop factories, chosen by name. No global policy is installed: the chosen factory is
handed to `asyncio.Runner(loop_factory=...)`."""

from __future__ import annotations

import asyncio as _asyncio  # not `asyncio`: the submodule of that name lives here
import importlib
import importlib.util
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

LoopFactory = Callable[[], _asyncio.AbstractEventLoop]

LOOPS: dict[str, str] = {
    "auto": "fastserve.loops.auto:factory",
    "uvloop": "fastserve.loops.uvloop:factory",
    "asyncio": "fastserve.loops.asyncio:factory",
    "proactor": "fastserve.loops.proactor:factory",
    # uvicorn's `--loop none`: no factory of its own, the loop of asyncio's event loop policy
    # (one an app installed, say).
    "none": "fastserve.loops.asyncio:from_policy",
}


def implemented(config: Config) -> Config:
    """`config` with `loop` naming what will run. uvicorn 0.54's `--loop zuvloop` (a libuv loop
    written in Zig, CPython 3.14+) runs uvloop, libuv's loop in C, or asyncio's without it: one
    warning line, and the rewritten Config goes to workers and --reload children, which then
    do not warn again."""
    if config.loop != "zuvloop":
        return config
    chosen = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    logging.getLogger("fastserve.error").warning(
        "--loop zuvloop is not implemented in fastserve; running %s instead", chosen
    )
    return config.replace(loop=chosen)


def get_loop_factory(name: str) -> LoopFactory:
    """The loop factory registered as `name` (ImportError if its library is missing)."""
    module, _, attr = LOOPS[name].partition(":")
    factory: LoopFactory = getattr(importlib.import_module(module), attr)
    return factory
