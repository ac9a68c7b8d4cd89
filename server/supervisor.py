"""The prefork supervisor: `--workers N`.

The supervisor binds the listening socket(s) once, forks N workers that inherit them, and then
only waits: on the signal wakeup pipe (SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU, SIGCHLD) and
on one heartbeat pipe per worker, with a timeout that is the next deadline it has to act on
(a heartbeat going stale, a back-off ending, the graceful-stop limit). Nothing is polled.

Each worker builds its own event loop after the fork (loops and their selectors must not be
shared across a fork) and runs an ordinary `Server` on the inherited sockets. It writes to its
heartbeat pipe from a loop timer, so a byte proves the event loop is turning:
    b"."  heartbeat        b"R"  listening (ready)        b"M"  --limit-max-requests reached
A worker whose pipe stays silent longer than --timeout-worker-healthcheck is killed and
replaced; a worker whose supervisor has gone sees EPIPE and stops itself.

Children are reaped with waitpid(-1, WNOHANG) after every wake-up, so no SIGCHLD is ever lost
(signals coalesce; the reap loop does not care how many arrived) and orphans re-parented to
us when we run as PID 1 of a container are reaped as well.

Worker replacement is declarative (`maintain`): workers are *fresh* or *outdated* (SIGHUP, or
the max-requests limit). Fresh workers are started until there are `target` of them; an
outdated one is retired (SIGTERM, it drains) only once a ready fresh worker covers its share,
so capacity never drops during a rolling restart.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from .config import STARTUP_FAILURE, Config, ConfigError
from .importer import load_app
from .logs import banner
from .pidfile import remove_listen_file, remove_pid, write_listen_file, write_pid
from .recycling import Recycler
from .sockets import bind_error, bind_sockets, url
from .types import ASGIApp
from .worker import RETIRE, Worker, free_index, run_worker

log = logging.getLogger("fastserve.error")

SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)
# Workers get this long beyond --timeout-graceful-shutdown: after the drain they still cancel
# leftover tasks (up to 1 s) and run the lifespan shutdown.
STOP_MARGIN = 2.0
# A worker that dies sooner than this after its start counts towards the crash back-off.
QUICK_DEATH = 5.0
# Why workers are replaced (`Supervisor.restarts`, the metric fastserve_worker_restarts_total):
# crash: died unasked; hung: killed for a silent heartbeat; max-requests: --limit-max-requests;
# reload: SIGHUP; scale: SIGTTIN/SIGTTOU (a worker added or retired); max-rss, lifetime:
# --workers-max-rss, --workers-lifetime (recycling.py).
RESTART_CAUSES = ("crash", "hung", "max-requests", "reload", "scale", "max-rss", "lifetime")


def backoff(failures: int) -> float:
    """Delay before the next start after `failures` quick deaths in a row: 0, 0.1, 0.2... 10 s."""
    return 0.0 if failures <= 1 else min(10.0, 0.1 * 2 ** (failures - 2))


class Supervisor:
    """Owns the listening sockets and `target` workers; one `handle_<signal>` per signal."""

    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.target = max(1, workers)
        self.workers: dict[int, Worker] = {}
        self.sockets: list[socket.socket] = []
        self.listen_urls: list[str] = []  # what --listen-file holds
        self.reserved: socket.socket | None = None  # --reuse-port: holds the port, never listens
        self.worker_config = config
        self.app: ASGIApp | None = None
        self.selector = selectors.DefaultSelector()
        self.wakeup: tuple[int, int] | None = None
        self.previous_handlers: dict[int, Any] = {}
        self.stopping = False
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.quick_deaths = 0
        self.spawn_after = 0.0
        self.rolling = False
        self.healthcheck = config.timeout_worker_healthcheck
        self.recycler = Recycler(config.workers_max_rss, config.workers_lifetime)
        self.starts = 0  # workers started
        self.restarts = dict.fromkeys(RESTART_CAUSES, 0)  # workers replaced, by cause
        self.metrics: Any = None  # --metrics: metrics.SupervisorMetrics

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; the exit code is 0, or 3 when a worker could not start."""
        try:
            self.setup()
        except ConfigError as exc:
            log.error("%s", exc)
            self.close_sockets()
            return STARTUP_FAILURE
        except Exception:
            log.exception("Cannot preload the application")
            self.close_sockets()
            return STARTUP_FAILURE
        try:
            self.install_signal_handlers()
            log.info("%s", banner(self.config, self.target))  # once, not once per worker
            log.info("Started supervisor [%d] with %d workers", os.getpid(), self.target)
            self.loop()
        finally:
            self.cleanup()
        log.info("Supervisor [%d] stopped", os.getpid())
        return self.exit_code

    def setup(self) -> None:
        config = self.config
        if config.preload:
            self.app = load_app(config)
        tcp = not (config.sockets or config.fd is not None or config.uds)
        if config.reuse_port and tcp:
            self.reserved = _reserve_port(config.host, config.port)
            self.worker_config = config.replace(port=self.reserved.getsockname()[1])
        else:
            if config.reuse_port:
                log.warning("--reuse-port applies to TCP listeners only; sharing the socket")
            self.sockets = bind_sockets(config)
        if config.pid:
            write_pid(config.pid)
        if config.metrics:
            from .metrics import SupervisorMetrics

            self.metrics = SupervisorMetrics(self)
        if config.listen_file:
            held = self.sockets or ([self.reserved] if self.reserved else [])
            self.listen_urls = [url(sock, config.is_ssl) for sock in held]
            write_listen_file(config.listen_file, self.listen_urls)

    def loop(self) -> None:
        self.maintain(time.monotonic())
        while self.workers or not self.stopping:
            for key, _ in self.selector.select(self.next_timeout(time.monotonic())):
                key.data()
            now = time.monotonic()
            self.reap(now)
            if self.metrics is not None:
                self.metrics.expire(now)
            if self.stopping:
                self.check_stop_deadline(now)
            else:
                self.check_health(now)
                self.recycle(now)
                self.maintain(now)

    def next_timeout(self, now: float) -> float | None:
        """Seconds until the next thing we must act on by ourselves (None: only on events)."""
        deadlines = [w.last_seen + self.healthcheck for w in self.workers.values() if not w.killed]
        if self.stopping:
            deadlines = [] if self.stop_deadline is None else [self.stop_deadline]
        elif self.spawn_after > now:
            deadlines.append(self.spawn_after)
        recycle_at = None if self.stopping else self.recycler.next_deadline(self.workers.values())
        if recycle_at is not None:
            deadlines.append(recycle_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def cleanup(self) -> None:
        for worker in self.workers.values():  # only after an exception in the loop
            worker.kill()
            worker.close()
        self.close_sockets()
        if self.metrics is not None:
            self.metrics.close()
        if self.wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in self.wakeup:
                os.close(fd)
            self.wakeup = None
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)
        self.selector.close()
        if self.config.pid:
            remove_pid(self.config.pid)
        if self.config.listen_file:
            remove_listen_file(self.config.listen_file, self.listen_urls)

    def close_sockets(self) -> None:
        """Once stopping, the kernel should refuse new connections, not queue them for nobody."""
        for sock in self.sockets:
            sock.close()
        if self.reserved is not None:
            self.reserved.close()

    # -- workers -----------------------------------------------------------------------------

    def maintain(self, now: float) -> None:
        """Start, retire or replace workers until there are `target` fresh, serving ones."""
        serving = sorted(
            (w for w in self.workers.values() if not w.retiring), key=lambda w: w.started
        )
        old = [w for w in serving if w.outdated]
        fresh = [w for w in serving if not w.outdated]
        ready = sum(1 for w in fresh if w.ready)
        while old and ready + len(old) > self.target:
            self.retire(old.pop(0), "replaced", restart=True)
        while len(fresh) > self.target:
            self.retire(fresh.pop(), "fewer workers wanted")
        missing = self.target - len(fresh)
        if old:  # rolling: one new worker at a time, each replacing one old one
            missing = min(missing, 1 - (len(fresh) - ready))
        if missing > 0 and now >= self.spawn_after:
            for _ in range(missing):
                self.spawn()
        draining = any(w.outdated for w in self.workers.values())
        if self.rolling and not draining and ready == len(fresh) == self.target:
            self.rolling = False
            log.info("Rolling restart done")

    def spawn(self) -> None:
        # Signals stay blocked across the fork until the child has reset its handlers: until
        # then a signal meant for the child would land in the supervisor's wakeup pipe.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            worker = Worker.start(self.worker_main)
        except OSError as exc:  # EAGAIN/ENOMEM: out of processes or memory; try again later
            log.error("Cannot start a worker: %s", exc.strerror)
            self.spawn_after = time.monotonic() + 1.0
            return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        worker.index = free_index(self.workers.values())
        self.workers[worker.pid] = worker
        self.starts += 1
        self.selector.register(worker.fd, selectors.EVENT_READ, lambda: self.on_ping(worker))
        log.info("Started worker [%d]", worker.pid)
        self.recycler.started(worker)

    def retire(self, worker: Worker, why: str, restart: bool = False) -> None:
        log.info("Retiring worker [%d] (%s)", worker.pid, why)
        worker.terminate(restart)

    def recycle(self, now: float) -> None:
        """--workers-max-rss, --workers-lifetime: `maintain` starts the worker's successor,
        then retires it."""
        for worker, cause, why in self.recycler.due(self.workers.values(), now):
            worker.outdated = True
            self.restarts[cause] += 1
            log.info(
                "Worker [%d] %s; replacing it (%s: %d so far)",
                worker.pid,
                why,
                cause,
                self.restarts[cause],
            )

    def on_ping(self, worker: Worker) -> None:
        data = worker.ping(time.monotonic())
        if data is None:
            self.selector.unregister(worker.fd)
        elif RETIRE in data and not worker.outdated:
            log.info("Worker [%d] reached --limit-max-requests; replacing it", worker.pid)
            worker.outdated = True
            self.restarts["max-requests"] += 1

    def reap(self, now: float) -> None:
        """Collect every exited child: our workers, and orphans when we are PID 1."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                log.debug("Reaped orphan process [%d]", pid)
            else:
                self.worker_exited(worker, os.waitstatus_to_exitcode(status), now)

    def worker_exited(self, worker: Worker, code: int, now: float) -> None:
        if worker.fd in self.selector.get_map():
            worker.ping(now)  # its last metrics report, if still unread
            self.selector.unregister(worker.fd)
        worker.close()
        if self.metrics is not None:
            self.metrics.worker_exited(worker)
        if self.stopping or worker.retiring:
            log.info("Worker [%d] stopped", worker.pid)
            return
        if code == STARTUP_FAILURE:
            self.startup_failed(worker, now)
            return
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        if not worker.killed:  # (killed: hung, counted then)
            self.restarts["crash"] += 1
        log.error(
            "Worker [%d] %s; starting a new one%s", worker.pid, how, self.back_off(worker, now)
        )

    def back_off(self, worker: Worker, now: float) -> str:
        """Delay the next start after a quick death; the log line's suffix."""
        quick = not worker.ready or now - worker.started < QUICK_DEATH
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        delay = backoff(self.quick_deaths)
        self.spawn_after = now + delay
        return f" in {delay:.1f}s" if delay else ""

    def startup_failed(self, worker: Worker, now: float) -> None:
        """Exit code 3. With nothing else serving (the first start), the server stops with
        that code rather than loop. If other workers serve, they are kept: a rolling restart
        onto broken code is called off, and other replacements are retried with back-off."""
        serving = [w for w in self.workers.values() if w.ready and not w.retiring]
        if not serving:
            log.error("Worker [%d] failed to start; stopping the server", worker.pid)
            self.exit_code = STARTUP_FAILURE
            self.stop()
            return
        outdated = [w for w in serving if w.outdated]
        if outdated:
            log.error(
                "Worker [%d] failed to start; replacement called off, %d workers keep running",
                worker.pid,
                len(outdated),
            )
            for w in outdated:
                w.outdated = False
            self.rolling = False
            return
        log.error("Worker [%d] failed to start; retrying%s", worker.pid, self.back_off(worker, now))

    def check_health(self, now: float) -> None:
        for worker in self.workers.values():
            if not worker.killed and now - worker.last_seen > self.healthcheck:
                log.error(
                    "Worker [%d] sent no heartbeat for %.1fs (event loop blocked?); killing it",
                    worker.pid,
                    now - worker.last_seen,
                )
                worker.kill()
                self.restarts["hung"] += 1

    def stop(self) -> None:
        """Graceful stop: every worker drains, bounded by --timeout-graceful-shutdown."""
        if self.stopping:
            return
        self.stopping = True
        self.close_sockets()
        for worker in self.workers.values():
            worker.terminate()
        timeout = self.config.timeout_graceful_shutdown
        if timeout is not None:
            self.stop_deadline = time.monotonic() + timeout + STOP_MARGIN

    def check_stop_deadline(self, now: float) -> None:
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            self.kill_all("still running after the graceful shutdown timeout")

    def kill_all(self, why: str) -> None:
        for worker in self.workers.values():
            if not worker.killed:
                log.warning("Killing worker [%d]: %s", worker.pid, why)
                worker.kill()

    # -- signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Python-level no-op handlers plus a wakeup fd: the C handler writes the signal number
        to the pipe, which wakes `select`; the work happens in `on_signal`, never in a handler.
        (Installing handlers also matters as PID 1, whose default dispositions are "ignore".)
        """
        read_fd, write_fd = os.pipe()
        for fd in (read_fd, write_fd):
            os.set_blocking(fd, False)
        self.wakeup = (read_fd, write_fd)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in SIGNALS:
            self.previous_handlers[sig] = signal.signal(sig, _ignore)
        self.selector.register(read_fd, selectors.EVENT_READ, self.on_signal)

    def on_signal(self) -> None:
        assert self.wakeup is not None
        try:
            data = os.read(self.wakeup[0], 512)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name.lower()
            handler: Callable[[], None] | None = getattr(self, f"handle_{name}", None)
            if handler is not None:
                handler()

    def handle_sigterm(self) -> None:
        if not self.stopping:
            log.info("Received SIGTERM: stopping %d workers gracefully", len(self.workers))
        self.stop()

    def handle_sigint(self) -> None:
        """Ctrl-C: graceful stop; a second Ctrl-C kills what is left."""
        if self.stopping:
            self.kill_all("second SIGINT")
            return
        log.info("Received SIGINT: stopping %d workers gracefully", len(self.workers))
        self.stop()

    def handle_sighup(self) -> None:
        """Rolling restart: every current worker is replaced by a new one, one at a time."""
        if self.stopping:
            return
        serving = [w for w in self.workers.values() if not w.retiring]
        log.info("Received SIGHUP: rolling restart of %d workers", len(serving))
        for worker in serving:
            worker.outdated = True
        self.restarts["reload"] += len(serving)
        self.rolling = True

    def handle_sigttin(self) -> None:
        if not self.stopping:
            self.target += 1
            self.restarts["scale"] += 1
            log.info("Received SIGTTIN: %d workers", self.target)

    def handle_sigttou(self) -> None:
        if self.stopping:
            return
        if self.target == 1:
            log.info("Received SIGTTOU: already at 1 worker")
            return
        self.target -= 1
        self.restarts["scale"] += 1
        log.info("Received SIGTTOU: %d workers", self.target)

    def handle_sigchld(self) -> None:
        """Nothing to do here: `reap` runs after every wake-up."""

    # -- in the worker process ---------------------------------------------------------------

    def worker_main(self, heartbeat_fd: int) -> int:
        """Runs in the forked child: drop the supervisor's state, then serve."""
        signal.set_wakeup_fd(-1)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        # A terminal hang-up or job-control signal is the supervisor's business, not ours.
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        self.selector.close()
        for fd in (*(self.wakeup or ()), *(w.fd for w in self.workers.values())):
            os.close(fd)
        if self.reserved is not None:
            self.reserved.close()
        if self.metrics is not None:
            self.metrics.close_in_worker()
        config = self.worker_config
        try:
            sockets = self.sockets or bind_sockets(config, reuse_port=True)
        except ConfigError as exc:
            log.error("%s", exc)
            return STARTUP_FAILURE
        return run_worker(config, sockets, self.app, heartbeat_fd)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket: it resolves port 0 once and keeps the
    port ours, while only the workers' own listeners receive connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_error(host, port, exc) from None
    return sock


def _ignore(signum: int, frame: Any) -> None:
    """The wakeup fd carries the signal; the Python-level handler has nothing to do."""
