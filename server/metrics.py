"""--metrics: Prometheus metrics, summed over the workers, on a listener of their own.

Who does what:
- every server process counts in plain fields (counters.py, compiled with the protocols; no
  prometheus-client on the request path) and samples its event loop's lag (`LoopLag`);
- a worker sends `snapshot()` of its counts to the supervisor with its heartbeat, once per
  beat and a last time when it stops (worker.py); a worker that dies keeps what it last sent;
- the supervisor (or the single server process) answers `GET /metrics` on
  --metrics-address:--metrics-port, with prometheus-client's exposition of a custom collector
  over those snapshots: counters summed over live and departed workers (they only grow, as
  Prometheus expects of a counter, across crashes, restarts and scaling), gauges (requests in
  flight, open connections, memory) per live worker with a `worker` label (0..N-1, reused by
  the worker that replaces one).

Every metric is described in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import Config, ConfigError
from .counters import (
    DURATION_BUCKETS,
    LAG_BUCKETS,
    N_CLASSES,
    STATUS_CLASSES,
    VERSIONS,
    Counters,
)

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("fastserve.error")

# The classic text format (every name here is a legacy one), which Prometheus 2 and 3 both read;
# prometheus-client 0.22+ labels the same text "version=1.0.0", which older scrapers reject.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape that has not sent its request head within this many seconds is dropped.
CLIENT_TIMEOUT = 10.0
MAX_HEAD = 8192
# Statuses the server answers requests with itself (a zero series for each from the start,
# so that rate() and alerts see them before the first one happens).
REFUSALS = ("400", "408", "413", "414", "431", "503")
UNFINISHED = ("client gone", "cancelled", "app error")
PROTOCOLS = {"HTTP1Protocol": "http1", "H2Protocol": "h2", "WebSocketProtocol": "websocket"}


def require_prometheus() -> None:
    """--metrics needs prometheus-client (an extra): a startup error that says what to install."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--metrics needs prometheus-client: pip install 'fastserve[metrics]'"
        ) from None


# -- what a process counted, as plain data ----------------------------------------------------


def counts(c: Counters) -> dict[str, Any]:
    """The monotonic counts of one process (summed across processes by `add`)."""
    return {
        "requests": c.by_class(),
        "duration": c.duration(),
        "duration_sum": c.duration_sum,
        "lag": list(c.lag),
        "lag_sum": c.lag_sum,
        "unfinished": dict(c.unfinished),
        "rejected": {str(k): v for k, v in c.rejected.items()},
        "connections": c.connections,
        "h2_connections": c.h2_connections,
        "ws_connections": c.ws_connections,
        "bytes_received": c.bytes_received,
        "response_bytes": c.response_bytes,
        "ws_received": c.ws_received,
        "ws_sent": c.ws_sent,
        "ws_closes": dict(c.ws_closes),
    }


def gauges(state: ServerState) -> dict[str, Any]:
    """What one process has open now: requests in flight, connections by protocol."""
    active = dict.fromkeys(PROTOCOLS.values(), 0)
    for conn in list(state.connections):
        name = PROTOCOLS.get(type(conn).__name__)
        if name is not None:
            active[name] += 1
    return {"in_flight": state.in_flight, "active": active}


def snapshot(state: ServerState) -> bytes:
    """One process's counts and gauges, as a worker sends them (one JSON line, ~1 KiB: a
    pipe write below PIPE_BUF is atomic)."""
    assert state.metrics is not None
    data = {"c": counts(state.metrics), "g": gauges(state)}
    return json.dumps(data, separators=(",", ":")).encode()


