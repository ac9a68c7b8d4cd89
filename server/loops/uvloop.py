from __future__ import annotations

import asyncio

import uvloop


def factory() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop()
