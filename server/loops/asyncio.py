from __future__ import annotations

import asyncio
import selectors


def factory() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(selectors.DefaultSelector())
