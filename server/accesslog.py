"""The access log: one line per finished request, on the hot path (compiled: setup.py).

uvicorn's costs ~95 µs a request (a LogRecord, a formatter copy, a stream write and flush per
line). Here a finished request appends its line (minus the
duration, remembered per client) and its duration to a list; the list is formatted and flushed
at most FLUSH_DELAY later (flushing once per loop iteration still meant a write system call per
request or two under load), with one write when the access logger's only handler is our own
stream handler, and through `logging` line by line otherwise (so a --log-config with other
handlers still gets every record).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Final

from .config import Config, ConfigError
from .logs import ColourFormatter, FastStreamHandler, FieldMap, escape

if TYPE_CHECKING:
    from .protocols.cycle import RequestCycle


# Access lines wait at most this long (seconds) before they are written, in one batch.
FLUSH_DELAY: Final = 0.01

# What a flush appends to each collected (text, duration) pair: the default format keeps the
# line minus its duration and formats every duration of a batch in one `%` operation.
_DEFAULT_TAIL: Final = "%s%.2fms\n"
_TEMPLATE_TAIL: Final = "%s%s\n"


class AccessLog:
    """Collects one line per finished request and writes them in batches (FLUSH_DELAY).

    The default format costs ~0.35 µs a request (log() plus its share of the flush). A
    connection's requests are usually alike, so the text before the duration is remembered
    per client address and rebuilt only when method, target, version, status or size
    change; the durations of a whole batch are formatted by one `%` at flush time."""

    __slots__ = (
        "fields",
        "flush_handle",
        "heads",
        "json",
        "logger",
        "loop",
        "pending",
        "template",
    )

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.logger = logging.getLogger("fastserve.access")
        # Flat pairs: text, then the duration in ms (default format) or "" (other formats).
        self.pending: list[Any] = []
        self.flush_handle: asyncio.Handle | None = None
        self.json = config.access_log_json
        self.template = config.access_log_format
        self.fields = _template_fields(self.template) if self.template else None
        # client address -> ((target, query, method, version, status, bytes), line head)
        self.heads: dict[Any, tuple[tuple[Any, ...], str]] = {}
        if self.template is not None:
            _check_template(self.template)

    def log(self, cycle: RequestCycle, now: float) -> None:
        self.add(cycle.scope, cycle.status, cycle.bytes_sent, cycle.start_time, now)

    def log_websocket(
        self, scope: dict[str, Any], status: int, sent: int, start: float, now: float
    ) -> None:
        """A WebSocket handshake: one line with status 101 or the denial status. `scope` is the
        handshake's HTTP scope, so every format field means what it means for a request."""
        self.add(scope, status, sent, start, now)

    def add(self, scope: dict[str, Any], status: int, sent: int, start: float, now: float) -> None:
        if self.template is None and not self.json:
            key = (
                scope["raw_path"],
                scope["query_string"],
                scope["method"],
                scope["http_version"],
                status,
                sent,
            )
            client = scope["client"]
            known = self.heads.get(client)
            if known is None or known[0] != key:
                known = self.remember_head(client, key)
            self.pending += (known[1], (now - start) * 1000.0)
        else:
            values = access_fields(scope, status, sent, now - start)
            if self.json:
                line = json.dumps(values, ensure_ascii=True)
            else:
                assert self.template is not None
                line = self.template % FieldMap(values, scope)
            self.pending += (line, "")
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_later(FLUSH_DELAY, self.flush)

    def remember_head(
        self, client: tuple[str, int] | None, key: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], str]:
        """The default line up to its duration: 'host:port - "GET / HTTP/1.1" 200 13 '.
        llhttp refuses control characters and non-ASCII bytes in the target, so only `"`
        and `\\` can need escaping."""
        raw_path, query, method, version, status, sent = key
        target = raw_path + b"?" + query if query else raw_path
        text = target.decode("latin-1")
        if 34 in target or 92 in target:
            text = escape(text)
        who = f"{client[0]}:{client[1]}" if client else "-"
        known = (key, f'{who} - "{method} {text} HTTP/{version}" {status} {sent} ')
        if len(self.heads) >= 4096:  # bounded: clients come and go
            self.heads.clear()
        self.heads[client] = known
        return known

    def flush(self) -> None:
        self.flush_handle = None
        pending = self.pending
        if not pending:
            return
        self.pending = []
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        tail = _DEFAULT_TAIL if self.template is None and not self.json else _TEMPLATE_TAIL
        handlers = logger.handlers
        if len(handlers) == 1 and type(handlers[0]) is FastStreamHandler and not logger.filters:
            handler = handlers[0]
            prefix = "INFO:     "
            if isinstance(handler.formatter, ColourFormatter) and handler.formatter.use_colors:
                prefix = "\x1b[32mINFO:     \x1b[0m"  # as ColourFormatter
            try:
                handler.stream.write(((prefix + tail) * (len(pending) // 2)) % tuple(pending))
                handler.stream.flush()
            except (OSError, ValueError):
                pass
        else:
            tail = tail[:-1]  # logging adds the line break
            for i in range(0, len(pending), 2):
                logger.info(tail % (pending[i], pending[i + 1]))


def access_fields(scope: dict[str, Any], status: int, sent: int, duration: float) -> dict[str, Any]:
    """Every named field an access log format may use."""
    client = scope.get("client")
    query = scope["query_string"]
    target = scope["raw_path"] + b"?" + query if query else scope["raw_path"]
    method = scope["method"]
    request_line = f"{method} {escape(target.decode('latin-1'))} HTTP/{scope['http_version']}"
    headers = dict(scope["headers"])
    return {
        "client": f"{client[0]}:{client[1]}" if client else "-",
        "client_addr": client[0] if client else "-",
        "request_line": request_line,
        "method": method,
        "path": escape(scope["raw_path"].decode("latin-1")),
        "query": escape(query.decode("latin-1")),
        "protocol": f"HTTP/{scope['http_version']}",
        "status": status,
        "bytes": sent,
        "duration_ms": round(duration * 1000.0, 3),
        "duration_us": int(duration * 1_000_000),
        "referer": escape(headers.get(b"referer", b"-").decode("latin-1")),
        "user_agent": escape(headers.get(b"user-agent", b"-").decode("latin-1")),
        "pid": os.getpid(),
    }


def _template_fields(template: str) -> list[str]:
    return [part.split(")", 1)[0] for part in template.split("%(")[1:]]


FIELDS = frozenset(
    [
        "client",
        "client_addr",
        "request_line",
        "method",
        "path",
        "query",
        "protocol",
        "status",
        "bytes",
        "duration_ms",
        "duration_us",
        "referer",
        "user_agent",
        "pid",
    ]
)


def _check_template(template: str) -> None:
    """--access-log-format mistakes are startup errors, not an exception per request."""
    for name in _template_fields(template):
        if name not in FIELDS and not (name.startswith("{") and name.endswith("}i")):
            known = ", ".join(sorted(FIELDS))
            raise ConfigError(
                f"--access-log-format: unknown field {name!r} (known: {known}, {{header}}i)"
            )
    try:
        template % dict.fromkeys(_template_fields(template), 0)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--access-log-format {template!r}: {exc}") from None