def add(total: dict[str, Any], more: dict[str, Any]) -> None:
    """Add the counts `more` into `total` (lists element by element, dicts key by key)."""
    for key, value in more.items():
        if isinstance(value, list):
            mine = total.setdefault(key, [0] * len(value))
            for i, v in enumerate(value):
                mine[i] += v
        elif isinstance(value, dict):
            add(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


class LoopLag:
    """Samples how late the event loop runs a timer, every `interval` seconds, into the
    process's lag histogram: the heartbeat's delay, which the supervisor's health check
    only sees once it passes --timeout-worker-healthcheck."""

    def __init__(self, counters: Counters, interval: float = 0.5) -> None:
        self.counters = counters
        self.interval = interval
        self.due = 0.0
        self.handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.due = loop.time() + self.interval
        self.handle = loop.call_at(self.due, self.tick, loop)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.counters.loop_lag(max(0.0, now - self.due))
        self.due = now + self.interval
        self.handle = loop.call_at(self.due, self.tick, loop)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


# -- the view: what a scrape reports ----------------------------------------------------------


@dataclass
class WorkerView:
    label: str
    pid: int
    gauges: dict[str, Any]


@dataclass
class View:
    counts: dict[str, Any]
    workers: list[WorkerView]
    loop: str
    # The supervisor's own counts (None in a single process).
    alive: int | None = None
    starts: int = 0
    restarts: dict[str, int] = field(default_factory=dict)


def rss(pid: int) -> int | None:
    """Resident memory of process `pid` in bytes (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def run_info(loop: str) -> dict[str, str]:
    import platform

    from .logs import build_name, version

    return {
        "version": version(),
        "build": build_name(),
        "loop": loop,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def collect(view: View) -> Iterator[Any]:
    """prometheus-client metric families for `view` (docs/metrics.md lists them)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
    )

    c = view.counts
    info = run_info(view.loop)
    family: Any = GaugeMetricFamily("fastserve_info", "The server: always 1.", labels=list(info))
    family.add_metric(list(info.values()), 1)
    yield family

    family = CounterMetricFamily(
        "fastserve_requests",
        "HTTP requests ended, by HTTP version and status class (none: no response started).",
        labels=["http_version", "status_class"],
    )
    for row, version in enumerate(VERSIONS):
        for col, status_class in enumerate(STATUS_CLASSES):
            family.add_metric([version, status_class], c["requests"][row * N_CLASSES + col])
    yield family
    yield histogram(
        "fastserve_request_duration_seconds",
        "From the request head received to the last response byte handed to the connection.",
        DURATION_BUCKETS,
        c["duration"],
        c["duration_sum"],
    )
    family = CounterMetricFamily(
        "fastserve_requests_unfinished",
        "Responses that did not complete, by how they ended (also in fastserve_requests).",
        labels=["ended"],
    )
    for ended in sorted({*UNFINISHED, *c["unfinished"]}):
        family.add_metric([ended], c["unfinished"].get(ended, 0))
    yield family
    family = CounterMetricFamily(
        "fastserve_requests_rejected",
        "Requests the server answered itself, by status: malformed (400), too slow (408), "
        "too large (413, 414, 431), over --limit-concurrency (503).",
        labels=["status"],
    )
    for status in sorted({*REFUSALS, *c["rejected"]}):
        family.add_metric([status], c["rejected"].get(status, 0))
    yield family
    family = GaugeMetricFamily(
        "fastserve_requests_in_flight", "Requests whose app is running.", labels=["worker"]
    )
    for w in view.workers:
        family.add_metric([w.label], w.gauges["in_flight"])
    yield family

    family = CounterMetricFamily(
        "fastserve_connections",
        "Connections accepted, by protocol (h2c and WebSockets are HTTP/1.1 ones first).",
        labels=["protocol"],
    )
    family.add_metric(["http1"], c["connections"])
    family.add_metric(["h2"], c["h2_connections"])
    family.add_metric(["websocket"], c["ws_connections"])
    yield family
    family = GaugeMetricFamily(
        "fastserve_connections_active",
        "Open connections, by protocol.",
        labels=["protocol", "worker"],
    )
    for w in view.workers:
        for protocol, n in w.gauges["active"].items():
            family.add_metric([protocol, w.label], n)
    yield family
    yield CounterMetricFamily(
        "fastserve_received_bytes",
        "Bytes read from HTTP/1.1 and WebSocket connections (heads, bodies, frames).",
        value=c["bytes_received"],
    )
    yield CounterMetricFamily(
        "fastserve_response_body_bytes",
        "Response body bytes handed to the connections (the access log's bytes).",
        value=c["response_bytes"],
    )

    family = CounterMetricFamily(
        "fastserve_websocket_messages",
        "WebSocket messages received by the app and sent by it.",
        labels=["direction"],
    )
    family.add_metric(["received"], c["ws_received"])
    family.add_metric(["sent"], c["ws_sent"])
    yield family
    family = CounterMetricFamily(
        "fastserve_websocket_closes",
        "Accepted WebSockets ended, by close code (1006: no closing handshake; 3xxx, 4xxx: "
        "the application's).",
        labels=["code"],
    )
    for code in sorted({"1000", "1001", "1006", *c["ws_closes"]}):
        family.add_metric([code], c["ws_closes"].get(code, 0))
    yield family

    yield histogram(
        "fastserve_event_loop_lag_seconds",
        "How late the event loop ran a timer, sampled every 0.5 s in every worker.",
        LAG_BUCKETS,
        c["lag"],
        c["lag_sum"],
    )
    family = GaugeMetricFamily(
        "fastserve_worker_rss_bytes", "Resident memory of the server process.", labels=["worker"]
    )
    pids = GaugeMetricFamily("fastserve_worker_pid", "The process id.", labels=["worker"])
    for w in view.workers:
        size = rss(w.pid)
        if size is not None:
            family.add_metric([w.label], size)
        pids.add_metric([w.label], w.pid)
    yield family
    yield pids
    if view.alive is None:
        return
    yield GaugeMetricFamily("fastserve_workers_alive", "Worker processes.", value=view.alive)
    yield CounterMetricFamily(
        "fastserve_worker_starts", "Worker processes started.", value=view.starts
    )
    family = CounterMetricFamily(
        "fastserve_worker_restarts",
        "Workers replaced, by cause (docs/metrics.md).",
        labels=["cause"],
    )
    for cause, n in view.restarts.items():
        family.add_metric([cause], n)
    yield family


