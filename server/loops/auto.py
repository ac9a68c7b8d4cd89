from __future__ import annotations

import asyncio
import sys


def factory() -> asyncio.AbstractEventLoop:
    """uvloop when importable, the Proactor loop on Windows, else asyncio's selector loop."""
    try:
        from . import uvloop
    except ImportError:
        pass
    else:
        return uvloop.factory()
    if sys.platform == "win32":
        from . import proactor

        return proactor.factory()
    from . import asyncio as plain

    return plain.factory()
