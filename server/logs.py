"""Logging set-up: levels, handlers and formatters, and the helpers the access log uses.

The access log itself (on the hot path, compiled with the protocols: see setup.py) is in
accesslog.py.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .config import Config, ConfigError

if TYPE_CHECKING:
    pass

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
