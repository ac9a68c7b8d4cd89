"""The ASGI lifespan protocol: startup and shutdown messages, and the shared `state`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .types import ASGIApp, Message, SendMessage

log = logging.getLogger("fastserve.error")


class LifespanFailed(Exception):
    """The app reported (or raised during) startup failure."""


class Lifespan:
    def __init__(self, app: ASGIApp, mode: str) -> None:
        self.app = app
        self.mode = mode  # "on" or "auto"
        self.state: dict[str, Any] = {}
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.startup_done = asyncio.Event()
        self.shutdown_done = asyncio.Event()
        self.failed: str | None = None
        self.unsupported = False
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        log.info("Waiting for application startup.")
        self.task = asyncio.get_running_loop().create_task(self.main())
        await self.inbox.put({"type": "lifespan.startup"})
        await self.startup_done.wait()
        if self.failed is not None:
            raise LifespanFailed(self.failed)
        if not self.unsupported:
            log.info("Application startup complete.")

    async def shutdown(self) -> None:
        if self.unsupported or self.task is None or self.task.done():
            return
        log.info("Waiting for application shutdown.")
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.shutdown_done.wait()
        if self.failed is not None:
            log.error("Application shutdown failed: %s", self.failed)
        else:
            log.info("Application shutdown complete.")

    async def main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as exc:
            if self.startup_done.is_set() and not self.shutdown_done.is_set():
                self.failed = f"{type(exc).__name__}: {exc}"
                log.error("Exception in lifespan shutdown", exc_info=exc)
            elif self.mode == "auto" and not self.startup_done.is_set():
                self.unsupported = True
                log.info("ASGI 'lifespan' protocol appears unsupported (%s).", exc or type(exc))
            else:
                self.failed = f"{type(exc).__name__}: {exc}"
                log.error("Exception in lifespan startup", exc_info=exc)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
        else:
            if not self.startup_done.is_set():
                self.unsupported = self.mode == "auto"
                if self.unsupported:
                    log.info("ASGI 'lifespan' protocol appears unsupported (the app returned).")
                else:
                    self.failed = "the app returned before completing lifespan startup"
        finally:
            self.startup_done.set()
            self.shutdown_done.set()

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: SendMessage) -> None:
        mtype = message["type"]
        if mtype == "lifespan.startup.complete":
            self.startup_done.set()
        elif mtype == "lifespan.startup.failed":
            self.failed = message.get("message") or "lifespan.startup.failed"
            self.startup_done.set()
        elif mtype == "lifespan.shutdown.complete":
            self.shutdown_done.set()
        elif mtype == "lifespan.shutdown.failed":
            self.failed = message.get("message") or "lifespan.shutdown.failed"
            self.shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected lifespan message {mtype!r}")
