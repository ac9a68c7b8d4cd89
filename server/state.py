"""What every connection of one server process shares: the app, the pre-encoded default
headers, the counters and the set of open connections."""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .config import Config
from .counters import Counters
from .middleware.proxy_headers import ProxyHeaders
from .protocols import WS, http2_upgrade
from .protocols.idle import IdleConnections
from .protocols.outbox import Outbox
from .types import ASGIApp

if TYPE_CHECKING:
    from .accesslog import AccessLog
    from .protocols.connection import Closable


# --limit-max-requests unset: a count no server reaches, kept a small int (compiled, a tagged
# machine word: the per-request compare stays one instruction).
NO_LIMIT: Final = 1 << 60

# --gc-tune: the young generation's collection threshold (server.tune_gc),
# and how it grows with the requests in flight (ServerState.grow_gc_room). A request in flight
# keeps collectable objects alive (the hello app: 11 on CPython 3.11, its cycle, task,
# coroutines, scope, ...; real apps more); once those outnumber the threshold, every
# collection walks live requests it cannot free. 1,000 requests in flight at once did that
# (perf/instructions.py's driver): ~100 gen-0 collections per 100,000 requests, half of its
# cache misses (cachegrind, perf/README.md, session 13). The threshold is kept at twice
# GC_OBJECTS_PER_REQUEST for each request in flight, up to GC_THRESHOLD_CAP (a collection's
# pause grows with it). Python's own threshold is 700 (2000 from 3.13).
GC_THRESHOLD: Final = 7000
GC_OBJECTS_PER_REQUEST: Final = 32
GC_THRESHOLD_CAP: Final = 1 << 17


