"""The classic embedding of uvicorn in a thread (test suites, notebooks, desktop apps): a
Server subclass whose install_signal_handlers does nothing, run in a thread until the block
ends; then the same subclass served in the main thread, stopped through should_exit."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"from a thread"})


class Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[None]:
        thread = threading.Thread(target=self.run)
        thread.start()
        try:
            while not self.started:
                time.sleep(1e-3)
            yield
        finally:
            self.should_exit = True
            thread.join()


def config() -> uvicorn.Config:
    return uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")


async def in_main_thread() -> None:
    server = Server(config=config())
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print("SIGTERM HANDLER UNTOUCHED", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    server.should_exit = True
    await task


if __name__ == "__main__":
    server = Server(config=config())
    with server.run_in_thread():
        port = server.servers[0].sockets[0].getsockname()[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            print("RESPONSE", response.read().decode(), flush=True)
    print("THREAD DONE", flush=True)
    asyncio.run(in_main_thread())
    print("MAIN DONE", flush=True)
