from __future__ import annotations

import asyncio
import selectors


def factory() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(selectors.DefaultSelector())


def from_policy() -> asyncio.AbstractEventLoop:
    """`--loop none`: the loop asyncio's event loop policy makes (uvicorn's meaning)."""
    return asyncio.new_event_loop()
