"""The supervisor's rules (server/supervisor.py) that a mutation pass (mutmut 3, docs/testing.md)
found unchecked: every test here fails against at least one of its mutants (issue 16; the
list in the commit messages). The rest of the suite runs the supervisor in a subprocess
(tests/test_workers.py, tests/test_recycling.py), which sees a restart but not its cause,
count or timing; here a `Supervisor` is driven by direct calls, its workers being real
processes (`sleep`) behind real heartbeat pipes, so a SIGTERM, SIGUSR1 or SIGKILL it sends is
seen in the child's exit status. Only `test_spawned_workers_serve_then_drain_on_stop` forks
the test process (real workers); elsewhere `Planner.spawn` counts the workers `maintain` and
`run` would start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastserve.config import STARTUP_FAILURE, Config, ConfigError
from fastserve.recycling import MIB, rss_bytes
from fastserve.supervisor import (
    QUICK_DEATH,
    RESTART_CAUSES,
    SIGNALS,
    STOP_MARGIN,
    Supervisor,
    backoff,
)
from fastserve.worker import Worker
from tests.apps.workers_procs import Client
from tests.helpers import error_log, wait_until
from tests.test_metrics import scrape

pytestmark = pytest.mark.timeout(20)

APP = "tests.apps.workers_app:app"


class Children:
    """Real processes in the workers' places: `sleep`, each with a heartbeat pipe."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.writers: dict[int, int] = {}

    def worker(self, now: float, *, ready: bool = True) -> Worker:
        proc = subprocess.Popen(["sleep", "60"])
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        worker = Worker(proc.pid, read_fd, now)
        worker.ready = ready
        self.procs[proc.pid] = proc
        self.writers[proc.pid] = write_fd
        return worker

    def signal_of(self, worker: Worker) -> int:
        """The signal that ended the worker's process (waits for it)."""
        code = self.procs[worker.pid].wait(timeout=5)
        assert code < 0, code
        return -code

    def alive(self, worker: Worker) -> bool:
        return self.procs[worker.pid].poll() is None

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        for fd in self.writers.values():
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


def supervisor(workers: int = 2, **options: object) -> Supervisor:
    return Supervisor(Config(**{"app": APP, **options}), workers)  # type: ignore[arg-type]


class Planner(Supervisor):
    """A supervisor whose `spawn` counts the workers it would fork (see the module's doc)."""

    def __init__(self, workers: int, **options: object) -> None:
        super().__init__(Config(app=APP, **options), workers)  # type: ignore[arg-type]
        self.spawned = 0

    def spawn(self) -> None:
        self.spawned += 1


def add(sup: Supervisor, *workers: Worker) -> None:
    for worker in workers:
        sup.workers[worker.pid] = worker


def messages(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records]


# -- back-off ----------------------------------------------------------------------------------


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_ten() -> None:
    """No delay for the first quick death, then 0.1 s doubling, capped at 10 s."""
    delays = [backoff(n) for n in range(11)]
    assert delays == pytest.approx([0, 0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])
    assert backoff(-1) == 0.0 and backoff(100) == 10.0


def test_the_target_is_at_least_one_and_no_restart_is_counted_at_first() -> None:
    assert supervisor(0).target == 1 and supervisor(3).target == 3
    sup = supervisor(2)
    assert sup.restarts == dict.fromkeys(RESTART_CAUSES, 0)
    assert sup.workers == {} and not sup.stopping and not sup.rolling
    assert (sup.quick_deaths, sup.spawn_after, sup.exit_code, sup.starts) == (0, 0.0, 0, 0)
    assert sup.stop_deadline is None
    assert sup.healthcheck == 30.0


# -- the loop's timeout ------------------------------------------------------------------------


def test_the_next_timeout_is_the_nearest_deadline(children: Children) -> None:
    """A heartbeat going stale (killed workers aside), a back-off ending (only if in the
    future), a worker's lifetime; once stopping, the graceful-stop limit alone."""
    sup = supervisor(timeout_worker_healthcheck=30.0)
    assert sup.next_timeout(100.0) is None  # nothing to wait for but events
    worker = children.worker(100.0)
    add(sup, worker)
    assert sup.next_timeout(110.0) == pytest.approx(20.0)
    assert sup.next_timeout(140.0) == 0.0  # overdue: at once, never negative
    sup.spawn_after = 115.0
    assert sup.next_timeout(110.0) == pytest.approx(5.0)
    sup.spawn_after = 110.0  # not in the future: the heartbeat decides
    assert sup.next_timeout(110.0) == pytest.approx(20.0)
    sup.spawn_after = 0.0
    worker.killed = True
    assert sup.next_timeout(110.0) is None
    worker.killed = False
    sup.stopping = True
    sup.spawn_after = 115.0
    assert sup.next_timeout(110.0) is None  # no graceful limit: wait for the workers
    sup.stop_deadline = 112.0
    assert sup.next_timeout(110.0) == pytest.approx(2.0)


def test_the_next_timeout_includes_a_workers_lifetime(children: Children) -> None:
    sup = supervisor(workers_lifetime=10.0)
    worker = children.worker(100.0)
    add(sup, worker)
    sup.recycler.started(worker)
    assert 10.0 <= (sup.next_timeout(100.0) or 0) <= 11.0
    sup.stopping = True
    assert sup.next_timeout(100.0) is None


# -- signals -----------------------------------------------------------------------------------


