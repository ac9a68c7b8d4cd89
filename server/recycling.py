"""Worker recycling for the supervisor: `--workers-max-rss MIB` and `--workers-lifetime S`.

granian's options of the same names (its README and `granian --help`): a worker whose resident
memory exceeds the limit, or that has lived the given time, is replaced gracefully. As there,
the replacement comes first: the supervisor marks the worker *outdated*, and `maintain` starts
its successor and retires it only once the successor listens, so capacity never drops and no
request fails. Unlike granian (at least 60 s, replaced within 95 % of the lifetime), any
lifetime is accepted, and each worker's is drawn from [S, 1.1 x S], so that workers started
together do not all retire together; `maintain` replaces outdated workers one at a time anyway.

RSS is read from /proc/<pid>/statm (Linux; elsewhere the option is ignored with a warning), for
every serving worker at most once a second, on the supervisor's loop: it wakes for heartbeats
(at least once a second per worker) and for the deadlines `next_deadline` gives it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable

from .config import ConfigError
from .worker import Worker

log = logging.getLogger("fastserve.error")

MIB = 1024 * 1024
LIFETIME_JITTER = 0.1  # each worker lives S x uniform(1, 1.1)
RSS_INTERVAL = 1.0  # seconds between two reads of the workers' RSS
# A worker over the RSS limit whose replacement could not start (broken code on disk: the
# supervisor calls the replacement off and keeps it) is tried again this much later.
RSS_RETRY = 30.0
STATM = "/proc/{pid}/statm"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid` (statm's second field, in pages: proc(5)); None once gone."""
    try:
        with open(STATM.format(pid=pid), "rb") as fh:
            fields = fh.read().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


class Recycler:
    """Which serving workers are due for replacement, and why ("max-rss", "lifetime")."""

    def __init__(self, max_rss_mib: int | None, lifetime: float | None) -> None:
        if max_rss_mib is not None and max_rss_mib < 1:
            raise ConfigError("--workers-max-rss must be at least 1 (MiB)")
        if lifetime is not None and lifetime <= 0:
            raise ConfigError("--workers-lifetime must be more than 0 seconds")
        self.max_rss = None if max_rss_mib is None else max_rss_mib * MIB
        if self.max_rss is not None and not os.path.exists(STATM.format(pid="self")):
            log.warning("--workers-max-rss needs /proc/<pid>/statm (Linux): ignored")
            self.max_rss = None
        self.lifetime = lifetime
        self.expires: dict[int, float] = {}  # pid -> when its lifetime ends
        self.rss_not_before: dict[int, float] = {}  # pid -> RSS_RETRY after being marked
        self.rss_due = 0.0

    def started(self, worker: Worker) -> None:
        if self.lifetime is not None:
            jitter = random.uniform(1.0, 1.0 + LIFETIME_JITTER)
            self.expires[worker.pid] = worker.started + self.lifetime * jitter

    def due(self, workers: Iterable[Worker], now: float) -> list[tuple[Worker, str, str]]:
        """The serving workers to replace now: (worker, cause, what the log line says)."""
        workers = list(workers)
        known = {w.pid for w in workers}
        for table in (self.expires, self.rss_not_before):  # forget the workers that exited
            for pid in [p for p in table if p not in known]:
                del table[pid]
        serving = [w for w in workers if _serving(w)]
        check_rss = self.max_rss is not None and now >= self.rss_due
        if check_rss:
            self.rss_due = now + RSS_INTERVAL
        found: list[tuple[Worker, str, str]] = []
        for worker in serving:
            expires = self.expires.get(worker.pid)
            if expires is not None and now >= expires and self.lifetime is not None:
                # Should the replacement be called off, the next try is one lifetime later.
                self.expires[worker.pid] = now + self.lifetime
                why = f"lived {now - worker.started:.1f}s (--workers-lifetime {self.lifetime:g})"
                found.append((worker, "lifetime", why))
            elif check_rss and now >= self.rss_not_before.get(worker.pid, 0.0):
                found.extend(self.over_rss(worker, now))
        return found

    def over_rss(self, worker: Worker, now: float) -> list[tuple[Worker, str, str]]:
        rss = rss_bytes(worker.pid)
        if rss is None or self.max_rss is None or rss <= self.max_rss:
            return []
        self.rss_not_before[worker.pid] = now + RSS_RETRY
        why = f"uses {rss / MIB:.1f} MiB (--workers-max-rss {self.max_rss // MIB})"
        return [(worker, "max-rss", why)]

    def next_deadline(self, workers: Iterable[Worker]) -> float | None:
        """When `due` may next find something (None: never by itself)."""
        deadlines = [self.expires[w.pid] for w in workers if _serving(w) and w.pid in self.expires]
        if self.max_rss is not None:
            deadlines.append(self.rss_due)
        return min(deadlines, default=None)


def _serving(worker: Worker) -> bool:
    """Ready and not already on its way out: what recycling may act on."""
    return worker.ready and not (worker.outdated or worker.retiring or worker.killed)
