from __future__ import annotations

import asyncio
import sys


def factory() -> asyncio.AbstractEventLoop:
    if sys.platform != "win32":
        raise RuntimeError("the proactor loop exists on Windows only")
    return asyncio.ProactorEventLoop()