def test_sighup_marks_every_serving_worker_for_a_rolling_restart(children: Children) -> None:
    sup = supervisor()
    serving = [children.worker(1.0), children.worker(2.0)]
    leaving = children.worker(0.5)
    leaving.retiring = True
    add(sup, *serving, leaving)
    with error_log(logging.INFO) as records:
        sup.handle_sighup()
    assert [w.outdated for w in serving] == [True, True] and not leaving.outdated
    assert sup.restarts["reload"] == 2 and sup.rolling
    assert messages(records) == ["Received SIGHUP: rolling restart of 2 workers"]
    sup.handle_sighup()  # again, during the rolling restart: each is counted
    assert sup.restarts["reload"] == 4
    sup.rolling = False
    sup.stopping = True
    sup.handle_sighup()
    assert sup.restarts["reload"] == 4 and not sup.rolling


def test_sigttin_and_sigttou_count_scale_restarts_and_stop_at_one() -> None:
    sup = supervisor(2)
    with error_log(logging.INFO) as records:
        sup.handle_sigttin()
        assert sup.target == 3
        sup.handle_sigttou()
        sup.handle_sigttou()
        assert sup.target == 1
        sup.handle_sigttou()
        sup.handle_sigttin()
    assert sup.target == 2 and sup.restarts["scale"] == 4
    assert messages(records) == [
        "Received SIGTTIN: 3 workers",
        "Received SIGTTOU: 2 workers",
        "Received SIGTTOU: 1 workers",
        "Received SIGTTOU: already at 1 worker",
        "Received SIGTTIN: 2 workers",
    ]
    sup.stopping = True
    with error_log(logging.INFO) as records:
        sup.handle_sigttin()
        sup.handle_sigttou()
    assert sup.target == 2 and sup.restarts["scale"] == 4 and records == []


def test_sigterm_stops_gracefully_once(children: Children) -> None:
    sup = supervisor(timeout_graceful_shutdown=5.0)
    workers = [children.worker(1.0), children.worker(2.0)]
    add(sup, *workers)
    with error_log(logging.INFO) as records:
        before = time.monotonic()
        sup.handle_sigterm()
        after = time.monotonic()
        assert len(records) == 1
        sup.handle_sigterm()
    assert sup.stopping and all(w.retiring for w in workers)
    assert [children.signal_of(w) for w in workers] == [signal.SIGTERM, signal.SIGTERM]
    assert sup.stop_deadline is not None
    assert before + 5.0 + STOP_MARGIN <= sup.stop_deadline <= after + 5.0 + STOP_MARGIN
    assert messages(records) == ["Received SIGTERM: stopping 2 workers gracefully"]


def test_without_a_graceful_limit_the_stop_has_no_deadline() -> None:
    sup = supervisor(timeout_graceful_shutdown=None)
    sup.stop()
    assert sup.stopping and sup.stop_deadline is None


def test_a_second_sigint_kills_what_is_left(children: Children) -> None:
    sup = supervisor()
    workers = [children.worker(1.0), children.worker(2.0)]
    add(sup, *workers)
    with error_log(logging.INFO) as records:
        sup.handle_sigint()
        assert sup.stopping and all(w.retiring and not w.killed for w in workers)
        workers[1].killed = True  # already killed: not again
        sup.handle_sigint()
    assert workers[0].killed
    assert messages(records) == [
        "Received SIGINT: stopping 2 workers gracefully",
        f"Killing worker [{workers[0].pid}]: second SIGINT",
    ]
    assert records[-1].levelno == logging.WARNING
    assert children.signal_of(workers[0]) == signal.SIGTERM  # the first signal ends `sleep`


def test_the_stop_deadline_kills_the_workers_once(children: Children) -> None:
    sup = supervisor(timeout_graceful_shutdown=1.0)
    worker = children.worker(1.0)
    add(sup, worker)
    sup.stopping = True
    sup.stop_deadline = 50.0
    sup.check_stop_deadline(49.9)
    assert not worker.killed and sup.stop_deadline == 50.0
    with error_log(logging.INFO) as records:
        sup.check_stop_deadline(50.0)
        assert worker.killed and sup.stop_deadline is None
        sup.check_stop_deadline(60.0)
    assert children.signal_of(worker) == signal.SIGKILL
    assert messages(records) == [
        f"Killing worker [{worker.pid}]: still running after the graceful shutdown timeout"
    ]


