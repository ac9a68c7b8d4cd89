"""One server process: load the app, run lifespan, listen, serve, and stop gracefully.

`Server.serve()` is the embeddable coroutine; `Server.run()` owns an event loop for it. The
multi-process supervisor (`supervisor.py`) forks workers that each run a `Server` on sockets
the supervisor bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import random
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import logs
from .accesslog import AccessLog
from .config import Config
from .importer import load_app
from .lifespan import Lifespan, LifespanFailed
from .loops import get_loop_factory
from .loops import implemented as implemented_loop
from .pidfile import remove_listen_file, write_listen_file
from .protocols import connection_factory, implemented
from .sockets import bind_sockets, fixed_address, says_tcp, url
from .state import GC_THRESHOLD, ServerState
from .types import ASGIApp

if TYPE_CHECKING:
    from .metrics import ProcessMetrics

log = logging.getLogger("fastserve.error")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def tune_gc() -> None:
    """Move everything loaded so far (the app, its modules, the lifespan state) out of the
    collector's sight, and collect the young generation 10x less often (more rarely still
    while many requests run at once: ServerState.grow_gc_room).

    Each request allocates a few dozen short-lived containers; with the default threshold
    (700) that is a gen-0 pass every ~20 requests, and every tenth a gen-1 pass. Measured on
    the hello app: ~4 % of the server's CPU in the collector; the threshold alone cut 5.5 %
    of the instructions per request (callgrind). gc.freeze() also keeps forked workers from
    touching (and so copying) the pages of objects they inherited.
    """
    gc.collect()
    gc.freeze()
    threshold0, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(max(threshold0, GC_THRESHOLD), threshold1, threshold2)
    tune_malloc()


# glibc's mallopt() parameters: the free heap top malloc may keep instead of giving it back,
# and the size from which a block gets its own mmap() instead of a place on the heap.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 8 << 20
MMAP_THRESHOLD = 4 << 20


def tune_malloc() -> bool:
    """Let glibc's malloc keep up to TRIM_THRESHOLD of free memory at the top of its heap
    (default 128 KiB), and take blocks of up to MMAP_THRESHOLD from the heap.

    Request bodies of 64 KiB are allocated and freed at the heap's top all the time; with
    the default, the heap shrank (brk) and grew back every few requests, and each new page
    faulted in zeroed: POST echo 64 KiB on CPython 3.11, 100 connections, cost 67 µs of CPU
    per request, 40 µs with the threshold raised (perf/README.md, session 11). Setting one
    threshold turns off glibc's own adjustment of the other, which had moved blocks of a
    few hundred KiB (large reads, 1 MiB bodies) onto the heap: without MMAP_THRESHOLD each
    such block got its own mmap() and munmap() (3.5 of each per 1 MiB POST). Not done where
    MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ is set (the operator's choice) or
    where there is no glibc. Returns whether both were set."""
    if not sys.platform.startswith("linux") or any(
        os.environ.get(name) is not None
        for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        if not libc.gnu_get_libc_version:  # glibc only (musl has no mallopt to speak of)
            return False
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _nothing() -> None:
    pass


class StartupFailed(Exception):
    """The server could not start (lifespan failed); the CLI exits with code 3."""


class Server:
    """Serve one app in this process.

    `await server.serve()` runs until `server.should_exit` is set (by SIGINT/SIGTERM when
    `install_signal_handlers`, or by the embedding code), then drains in-flight requests.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._should_exit = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.force_exit = False
        self.started = False
        self.state: ServerState | None = None
        self.servers: list[asyncio.Server] = []
        self.sockets: list[socket.socket] = []
        self.listen_urls: list[str] = []  # what --listen-file holds
        self.exit_event: asyncio.Event | None = None
        self.app: ASGIApp | None = None
        self.on_started: Callable[[Server], None] | None = None
        # A worker of --workers: the supervisor prints the banner and serves the metrics.
        self.in_worker = False
        self.metrics: ProcessMetrics | None = None  # --metrics
        # --limit-max-requests plus its jitter, drawn once per process as uvicorn does. The
        # request that reaches it calls max_requests_reached().
        self.max_requests: int | None = None
        if config.limit_max_requests is not None:
            jitter = random.randint(0, max(0, config.limit_max_requests_jitter))
            self.max_requests = config.limit_max_requests + jitter
        # What reaching it does: None stops this server; a worker sets it to have the
        # supervisor start a replacement first (worker.Heartbeat).
        self.on_max_requests: Callable[[], None] | None = None
        # The signals that stopped serve(), raised again after it (capture_signals); where the
        # handler they meet is the default action (SIGTERM's: end the process), the command
        # line leaves them out: it exits 0 after a clean stop.
        self.captured_signals: list[int] = []
        self.reraise_to_default = True

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Run `serve()` on a new event loop of the configured kind."""
        self.config = implemented_loop(self.config)  # `zuvloop`: after serve_config, a no-op
        with asyncio.Runner(loop_factory=get_loop_factory(self.config.loop)) as runner:
            runner.run(self.serve(sockets))

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until `should_exit`, on `sockets` if given (else it binds its own). With
        `config.install_signal_handlers` (the default), SIGINT and SIGTERM stop it while it
        runs, and the program's own handlers are back afterwards (capture_signals)."""
        self.loop = asyncio.get_running_loop()
        if not logs.configured and not logging.getLogger("fastserve.error").handlers:
            # Embedded: logging as configured (log_level, log_config...), as uvicorn's Config
            # does; not over what the program (or a gunicorn worker) set up for our loggers.
            logs.configure_logging(self.config)
        with self.capture_signals():
            await self._serve(sockets)

    async def _serve(self, sockets: list[socket.socket] | None) -> None:
        # First: an unknown --http/--ws name is a config error before the app is even loaded.
        # After serve_config() (CLI, run(), workers, reload) this is a no-op.
        self.config = implemented(self.config)
        self.loop = asyncio.get_running_loop()
        self.exit_event = asyncio.Event()
        app = self.app or load_app(self.config)
        app = self.wrap_middleware(app)
        lifespan: Lifespan | None = None
        if self.config.lifespan != "off":
            lifespan = Lifespan(app, self.config.lifespan)
            try:
                await lifespan.startup()
            except LifespanFailed as exc:
                raise StartupFailed(f"application startup failed: {exc}") from None
        try:
            await self.serve_app(app, lifespan.state if lifespan else {}, sockets)
        except Exception:
            # The app's startup ran, so its shutdown runs too, even when serving never began
            # (port in use, bad --host, --uds in a missing directory): it may hold connections
            # or files. uvicorn does the same. The caller reports the error (one line, exit 3);
            # left to asyncio.Runner, the lifespan task would be cancelled instead, logging a
            # CancelledError traceback and skipping the app's shutdown handler.
            for srv in self.servers:
                srv.close()
            if lifespan is not None:
                await lifespan.shutdown()
            raise
        if lifespan is not None and not self.force_exit:
            await lifespan.shutdown()

    async def serve_app(
        self, app: ASGIApp, lifespan_state: dict[str, Any], sockets: list[socket.socket] | None
    ) -> None:
        """Listen, serve until told to exit, then drain (the part between lifespan phases)."""
        loop = asyncio.get_running_loop()
        assert self.exit_event is not None
        access = AccessLog(self.config, loop) if self.config.access_log else None
        self.state = state = ServerState(self.config, app, loop, lifespan_state, access)
        try:
            if state.metrics is not None:
                from .metrics import ProcessMetrics

                self.metrics = ProcessMetrics(state)
                await self.metrics.start(listen=not self.in_worker)
            if self.config.gc_tune:
                # After everything the server keeps for its lifetime is made: the state, and
                # --metrics' modules (prometheus-client). Made after the freeze, they stayed
                # in the collector's sight: +8 % CPU per request with --metrics (perf/).
                tune_gc()
            if self.max_requests is not None:
                state.max_requests = self.max_requests
                state.on_max_requests = self.max_requests_reached
            await self.startup(sockets)
            notify = None
            if self.config.callback_notify is not None:
                notify = loop.create_task(self.notify(self.config.callback_notify))
            if not self.should_exit:
                await self.exit_event.wait()
            if notify is not None:
                notify.cancel()
            await self.shutdown()
        finally:
            state.close()
            if self.metrics is not None:
                self.metrics.stop()
            if access is not None:
                access.flush()
            if self.listen_urls and self.config.listen_file:
                remove_listen_file(self.config.listen_file, self.listen_urls)

    def wrap_middleware(self, app: ASGIApp) -> ASGIApp:
        """Server-side middleware (CORS; --proxy-headers is applied where the scope is built,
        protocols/request.py), outermost last."""
        config = self.config
        if log.isEnabledFor(logging.DEBUG):
            # --log-level debug / trace: requests and ASGI messages as the app sees them
            # (nothing at all at other levels: the app is not wrapped).
            from .logs import MessageLog

            app = MessageLog(app)
        if config.cors_allow_origins:
            from .middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, config)
        return app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        state = self.state
        assert state is not None
        # Config errors (TLS files, PROXY + TLS) before binding: nothing to clean up then.
        ssl_context = None
        if self.config.is_ssl:
            from .tls import create_ssl_context

            ssl_context = create_ssl_context(self.config)
        factory = connection_factory(state)
        self.sockets = sockets if sockets is not None else bind_sockets(self.config)
        for sock in self.sockets:
            if sock.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(
                    factory, sock=sock, ssl=ssl_context, backlog=self.config.backlog
                )
            else:
                local = fixed_address(sock)
                srv = await loop.create_server(
                    factory if local is None else connection_factory(state, local),
                    sock=says_tcp(sock),
                    ssl=ssl_context,
                    backlog=self.config.backlog,
                )
            self.servers.append(srv)
        if not self.in_worker:
            from .logs import banner

            log.info("%s", banner(self.config, 1))
        urls = [url(sock, ssl_context is not None) for sock in self.sockets]
        # The process that bound the sockets owns the file (a supervisor's workers do not).
        if sockets is None and self.config.listen_file:
            self.listen_urls = urls
            write_listen_file(self.config.listen_file, urls)
        for where in urls:
            log.info("fastserve running on %s (press CTRL+C to quit)", where)
        self.started = True
        if self.on_started is not None:
            self.on_started(self)

    async def notify(self, callback: Callable[[], Awaitable[None]]) -> None:
        """uvicorn's callback_notify: awaited every timeout_notify seconds while serving."""
        while True:
            await asyncio.sleep(self.config.timeout_notify)
            await callback()

    def max_requests_reached(self) -> None:
        """The request that reaches --limit-max-requests has started (request.last_request:
        it is the last one this server admits)."""
        if self.on_max_requests is not None:
            self.on_max_requests()
        else:
            log.info("Maximum request limit of %d reached: shutting down.", self.max_requests)
            self.should_exit = True

    def stop_serving(self) -> None:
        """No new connections, and no new requests: idle connections close now, busy ones
        once their response is out."""
        state = self.state
        assert state is not None
        state.shutting_down = True
        for srv in self.servers:
            srv.close()
        for conn in list(state.connections):
            conn.shutdown()

    @property
    def port(self) -> int:
        """The TCP port of the first listener (useful with port 0)."""
        for sock in self.sockets:
            if sock.family != socket.AF_UNIX:
                port: int = sock.getsockname()[1]
                return port
        raise RuntimeError("not listening on TCP")

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        """`server.should_exit = True` stops an embedded server, as with uvicorn's Server,
        from the server's loop or from any other thread."""
        self._should_exit = value
        event, loop = self.exit_event, self.loop
        if not value or event is None or loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def handle_exit(self, sig: int | None = None, frame: Any = None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
        if self.exit_event is not None:
            self.exit_event.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """While the server runs, SIGINT and SIGTERM stop it (install_signal_handlers). Then
        the handlers the program had are put back, and a signal that stopped the server is
        raised again (the last first), so that they see it, as uvicorn does: a host program's
        own SIGTERM handler runs, a SIGINT becomes the KeyboardInterrupt asyncio.run() raises.
        Only in the main thread (the only one Python delivers signals to)."""
        if (
            not self.config.install_signal_handlers
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
        self.captured_signals = []
        self.install_signal_handlers()
        try:
            yield
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # (None: set from C; Python cannot put it back)
                    signal.signal(sig, handler)
        for number in reversed(self.captured_signals):
            if (
                previous.get(signal.Signals(number)) is signal.SIG_DFL
                and not self.reraise_to_default
            ):
                continue
            signal.raise_signal(number)

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM call handle_exit. signal.signal, not loop.add_signal_handler:
        the handler it replaces can be put back, and one a host program registered on its loop
        stays registered underneath. A subclass may make this do nothing (uvicorn's classic
        `def install_signal_handlers(self): pass`): the server then ignores signals."""
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self.signal_received)

    def signal_received(self, sig: int, frame: Any) -> None:
        self.captured_signals.append(sig)
        self.handle_exit(sig, frame)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            # The handler runs between two bytecodes, maybe inside the loop's select(), which
            # would go back to sleep: the self-pipe wakes it to see the exit.
            loop.call_soon_threadsafe(_nothing)

    async def shutdown(self) -> None:
        """Stop accepting, close idle connections, let busy ones finish (bounded), cancel."""
        state = self.state
        assert state is not None
        log.info("Shutting down")
        self.stop_serving()
        timeout = self.config.timeout_graceful_shutdown
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (state.connections or state.tasks) and not self.force_exit:
            if deadline is not None and loop.time() >= deadline:
                busy = len(self.busy_tasks())
                log.warning("graceful shutdown timed out: cancelling %d tasks", busy)
                break
            await self.wait_briefly()
        for conn in list(state.connections):
            conn.cancel()
        for task in list(state.tasks):
            task.cancel()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)
        for _ in range(20):
            if not state.connections:
                break
            await asyncio.sleep(0.05)

    def busy_tasks(self) -> set[asyncio.Task[None]]:
        """The tasks still running: the server's own and the connections' (their apps)."""
        state = self.state
        assert state is not None
        tasks = {task for task in state.tasks if not task.done()}
        for conn in state.connections:
            task = conn.task
            if task is not None and not task.done():
                tasks.add(task)
        return tasks

    async def wait_briefly(self) -> None:
        """Wait for the next task or connection to end (or 0.1 s), whichever comes first."""
        tasks = self.busy_tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(0.05)
