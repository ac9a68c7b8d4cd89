"""One worker process: the supervisor's handle on it (`Worker`) and the code that runs in it
after the fork (`run_worker`, `Heartbeat`).

The heartbeat pipe carries one-byte messages from the worker to the supervisor:
    b"."  heartbeat (the event loop is turning)
    b"R"  listening: ready to take connections (a rolling restart waits for it)
    b"M"  --limit-max-requests reached: please start my replacement, then retire me
    b"S" JSON b"\n"  --metrics: the worker's counts (metrics.snapshot), with every heartbeat
                     and once more when it stops; below PIPE_BUF, so written whole or not at all
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable

from .config import STARTUP_FAILURE, Config, ConfigError
from .logs import ColourFormatter
from .loops import get_loop_factory
from .server import Server, StartupFailed
from .types import ASGIApp

log = logging.getLogger("fastserve.error")

HEARTBEAT, READY, RETIRE, REPORT = b".", b"R", b"M", b"S"
# Seconds between closing the listeners and draining the connections (see Stopper).
ACCEPT_GRACE = 0.1


class Worker:
    """One forked worker process, as the supervisor sees it."""

    def __init__(self, pid: int, fd: int, now: float) -> None:
        self.pid = pid
        self.fd = fd  # read end of the heartbeat pipe
        self.started = now
        self.last_seen = now  # the boot (import, lifespan startup) is bounded by the same timeout
        self.ready = False
        self.outdated = False  # to be replaced: SIGHUP or --limit-max-requests
        self.retiring = False  # SIGTERM sent
        self.killed = False  # SIGKILL sent
        self.index = 0  # its `worker` label in the metrics: 0..N-1, the lowest free one
        self.report: bytes | None = None  # the last metrics report (metrics.snapshot)
        self.partial = b""  # a report cut by the end of a read

    @classmethod
    def start(cls, child: Callable[[int], int]) -> Worker:
        """Fork; the child runs `child(heartbeat_fd)` and exits with its return value."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child; tests see its effects)
            code = 1
            try:
                os.close(read_fd)
                code = child(write_fd)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("Worker [%d] crashed", os.getpid())
            finally:
                _flush_stdio()
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return cls(pid, read_fd, time.monotonic())

    def ping(self, now: float) -> bytes | None:
        """Read what the worker sent (heartbeats and notices); None once it closed the pipe."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        except OSError:
            return None
        if not data:
            return None
        self.last_seen = now
        if REPORT in data or self.partial:
            data = self.take_reports(self.partial + data)
        if READY in data:
            self.ready = True
        return data

    def take_reports(self, data: bytes) -> bytes:
        """Keep the last complete metrics report; the one-byte messages around them."""
        notices = b""
        while data:
            start = data.find(REPORT)
            if start < 0:
                notices += data
                break
            notices += data[:start]
            end = data.find(b"\n", start)
            if end < 0:
                self.partial = data[start:]
                return notices
            self.report = data[start + 1 : end]
            data = data[end + 1 :]
        self.partial = b""
        return notices

    def terminate(self, restart: bool = False) -> None:
        """Graceful: the worker stops accepting and drains (see Stopper, Server.shutdown).
        `restart`: it is being replaced, not stopped (SIGUSR1; WebSockets close with 1012)."""
        self.retiring = True
        self._send(signal.SIGUSR1 if restart else signal.SIGTERM)

    def kill(self) -> None:
        self.killed = True
        self._send(signal.SIGKILL)

    def _send(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:  # already dead, not yet reaped
            pass

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class Heartbeat:
    """The worker's side of the pipe: a loop timer writes a byte every `interval` seconds."""

    def __init__(self, fd: int, server: Server, interval: float) -> None:
        self.fd = fd
        self.server = server
        self.interval = interval
        # --limit-max-requests: the request that reaches it retires this worker at once.
        server.on_max_requests = self.retire
        self.next_beat = 0.0
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None
        os.set_blocking(fd, False)

    def start(self) -> None:
        self.handle = asyncio.get_running_loop().call_soon(self.tick)

    def tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self.next_beat:
            self.next_beat = now + self.interval
            self.send(HEARTBEAT + self.report())
        self.handle = loop.call_later(self.interval, self.tick)

    def retire(self) -> None:
        """The last request this worker admits (Server.max_requests) has started: take no
        more (the other workers, then the replacement, accept them) and ask the supervisor
        for the replacement, which starts first and then has this worker drain (SIGUSR1)."""
        server = self.server
        log.info("Worker [%d]: --limit-max-requests (%s) reached", os.getpid(), server.max_requests)
        if server.state is not None:
            server.state.restarting = True  # open WebSockets close with 1012 (Service Restart)
        server.stop_serving()
        self.send(RETIRE)

    def report(self) -> bytes:
        """The metrics report that goes with a heartbeat (--metrics), else nothing."""
        state = self.server.state
        if state is None or state.metrics is None:
            return b""
        from .metrics import snapshot

        return REPORT + snapshot(state) + b"\n"

    def ready(self, _server: Server) -> None:
        self.send(READY + self.report())  # (its metrics labels appear at once)

    def send(self, message: bytes) -> None:
        try:
            os.write(self.fd, message)
        except BlockingIOError:  # the supervisor is slow to read: it will see the next one
            pass
        except OSError:  # EPIPE: the supervisor is gone; do not outlive it
            if not self.server.should_exit:
                log.warning("Worker [%d]: supervisor gone; shutting down", os.getpid())
                self.server.handle_exit()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        last = self.report()  # everything counted until the end (the supervisor keeps it)
        if last:
            self.send(last)
        os.close(self.fd)