def test_signal_numbers_on_the_wakeup_pipe_run_their_handlers() -> None:
    """Each byte is one signal; SIGCHLD has a handler that does nothing; an empty pipe is no
    error."""
    sup = supervisor(2)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    sup.wakeup = (read_fd, write_fd)
    try:
        sup.on_signal()  # nothing to read
        os.write(write_fd, bytes([signal.SIGTTIN, signal.SIGCHLD, signal.SIGTTIN]))
        sup.on_signal()
        assert sup.target == 4
        os.write(write_fd, bytes([signal.SIGTERM]))
        sup.on_signal()
        assert sup.stopping
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_real_signals_reach_the_handlers_and_the_old_handlers_come_back() -> None:
    """install_signal_handlers: the wakeup fd and a no-op handler per signal; a real SIGTTIN
    wakes the selector; cleanup puts every previous handler and the wakeup fd back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTTIN, signal.SIGHUP)}
    sup = supervisor(1)
    sup.install_signal_handlers()
    try:
        assert sup.wakeup is not None
        for fd in sup.wakeup:
            assert not os.get_blocking(fd)
        assert signal.getsignal(signal.SIGTTIN) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTTIN)
        deadline = time.monotonic() + 5
        while sup.target == 1 and time.monotonic() < deadline:
            for key, _ in sup.selector.select(0.5):
                key.data()
        assert sup.target == 2
    finally:
        wakeup = sup.wakeup
        sup.cleanup()
    assert sup.wakeup is None and wakeup is not None
    for fd in wakeup:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert signal.set_wakeup_fd(-1) == -1
    assert {sig: signal.getsignal(sig) for sig in previous} == previous


def test_a_signal_storm_that_fills_the_wakeup_pipe_is_not_reported() -> None:
    """Signals coming faster than the loop reads them fill the wakeup pipe; the lost bytes do
    no harm (reap runs after every wake-up), so there must be no "Exception ignored when
    trying to write to the signal wakeup fd" on stderr (warn_on_full_buffer=False)."""
    sup = supervisor(1)
    sup.install_signal_handlers()
    reported: list[object] = []
    hook = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        assert sup.wakeup is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(sup.wakeup[1], bytes([signal.SIGCHLD]) * 4096)
        os.kill(os.getpid(), signal.SIGCHLD)
        sum(range(100_000))  # the interpreter runs its pending calls (the report) meanwhile
        time.sleep(0.01)
    finally:
        sys.unraisablehook = hook
        sup.cleanup()
    assert reported == []


# -- health, pings, recycling ------------------------------------------------------------------


def test_a_silent_worker_is_killed_once_and_counted_as_hung(children: Children) -> None:
    sup = supervisor(timeout_worker_healthcheck=1.0)
    worker = children.worker(100.0)
    add(sup, worker)
    sup.check_health(101.0)  # exactly the limit: not yet
    assert not worker.killed and children.alive(worker)
    with error_log(logging.INFO) as records:
        sup.check_health(101.5)
        sup.check_health(103.0)  # killed already: not again
    assert worker.killed and sup.restarts["hung"] == 1
    assert children.signal_of(worker) == signal.SIGKILL
    other = children.worker(100.0)
    add(sup, other)
    sup.check_health(105.0)
    assert other.killed and sup.restarts["hung"] == 2
    assert messages(records) == [
        f"Worker [{worker.pid}] sent no heartbeat for 1.5s (event loop blocked?); killing it"
    ]
    assert records[0].levelno == logging.ERROR


def test_a_workers_pings_mark_it_ready_then_outdated_once(children: Children) -> None:
    sup = supervisor()
    worker = children.worker(1.0, ready=False)
    add(sup, worker)
    sup.selector.register(worker.fd, selectors.EVENT_READ)
    writer = children.writers[worker.pid]
    os.write(writer, b".R")
    sup.on_ping(worker)
    assert worker.ready and not worker.outdated and worker.last_seen > 1.0
    with error_log(logging.INFO) as records:
        os.write(writer, b"M")
        sup.on_ping(worker)
        os.write(writer, b".M")
        sup.on_ping(worker)
    assert worker.outdated and sup.restarts["max-requests"] == 1
    other = children.worker(1.0)
    os.write(children.writers[other.pid], b"M")
    with error_log(logging.INFO) as more:
        sup.on_ping(other)
    assert other.outdated and sup.restarts["max-requests"] == 2
    assert messages(records + more) == [
        f"Worker [{worker.pid}] reached --limit-max-requests; replacing it",
        f"Worker [{other.pid}] reached --limit-max-requests; replacing it",
    ]
    sup.on_ping(worker)  # nothing to read: still registered
    assert worker.fd in sup.selector.get_map()
    os.close(writer)
    children.writers.pop(worker.pid)
    sup.on_ping(worker)  # the pipe closed
    assert worker.fd not in sup.selector.get_map()


def test_workers_past_their_lifetime_are_marked_and_counted(children: Children) -> None:
    sup = supervisor(workers_lifetime=1.0)
    workers = [children.worker(100.0), children.worker(100.0)]
    add(sup, *workers)
    for worker in workers:
        sup.recycler.started(worker)
    sup.recycle(100.5)
    assert not any(w.outdated for w in workers)
    with error_log(logging.INFO) as records:
        sup.recycle(102.0)
    assert all(w.outdated for w in workers) and sup.restarts["lifetime"] == 2
    assert sup.restarts["max-rss"] == 0
    lines = messages(records)
    for line, worker in zip(lines, workers, strict=True):
        assert line.startswith(f"Worker [{worker.pid}] lived 2.0s (--workers-lifetime 1)")
    assert [x.rsplit(";", 1)[1] for x in lines] == [
        " replacing it (lifetime: 1 so far)",
        " replacing it (lifetime: 2 so far)",
    ]


# -- a worker's exit ---------------------------------------------------------------------------


def test_a_crash_is_counted_and_logged_with_its_cause(children: Children) -> None:
    sup = supervisor()
    first, second, hung = (children.worker(0.0) for _ in range(3))
    hung.killed = True
    add(sup, first, second, hung)
    with error_log(logging.INFO) as records:
        sup.worker_exited(first, -signal.SIGKILL, 100.0)
        sup.worker_exited(second, 1, 100.0)
        sup.worker_exited(hung, -signal.SIGKILL, 100.0)
    assert sup.restarts["crash"] == 2  # the hung one was counted as hung when killed
    assert messages(records) == [
        f"Worker [{first.pid}] was killed by SIGKILL; starting a new one",
        f"Worker [{second.pid}] exited (1); starting a new one",
        f"Worker [{hung.pid}] was killed by SIGKILL; starting a new one",
    ]
    assert {r.levelno for r in records} == {logging.ERROR}
    assert sup.quick_deaths == 0 and sup.spawn_after == 100.0