def histogram(
    name: str, doc: str, bounds: tuple[float, ...], buckets: list[int], total: float
) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    cumulative, running = [], 0
    for bound, n in zip((*bounds, float("inf")), buckets, strict=True):
        running += n
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


def exposition(view: Callable[[], View]) -> tuple[bytes, str]:
    """The text format of a fresh view, and its content type."""
    from prometheus_client import CollectorRegistry, generate_latest

    class Collector:
        def collect(self) -> Iterator[Any]:
            return collect(view())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry), CONTENT_TYPE


def loop_name(config: Config) -> str:
    if config.loop != "auto":
        return config.loop
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def single_view(state: ServerState) -> View:
    """A single server process: its own counts, itself as worker 0."""
    assert state.metrics is not None
    return View(
        counts(state.metrics),
        [WorkerView("0", os.getpid(), gauges(state))],
        loop_name(state.config),
    )


class Departed:
    """The supervisor's memory: what its workers reported, the dead ones' included."""

    def __init__(self) -> None:
        self.counts = counts(Counters())  # departed workers' last reports, summed

    def worker_exited(self, report: bytes | None) -> None:
        if report:
            add(self.counts, json.loads(report)["c"])

    def view(
        self,
        config: Config,
        live: list[tuple[int, int, bytes | None]],
        starts: int,
        restarts: dict[str, int],
    ) -> View:
        """`live`: (worker index, pid, last report) of each running worker."""
        total = json.loads(json.dumps(self.counts))  # a copy
        workers = []
        for index, pid, report in sorted(live):
            if not report:
                continue  # not reported yet (starting)
            data = json.loads(report)
            add(total, data["c"])
            workers.append(WorkerView(str(index), pid, data["g"]))
        return View(total, workers, loop_name(config), len(live), starts, dict(restarts))


# -- the listener -------------------------------------------------------------------------------


def bind(config: Config) -> socket.socket:
    """The metrics listener's socket (a ConfigError when the address cannot be bound)."""
    host, port = config.metrics_address, config.metrics_port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"--metrics-address {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot bind the metrics listener {host}:{port}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(False)
    sock.setblocking(False)
    bound, port = sock.getsockname()[:2]
    log.info("Metrics on http://%s:%d/metrics", f"[{bound}]" if ":" in bound else bound, port)
    return sock


