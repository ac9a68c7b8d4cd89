"""Logging set-up and the access log.

The access log is on the hot path. uvicorn's costs ~95 µs a request (a LogRecord, a formatter
copy, a stream write and flush per line). Here a finished request appends its line (minus the
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
import logging.config
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO, cast

from .config import Config, ConfigError

if TYPE_CHECKING:
    from .protocols.cycle import RequestCycle

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

# Control characters in request data are escaped so a client cannot forge log lines: C0, DEL
# and C1 (obs-text bytes arrive as U+0080-U+00FF; U+0085 is a line break to many readers).
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def escape(text: str) -> str:
    # The common case (nothing to escape) in three C scans: ~0.15 µs instead of ~1 µs for
    # translate(). isprintable() is False for every C0/C1 control and DEL.
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.translate(_ESCAPES)


class FastStreamHandler(logging.StreamHandler[TextIO]):
    """Marks the handler the access log may bypass with one batched write."""


class ColourFormatter(logging.Formatter):
    COLOURS = {
        logging.DEBUG: "\x1b[36m",
        logging.INFO: "\x1b[32m",
        logging.WARNING: "\x1b[33m",
        logging.ERROR: "\x1b[31m",
        logging.CRITICAL: "\x1b[1;31m",
    }

    def __init__(self, fmt: str, use_colors: bool) -> None:
        super().__init__(fmt)
        self.use_colors = use_colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = (record.levelname + ":").ljust(10)
        if self.use_colors:
            prefix = self.COLOURS.get(record.levelno, "") + prefix + "\x1b[0m"
        record.__dict__["levelprefix"] = prefix
        return super().formatMessage(record)


def configure_logging(config: Config) -> None:
    """Install fastserve's handlers, or the user's --log-config."""
    if config.log_config:
        _load_log_config(config.log_config)
    else:
        use_colors = config.use_colors
        if use_colors is None:
            use_colors = sys.stderr.isatty()
        for name, stream in (("fastserve.error", sys.stderr), ("fastserve.access", sys.stdout)):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            handler = FastStreamHandler(stream)
            handler.setFormatter(ColourFormatter("%(levelprefix)s%(message)s", use_colors))
            logger.addHandler(handler)
            logger.propagate = False
    level = LEVELS[config.log_level]
    logging.getLogger("fastserve").setLevel(level)
    logging.getLogger("fastserve.error").setLevel(level)
    logging.getLogger("fastserve.access").setLevel(level)


def _load_log_config(path: str) -> None:
    """A dictConfig in JSON or YAML (by extension), else an INI fileConfig. Whatever is wrong
    with the file (syntax, unknown handler class...) is one ConfigError line, no traceback."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read --log-config {path}: {exc.strerror}") from None
    try:
        if path.endswith(".json"):
            logging.config.dictConfig(json.loads(text))
        elif path.endswith((".yaml", ".yml")):
            import yaml

            logging.config.dictConfig(yaml.safe_load(text))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except Exception as exc:  # the file is the user's: any failure is a config error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot use --log-config {path}: {reason}") from None


DEFAULT_FORMAT = '%(client)s - "%(request_line)s" %(status)s %(bytes)s %(duration_ms)sms'


# Access lines wait at most this long (seconds) before they are written, in one batch.
FLUSH_DELAY = 0.01

# What a flush appends to each collected (text, duration) pair: the default format keeps the
# line minus its duration and formats every duration of a batch in one `%` operation.
_DEFAULT_TAIL = "%s%.2fms\n"
_TEMPLATE_TAIL = "%s%s\n"


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
        scope = cycle.scope
        if self.template is None and not self.json:
            key = (
                scope["raw_path"],
                scope["query_string"],
                scope["method"],
                scope["http_version"],
                cycle.status,
                cycle.bytes_sent,
            )
            client = scope["client"]
            known = self.heads.get(client)
            if known is None or known[0] != key:
                known = self.remember_head(client, key)
            self.pending += (known[1], (now - cycle.start_time) * 1000.0)
        else:
            values = access_fields(cycle, now)
            if self.json:
                line = json.dumps(values, ensure_ascii=True)
            else:
                assert self.template is not None
                line = self.template % _FieldMap(values, cycle)
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

    def log_websocket(
        self, scope: dict[str, Any], status: int, sent: int, start: float, now: float
    ) -> None:
        """A WebSocket handshake: one line with status 101 or the denial status. `scope` is the
        handshake's HTTP scope, so every format field means what it means for a request."""
        self.log(cast("RequestCycle", _Exchange(scope, status, sent, start)), now)

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


class _Exchange:
    """The fields of a RequestCycle that the access log reads, for exchanges without one."""

    __slots__ = ("bytes_sent", "scope", "start_time", "status")

    def __init__(self, scope: dict[str, Any], status: int, sent: int, start: float) -> None:
        self.scope = scope
        self.status = status
        self.bytes_sent = sent
        self.start_time = start


def access_fields(cycle: RequestCycle, now: float) -> dict[str, Any]:
    """Every named field an access log format may use."""
    scope = cycle.scope
    client = scope.get("client")
    query = scope["query_string"]
    target = scope["raw_path"] + b"?" + query if query else scope["raw_path"]
    method = scope["method"]
    request_line = f"{method} {escape(target.decode('latin-1'))} HTTP/{scope['http_version']}"
    headers = dict(scope["headers"])
    duration = now - cycle.start_time
    return {
        "client": f"{client[0]}:{client[1]}" if client else "-",
        "client_addr": client[0] if client else "-",
        "request_line": request_line,
        "method": method,
        "path": escape(scope["raw_path"].decode("latin-1")),
        "query": escape(query.decode("latin-1")),
        "protocol": f"HTTP/{scope['http_version']}",
        "status": cycle.status,
        "bytes": cycle.bytes_sent,
        "duration_ms": round(duration * 1000.0, 3),
        "duration_us": int(duration * 1_000_000),
        "referer": escape(headers.get(b"referer", b"-").decode("latin-1")),
        "user_agent": escape(headers.get(b"user-agent", b"-").decode("latin-1")),
        "pid": os.getpid(),
    }


class _FieldMap(dict[str, Any]):
    """`%(name)s` lookups, plus `%({header}i)s` for a request header's value."""

    def __init__(self, values: dict[str, Any], cycle: RequestCycle) -> None:
        super().__init__(values)
        self.cycle = cycle

    def __missing__(self, key: str) -> str:
        if key.startswith("{") and key.endswith("}i"):
            wanted = key[1:-2].lower().encode("latin-1")
            for name, value in self.cycle.scope["headers"]:
                if name == wanted:
                    return escape(value.decode("latin-1"))
        return "-"


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