def test_a_stopped_or_retired_worker_is_no_crash(children: Children) -> None:
    sup = supervisor()
    retired, other = children.worker(0.0), children.worker(0.0)
    retired.retiring = True
    with error_log(logging.INFO) as records:
        sup.worker_exited(retired, 0, 100.0)
        sup.stopping = True
        sup.worker_exited(other, -signal.SIGKILL, 100.0)
    assert messages(records) == [
        f"Worker [{retired.pid}] stopped",
        f"Worker [{other.pid}] stopped",
    ]
    assert sup.restarts["crash"] == 0 and sup.exit_code == 0 and sup.spawn_after == 0.0


def test_an_exited_workers_pipe_is_read_one_last_time_and_closed(children: Children) -> None:
    sup = supervisor()
    worker = children.worker(0.0)
    sup.selector.register(worker.fd, selectors.EVENT_READ)
    os.write(children.writers[worker.pid], b'S{"requests": 7}\n')
    sup.worker_exited(worker, 0, 1.0)
    assert worker.report == b'{"requests": 7}'
    assert worker.fd not in sup.selector.get_map()
    with pytest.raises(OSError):
        os.fstat(worker.fd)


def test_quick_deaths_back_off_and_a_long_life_resets_the_count(children: Children) -> None:
    """A death counts as quick if the worker never got ready or lived under QUICK_DEATH."""
    sup = supervisor()
    with error_log(logging.INFO) as records:
        sup.worker_exited(children.worker(100.0, ready=False), 1, 200.0)  # never ready
        assert (sup.quick_deaths, sup.spawn_after) == (1, 200.0)
        sup.worker_exited(children.worker(100.0 - QUICK_DEATH + 0.1), 1, 100.0)
        assert sup.quick_deaths == 2 and sup.spawn_after == pytest.approx(100.1)
        sup.worker_exited(children.worker(100.0), 1, 101.0)
        assert sup.quick_deaths == 3 and sup.spawn_after == pytest.approx(101.2)
        sup.worker_exited(children.worker(100.0), 1, 100.0 + QUICK_DEATH)  # lived long enough
        assert sup.quick_deaths == 0 and sup.spawn_after == 100.0 + QUICK_DEATH
    assert [m.rsplit(";", 1)[1] for m in messages(records)] == [
        " starting a new one",
        " starting a new one in 0.1s",
        " starting a new one in 0.2s",
        " starting a new one",
    ]


def test_a_startup_failure_with_nothing_serving_stops_with_exit_code_3(
    children: Children,
) -> None:
    sup = supervisor(timeout_graceful_shutdown=5.0)
    failed = children.worker(1.0, ready=False)
    booting = children.worker(1.0, ready=False)  # not serving yet
    leaving = children.worker(1.0)
    leaving.retiring = True  # not serving any more
    add(sup, booting, leaving)
    with error_log(logging.INFO) as records:
        sup.worker_exited(failed, STARTUP_FAILURE, 2.0)
    assert sup.exit_code == STARTUP_FAILURE and sup.stopping
    assert children.signal_of(booting) == signal.SIGTERM
    assert messages(records) == [f"Worker [{failed.pid}] failed to start; stopping the server"]


def test_a_startup_failure_calls_a_rolling_restart_off(children: Children) -> None:
    sup = supervisor()
    old = [children.worker(1.0), children.worker(1.0)]
    for worker in old:
        worker.outdated = True
    fresh = children.worker(1.0)
    add(sup, *old, fresh)
    sup.rolling = True
    failed = children.worker(1.0, ready=False)
    with error_log(logging.INFO) as records:
        sup.worker_exited(failed, STARTUP_FAILURE, 2.0)
    assert not any(w.outdated for w in old) and not sup.rolling
    assert sup.exit_code == 0 and not sup.stopping and sup.quick_deaths == 0
    assert messages(records) == [
        f"Worker [{failed.pid}] failed to start; replacement called off, 2 workers keep running"
    ]


def test_a_startup_failure_beside_serving_workers_is_retried_with_back_off(
    children: Children,
) -> None:
    sup = supervisor()
    add(sup, children.worker(1.0))
    sup.quick_deaths = 1
    with error_log(logging.INFO) as records:
        failed = children.worker(1.0, ready=False)
        sup.worker_exited(failed, STARTUP_FAILURE, 2.0)
    assert sup.exit_code == 0 and not sup.stopping
    assert sup.quick_deaths == 2 and sup.spawn_after == pytest.approx(2.1)
    assert messages(records) == [f"Worker [{failed.pid}] failed to start; retrying in 0.1s"]


# -- maintain: which workers to retire ---------------------------------------------------------


