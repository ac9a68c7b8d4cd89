"""Worker recycling (`--workers-max-rss`, `--workers-lifetime`) with real processes on 127.0.0.1.

The app (tests/apps/recycling_app.py) answers with the serving worker's pid and, on /grow?N,
keeps N more MiB: a leak on demand. A bounded load loop (tests/apps/workers_procs.py's Load)
runs through every replacement: the new worker starts and listens before the old one drains,
so no request may fail.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from fastserve.recycling import LIFETIME_JITTER, MIB, Recycler, rss_bytes
from fastserve.worker import Worker
from tests.apps.workers_procs import Client, Fastserve, Load
from tests.helpers import wait_until

APP = "tests.apps.recycling_app:app"
QUIET = ["--no-access-log", "--port", "0", "--timeout-graceful-shutdown", "5"]


def start(*args: str) -> Fastserve:
    return Fastserve([APP, *QUIET, *args])


def pid_of(body: str) -> int:
    return int(body.split()[0])


def stop(server: Fastserve) -> None:
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.log()


def test_a_worker_over_max_rss_is_replaced_without_a_failed_request() -> None:
    limit = 100
    with start("--workers", "2", "--workers-max-rss", str(limit)) as server:
        port = server.wait_running(2)
        wait_until(lambda: len(server.children()) == 2, "two workers")
        with Load(port, threads=4) as load:
            load.wait_requests(100)
            baseline = float(Client(port).get("/rss").split()[1])
            assert baseline < limit - 20, f"a fresh worker already uses {baseline} MiB"
            grown = pid_of(Client(port).get(f"/grow?{limit}"))
            server.wait_for(
                rf"Worker \[{grown}\] uses [\d.]+ MiB \(--workers-max-rss {limit}\); "
                r"replacing it \(max-rss: 1 so far\)"
            )
            server.wait_for(rf"Worker \[{grown}\] stopped")
            load.wait_requests(load.ok + 200)
        workers = server.children()
        assert grown not in workers and len(workers) == 2
        assert load.errors == []
        # Replacement first: the successor started before the leaking worker was retired.
        lines = server.lines
        marked = next(i for i, x in enumerate(lines) if f"Worker [{grown}] uses" in x)
        retired = next(i for i, x in enumerate(lines) if f"Retiring worker [{grown}]" in x)
        assert any("Started worker" in x for x in lines[marked:retired]), server.log()
        assert server.count(r"replacing it \(max-rss") == 1  # the others stay under the limit
        stop(server)


def test_lifetime_replaces_every_worker_again_and_again() -> None:
    """--workers-lifetime 2: new pids keep appearing, each worker lived at least 2 s (and at
    most 10 % more before it was marked, give or take the machine's scheduling), and the
    load loop sees no failure."""
    with start("--workers", "2", "--workers-lifetime", "2") as server:
        port = server.wait_running(2)
        first = set(server.children())
        with Load(port, threads=4, pause=0.005) as load:
            server.wait_for(r"replacing it \(lifetime: 4 so far\)", timeout=30)
            wait_until(lambda: bool(set(load.pids) - first), "a new worker to serve")
        assert load.errors == []
        lived = [float(x) for x in re.findall(r"lived ([\d.]+)s", server.log())]
        assert len(lived) >= 4
        assert all(age >= 2.0 for age in lived), lived
        assert not first & set(server.children())
        stop(server)


def test_a_single_process_is_supervised_for_recycling() -> None:
    """Without --workers there is no one to start a replacement: the options run one worker
    under the supervisor."""
    with start("--workers-lifetime", "1") as server:
        port = server.wait_running(1)
        old = pid_of(Client(port).get("/"))
        server.wait_for("Started supervisor")
        server.wait_for(rf"Worker \[{old}\] lived [\d.]+s .*replacing it \(lifetime: 1 so far\)")
        server.wait_for(rf"Worker \[{old}\] stopped")
        assert pid_of(Client(port).get("/")) != old
        stop(server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers-max-rss", "0"], "--workers-max-rss must be at least 1"),
        (["--workers-lifetime", "0"], "--workers-lifetime must be more than 0"),
    ],
)
def test_bad_values_are_one_error_line(args: list[str], message: str) -> None:
    with start("--workers", "2", *args) as server:
        assert server.wait() == 3
        assert server.count(re.escape(message)) == 1
        assert "Traceback" not in server.log()


# -- the pure parts --------------------------------------------------------------------------


def test_rss_is_read_from_proc() -> None:
    with open("/proc/self/status", encoding="ascii") as fh:
        status = dict(line.split(":", 1) for line in fh.read().splitlines())
    vm_rss = int(status["VmRSS"].split()[0]) * 1024
    ours = rss_bytes(os.getpid())
    assert ours is not None
    assert abs(ours - vm_rss) < 4 * MIB  # two reads, a few allocations apart
    assert rss_bytes(2**22 + 1) is None  # above pid_max's default: no such process


def worker(pid: int, started: float) -> Worker:
    w = Worker(pid, -1, started)
    w.ready = True
    return w


def test_lifetime_jitter_is_bounded_and_spreads() -> None:
    recycler = Recycler(None, 100.0)
    expiries = []
    for pid in range(1, 1001):
        recycler.started(worker(pid, 50.0))
        expiries.append(recycler.expires[pid] - 50.0)
    assert all(100.0 <= e <= 100.0 * (1 + LIFETIME_JITTER) for e in expiries)
    assert max(expiries) - min(expiries) > 5.0  # workers started together do not all retire


def test_due_marks_expired_workers_once_and_retries_a_lifetime_later() -> None:
    recycler = Recycler(None, 10.0)
    young, old = worker(1, 100.0), worker(2, 100.0)
    for w in (young, old):
        recycler.started(w)
    recycler.expires[young.pid] = 150.0
    assert recycler.next_deadline([young, old]) == recycler.expires[old.pid]
    assert recycler.due([young, old], 105.0) == []
    found = recycler.due([young, old], 112.0)
    assert [(w.pid, cause) for w, cause, _ in found] == [(2, "lifetime")]
    assert "lived 12.0s" in found[0][2]
    # Not ready (booting) or already outdated: nothing to do, and no deadline that would
    # wake the supervisor in a busy loop.
    old.outdated = True
    assert recycler.due([young, old], 113.0) == []
    assert recycler.next_deadline([young, old]) == 150.0
    old.outdated = False  # the replacement was called off: tried again one lifetime later
    assert recycler.due([young, old], 113.0) == []
    assert [w.pid for w, _, _ in recycler.due([young, old], 122.0)] == [2]
    assert recycler.due([young], 123.0) == [] and old.pid not in recycler.expires


def test_max_rss_compares_the_real_rss() -> None:
    me = worker(os.getpid(), time.monotonic())
    rss = rss_bytes(os.getpid())
    assert rss is not None
    assert Recycler(rss // MIB + 200, None).due([me], time.monotonic()) == []
    over = Recycler(max(1, rss // MIB - 5), None)
    found = over.due([me], time.monotonic())
    assert [cause for _, cause, _ in found] == ["max-rss"]
    assert over.due([me], time.monotonic() + 2) == []  # not again before RSS_RETRY
