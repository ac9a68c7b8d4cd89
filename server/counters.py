"""What one server process counts for --metrics: plain integer fields, bumped where the event
already happens (a request's last byte, a refusal, a connection, a WebSocket message).

Compiled with the protocols (setup.py), so a count is a field write and a request's duration
goes into its histogram bucket with a few float compares. Nothing here knows Prometheus:
metrics.py reads these fields (`snapshot`), a worker sends them to the supervisor with its
heartbeat (worker.py), and the supervisor exposes them through prometheus-client. With
--metrics off, ServerState.metrics is None and the protocols pay one `is not None` test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .protocols.cycle import RequestCycle

# Request duration, head received to last byte handed to the connection, in seconds. Fixed
# (every worker counts into the same buckets, the supervisor adds them up): prometheus-client's
# default buckets, which span a cached hit to a slow report, with 1 ms added below them.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
# Event-loop lag: how late the loop ran a timer (the heartbeat's own tick), in seconds. A
# healthy loop is within a millisecond; seconds mean a blocked one (--timeout-worker-healthcheck
# kills it at 30 s by default).
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Label values, by index. A request's status class is status // 100 ("none": no response
# was started, the client left or the server stopped first; 6xx-9xx, which ASGI apps may
# send, are "other").
# (Plain globals, not Final: compiled, a Final tuple is rebuilt at each use, and metrics.py,
# which is not compiled, reads these from the module.)
VERSIONS = ("1.0", "1.1", "2")
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx", "other")
N_CLASSES = 7
_CLASSES: Final = 7  # (the same, inlined where requests are counted)
_BUCKETS: Final = 16  # len(DURATION_BUCKETS) + 1 (+Inf)


class Counters:
    """One process's counts since it started; only ever incremented (Prometheus counters)."""

    __slots__ = (
        "bytes_received",
        "connections",
        "duration_bounds",
        "duration_sum",
        "first_bound",
        "h2_connections",
        "lag",
        "lag_bounds",
        "lag_sum",
        "rejected",
        "requests",
        "response_bytes",
        "run_count",
        "run_index",
        "unfinished",
        "ws_closes",
        "ws_connections",
        "ws_received",
        "ws_sent",
    )

    def __init__(self) -> None:
        # Requests by version, status class and duration bucket, in one list: one increment
        # a request (each list increment is a new int object: ~0.25k instructions), the
        # index `(version * N_CLASSES + status class) * BUCKETS + bucket`; `requests()` and
        # `duration()` sum it up. Histogram buckets are not cumulative here, the last one is
        # +Inf.
        self.requests = [0] * (len(VERSIONS) * _CLASSES * _BUCKETS)
        # ... except for the latest run of requests that fell in one place (under load nearly
        # all of them: same version, status class and bucket), counted in a native int: no
        # int object a request. `requests_counted()` folds it in.
        self.run_index = 0
        self.run_count = 0
        self.duration_sum = 0.0
        # The bounds as lists of this object's: compiled, a loop over a Final tuple of floats
        # builds that tuple (and a float object for each bound) on every call: ~1.5k
        # instructions a request (perf/instructions.py --metrics).
        self.duration_bounds = list(DURATION_BUCKETS)
        self.first_bound = DURATION_BUCKETS[0]  # (a native float: most requests stop here)
        self.lag = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_bounds = list(LAG_BUCKETS)
        self.lag_sum = 0.0
        self.response_bytes = 0
        self.bytes_received = 0
        # How responses that did not complete ended (accesslog.CLIENT_GONE...): rare.
        self.unfinished: dict[str, int] = {}
        # Requests refused by the server, by the status it answered (400, 408, 413, 414,
        # 431, 503...): rare.
        self.rejected: dict[int, int] = {}
        self.connections = 0  # HTTP/1.1 connections accepted (h2c and WebSockets start so)
        self.h2_connections = 0  # HTTP/2 connections (ALPN h2, h2c upgrade or prior knowledge)
        self.ws_connections = 0  # WebSockets accepted by their app
        self.ws_received = 0
        self.ws_sent = 0
        self.ws_closes: dict[str, int] = {}

    def request_done(self, cycle: RequestCycle, now: float) -> None:
        """A response ended (its last byte went to the connection, or it never will)."""
        version: str = cycle.scope["http_version"]  # (typed: a str compare, not a generic one)
        row = 1 if version == "1.1" else 2 if version == "2" else 0
        self.count(row, cycle.status, now - cycle.start_time, cycle.bytes_sent)

    def count(self, row: int, status: int, duration: float, sent: int) -> None:
        """One response of VERSIONS[row] (`status` 0: none was started)."""
        status_class = status // 100
        if status_class >= _CLASSES:
            status_class = _CLASSES - 1
        self.duration_sum += duration
        bucket = 0
        if duration > self.first_bound:
            for bound in self.duration_bounds:
                if duration <= bound:
                    break
                bucket += 1
        index = (row * _CLASSES + status_class) * _BUCKETS + bucket
        if index == self.run_index:
            self.run_count += 1
        else:
            self.requests[self.run_index] += self.run_count
            self.run_index = index
            self.run_count = 1
        self.response_bytes += sent

    def requests_counted(self) -> list[int]:
        """`requests` with the current run folded in."""
        self.requests[self.run_index] += self.run_count
        self.run_count = 0
        return self.requests

    def by_class(self) -> list[int]:
        """Requests by `version * N_CLASSES + status class`."""
        out = [0] * (len(VERSIONS) * _CLASSES)
        for i, n in enumerate(self.requests_counted()):
            out[i // _BUCKETS] += n
        return out

    def duration(self) -> list[int]:
        """The duration histogram's buckets (not cumulative; the last one is +Inf)."""
        out = [0] * _BUCKETS
        for i, n in enumerate(self.requests_counted()):
            out[i % _BUCKETS] += n
        return out

    def request_unfinished(self, cycle: RequestCycle, now: float, ended: str) -> None:
        self.unfinished[ended] = self.unfinished.get(ended, 0) + 1
        self.request_done(cycle, now)

    def refused(self, status: int) -> None:
        """The server answered a request itself with `status` (a limit, a malformed head)."""
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def ws_closed(self, code: int) -> None:
        """An accepted WebSocket ended with `code` (1006: no closing handshake)."""
        name = str(code) if code < 3000 else "3xxx" if code < 4000 else "4xxx"
        self.ws_closes[name] = self.ws_closes.get(name, 0) + 1

    def loop_lag(self, lag: float) -> None:
        self.lag_sum += lag
        bucket = 0
        for bound in self.lag_bounds:
            if lag <= bound:
                break
            bucket += 1
        self.lag[bucket] += 1