def test_a_rolling_restart_retires_the_oldest_outdated_worker_per_ready_new_one(
    children: Children,
) -> None:
    """target 2: two outdated workers and one ready new one; the oldest outdated worker goes
    (SIGUSR1: replaced, not stopped), the other stays until a second new one is ready."""
    sup = Planner(2)
    newer_old, oldest = children.worker(5.0), children.worker(1.0)
    for worker in (newer_old, oldest):
        worker.outdated = True
    new = children.worker(9.0)
    booting = children.worker(10.0, ready=False)
    add(sup, newer_old, oldest, new, booting)
    sup.rolling = True
    with error_log(logging.INFO) as records:
        sup.maintain(20.0)
    assert oldest.retiring and not newer_old.retiring
    assert children.signal_of(oldest) == signal.SIGUSR1
    assert children.alive(newer_old)
    assert messages(records) == [f"Retiring worker [{oldest.pid}] (replaced)"]
    assert sup.rolling and len(sup.workers) == 4  # none started: one is still booting
    booting.ready = True
    with error_log(logging.INFO) as records:
        sup.maintain(21.0)
    assert newer_old.retiring and children.signal_of(newer_old) == signal.SIGUSR1
    assert messages(records) == [f"Retiring worker [{newer_old.pid}] (replaced)"]
    del sup.workers[oldest.pid], sup.workers[newer_old.pid]
    with error_log(logging.INFO) as records:
        sup.maintain(22.0)
    assert not sup.rolling and messages(records) == ["Rolling restart done"]


def test_extra_workers_are_retired_newest_first(children: Children) -> None:
    sup = Planner(1)
    oldest, middle, newest = children.worker(1.0), children.worker(2.0), children.worker(3.0)
    add(sup, newest, oldest, middle)
    with error_log(logging.INFO) as records:
        sup.maintain(10.0)
    assert children.signal_of(newest) == signal.SIGTERM
    assert children.signal_of(middle) == signal.SIGTERM
    assert children.alive(oldest) and not oldest.retiring
    assert messages(records) == [
        f"Retiring worker [{newest.pid}] (fewer workers wanted)",
        f"Retiring worker [{middle.pid}] (fewer workers wanted)",
    ]


def test_the_rolling_restart_is_done_only_when_every_new_worker_is_ready(
    children: Children,
) -> None:
    sup = Planner(2)
    ready, booting = children.worker(1.0), children.worker(2.0, ready=False)
    add(sup, ready, booting)
    sup.rolling = True
    sup.maintain(10.0)
    assert sup.rolling
    retired = children.worker(0.5)
    retired.outdated = retired.retiring = True  # still draining
    add(sup, retired)
    booting.ready = True
    sup.maintain(10.0)
    assert sup.rolling
    del sup.workers[retired.pid]
    sup.maintain(10.0)
    assert not sup.rolling


def test_a_rolling_restart_starts_one_new_worker_at_a_time(children: Children) -> None:
    """Two outdated workers, target 2: one successor is started; none more until it is
    ready; then the next one."""
    sup = Planner(2)
    old = [children.worker(1.0), children.worker(2.0)]
    for worker in old:
        worker.outdated = True
    add(sup, *old)
    sup.maintain(10.0)
    assert sup.spawned == 1 and not any(w.retiring for w in old)
    new = children.worker(10.0, ready=False)
    add(sup, new)
    sup.maintain(11.0)
    assert sup.spawned == 1
    new.ready = True
    sup.maintain(12.0)  # the oldest retires; the second successor starts
    assert sup.spawned == 2 and old[0].retiring and not old[1].retiring


def test_missing_workers_are_started_once_the_back_off_is_over(children: Children) -> None:
    sup = Planner(3)
    add(sup, children.worker(1.0))
    sup.spawn_after = 10.0
    sup.maintain(9.9)
    assert sup.spawned == 0
    sup.maintain(10.0)
    assert sup.spawned == 2
    assert all(not w.retiring for w in sup.workers.values())


def test_a_worker_over_max_rss_is_marked_and_counted(children: Children) -> None:
    """`sleep` holds more than 1 MiB resident (once it runs): over --workers-max-rss 1."""
    sup = supervisor(workers_max_rss=1)
    worker = children.worker(100.0)
    wait_until(lambda: (rss_bytes(worker.pid) or 0) > MIB, "sleep to be over 1 MiB")
    add(sup, worker)
    with error_log(logging.INFO) as records:
        sup.recycle(100.0)
    assert worker.outdated and sup.restarts["max-rss"] == 1 and sup.restarts["lifetime"] == 0
    [line] = messages(records)
    assert line.startswith(f"Worker [{worker.pid}] uses ")
    assert line.endswith(" MiB (--workers-max-rss 1); replacing it (max-rss: 1 so far)")


# -- setup and cleanup -------------------------------------------------------------------------


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared", "reuse-port"])
def test_setup_binds_and_writes_the_files_and_cleanup_removes_them(
    tmp_path: Path, reuse_port: bool
) -> None:
    """The shared listener, or with --reuse-port a bound, never-listening SO_REUSEPORT socket
    that holds the port for the workers' config; the pid and listen files, removed at the end
    with the sockets closed."""
    pid, listen = tmp_path / "pid", tmp_path / "listen"
    sup = supervisor(port=0, pid=str(pid), listen_file=str(listen), reuse_port=reuse_port)
    sup.setup()
    try:
        held = [*sup.sockets, *([sup.reserved] if sup.reserved else [])]
        assert len(held) == 1
        sock = held[0]
        port = sock.getsockname()[1]
        assert port != 0 and sock.getsockname()[0] == "127.0.0.1"
        assert pid.read_text() == f"{os.getpid()}\n"
        assert listen.read_text() == f"http://127.0.0.1:{port}\n"
        assert sup.listen_urls == [f"http://127.0.0.1:{port}"]
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if reuse_port:
            assert sup.sockets == [] and not accepting
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert sup.worker_config.port == port and sup.config.port == 0
            assert sup.worker_config.reuse_port
        else:
            assert sup.reserved is None and accepting and sup.worker_config is sup.config
    finally:
        sup.cleanup()
    assert not pid.exists() and not listen.exists()
    assert sock.fileno() == -1