class ServerState:
    __slots__ = (
        "access_log",
        "app",
        "config",
        "connections",
        "context",
        "date_header",
        "date_timer",
        "default_head",
        "default_headers",
        "eager",
        "gc_watermark",
        "h2_upgrade",
        "idle_conns",
        "in_flight",
        "lifespan_state",
        "limit_concurrency",
        "limit_request_body",
        "limit_request_field_size",
        "limit_request_fields",
        "limit_request_line",
        "lingerers",
        "log_connections",
        "loop",
        "max_head_size",
        "max_requests",
        "metrics",
        "on_max_requests",
        "outbox",
        "proxy",
        "reset_contextvars",
        "restarting",
        "root_path",
        "shutting_down",
        "static_head",
        "tasks",
        "timeout_keep_alive",
        "timeout_request_body",
        "timeout_request_header",
        "tls",
        "total_requests",
        "ws_upgrade",
    )

    def __init__(
        self,
        config: Config,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        lifespan_state: dict[str, Any],
        access_log: AccessLog | None,
    ) -> None:
        self.config = config
        # The settings the protocols read on every request, copied out of `config`: an
        # attribute of this (compiled) class is a field read, a dataclass attribute a lookup.
        self.timeout_keep_alive = config.timeout_keep_alive
        self.timeout_request_header = config.timeout_request_header
        self.timeout_request_body = config.timeout_request_body
        self.limit_request_line = config.limit_request_line
        self.limit_request_field_size = config.limit_request_field_size
        self.limit_request_fields = config.limit_request_fields
        self.limit_request_body = config.limit_request_body
        self.limit_concurrency = config.limit_concurrency
        self.max_head_size = config.max_head_size
        self.root_path = config.root_path
        self.tls = config.is_ssl  # every listener of the server, or none (server.py)
        # --proxy-headers: what is believed from which peers (request.py applies it).
        self.proxy: ProxyHeaders | None = None
        if config.proxy_headers:
            self.proxy = ProxyHeaders(
                config.forwarded_allow_ips, config.forwarded_host, config.forwarded_rfc7239
            )
        self.app = app
        self.loop = loop
        self.lifespan_state = lifespan_state
        self.access_log = access_log
        # Requests start in eager tasks (--eager-start, Python 3.12+), and small final
        # responses are held back until the end of this loop pass (protocols/outbox.py).
        self.outbox = Outbox(loop)
        self.eager = config.eager_start and sys.version_info >= (3, 12)
        # The context the server runs in: each request's task gets a copy of it (protocol
        # callbacks run in it; tasks started from another request's task must not inherit).
        # --reset-contextvars: an empty one, copied for every request (request.start).
        self.reset_contextvars = config.reset_contextvars
        self.context = (
            contextvars.Context() if config.reset_contextvars else contextvars.copy_context()
        )
        self.connections: set[Closable] = set()
        # The keep-alive deadlines of idle HTTP/2 connections and of HTTP/1.1 ones before
        # their first request, on one timer (idle.py).
        self.idle_conns = IdleConnections(loop, config.timeout_keep_alive)
        # The deadlines of lingering closes (linger.py), one timer for each duration.
        self.lingerers: dict[float, IdleConnections] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.total_requests = 0
        # --gc-tune: more requests in flight than this and request.admit has the young
        # generation's threshold raised (grow_gc_room): one compare per request.
        self.gc_watermark = (
            GC_THRESHOLD // (2 * GC_OBJECTS_PER_REQUEST) if config.gc_tune else NO_LIMIT
        )
        # --limit-max-requests (Server sets both): request.admit compares every request's
        # number with it, and calls on_max_requests when it is reached.
        self.max_requests = NO_LIMIT
        self.on_max_requests: Callable[[], None] | None = None
        # --metrics: what this process counts (counters.py); None costs the protocols one
        # `is not None` test where they would count.
        self.metrics: Counters | None = Counters() if config.metrics else None
        # --log-level debug: connections opening and closing (one bool test each otherwise).
        self.log_connections = logging.getLogger("fastserve.error").isEnabledFor(logging.DEBUG)
        self.shutting_down = False
        # Set by whoever stops this server to have it replaced (reload, worker recycling):
        # open WebSockets then close with 1012 "service restart" instead of 1001 "going away".
        self.restarting = False
        # The --ws entry's hand-over (protocols/__init__.py), None when WebSockets are off.
        self.ws_upgrade: Callable[..., None] | None = WS.load(config.ws)
        # HTTP/2's hand-over (protocols/h2.py), None when HTTP/2 is off or zttp is missing.
        self.h2_upgrade: Callable[..., None] | None = http2_upgrade(config)
        # Headers added to every response, encoded once: the server line and --header values.
        # A --header "Server: ..." or "Date: ..." replaces the server's own (as uvicorn does
        # for Server): one field, never two.
        extra = config.encoded_headers  # validated when the Config was made
        names = {name for name, _ in extra}
        static: list[tuple[bytes, bytes]] = []
        if config.server_header and b"server" not in names:
            static.append((b"server", b"fastserve"))
        static.extend(extra)
        self.default_headers = static
        self.static_head = b"".join(n + b": " + v + b"\r\n" for n, v in static)
        self.default_head = self.static_head
        self.date_header = config.date_header and b"date" not in names
        self.date_timer: asyncio.TimerHandle | None = None
        self.refresh_date()

    def refresh_date(self) -> None:
        """Re-encode the Date line; runs once a second, aligned to the wall-clock second."""
        if self.date_header:
            now = time.time()
            date = email.utils.formatdate(now, usegmt=True).encode("ascii")
            self.default_head = b"date: " + date + b"\r\n" + self.static_head
            self.date_timer = self.loop.call_at(
                self.loop.time() + 1.0 - (now % 1.0), self.refresh_date
            )

    def defaults_without(self, names: set[bytes]) -> list[tuple[bytes, bytes]]:
        """The default headers minus those the app set itself (slow path, rare)."""
        out = [(n, v) for n, v in self.default_headers if n not in names]
        if self.date_header and b"date" not in names:
            out.insert(0, (b"date", self.default_head[6 : self.default_head.index(b"\r\n")]))
        return out

    def grow_gc_room(self, in_flight: int) -> None:
        """`in_flight` requests run, more than the young generation has room for: raise its
        threshold to twice what they keep alive (never lowered), and the watermark with it."""
        wanted = min(2 * GC_OBJECTS_PER_REQUEST * in_flight, GC_THRESHOLD_CAP)
        threshold0, threshold1, threshold2 = gc.get_threshold()
        if wanted > threshold0:
            gc.set_threshold(wanted, threshold1, threshold2)
        self.gc_watermark = 2 * in_flight if wanted < GC_THRESHOLD_CAP else NO_LIMIT

    def lingering(self, seconds: float) -> IdleConnections:
        """The deadlines of the connections that linger for `seconds` (linger.py)."""
        deadlines = self.lingerers.get(seconds)
        if deadlines is None:
            self.lingerers[seconds] = deadlines = IdleConnections(self.loop, seconds)
        return deadlines

    def close(self) -> None:
        self.idle_conns.close()
        for deadlines in self.lingerers.values():
            deadlines.close()
        if self.date_timer is not None:
            self.date_timer.cancel()
            self.date_timer = None
