"""Logging set-up: levels, handlers and formatters, and the helpers the access log uses.

The access log itself (on the hot path, compiled with the protocols: see setup.py) is in
accesslog.py.
"""

from __future__ import annotations

import configparser
import copy
import importlib.machinery
import importlib.util
import json
import logging
import logging.config
import os
import platform
import sys
import time
import traceback
from types import TracebackType
from typing import Any, TextIO

from .config import Config, ConfigError

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


# A compiled module's traceback entries name it `fastserve/protocols/cycle.py` (setup.py: mypyc
# keeps the path it was given); the installed file is that path under the directory holding the
# package. Tracebacks this module formats name that file, whose source line is then shown too.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def format_exception(ei: ExcInfo) -> str:
    """`logging.Formatter.formatException`, with compiled modules' entries at their installed
    paths."""
    if ei[1] is None:
        return logging.Formatter().formatException(ei)
    te = traceback.TracebackException(type(ei[1]), ei[1], ei[2], lookup_lines=False)
    _installed_paths(te, set())
    return "".join(te.format()).rstrip("\n")


def _installed_paths(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    for frame in te.stack:
        if frame.filename.startswith("fastserve/"):
            path = os.path.join(PACKAGE_PARENT, frame.filename)
            if os.path.isfile(path):
                frame.filename = path
    for other in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if other is not None:
            _installed_paths(other, seen)


class FastStreamHandler(logging.StreamHandler[TextIO]):
    """Marks the handler the access log may bypass with one batched write."""


class ColourFormatter(logging.Formatter):
    # "[pid] " in a worker of --workers (set after the fork: worker.run_worker): each
    # worker's lines say which process wrote them, after the level.
    process_tag = ""
    COLOURS = {
        logging.DEBUG: "\x1b[36m",
        logging.INFO: "\x1b[32m",
        logging.WARNING: "\x1b[33m",
        logging.ERROR: "\x1b[31m",
        logging.CRITICAL: "\x1b[1;31m",
    }

    def __init__(
        self, fmt: str | None, use_colors: bool, datefmt: str | None = None, style: Any = "%"
    ) -> None:
        super().__init__(fmt, datefmt, style)
        self.use_colors = use_colors

    def formatException(self, ei: ExcInfo) -> str:
        return format_exception(ei)

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = (record.levelname + ":").ljust(10)
        if self.use_colors:
            prefix = self.COLOURS.get(record.levelno, "") + prefix + "\x1b[0m"
        record.__dict__["levelprefix"] = prefix + ColourFormatter.process_tag
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """--log-json: one JSON object per line (a traceback goes in "exc_info", escaped, so
    the line stays one line): timestamp (RFC 3339, UTC), level, logger, message, pid."""

    def formatException(self, ei: ExcInfo) -> str:
        return format_exception(ei)

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {
            "timestamp": f"{stamp}.{int(record.msecs * 1000):06d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        return json.dumps(data)


# Whether configure_logging has run in this process: an embedded Server (built by the program,
# not by the command line) sets logging up itself only when nothing did (Server.serve).
configured = False


def configure_logging(config: Config) -> None:
    """Install fastserve's handlers, or the user's --log-config."""
    global configured
    configured = True
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
            if name == "fastserve.access" and (config.access_log_json or config.log_json):
                # One JSON object per line and nothing else: no level prefix.
                handler.setFormatter(logging.Formatter("%(message)s"))
            elif config.log_json:
                handler.setFormatter(JsonFormatter())
            else:
                handler.setFormatter(ColourFormatter("%(levelprefix)s%(message)s", use_colors))
            logger.addHandler(handler)
            logger.propagate = False
    level = config.log_level if isinstance(config.log_level, int) else LEVELS[config.log_level]
    logging.getLogger("fastserve").setLevel(level)
    logging.getLogger("fastserve.error").setLevel(level)
    logging.getLogger("fastserve.access").setLevel(level)


def _load_log_config(source: str | dict[str, Any] | configparser.RawConfigParser) -> None:
    """A dictConfig in JSON or YAML (by extension), else an INI fileConfig. Whatever is wrong
    with the file (syntax, unknown handler class...) is one ConfigError line, no traceback.
    From Python (uvicorn's Config takes them too): a dictConfig dict, or a parsed INI."""
    label = source if isinstance(source, str) else f"(a {type(source).__name__})"
    mapped: list[str] = []
    try:
        if isinstance(source, str):
            source = _read_log_config(source)
        if isinstance(source, configparser.RawConfigParser):
            _from_uvicorn_ini(source, mapped)
            logging.config.fileConfig(source, disable_existing_loggers=False)
        else:  # (a copy: dictConfig consumes parts of it, and a Config may be used again)
            logging.config.dictConfig(_from_uvicorn_dict(copy.deepcopy(source), mapped))
    except ConfigError:
        raise
    except Exception as exc:  # the file is the user's: any failure is a config error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot use --log-config {label}: {reason}") from None
    # dictConfig disables every existing logger the file does not name (unless it says
    # "disable_existing_loggers": false): a file that names none of fastserve's (or uvicorn's)
    # loggers would silence the server. Its records go to the file's root handlers instead.
    for name in ("fastserve", "fastserve.error", "fastserve.access"):
        logging.getLogger(name).disabled = False
    if mapped:
        logging.getLogger("fastserve.error").info(
            "--log-config %s: uvicorn's names used as fastserve's: %s", label, ", ".join(mapped)
        )


def _read_log_config(path: str) -> Any:
    """The file's dictConfig (JSON, YAML) or its parsed INI."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read --log-config {path}: {exc.strerror}") from None
    if path.endswith(".json"):
        return json.loads(text)
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    parser = configparser.ConfigParser()
    parser.read_string(text, path)
    return parser


# A --log-config written for uvicorn configures these loggers and formatters. fastserve
# logs under its own names, so the file's settings are moved onto them: one file serves both
# servers while a deployment switches (rather than configuring loggers nobody writes to,
# and disabling fastserve's: dictConfig's disable_existing_loggers defaults to true).
UVICORN_LOGGERS = {
    "uvicorn": "fastserve",
    "uvicorn.error": "fastserve.error",
    "uvicorn.access": "fastserve.access",
}
UVICORN_FORMATTERS = {
    "uvicorn.logging.DefaultFormatter": "fastserve.logs.DefaultFormatter",
    "uvicorn.logging.ColourizedFormatter": "fastserve.logs.DefaultFormatter",
    "uvicorn.logging.AccessFormatter": "fastserve.logs.AccessFormatter",
}


def _from_uvicorn_dict(data: Any, mapped: list[str]) -> Any:
    """The dictConfig with uvicorn's logger and formatter names replaced by fastserve's.
    A logger configured under both names keeps the fastserve one."""
    if not isinstance(data, dict):
        return data  # (dictConfig says what is wrong)
    loggers = data.get("loggers")
    if isinstance(loggers, dict):
        renamed: dict[str, Any] = {}
        for name, settings in loggers.items():
            ours = UVICORN_LOGGERS.get(name)
            if ours is None:
                renamed.setdefault(name, settings)
            elif ours not in loggers:
                renamed[ours] = settings
                mapped.append(f"{name} -> {ours}")
        data = {**data, "loggers": renamed}
    formatters = data.get("formatters")
    if isinstance(formatters, dict):
        data = {**data, "formatters": dict(formatters)}
        for name, settings in formatters.items():
            if not isinstance(settings, dict):
                continue
            for key in ("()", "class"):
                ours = UVICORN_FORMATTERS.get(settings.get(key, ""))
                if ours is not None:
                    data["formatters"][name] = {**settings, key: ours}
                    mapped.append(f"{settings[key]} -> {ours}")
    return data


def _from_uvicorn_ini(parser: configparser.RawConfigParser, mapped: list[str]) -> None:
    """The same for an INI file: loggers by their `qualname`, formatters by their `class`."""
    taken = {parser.get(s, "qualname", fallback="", raw=True) for s in parser.sections()}
    for section in parser.sections():
        qualname = parser.get(section, "qualname", fallback="", raw=True)
        ours = UVICORN_LOGGERS.get(qualname)
        if section.startswith("logger_") and ours is not None and ours not in taken:
            parser.set(section, "qualname", ours)
            mapped.append(f"{qualname} -> {ours}")
        cls = parser.get(section, "class", fallback="", raw=True)
        ours = UVICORN_FORMATTERS.get(cls)
        if section.startswith("formatter_") and ours is not None:
            parser.set(section, "class", ours)
            mapped.append(f"{cls} -> {ours}")


class DefaultFormatter(ColourFormatter):
    """Stands in for uvicorn.logging.DefaultFormatter in a --log-config written for uvicorn:
    the same arguments, `%(levelprefix)s` included."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        use_colors: bool | None = None,
        **_: Any,
    ) -> None:
        colours = sys.stdout.isatty() if use_colors is None else use_colors
        super().__init__(fmt, colours, datefmt, style)


# uvicorn's access records carry their fields as arguments; fastserve's carry the line
# (`1.2.3.4:5678 - "GET / HTTP/1.1" 200 5 0.21ms`), so uvicorn's default access format
# becomes the message, and any other use of those fields reads "-".
_UVICORN_ACCESS = '%(client_addr)s - "%(request_line)s" %(status_code)s'
_UVICORN_FIELDS = ("client_addr", "request_line", "status_code")


class AccessFormatter(DefaultFormatter):
    """Stands in for uvicorn.logging.AccessFormatter in a --log-config written for uvicorn."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        if fmt is not None:
            fmt = fmt.replace(_UVICORN_ACCESS, "%(message)s")
        super().__init__(fmt, *args, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        for name in _UVICORN_FIELDS:
            record.__dict__.setdefault(name, "-")
        return super().formatMessage(record)


def version() -> str:
    # The package is imported before any of its modules; `from . import __version__` would
    # be an import cycle through main as tests/test_imports.py reads them.
    return str(getattr(sys.modules[__package__ or "fastserve"], "__version__", "?"))


def build_name() -> str:
    """ "compiled" or "pure Python": which build of the hot path runs."""
    # Compiled all or nothing (setup.py): where cycle.py's module comes from says which
    # (as cli.hot_path_compiled, which this module cannot import).
    spec = importlib.util.find_spec("fastserve.protocols.cycle")
    origin = (spec.origin if spec is not None else None) or ""
    compiled = origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return "compiled" if compiled else "pure Python"


def banner(config: Config, workers: int) -> str:
    """One startup line, printed once (by the supervisor with --workers): what runs, and how.

    `fastserve 1.2.0 (compiled, CPython 3.12.3), pid 4242, loop uvloop,
    protocols HTTP/1.1 HTTP/2 WebSocket, workers 4`"""
    from .metrics import loop_name
    from .protocols import WS, http2_upgrade

    python = f"{platform.python_implementation()} {platform.python_version()}"
    protocols = ["HTTP/1.1"]
    if http2_upgrade(config) is not None:
        protocols.append("HTTP/2")
    if WS.load(config.ws) is not None:
        protocols.append("WebSocket")
    return (
        f"fastserve {version()} ({build_name()}, {python}), pid {os.getpid()}, "
        f"loop {loop_name(config)}, protocols {' '.join(protocols)}, workers {workers}"
    )


class FieldMap(dict[str, Any]):
    """`%(name)s` lookups, plus `%({header}i)s` for a request header's value (a dict subclass:
    kept out of accesslog.py, which is compiled and cannot subclass dict)."""

    def __init__(self, values: dict[str, Any], scope: dict[str, Any]) -> None:
        super().__init__(values)
        self.scope = scope

    def __missing__(self, key: str) -> str:
        if key.startswith("{") and key.endswith("}i"):
            wanted = key[1:-2].lower().encode("latin-1")
            for name, value in self.scope["headers"]:
                if name == wanted:
                    return escape(value.decode("latin-1"))
        return "-"


class MessageLog:
    """--log-level debug: a line when a request starts and when it ends; trace: every ASGI
    message too, as uvicorn's trace level shows them (bodies as their size). The app is
    wrapped only at those levels (Server.wrap_middleware), so they cost nothing otherwise."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = logging.getLogger("fastserve.error")
        self.trace = self.log.isEnabledFor(TRACE)
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.count += 1
        n = self.count
        log, trace = self.log, self.trace
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        kind = scope["type"]
        if trace:
            log.log(TRACE, "%s - ASGI [%d] Started scope=%s", who, n, _loggable(scope))
        if kind != "lifespan":
            target = escape(scope.get("raw_path", b"").decode("latin-1") or scope["path"])
            what = f"{scope.get('method', 'WebSocket')} {target} HTTP/{scope['http_version']}"
            log.debug("%s - %s start: %s", who, "request" if kind == "http" else kind, what)
        status: list[Any] = [None]

        async def logged_receive() -> Any:
            message = await receive()
            if trace:
                log.log(TRACE, "%s - ASGI [%d] Receive %s", who, n, _loggable(message))
            return message

        async def logged_send(message: Any) -> None:
            if trace:
                log.log(TRACE, "%s - ASGI [%d] Send %s", who, n, _loggable(message))
            mtype = message.get("type")
            if mtype in ("http.response.start", "websocket.http.response.start"):
                status[0] = message.get("status")
            elif mtype == "websocket.accept":
                status[0] = 101
            await send(message)

        try:
            await self.app(scope, logged_receive, logged_send)
        except BaseException as exc:
            if trace:
                log.log(TRACE, "%s - ASGI [%d] Raised %r", who, n, exc)
            if kind != "lifespan":
                log.debug("%s - %s end: raised %s", who, kind, type(exc).__name__)
            raise
        if trace:
            log.log(TRACE, "%s - ASGI [%d] Completed", who, n)
        if kind != "lifespan":
            what = "request" if kind == "http" else kind
            log.debug("%s - %s end: status %s", who, what, status[0])


def _loggable(message: Any) -> str:
    """A message or scope for the trace log: bodies and byte strings as their size."""
    shown = {}
    for key, value in dict(message).items():
        if key in ("body", "bytes") and isinstance(value, bytes | bytearray):
            shown[key] = f"<{len(value)} bytes>"
        elif key == "text" and isinstance(value, str) and len(value) > 80:
            shown[key] = f"<{len(value)} chars>"
        elif key in ("state", "app"):
            continue
        else:
            shown[key] = value
    return escape(repr(shown))
