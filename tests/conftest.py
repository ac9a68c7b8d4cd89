"""Shared fixtures: a real fastserve on 127.0.0.1 port 0, in a thread with its own loop."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fastserve import Config, Server
from fastserve.types import ASGIApp

LOOPS = ["uvloop", "asyncio"]
# FASTSERVE_TEST_EAGER_START=1 runs every run_server() server with --eager-start (Python
# 3.12+; .ci/run runs the protocol suites that way once): the option's own code path, which the
# default run never takes.
EAGER_START = os.environ.get("FASTSERVE_TEST_EAGER_START") == "1"


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """Parametrize a test over both event loops."""
    name: str = request.param
    return name


class RunningServer:
    def __init__(self, server: Server, thread: threading.Thread, loop: asyncio.AbstractEventLoop):
        self.server = server
        self.thread = thread
        self.loop = loop

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock

    def stop(self) -> None:
        if self.thread.is_alive():  # (a test may have stopped it and waited already)
            self.loop.call_soon_threadsafe(self.server.handle_exit)
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "server did not stop"


@contextmanager
def run_server(app: ASGIApp, **options: Any) -> Iterator[RunningServer]:
    """Serve `app` on 127.0.0.1:0 in a background thread until the block ends."""
    options.setdefault("port", 0)
    if EAGER_START:
        options.setdefault("eager_start", True)
    options.setdefault("lifespan", "off")
    options.setdefault("log_level", "warning")
    options.setdefault("access_log", False)
    options.setdefault("gc_tune", False)  # gc.freeze() in the test process would pin garbage
    config = Config(app=app, install_signal_handlers=False, **options)
    from fastserve.logs import configure_logging
    from fastserve.loops import get_loop_factory

    configure_logging(config)
    server = Server(config)
    started = threading.Event()
    failure: list[BaseException] = []
    server.on_started = lambda _s: started.set()
    holder: list[asyncio.AbstractEventLoop] = []

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=get_loop_factory(config.loop)) as runner:
                holder.append(runner.get_loop())
                runner.run(server.serve())
        except BaseException as exc:
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert started.wait(10), "server did not start"
    if failure:
        raise failure[0]
    running = RunningServer(server, thread, holder[0])
    try:
        yield running
    finally:
        running.stop()
    if failure:
        raise failure[0]


@pytest.fixture
def serve(loop_name: str) -> Callable[..., Any]:
    """`with serve(app, **options) as srv:` on each loop."""

    def _serve(app: ASGIApp, **options: Any) -> Any:
        options.setdefault("loop", loop_name)
        return run_server(app, **options)

    return _serve
