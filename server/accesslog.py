"""The access log: one line per request, on the hot path (compiled: setup.py).

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
import json.encoder
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any, Final, final

from .config import Config, ConfigError
from .logs import ColourFormatter, FastStreamHandler, FieldMap, escape

if TYPE_CHECKING:
    from .protocols.cycle import RequestCycle


# Access lines wait at most this long (seconds) before they are written, in one batch.
FLUSH_DELAY: Final = 0.01

# A text line (default format, or --access-log-format) is 3 strings of the batch: the default
# format keeps the line minus its duration (remembered per client), the text of the duration's
# whole milliseconds and that of its hundredths with the line's end (tables: integer
# arithmetic, where a float's "%.2f" cost ~500 instructions a line and an int's str() ~150);
# a --access-log-format line is (line, "", "\n"). A flush joins the default format's batch
# with the log prefix before each line (one "".join); --access-log-format lines, whose text
# is the user's, are formatted with one `%` of _TEXT_LINE per line.
_TEXT_LINE: Final = "%s%s%s"
_MILLIS: Final = tuple(str(i) for i in range(1000))
_HUNDREDTHS: Final = tuple(f".{i:02d}ms\n" for i in range(100))

# A JSON access line is the object json.dumps would write, minus the dict and the generic
# encoder, and it is not formatted per line: a line is 7 pieces appended to the batch, and a
# flush joins the whole batch with one "".join (no format string to parse, only copies).
# The pieces: the timestamp's text with the request id's key (made once a millisecond), the
# request id, the fields that only change with the request's line, status, size and agent
# (made once per client address while they stay the same, as the default format's head is),
# the duration's integer milliseconds, its fraction (a table), its microseconds, the end.
# Costs per line, compiled (CPython 3.11, callgrind, GET /plaintext in-process): json_line()
# of 4fea5eb, one `%` per line, ~12,800 instructions (~15,700 with its share of the flush:
# +37 % on a request of ~43,300); so, ~4,000 and ~1,000 for the flush (+11 %). The default
# text line costs ~3,900 in all (+8.9 %; ~4,500 with a float "%.2f" per line).
JSON_STAMP: Final = '{"timestamp": "%s.%03dZ", "request_id": '
JSON_MIDDLE: Final = (
    ', "client": %s, "client_addr": %s, "method": %s, "path": %s, "query": %s, "version": %s, '
    '"protocol": %s, "request_line": %s, "status": %s, "bytes": %d, "duration_ms": '
)
# The duration's fraction of a millisecond, and what follows it up to the microseconds.
JSON_FRACTIONS: Final = tuple(f'.{i:03d}, "duration_us": ' for i in range(1000))
JSON_END: Final = ', "user_agent": %s, "referer": %s, "completed": %s, "ended": %s, "pid": %d}\n'

# JSON's string encoder (C): str -> its quoted, escaped JSON text, non-ASCII escaped too.
_json_string: Final = json.encoder.encode_basestring_ascii

# How a response that did not complete ended (cycle.py says which).
CLIENT_GONE: Final = "client gone"
CANCELLED: Final = "cancelled"
APP_ERROR: Final = "app error"


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
        "id_count",
        "id_quote",
        "json",
        "json_parts",
        "logger",
        "loop",
        "milli",
        "pending",
        "pid",
        "second",
        "second_text",
        "stamp",
        "template",
        "wall_offset",
    )

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.logger = logging.getLogger("fastserve.access")
        # The batch: 3 items a text line (_TEXT_LINE), 7 pieces a JSON line (add_json).
        self.pending: list[Any] = []
        self.flush_handle: asyncio.Handle | None = None
        self.json = config.access_log_json or config.log_json
        self.template = config.access_log_format
        self.fields = _template_fields(self.template) if self.template else None
        # client address -> its last default-format line head and what it was made of
        self.heads: dict[Any, Head] = {}
        # client address -> its last JSON line's JSON_MIDDLE and JSON_END texts and their fields
        self.json_parts: dict[Any, JsonParts] = {}
        if self.template is not None:
            _check_template(self.template)
        # Request ids for requests without an X-Request-ID: a random prefix per process (one
        # AccessLog each) and a counter. Unique enough to correlate lines, at the cost of an
        # increment; not a secret.
        # (JSON: the id's text up to the count, with its opening quote.)
        self.id_quote = f'"{secrets.token_hex(6)}-'
        self.id_count = 0
        self.pid = os.getpid()
        # The RFC 3339 text of the current second (JSON timestamps), made once a second, and
        # JSON_STAMP made with it once a millisecond. The wall clock is read once a second:
        # a line's time is its monotonic `now` plus the offset read then.
        self.second = -1
        self.second_text = ""
        self.milli = -1
        self.stamp = ""
        self.wall_offset = time.time() - time.monotonic()

    def forget(self, client: tuple[str, int] | None) -> None:
        """A connection from `client` closed: its remembered line texts go (a long-running
        worker keeps them for its open connections only, not for every port it has seen)."""
        if self.heads:
            self.heads.pop(client, None)
        if self.json_parts:
            self.json_parts.pop(client, None)

    def log(self, cycle: RequestCycle, now: float) -> None:
        self.add(cycle.scope, cycle.status, cycle.bytes_sent, cycle.start_time, now)

    def log_unfinished(self, cycle: RequestCycle, now: float, ended: str) -> None:
        """A response that will not complete (`ended`: CLIENT_GONE, CANCELLED, APP_ERROR):
        its line, with the status if one was sent (else 0: `-`, JSON null) and the body
        bytes handed to the connection so far. Rare, so not batched as finely."""
        scope = cycle.scope
        status = cycle.status
        sent = cycle.bytes_sent
        duration = now - cycle.start_time
        if self.json:
            self.add_json(scope, status, sent, now, ended, duration)
        elif self.template is not None:
            values = self.text_fields(scope, status, sent, duration)
            line = self.template % FieldMap(values, scope) + f" [incomplete: {ended}]"
            self.pending += (line, "", "\n")
        else:
            key = (
                scope["raw_path"],
                scope["query_string"],
                scope["method"],
                scope["http_version"],
                status if status else "-",
                sent,
            )
            head = default_head(scope["client"], key)
            line = f"{head}{duration * 1000.0:.2f}ms [incomplete: {ended}]"
            self.pending += (line, "", "\n")
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_later(FLUSH_DELAY, self.flush)

    def log_websocket(
        self, scope: dict[str, Any], status: int, sent: int, start: float, now: float
    ) -> None:
        """A WebSocket handshake: one line with status 101 or the denial status. `scope` is the
        handshake's HTTP scope, so every format field means what it means for a request."""
        self.add(scope, status, sent, start, now)

    def add(self, scope: dict[str, Any], status: int, sent: int, start: float, now: float) -> None:
        if self.template is None and not self.json:
            raw_path: bytes = scope["raw_path"]
            query: bytes = scope["query_string"]
            method: str = scope["method"]
            version: str = scope["http_version"]
            client = scope["client"]
            known = self.heads.get(client)
            if (
                known is None
                or known.sent != sent
                or known.status != status
                or known.raw_path != raw_path
                or known.query != query
                or known.method != method
                or known.version != version
            ):
                text = default_head(client, (raw_path, query, method, version, status, sent))
                known = Head(text, raw_path, query, method, version, status, sent)
                remember(self.heads, client, known)
            hundredths = int((now - start) * 100_000.0 + 0.5)  # of a millisecond, rounded
            millis = hundredths // 100
            whole = _MILLIS[millis] if millis < 1000 else str(millis)
            pending = self.pending  # (three appends: cheaper than a tuple and an extend)
            pending.append(known.text)
            pending.append(whole)
            pending.append(_HUNDREDTHS[hundredths % 100])
        elif self.json:
            self.add_json(scope, status, sent, now, None, now - start)
        else:
            assert self.template is not None
            values = self.text_fields(scope, status, sent, now - start)
            self.pending += (self.template % FieldMap(values, scope), "", "\n")
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_later(FLUSH_DELAY, self.flush)

    def add_json(
        self,
        scope: dict[str, Any],
        status: int,
        sent: int,
        now: float,
        ended: str | None,
        duration: float,
    ) -> None:
        """One JSON object's pieces (JSON_STAMP...JSON_END) onto the batch. Values are the
        request's own text (latin-1 decoded bytes), escaped once, by JSON's own string
        encoder (`ensure_ascii`: every control and non-ASCII character becomes a `\\uXXXX`
        escape, so a line stays one line whatever the client sent)."""
        agent: bytes | None = None
        referer: bytes | None = None
        given: bytes | None = None
        headers: list[tuple[bytes, bytes]] = scope["headers"]  # (typed: compiled, a fast loop)
        for name, value in headers:  # (the last of repeated fields, as dict() would)
            if name == b"user-agent":
                agent = value
            elif name == b"referer":
                referer = value
            elif name == b"x-request-id":
                given = value
        raw_path: bytes = scope["raw_path"]
        query: bytes = scope["query_string"]
        method: str = scope["method"]
        version: str = scope["http_version"]
        client = scope.get("client")
        known = self.json_parts.get(client)
        if (
            known is None
            or known.sent != sent
            or known.status != status
            or known.raw_path != raw_path
            or known.query != query
            or known.method != method
            or known.version != version
            or known.agent != agent
            or known.referer != referer
            or known.ended != ended
        ):
            key = (raw_path, query, method, version, status, sent, agent, referer, ended)
            middle, end = json_parts(client, key, self.pid)
            known = JsonParts(middle, end, key)
            remember(self.json_parts, client, known)
        if given is None:
            self.id_count += 1
            request_id = f'{self.id_quote}{self.id_count}"'
        else:
            request_id = _json_string(given.decode("latin-1"))
        micros = int(duration * 1_000_000)  # (integer arithmetic: a float's %f is slower)
        millis = micros // 1000
        pending = self.pending  # (appends: cheaper than a tuple and an extend)
        pending.append(self.stamp_at(now))
        pending.append(request_id)
        pending.append(known.middle)
        pending.append(_MILLIS[millis] if millis < 1000 else str(millis))
        pending.append(JSON_FRACTIONS[micros % 1000])
        pending.append(str(micros))
        pending.append(known.end)

    def text_fields(
        self, scope: dict[str, Any], status: int, sent: int, duration: float
    ) -> dict[str, Any]:
        values = access_fields(scope, status, sent, duration)
        values["request_id"] = escape(self.request_id(dict(scope["headers"]).get(b"x-request-id")))
        return values

    def request_id(self, given: bytes | None) -> str:
        """The request's X-Request-ID (a proxy's or the client's), else a generated one."""
        if given is not None:
            return given.decode("latin-1")
        self.id_count += 1
        return f"{self.id_quote[1:]}{self.id_count}"

    def stamp_at(self, now: float) -> str:
        """JSON_STAMP for monotonic time `now`: RFC 3339 UTC to the millisecond,
        `2025-01-31T12:34:56.789Z` (what nginx's $msec gives). Made once a millisecond: at
        tens of thousands of lines a second, most lines reuse the text of the line before."""
        milli = int((now + self.wall_offset) * 1000.0)
        if milli != self.milli:
            second = milli // 1000
            if second != self.second:
                # Once a second: the wall clock again (it may have been stepped).
                self.wall_offset = time.time() - time.monotonic()
                milli = int((now + self.wall_offset) * 1000.0)
                second = milli // 1000
                self.second = second
                self.second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.milli = milli
            self.stamp = JSON_STAMP % (self.second_text, milli % 1000)
        return self.stamp

    def flush(self) -> None:
        self.flush_handle = None
        pending = self.pending
        if not pending:
            return
        self.pending = []
        self.write(pending)

    def write(self, pending: list[Any]) -> None:
        """Text lines as 3 items each (_TEXT_LINE); JSON lines as pieces to join (add_json).
        With our own handler alone, one write; else line by line through `logging`."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handlers = logger.handlers
        handler = handlers[0] if len(handlers) == 1 and not logger.filters else None
        if self.json:
            text = "".join(pending)  # one JSON object per line, nothing else
            if type(handler) is not FastStreamHandler:
                for line in text.split("\n")[:-1]:  # (a JSON line holds no raw line break)
                    logger.info(line)
                return
        elif type(handler) is FastStreamHandler:
            prefix = "INFO:     "
            if isinstance(handler.formatter, ColourFormatter) and handler.formatter.use_colors:
                prefix = "\x1b[32mINFO:     \x1b[0m"  # as ColourFormatter
            prefix += ColourFormatter.process_tag  # "[pid] " in a worker
            if self.template is None:
                # The prefix before each line's 3 strings: 4 slice copies of references,
                # then one join (a str.replace of the line breaks cost ~300 instructions a
                # line).
                lines = len(pending) // 3
                pieces = [prefix] * (4 * lines)
                pieces[1::4] = pending[0::3]
                pieces[2::4] = pending[1::3]
                pieces[3::4] = pending[2::3]
                text = "".join(pieces)
            else:
                text = ((prefix + _TEXT_LINE) * (len(pending) // 3)) % tuple(pending)
        else:
            for i in range(0, len(pending), 3):  # (logging adds the line break)
                logger.info((_TEXT_LINE % (pending[i], pending[i + 1], pending[i + 2]))[:-1])
            return
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except (OSError, ValueError):
            pass


@final
class JsonParts:
    """A client's last JSON line's texts that only change with its request's fields (`middle`:
    JSON_MIDDLE, `end`: JSON_END), and those fields: the next line reuses the texts while
    they stay the same."""

    __slots__ = (
        "agent",
        "end",
        "ended",
        "method",
        "middle",
        "query",
        "raw_path",
        "referer",
        "sent",
        "status",
        "version",
    )

    def __init__(self, middle: str, end: str, key: tuple[Any, ...]) -> None:
        self.middle = middle
        self.end = end
        raw_path, query, method, version, status, sent, agent, referer, ended = key
        self.raw_path: bytes = raw_path
        self.query: bytes = query
        self.method: str = method
        self.version: str = version
        self.status: int = status
        self.sent: int = sent
        self.agent: bytes | None = agent
        self.referer: bytes | None = referer
        self.ended: str | None = ended


@final
class Head:
    """A client's last default-format line up to its duration (`text`), and the request
    fields it was made of: the next line reuses it while they stay the same."""

    __slots__ = ("method", "query", "raw_path", "sent", "status", "text", "version")

    def __init__(
        self,
        text: str,
        raw_path: bytes,
        query: bytes,
        method: str,
        version: str,
        status: int,
        sent: int,
    ) -> None:
        self.text = text
        self.raw_path = raw_path
        self.query = query
        self.method = method
        self.version = version
        self.status = status
        self.sent = sent


def remember(cache: dict[Any, Any], client: tuple[str, int] | None, known: object) -> None:
    """Keep `known` (the texts made for a client's last line) for the client's next line.
    A connection's close forgets its peer (AccessLog.forget); the bound is for the clients
    that proxies' headers name, which no close forgets."""
    if len(cache) >= 4096:
        cache.clear()
    cache[client] = known


def json_parts(client: tuple[str, int] | None, key: tuple[Any, ...], pid: int) -> tuple[str, str]:
    """The JSON_MIDDLE and JSON_END texts of a line: `key` as add_json makes it."""
    enc = _json_string
    raw_path, raw_query, method, version, status, sent, agent, referer, ended = key
    path = raw_path.decode("latin-1")
    query = raw_query.decode("latin-1")
    target = path + "?" + query if query else path
    middle = JSON_MIDDLE % (
        enc(f"{client[0]}:{client[1]}") if client else "null",
        enc(client[0]) if client else "null",
        enc(method),
        enc(path),
        enc(query),
        enc(version),
        enc("HTTP/" + version),
        enc(f"{method} {target} HTTP/{version}"),
        status if status else "null",
        sent,
    )
    end = JSON_END % (
        enc(agent.decode("latin-1")) if agent is not None else "null",
        enc(referer.decode("latin-1")) if referer is not None else "null",
        "true" if ended is None else "false",
        enc(ended) if ended is not None else "null",
        pid,
    )
    return middle, end


def default_head(client: tuple[str, int] | None, key: tuple[Any, ...]) -> str:
    """The default line up to its duration: 'host:port - "GET / HTTP/1.1" 200 13 '. The
    target is escaped (llhttp refuses control characters in it, but write() relies on a line
    holding no line break whatever the protocol); made only when a client's line changes."""
    raw_path, query, method, version, status, sent = key
    target = raw_path + b"?" + query if query else raw_path
    text = escape(target.decode("latin-1"))
    who = f"{client[0]}:{client[1]}" if client else "-"
    return f'{who} - "{method} {text} HTTP/{version}" {status} {sent} '


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
        "request_id",
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