def test_a_reserved_port_in_use_is_a_bind_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = supervisor(port=port, reuse_port=True)
        refused = f"cannot bind 127.0.0.1:{port}: address already in use"
        with pytest.raises(ConfigError, match=refused):
            sup.setup()


# -- reaping -----------------------------------------------------------------------------------


def zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.timeout(10)
def test_reap_collects_every_exited_child_workers_and_orphans(children: Children) -> None:
    """One pass collects every child that exited, a worker or not (an orphan re-parented to
    PID 1), and returns at once while others still run, and when none is left."""
    sup = supervisor()
    dead = [children.worker(0.0), children.worker(0.0)]
    running = children.worker(0.0)
    add(sup, *dead, running)
    orphan = os.posix_spawnp("true", ["true"], os.environ)  # a child that is no worker
    for worker in dead:
        os.kill(worker.pid, signal.SIGKILL)
    wait_until(lambda: all(zombie(p) for p in (orphan, *(w.pid for w in dead))), "zombies")
    with error_log(logging.DEBUG) as records:
        sup.reap(100.0)
    assert sup.workers == {running.pid: running} and sup.restarts["crash"] == 2
    lines = messages(records)
    assert f"Reaped orphan process [{orphan}]" in lines
    for worker in dead:
        assert f"Worker [{worker.pid}] was killed by SIGKILL; starting a new one" in lines
    assert all(not os.path.exists(f"/proc/{w.pid}") for w in dead)
    os.kill(running.pid, signal.SIGKILL)
    wait_until(lambda: zombie(running.pid), "a zombie")
    sup.reap(101.0)
    assert sup.workers == {}
    sup.reap(102.0)  # no child left at all


# -- run ---------------------------------------------------------------------------------------


def test_run_starts_the_target_then_stops_on_sigterm() -> None:
    """The whole run in this process, the forks aside: setup, the handlers, `target` starts,
    a real SIGTERM, cleanup (the listener closed, the handler put back), exit code 0."""
    previous = signal.getsignal(signal.SIGTERM)
    sup = Planner(3, port=0)

    def stop_when_started() -> None:
        wait_until(lambda: sup.wakeup is not None and sup.spawned == 3, "the workers' starts")
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=stop_when_started)
    thread.start()
    with error_log(logging.INFO) as records:
        code = sup.run()
    thread.join(10)
    assert code == 0 and sup.spawned == 3 and sup.stopping
    lines = messages(records)
    assert lines[0].startswith("fastserve ") and lines[0].endswith(", workers 3")
    assert lines[1:] == [
        f"Started supervisor [{os.getpid()}] with 3 workers",
        "Received SIGTERM: stopping 0 workers gracefully",
        f"Supervisor [{os.getpid()}] stopped",
    ]
    assert sup.sockets[0].fileno() == -1
    assert signal.getsignal(signal.SIGTERM) == previous


def test_run_exits_3_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = Planner(2, port=port)
        with error_log(logging.INFO) as records:
            assert sup.run() == STARTUP_FAILURE
    assert messages(records) == [f"cannot bind 127.0.0.1:{port}: address already in use"]
    assert sup.spawned == 0 and sup.wakeup is None


def test_preload_imports_the_app_in_the_supervisor() -> None:
    sup = supervisor(preload=True, port=0)
    sup.setup()
    try:
        assert sup.app is not None and callable(sup.app)
    finally:
        sup.cleanup()
    assert supervisor(port=0).app is None


@pytest.mark.parametrize("where", ["uds", "fd"])
def test_reuse_port_is_for_tcp_only(tmp_path: Path, where: str) -> None:
    """With --uds or --fd the one socket is shared, as without --reuse-port; a warning says so."""
    given = socket.socket()
    given.bind(("127.0.0.1", 0))
    options: dict[str, Any] = {"uds": str(tmp_path / "s.sock")}
    if where == "fd":
        options = {"fd": given.fileno()}
    sup = supervisor(reuse_port=True, port=0, **options)
    with error_log(logging.WARNING) as records:
        sup.setup()
    try:
        assert sup.reserved is None and len(sup.sockets) == 1
        assert messages(records) == [
            "--reuse-port applies to TCP listeners only; sharing the socket"
        ]
        assert sup.worker_config is sup.config
    finally:
        if where == "fd":
            given.detach()  # the supervisor's socket owns the descriptor now
        given.close()
        sup.cleanup()


def test_the_listen_file_says_https_with_tls(tmp_path: Path) -> None:
    listen = tmp_path / "listen"
    sup = supervisor(port=0, listen_file=str(listen), ssl_certfile=str(tmp_path / "cert.pem"))
    sup.setup()
    try:
        port = sup.sockets[0].getsockname()[1]
        assert listen.read_text() == f"https://127.0.0.1:{port}\n"
    finally:
        sup.cleanup()