def answer(head: bytes, render: Callable[[], tuple[bytes, str]]) -> bytes:
    """The whole response to one request head (the connection closes after it)."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"Bad Request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return _response(404, b"Not Found: metrics are at /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"Method Not Allowed\n", b"allow: GET, HEAD\r\n")
    try:
        body, content_type = render()
    except Exception:
        log.exception("Exception while collecting metrics")
        return _response(500, b"Internal Server Error\n")
    response = _response(200, body, content_type=content_type.encode())
    if method == b"HEAD":
        return response[: response.index(b"\r\n\r\n") + 4]
    return response


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(
    status: int, body: bytes, extra: bytes = b"", content_type: bytes = b"text/plain"
) -> bytes:
    reason = _REASONS.get(status, "Internal Server Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + b"content-type: " + content_type + b"\r\n" + extra + b"\r\n" + body


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data


class _Client:
    __slots__ = ("inbox", "outbox", "since", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.since = now
        self.inbox = b""
        self.outbox = b""


class SelectorListener:
    """The supervisor's metrics listener, in its own selector loop (no thread: the
    supervisor forks, and a fork must not happen while another thread holds a lock)."""

    def __init__(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        render: Callable[[], tuple[bytes, str]],
    ) -> None:
        self.sock = sock
        self.selector = selector
        self.render = render
        self.clients: dict[socket.socket, _Client] = {}
        selector.register(sock, selectors.EVENT_READ, self.on_accept)

    def on_accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:  # (BlockingIOError, ECONNABORTED, EMFILE: the next one)
            return
        conn.setblocking(False)
        client = self.clients[conn] = _Client(conn, time.monotonic())
        self.selector.register(conn, selectors.EVENT_READ, lambda: self.on_readable(client))

    def on_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        client.inbox += data
        if head_complete(client.inbox):
            client.outbox = answer(client.inbox, self.render)
        elif len(client.inbox) > MAX_HEAD:
            client.outbox = _response(400, b"Request head too large\n")
        else:
            return
        self.selector.modify(client.sock, selectors.EVENT_WRITE, lambda: self.on_writable(client))
        self.on_writable(client)

    def on_writable(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except BlockingIOError:
            return
        except OSError:
            self.drop(client)
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self.drop(client)

    def expire(self, now: float) -> None:
        """Drop scrapers that have taken longer than CLIENT_TIMEOUT (called on every wake-up
        of the supervisor: heartbeats come at least once a second)."""
        for client in list(self.clients.values()):
            if now - client.since > CLIENT_TIMEOUT:
                self.drop(client)

    def drop(self, client: _Client) -> None:
        if self.clients.pop(client.sock, None) is not None:
            self.selector.unregister(client.sock)
            client.sock.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self.drop(client)
        self.selector.unregister(self.sock)
        self.sock.close()


class MetricsProtocol(asyncio.Protocol):
    """One scrape of a single server process's metrics listener."""

    def __init__(self, render: Callable[[], tuple[bytes, str]]) -> None:
        self.render = render
        self.inbox = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(CLIENT_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.inbox += data
        if head_complete(self.inbox):
            self.transport.write(answer(self.inbox, self.render))
        elif len(self.inbox) > MAX_HEAD:
            self.transport.write(_response(400, b"Request head too large\n"))
        else:
            return
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def serve_single(state: ServerState) -> asyncio.Server:
    """A single server process's metrics listener, on its own event loop."""
    sock = bind(state.config)

    def render() -> tuple[bytes, str]:
        return exposition(lambda: single_view(state))

    return await state.loop.create_server(lambda: MetricsProtocol(render), sock=sock)


class SupervisorMetrics:
    """The supervisor's side: its listener, and the reports of its workers, past and present."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor
        self.departed = Departed()
        self.sock = bind(supervisor.config)
        self.listener = SelectorListener(self.sock, supervisor.selector, self.render)

    def render(self) -> tuple[bytes, str]:
        sup = self.supervisor
        live = [(w.index, w.pid, w.report) for w in sup.workers.values()]
        return exposition(lambda: self.departed.view(sup.config, live, sup.starts, sup.restarts))

    def worker_exited(self, worker: Any) -> None:
        self.departed.worker_exited(worker.report)
        worker.report = None

    def expire(self, now: float) -> None:
        self.listener.expire(now)

    def close_in_worker(self) -> None:
        """In a forked worker: the supervisor's sockets closed (a scrape's connection kept
        open by a worker's copy of it would never see its end)."""
        self.sock.close()
        for client in self.listener.clients.values():
            client.sock.close()

    def close(self) -> None:
        self.listener.close()


class ProcessMetrics:
    """A server process's side: the loop-lag probe, and the listener unless it is a worker
    (its supervisor serves the metrics then)."""

    def __init__(self, state: ServerState) -> None:
        assert state.metrics is not None
        self.state = state
        self.lag = LoopLag(state.metrics)
        self.listener: asyncio.Server | None = None
        self.reporter: Reporter | None = None

    async def start(self, listen: bool) -> None:
        self.lag.start(self.state.loop)
        if report_fd is not None:  # a --reload server process: the reloader listens
            self.reporter = Reporter(self.state, report_fd)
            self.reporter.start()
        elif listen:
            self.listener = await serve_single(self.state)

    @property
    def port(self) -> int:
        """The listener's port (--metrics-port 0 picks one)."""
        assert self.listener is not None
        port: int = self.listener.sockets[0].getsockname()[1]
        return port

    def stop(self) -> None:
        self.lag.stop()
        if self.listener is not None:
            self.listener.close()
        if self.reporter is not None:
            self.reporter.stop()


# -- --reload: the reloader process serves the metrics of its successive server processes -------

# Set in a --reload server process (reload.child_config): the pipe its reports go to.
report_fd: int | None = None
REPORT_INTERVAL = 1.0


class Reporter:
    """A --reload server process's side: its counts to the reloader once a second, and a last
    time when it stops (as a worker's heartbeat carries them to the supervisor)."""

    def __init__(self, state: ServerState, fd: int) -> None:
        self.state = state
        self.fd = fd
        self.handle: asyncio.TimerHandle | None = None
        os.set_blocking(fd, False)

    def start(self) -> None:
        self.tick()

    def tick(self) -> None:
        self.send()
        self.handle = self.state.loop.call_later(REPORT_INTERVAL, self.tick)

    def send(self) -> None:
        try:
            os.write(self.fd, b"S" + snapshot(self.state) + b"\n")
        except OSError:  # (full: the next one; EPIPE: the reloader is gone)
            pass

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.send()
        os.close(self.fd)


class ReloadMetrics:
    """The reloader's listener, in a thread of its own (the reloader's main thread waits on
    file changes; it starts its children with fork + exec, which a thread does not upset):
    the reports of the current server process, plus those of the ones before it."""

    def __init__(self, config: Config) -> None:
        from .worker import Worker

        self.config = config
        self.worker_class = Worker
        self.departed = Departed()
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.current: Any = None  # worker.Worker of the running server process
        self.starts = 0
        self.sock = bind(config)
        self.listener = SelectorListener(self.sock, self.selector, self.render)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.on_wake)
        self.pending: list[tuple[int, int]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="fastserve-metrics", daemon=True)
        self.thread.start()

    def child_started(self, pid: int, fd: int) -> None:
        """A new server process reports on `fd` (the read end of its pipe)."""
        with self.lock:
            self.pending.append((pid, fd))
        os.write(self.wake_w, b".")

    def on_wake(self) -> None:
        os.read(self.wake_r, 512)
        with self.lock:
            pending, self.pending = self.pending, []
        for pid, fd in pending:
            os.set_blocking(fd, False)
            worker = self.worker_class(pid, fd, time.monotonic())
            self.current = worker
            self.starts += 1
            self.selector.register(fd, selectors.EVENT_READ, lambda w=worker: self.on_report(w))

    def on_report(self, worker: Any) -> None:
        if worker.ping(time.monotonic()) is None:  # the process ended: its counts are kept
            self.selector.unregister(worker.fd)
            worker.close()
            self.departed.worker_exited(worker.report)
            worker.report = None
            if self.current is worker:
                self.current = None

    def render(self) -> tuple[bytes, str]:
        current = self.current
        live = [] if current is None else [(0, current.pid, current.report)]
        restarts = {"reload": max(0, self.starts - 1)}
        return exposition(lambda: self.departed.view(self.config, live, self.starts, restarts))

    def run(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select(1.0):
                key.data()
            self.listener.expire(time.monotonic())

    def close(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b".")
        self.thread.join(5)
        self.listener.close()
        self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