class Stopper:
    """The worker's SIGTERM / SIGINT / SIGUSR1 handling.

    Stopping starts by closing this worker's listeners only; the drain (`Server.handle_exit`)
    begins ACCEPT_GRACE later. A connection accepted just before the listener closed has
    usually not delivered its first request yet: draining at once would close it as idle and
    fail a request its client sent before it could know (Go's net/http likewise leaves new
    connections alone for a while at shutdown). SIGUSR1 is the supervisor's "retire for a
    restart" (SIGHUP, --limit-max-requests): WebSockets then close with 1012 (Service Restart)
    instead of 1001 (Going Away). A second SIGINT forces the exit, as in a single process.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stopping = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop, signal.SIGTERM, False)
        loop.add_signal_handler(signal.SIGINT, self.stop, signal.SIGINT, False)
        loop.add_signal_handler(signal.SIGUSR1, self.stop, signal.SIGTERM, True)

    def stop(self, sig: int, restarting: bool) -> None:
        server = self.server
        if self.stopping:
            server.handle_exit(sig)
            return
        self.stopping = True
        if restarting and server.state is not None:
            server.state.restarting = True
        for listener in server.servers:
            listener.close()
        asyncio.get_running_loop().call_later(ACCEPT_GRACE, server.handle_exit, sig)


def run_worker(
    config: Config, sockets: list[socket.socket], app: ASGIApp | None, heartbeat_fd: int
) -> int:
    """Serve on inherited sockets in a fresh event loop; the exit code tells the supervisor
    whether this was a startup failure (3: stop everything) or a crash (replace me)."""
    ColourFormatter.process_tag = f"[{os.getpid()}] "
    server = Server(config.replace(install_signal_handlers=False))
    server.app = app
    server.in_worker = True  # no banner, no metrics listener: the supervisor's
    beat = Heartbeat(
        heartbeat_fd, server, max(0.05, min(1.0, config.timeout_worker_healthcheck / 4))
    )
    server.on_started = beat.ready

    async def main() -> None:
        Stopper(server).install(asyncio.get_running_loop())
        beat.start()
        await server.serve(sockets=sockets)

    try:
        with asyncio.Runner(loop_factory=get_loop_factory(config.loop)) as runner:
            runner.run(main())
    except (ConfigError, StartupFailed) as exc:
        log.error("%s", exc)
        return STARTUP_FAILURE
    except Exception:
        if server.started:
            log.exception("Worker [%d] crashed", os.getpid())
            return 1
        log.exception("Worker [%d] failed to start", os.getpid())
        return STARTUP_FAILURE
    finally:
        beat.stop()
    return 0


def free_index(workers: Iterable[Worker]) -> int:
    """The lowest worker index no live worker has (a replacement reuses a dead one's)."""
    taken = {w.index for w in workers}
    index = 0
    while index in taken:
        index += 1
    return index


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