def test_metrics_keep_the_report_of_a_worker_that_exited(children: Children) -> None:
    """--metrics: the supervisor's listener is set up with it, and a worker's last report
    goes to the departed workers' counts when it exits (the report is then dropped)."""
    sup = supervisor(port=0, metrics=True, metrics_port=0)
    sup.setup()
    try:
        assert sup.metrics is not None and sup.metrics.supervisor is sup
        worker = children.worker(0.0)
        worker.report = b'{"c": {}}'
        sup.worker_exited(worker, 0, 1.0)
        assert worker.report is None
    finally:
        sup.cleanup()


def ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6(), reason="no IPv6 loopback")
def test_reuse_port_reserves_an_ipv6_port() -> None:
    sup = supervisor(host="::1", port=0, reuse_port=True)
    sup.setup()
    try:
        assert sup.reserved is not None and sup.reserved.family == socket.AF_INET6
        assert sup.worker_config.port == sup.reserved.getsockname()[1] != 0
    finally:
        sup.cleanup()


# -- spawn and the worker's side of the fork ---------------------------------------------------


def signal_set(pid: int, field: str) -> set[int]:
    """A signal mask of /proc/<pid>/status (SigBlk, SigIgn) as signal numbers."""
    with open(f"/proc/{pid}/status") as fh:
        line = next(x for x in fh if x.startswith(f"{field}:"))
    mask = int(line.split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def pipe_links(pid: int) -> set[str]:
    """The pipes a process holds open (their `pipe:[inode]` names)."""
    links = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return {x for x in links if x.startswith("pipe:")}


def pump_until(sup: Supervisor, condition: Callable[[], bool], what: str) -> None:
    """Run the supervisor's own wake-ups (pings, reaping) until `condition` holds."""
    deadline = time.monotonic() + 15
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for key, _ in sup.selector.select(0.1):
            key.data()
        sup.reap(time.monotonic())


@pytest.mark.timeout(40)
def test_spawned_workers_serve_then_drain_on_stop() -> None:
    """Two real forks of this process: numbered 0 and 1, counted, logged, watched by the
    recycler; each leaves the supervisor's signal mask and the others' pipes behind and
    ignores SIGHUP, SIGTTIN, SIGTTOU (the supervisor's business); both get ready over their
    heartbeat pipes, serve on the shared socket and stop on SIGTERM."""
    sup = supervisor(port=0, timeout_graceful_shutdown=5.0, workers_lifetime=1000.0)
    sup.setup()
    try:
        with error_log(logging.INFO) as records:
            sup.spawn()
            sup.spawn()
        first, second = sorted(sup.workers.values(), key=lambda w: w.index)
        assert (first.index, second.index) == (0, 1) and sup.starts == 2
        assert messages(records) == [
            f"Started worker [{first.pid}]",
            f"Started worker [{second.pid}]",
        ]
        assert set(sup.recycler.expires) == {first.pid, second.pid}
        assert not set(SIGNALS) & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        pump_until(sup, lambda: first.ready and second.ready, "both workers ready")
        for worker in (first, second):
            assert not set(SIGNALS) & signal_set(worker.pid, "SigBlk")
            ignored = signal_set(worker.pid, "SigIgn")
            assert {signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU} <= ignored
            assert not {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD} & ignored
        assert os.readlink(f"/proc/self/fd/{first.fd}") not in pipe_links(second.pid)
        port = sup.sockets[0].getsockname()[1]
        assert int(Client(port).get("/").split()[0]) in (first.pid, second.pid)
        sup.stop()
        pump_until(sup, lambda: not sup.workers, "both workers to stop")
        assert sup.restarts["crash"] == 0
    finally:
        sup.kill_all("test over")
        pump_until(sup, lambda: not sup.workers, "the workers to go")
        sup.cleanup()


def test_run_exits_3_when_the_preloaded_app_raises(tmp_path: Path) -> None:
    (tmp_path / "raising_app.py").write_text("raise RuntimeError('broken at import')\n")
    sup = supervisor(app="raising_app:app", app_dir=str(tmp_path), preload=True, port=0)
    try:
        with error_log(logging.INFO) as records:
            assert sup.run() == STARTUP_FAILURE
    finally:
        sys.modules.pop("raising_app", None)
    assert messages(records) == ["Cannot preload the application"]
    assert records[0].exc_info is not None and "broken at import" in str(records[0].exc_info[1])


def serving(sup: Supervisor, count: int) -> bool:
    """`count` workers, all ready (read from another thread than run()'s: a copy)."""
    workers = dict(sup.workers)
    return len(workers) == count and all(w.ready for w in workers.values())


def run_while(sup: Supervisor, drive: Callable[[], None]) -> tuple[int, list[str]]:
    """run() here while `drive` acts from a thread, then a real SIGTERM stops it (also when
    `drive` fails, whose error is raised once run() is over): the exit code and log lines."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            drive()
        except BaseException as exc:
            errors.append(exc)
        finally:
            if sup.wakeup is not None:  # run() still runs, its handler installed
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=target)
    with error_log(logging.INFO) as records:
        thread.start()
        code = sup.run()
    thread.join(10)
    if errors:
        raise errors[0]
    assert sup.workers == {}
    return code, messages(records)


@pytest.mark.timeout(60)
def test_run_replaces_a_killed_worker_then_stops_on_sigterm() -> None:
    """The whole loop with real forks of this process: two workers get ready, one is killed
    (SIGKILL), the loop reaps it, counts a crash and starts a successor, which serves; a real
    SIGTERM then drains both and run() returns 0. (A lifetime far off: the recycler is asked
    at each wake-up, and finds nothing due.)"""
    sup = supervisor(2, port=0, timeout_graceful_shutdown=5.0, workers_lifetime=1000.0)
    seen: dict[str, Any] = {}

    def drive() -> None:
        wait_until(lambda: serving(sup, 2), "two workers ready", timeout=20)
        victim = next(iter(dict(sup.workers)))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in sup.workers and serving(sup, 2), "a successor", 20)
        seen["served by"] = int(Client(sup.sockets[0].getsockname()[1]).get("/").split()[0])
        seen["workers"] = set(sup.workers)
        assert sup.wakeup is not None
        wakeup = {os.readlink(f"/proc/self/fd/{fd}") for fd in sup.wakeup}
        for pid in seen["workers"]:  # the signal wakeup pipe stays the supervisor's
            assert not wakeup & pipe_links(pid)

    code, lines = run_while(sup, drive)
    assert code == 0 and sup.restarts["crash"] == 1 and sup.starts == 3
    assert seen["served by"] in seen["workers"]
    assert sum("was killed by SIGKILL; starting a new one" in x for x in lines) == 1
    assert lines[-1] == f"Supervisor [{os.getpid()}] stopped"


@pytest.mark.timeout(60)
def test_run_wakes_by_itself_to_replace_a_frozen_worker() -> None:
    """One worker, frozen by SIGSTOP: no heartbeat and no other event, so only the loop's own
    timeout (next_timeout) wakes the supervisor, which finds it hung, kills it (one "hung",
    no "crash") and starts a successor."""
    sup = supervisor(1, port=0, timeout_worker_healthcheck=1.0, timeout_graceful_shutdown=5.0)

    def drive() -> None:
        wait_until(lambda: serving(sup, 1), "the worker ready", timeout=20)
        victim = next(iter(dict(sup.workers)))
        os.kill(victim, signal.SIGSTOP)
        wait_until(lambda: victim not in sup.workers and serving(sup, 1), "a successor", 20)

    code, lines = run_while(sup, drive)
    assert code == 0 and sup.restarts["hung"] == 1 and sup.restarts["crash"] == 0
    assert sup.starts == 2
    assert sum("sent no heartbeat" in x for x in lines) == 1


@pytest.mark.timeout(60)
def test_run_with_metrics_keeps_a_silent_scraper_across_wake_ups() -> None:
    """--metrics: a scraper that connects and says nothing is kept (until CLIENT_TIMEOUT)
    while heartbeats wake the loop, and a scrape beside it is answered with the counts."""
    sup = supervisor(1, port=0, metrics=True, metrics_port=0, timeout_graceful_shutdown=5.0)
    scraped: list[bytes] = []

    def drive() -> None:
        wait_until(lambda: serving(sup, 1), "the worker ready", timeout=20)
        [worker] = dict(sup.workers).values()
        port = sup.metrics.sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            wait_until(lambda: len(sup.metrics.listener.clients) == 1, "the scraper accepted")
            since = worker.last_seen
            wait_until(lambda: worker.last_seen > since, "a heartbeat", timeout=10)
            status, _, body = scrape(port)
            assert status == 200 and len(sup.metrics.listener.clients) == 1
            scraped.append(body)

    code, _ = run_while(sup, drive)
    assert code == 0
    assert b"fastserve_worker_starts_total 1.0" in scraped[0]


FACTORY = """
import os


def create():
    made_by = str(os.getpid()).encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        length = str(len(made_by)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", length)]})
        await send({"type": "http.response.body", "body": made_by})

    return app
"""


@pytest.mark.timeout(60)
def test_a_preloaded_factory_app_is_made_once_in_the_supervisor(tmp_path: Path) -> None:
    """--preload --factory: the worker serves the app the supervisor made (the factory ran
    in this process), not one it made again after the fork."""
    (tmp_path / "made_app.py").write_text(FACTORY)
    options = {"app": "made_app:create", "factory": True, "preload": True}
    sup = supervisor(1, app_dir=str(tmp_path), port=0, timeout_graceful_shutdown=5.0, **options)
    answers: list[str] = []

    def drive() -> None:
        wait_until(lambda: serving(sup, 1), "the worker ready", timeout=20)
        answers.append(Client(sup.sockets[0].getsockname()[1]).get("/"))

    try:
        code, _ = run_while(sup, drive)
    finally:
        sys.modules.pop("made_app", None)
    assert code == 0 and answers == [str(os.getpid())]


def test_a_worker_that_cannot_be_started_is_retried_a_second_later() -> None:
    """Out of file descriptors (the heartbeat pipe cannot be made: EMFILE), as when out of
    processes or memory: logged, retried after 1 s, the signals unblocked again."""
    sup = supervisor(port=0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        with contextlib.suppress(OSError):  # every lower descriptor taken
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with error_log(logging.INFO) as records:
            before = time.monotonic()
            sup.spawn()
            after = time.monotonic()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sup.workers == {} and sup.starts == 0
    assert messages(records) == ["Cannot start a worker: Too many open files"]
    assert before + 1.0 <= sup.spawn_after <= after + 1.0
    assert not set(SIGNALS) & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
