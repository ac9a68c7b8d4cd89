"""One timer for many connections' deadlines of the same length: the idle HTTP/2 connections
and the HTTP/1.1 ones still waiting for their first request (state.idle_conns,
--timeout-keep-alive), and the lingering closes of each duration (state.lingering, linger.py).

A connection is added with its deadline when it goes idle (an HTTP/2 one with no open
stream, an HTTP/1.1 one at its accept) and taken out when it gets busy. Every entry of one
list has the same timeout, so the order in which they were added is the order of their
deadlines: a dict keeps both, the timer runs at the earliest
deadline, and a pass stops at the first connection not yet due. An idle connection costs one
dict entry (~50 B) where a loop timer of its own cost ~500 B (the TimerHandle, libuv's timer,
a context and a bound method; perf/: 1,000 idle h2c connections), and a stream no longer
costs a call_later() and a cancel().
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Protocol


class Idler(Protocol):
    def on_idle(self) -> None:
        """The connection has been idle for the whole timeout."""


class IdleConnections:
    __slots__ = ("deadlines", "loop", "timeout", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.deadlines: dict[Idler, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, conn: Idler) -> None:
        """`conn` is idle from now on (again: it moves to the end, its deadline renewed)."""
        deadlines = self.deadlines
        deadlines.pop(conn, None)
        deadlines[conn] = monotonic() + self.timeout
        if self.timer is None:
            self.timer = self.loop.call_later(self.timeout, self.sweep)

    def discard(self, conn: Idler) -> None:
        """`conn` is busy or gone. (The timer stays: a pass with nothing due re-arms it.)"""
        self.deadlines.pop(conn, None)

    def sweep(self) -> None:
        self.timer = None
        deadlines = self.deadlines
        now = monotonic()
        due: list[Idler] = []
        for conn, deadline in deadlines.items():
            if deadline > now:
                self.timer = self.loop.call_later(deadline - now, self.sweep)
                break
            due.append(conn)
        for conn in due:
            del deadlines[conn]
        for conn in due:
            conn.on_idle()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
