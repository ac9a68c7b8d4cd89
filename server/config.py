"""Every setting of the server, in one frozen, typed place.

`Config` is data: the CLI options are generated from its fields (see `cli.py`), so each
setting is spelled once here, with its default, its help text and the reason for the default.
Loading the app, binding sockets and building TLS contexts are plain functions that raise
`ConfigError`; only the CLI turns that into an exit code.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import socket
import ssl
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .types import ASGIApp

STARTUP_FAILURE = 3  # exit code for "could not start": bad app, port in use, lifespan failed


class ConfigError(ValueError):
    """A user mistake in the configuration (bad APP string, port in use...). No traceback."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting of the wrong type, given from Python (`Config(port="80")`)."""


def opt(default: Any, help: str, **cli: Any) -> Any:
    """A Config field with its CLI metadata (`cli.py` reads it)."""
    cli["help"] = help
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=cli)
    return field(default=default, metadata=cli)


def internal(default: Any = None) -> Any:
    """A Config field that has no CLI option (set from Python only)."""
    return field(default=default, metadata={"internal": True})


# zuvloop, none: uvicorn's names (loops/__init__.py says what runs for them).
LoopName = Literal["auto", "uvloop", "asyncio", "proactor", "zuvloop", "none"]
LifespanMode = Literal["auto", "on", "off"]
InterfaceName = Literal["auto", "asgi3", "asgi2", "wsgi"]


@dataclass(frozen=True, slots=True)
class Config:
    """The server's settings. Every field is also a CLI option and a FASTSERVE_<NAME> variable."""

    app: ASGIApp | str = internal("")
    # -- where to listen -------------------------------------------------------------------
    host: str = opt("127.0.0.1", "Bind to this address.")
    port: int = opt(8000, "Bind to this port (0 picks a free one and prints it).")
    uds: str | None = opt(None, "Bind to this UNIX domain socket.")
    fd: int | None = opt(None, "Serve on an already bound socket with this file descriptor.")
    # 2048 as uvicorn and gunicorn; the kernel caps it at net.core.somaxconn.
    backlog: int = opt(2048, "Maximum number of pending connections in the listen queue.")
    reuse_port: bool = opt(False, "Each worker binds its own SO_REUSEPORT listener.")
    # -- the application ----------------------------------------------------------------------
    factory: bool = opt(False, "Treat APP as a zero-argument callable that returns the app.")
    app_dir: str = opt("", "Look for APP in this directory (put first on sys.path).")
    interface: InterfaceName = opt(
        "auto", "Application interface.", choices=["auto", "asgi3", "asgi2", "wsgi"]
    )
    lifespan: LifespanMode = opt("auto", "Lifespan protocol.", choices=["auto", "on", "off"])
    root_path: str = opt("", "ASGI root_path: the prefix the app is mounted under.")
    env_file: str | None = opt(None, "Read environment variables from this file first.")
    # uvicorn's opt-in (CPython issue 140947): context variables set before serving (at import,
    # by instrumentation) are hidden from requests. Off, a request starts from a copy of the
    # server's context; the lifespan's and other requests' variables never reach it either way.
    reset_contextvars: bool = opt(False, "Run each request in a new, empty contextvars.Context.")
    # -- event loop and protocols ----------------------------------------------------------------
    loop: LoopName = opt(
        "auto",
        "Event loop implementation ('zuvloop' runs uvloop, with a warning; 'none': the asyncio "
        "policy's loop).",
        choices=["auto", "uvloop", "asyncio", "proactor", "zuvloop", "none"],
    )
    # The names are the registry's (protocols/__init__.py), which checks them at startup.
    http: str = opt("auto", "HTTP implementation ('h11' runs httptools, with a warning).")
    ws: str = opt(
        "auto", "WebSocket implementation ('none': upgrades reach the app as plain HTTP)."
    )
    # None: HTTP/2 when zttp is installed (the `standard` extra); --http2 insists on it.
    http2: bool | None = opt(
        None, "HTTP/2: ALPN h2 over TLS and prior-knowledge h2c (default: on if zttp is installed)."
    )
    # RFC 9113 §6.5.2 recommends no fewer than 100; nginx, h2o and uvicorn use 100 (128: zttp).
    http2_max_concurrent_streams: int = opt(
        100, "HTTP/2 streams open at once per connection (more are refused: REFUSED_STREAM)."
    )
    # RFC 9113's default window; more lets an upload run further ahead of WINDOW_UPDATEs on a
    # long round trip. Not below it: zttp credits request bodies as they arrive (docs/http2.md).
    http2_initial_window_size: int = opt(
        65535,
        "HTTP/2 receive window of each stream and of the connection, in bytes (65535-2^31-1).",
    )
    ws_max_size: int = opt(16 * 1024 * 1024, "Largest WebSocket message accepted, in bytes.")
    ws_max_queue: int = opt(32, "Incoming WebSocket messages buffered before reading pauses.")
    ws_ping_interval: float | None = opt(20.0, "Seconds between WebSocket keepalive pings.")
    ws_ping_timeout: float | None = opt(20.0, "Seconds to wait for a pong before closing (1011).")
    # A value (`--ws-per-message-deflate false`), not a flag pair: uvicorn's spelling.
    ws_per_message_deflate: bool = opt(
        True, "Negotiate permessage-deflate (true/false).", takes_value=True
    )
    # -- response defaults ----------------------------------------------------------------------
    server_header: bool = opt(True, "Send 'server: fastserve'.")
    date_header: bool = opt(True, "Send a 'date' header (cached, refreshed once a second).")
    headers: list[str] = opt(
        [],
        "Extra default response header 'Name: value' (repeatable).",
        cli="--header",
        multiple=True,
    )
    # -- limits (RFC 9112 leaves them to the server; defaults follow gunicorn/nginx) -------------
    limit_concurrency: int | None = opt(
        None, "In-flight requests above this get an immediate 503 (idle connections don't count)."
    )
    limit_max_requests: int | None = opt(None, "A worker retires after this many requests.")
    limit_max_requests_jitter: int = opt(0, "Random extra requests (0..N) before retiring.")
    limit_request_line: int = opt(8190, "Longest request target (URI) in bytes (414 above).")
    limit_request_fields: int = opt(100, "Most request header fields (431 above).")
    limit_request_field_size: int = opt(
        8190, "Longest request header field (name + value) in bytes (431 above)."
    )
    limit_request_body: int | None = opt(None, "Largest request body in bytes (413 above).")
    # -- timeouts ----------------------------------------------------------------------------
    timeout_keep_alive: float = opt(5.0, "Close idle keep-alive connections after this many s.")
    timeout_request_header: float = opt(10.0, "The request head must arrive within this many s.")
    timeout_request_body: float = opt(
        60.0, "Close a connection whose request body stalls this long."
    )
    timeout_graceful_shutdown: float | None = opt(
        30.0, "On shutdown, wait this long for in-flight requests before cancelling them."
    )
    timeout_worker_healthcheck: float = opt(
        30.0, "Replace a worker whose loop is blocked this long."
    )
    # -- processes ---------------------------------------------------------------------------
    workers: str | None = opt(
        None, "Number of worker processes, or 'auto' (2 x CPUs + 1); default $WEB_CONCURRENCY or 1."
    )
    # granian's options (recycling.py): leaking apps are recycled, the replacement first.
    workers_max_rss: int | None = opt(
        None, "Replace a worker whose resident memory exceeds this many MiB (Linux)."
    )
    workers_lifetime: float | None = opt(
        None, "Replace each worker after this many seconds (each gets up to 10 % more)."
    )
    gc_tune: bool = opt(
        True,
        "Freeze the startup heap (gc.freeze) and run gen-0 collections 10x less often (more "
        "rarely still while many requests run at once); with "
        "glibc, also let malloc keep 8 MiB of free heap instead of trimming it and take "
        "blocks up to 4 MiB from the heap (unless MALLOC_TRIM_THRESHOLD_ or "
        "MALLOC_MMAP_THRESHOLD_ is set).",
    )
    eager_start: bool = opt(
        True,
        "Python 3.12+: run each request's app at once in an eager task; small responses then "
        "leave together at the end of the event-loop pass. Off: the app starts on the next "
        "pass, as with uvicorn.",
    )
    preload: bool = opt(False, "Import the app in the supervisor before forking workers.")
    pid: str | None = opt(None, "Write the supervisor's pid to this file.")
    # Read by the container image's HEALTHCHECK (server/healthcheck.py): the port, scheme and
    # address the server really uses, whichever way they were set.
    listen_file: str | None = opt(
        None, "Write the URLs the server listens on to this file, one a line (health checks)."
    )
    reload: bool = opt(False, "Restart when Python files change (development).")
    reload_dirs: list[str] = opt(
        [], "Directories to watch with --reload.", cli="--reload-dir", multiple=True
    )
    # uvicorn's patterns and defaults (reload.py): '*.py' in, '.*', '.py[cod]', '.sw.*', '~*' out.
    reload_includes: list[str] = opt(
        [],
        "Glob of files whose changes restart (repeatable; '*.py' is always in unless excluded).",
        cli="--reload-include",
        multiple=True,
    )
    reload_excludes: list[str] = opt(
        [],
        "Glob or directory whose changes are ignored (repeatable; default '.*', '.py[cod]', "
        "'.sw.*', '~*').",
        cli="--reload-exclude",
        multiple=True,
    )
    reload_delay: float = opt(0.25, "Seconds changes are gathered before a --reload restart.")
    # -- proxies ------------------------------------------------------------------------------
    # On, trusting loopback only, as uvicorn (docs/production.md: each decision and why).
    proxy_headers: bool = opt(
        True, "Take the client's address and scheme from X-Forwarded-For/-Proto of trusted peers."
    )
    # None: $FORWARDED_ALLOW_IPS, else loopback (uvicorn's default and variable); resolved in
    # __post_init__, so the field holds a string from then on.
    forwarded_allow_ips: str = opt(
        None,
        "Comma-separated IPs/CIDRs, 'unix' or '*' whose proxy headers are trusted "
        "(default: $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1).",
    )
    # Off, as uvicorn (which never reads them) and Werkzeug's ProxyFix (x_host=0): a proxy that
    # does not set X-Forwarded-Host passes the client's own on, which would then replace Host.
    forwarded_host: bool = opt(
        False, "Also take Host and port from X-Forwarded-Host/-Port of trusted peers."
    )
    # Off, as uvicorn: nginx and most proxies pass a client's Forwarded header on untouched.
    forwarded_rfc7239: bool = opt(
        False, "Also read RFC 7239 Forwarded from trusted peers (when no X-Forwarded-For)."
    )
    proxy_protocol: bool = opt(False, "Expect a PROXY protocol v1/v2 header from trusted peers.")
    # -- TLS ----------------------------------------------------------------------------------
    ssl_certfile: str | None = opt(None, "TLS certificate file (PEM).")
    ssl_keyfile: str | None = opt(None, "TLS private key file (PEM).")
    ssl_keyfile_password: str | None = opt(None, "Password of the TLS private key.")
    ssl_ca_certs: str | None = opt(None, "CA bundle to verify client certificates.")
    ssl_cert_reqs: int = opt(0, "Client certificate: 0 none, 1 optional, 2 required (mTLS).")
    # uvicorn's: an ssl.PROTOCOL_* number; 17 (PROTOCOL_TLS_SERVER) and 2 (PROTOCOL_TLS) are
    # TLS 1.2 and 1.3, 5 (PROTOCOL_TLSv1_2) TLS 1.2 only; 3/4 (TLS 1.0/1.1): see tls.py.
    ssl_version: int = opt(
        int(ssl.PROTOCOL_TLS_SERVER), "ssl.PROTOCOL_* number: 17/2 TLS 1.2+, 5 TLS 1.2 only."
    )
    # None keeps Python's list (ECDHE/DHE with AES-GCM/ChaCha20 only); TLS 1.3 suites are fixed.
    ssl_ciphers: str | None = opt(None, "OpenSSL cipher string for TLS 1.2 (default: Python's).")
    # -- CORS ---------------------------------------------------------------------------------
    cors_allow_origins: list[str] = opt(
        [], "Allowed CORS origin (repeatable; '*' for any).", multiple=True
    )
    cors_allow_methods: str = opt("GET,POST,PUT,PATCH,DELETE,OPTIONS,HEAD", "CORS methods.")
    cors_allow_headers: str = opt("", "Comma-separated request headers allowed by CORS.")
    cors_allow_credentials: bool = opt(False, "Allow credentials in CORS requests.")
    cors_max_age: int = opt(600, "Seconds browsers may cache a preflight answer.")
    # -- logging ------------------------------------------------------------------------------
    # From Python also a number (logging.INFO), as uvicorn takes.
    log_level: str | int = opt(
        "info", "Log level.", choices=["critical", "error", "warning", "info", "debug", "trace"]
    )
    # From Python also a dictConfig dict or a configparser.RawConfigParser, as uvicorn takes.
    log_config: str | dict[str, Any] | None = opt(
        None, "Logging configuration: dictConfig JSON/YAML or INI file."
    )
    access_log: bool = opt(True, "Write one access log line per request.")
    access_log_format: str | None = opt(None, "Access log format with %(name)s fields.")
    access_log_json: bool = opt(False, "Write the access log as one JSON object per line.")
    use_colors: bool | None = opt(None, "Colour the log output (default: when on a terminal).")
    log_json: bool = opt(
        False, "Write the error log (fastserve.error) as one JSON object per line too."
    )
    # -- metrics (docs/metrics.md) -----------------------------------------------------------
    metrics: bool = opt(
        False, "Serve Prometheus metrics on --metrics-address:--metrics-port (/metrics)."
    )
    # Loopback by default: metrics tell an outsider the traffic and the version run.
    metrics_address: str = opt("127.0.0.1", "Address the metrics listener binds to.")
    # granian's --metrics-port default; Prometheus exporters each take a port of their own.
    metrics_port: int = opt(9090, "Port of the metrics listener (0 picks a free one).")
    h11_max_incomplete_event_size: int | None = opt(
        None, "Accepted for uvicorn compatibility: caps the request head size."
    )
    # -- set from Python only -------------------------------------------------------------------
    sockets: Sequence[socket.socket] | None = internal(None)
    install_signal_handlers: bool = internal(True)
    # uvicorn's: awaited every timeout_notify seconds while the server runs (uvicorn's gunicorn
    # worker tells the arbiter it is alive this way).
    callback_notify: Callable[[], Awaitable[None]] | None = internal(None)
    timeout_notify: float = internal(30.0)
    # uvicorn's: (config, default_factory) -> the server's SSLContext (tls.create_ssl_context).
    ssl_context_factory: Callable[[Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = (
        internal(None)
    )

    def __post_init__(self) -> None:
        # Checked here so a bad value is a ConfigError at startup, not when serving begins;
        # the values uvicorn's Config takes become this Config's (header pairs, os.PathLike
        # paths, an int workers count...).
        for name, value in normalised(self).items():
            object.__setattr__(self, name, value)
        for item in self.headers:
            parse_header(item)
        if not 65535 <= self.http2_initial_window_size <= 2**31 - 1:
            raise ConfigError(
                f"--http2-initial-window-size {self.http2_initial_window_size}: "
                "from 65535 to 2147483647 (RFC 9113 §6.9.2)"
            )
        if self.env_file:  # as uvicorn's Config: before $FORWARDED_ALLOW_IPS is read
            load_env_file(self.env_file)
        allowed: Any = self.forwarded_allow_ips
        if allowed is None:  # uvicorn's variable, read when the Config is made (as uvicorn)
            allowed = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
        elif not isinstance(allowed, str):  # uvicorn also takes a list
            allowed = ",".join(allowed)
        object.__setattr__(self, "forwarded_allow_ips", allowed)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def encoded_headers(self) -> list[tuple[bytes, bytes]]:
        """The --header values as (lower-case name, value) bytes, ready for the wire."""
        return [parse_header(item) for item in self.headers]

    @property
    def is_ssl(self) -> bool:
        return self.ssl_certfile is not None or self.ssl_context_factory is not None

    @property
    def max_head_size(self) -> int:
        """Cap on the whole request head: the line plus every field at its limit."""
        if self.h11_max_incomplete_event_size is not None:
            return self.h11_max_incomplete_event_size
        return self.limit_request_line + self.limit_request_fields * (
            self.limit_request_field_size + 2
        )


# RFC 9110 §5.1: a field name is a token. §5.5: a value is visible ASCII, obs-text, SP and HTAB;
# CR, LF and NUL (a header injected into every response) are refused.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def parse_header(item: str) -> tuple[bytes, bytes]:
    """One --header value, 'Name: value' (surrounding spaces ignored), as wire bytes."""
    if not isinstance(item, str):  # from Python: uvicorn's Config takes (name, value) pairs
        raise ConfigError(f"--header {item!r} is not a 'Name: value' string")
    name, sep, value = item.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise ConfigError(f"--header {item!r} is not 'Name: value'")
    if not _FIELD_VALUE.fullmatch(value):
        raise ConfigError(f"--header {item!r}: the value has a control or non-Latin-1 character")
    return name.lower().encode("ascii"), value.encode("latin-1")


_NO_VALUE = object()
_HINTS: dict[str, Any] = {}


def normalised(config: Config) -> dict[str, Any]:
    """Each field checked against its annotation; the fields whose value changes form (a
    uvicorn-typed value: `headers=[("X-A", "1")]`, `workers=4`, a pathlib.Path...), with the
    value this Config holds. A wrong type is a ConfigTypeError, a wrong value a ConfigError,
    both naming the field."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Config))
    changed: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.name in ("app", "sockets"):
            continue
        value = getattr(config, f.name)
        new = _special(f.name, value)
        if new is _NO_VALUE:
            new = _check(f.name, value, _HINTS[f.name])
        choices = f.metadata.get("choices")
        if choices and isinstance(new, str) and new not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"Config {f.name}: {new!r} is not one of {listed}")
        if new is not value:
            changed[f.name] = new
    return changed


def _special(name: str, value: Any) -> Any:
    """The fields whose uvicorn forms need more than the annotation says."""
    if name == "headers" and isinstance(value, list | tuple):
        # uvicorn: (name, value) pairs; here: "Name: value" strings (the --header form).
        out = []
        for item in value:
            if isinstance(item, tuple | list) and len(item) == 2:
                item = f"{_text(name, item[0])}: {_text(name, item[1])}"
            out.append(_text(name, item))
        return out
    if name in ("reload_dirs", "reload_includes", "reload_excludes", "cors_allow_origins"):
        if value is None:
            return []
        if isinstance(value, str | os.PathLike):
            return [os.fspath(value)]
    if name == "workers" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # uvicorn's is an int; "auto" is fastserve's
    if name == "log_level":
        if value is None:  # uvicorn's "leave the levels alone"
            return "info"
        if isinstance(value, str) and value.lower() != value:
            return _check(name, value.lower(), _HINTS[name])
    if name == "log_config" and isinstance(value, configparser.RawConfigParser):
        return value
    if name == "forwarded_allow_ips":
        return value  # resolved in __post_init__ (None: $FORWARDED_ALLOW_IPS)
    if name == "ssl_version" and isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # ssl.PROTOCOL_* is an IntEnum
    return _NO_VALUE


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ConfigTypeError(f"Config {name}: expected text, got {type(value).__name__} {value!r}")


def _check(name: str, value: Any, hint: Any) -> Any:
    """`value` as a `hint` (maybe converted: a path to str, an int to float), or an error."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    literals = [
        a for o in options if typing.get_origin(o) is typing.Literal for a in typing.get_args(o)
    ]
    if value is None:
        if type(None) in options:
            return value
    elif literals and value in literals:
        return value
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if option is str and isinstance(value, str | os.PathLike):
            return os.fspath(value)
        if typing.get_origin(option) is list and isinstance(value, list | tuple):
            return [_check(name, item, typing.get_args(option)[0]) for item in value]
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return value
        # (Kinds of field this Config has none of yet: taken as their annotation says.)
        if option is Any or (typing.get_origin(option) is Callable and callable(value)):
            return value
        if isinstance(option, type) and option not in (int, float) and isinstance(value, option):
            return value
    if literals:
        choices = ", ".join(repr(a) for a in literals)
        raise ConfigError(f"Config {name}: {value!r} is not one of {choices}")
    wanted = " or ".join(_type_name(o) for o in options)
    raise ConfigTypeError(f"Config {name}: expected {wanted}, got {type(value).__name__} {value!r}")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def config_fields() -> list[dataclasses.Field[Any]]:
    """The fields that are CLI options, in declaration order."""
    return [f for f in dataclasses.fields(Config) if not f.metadata.get("internal")]


def load_env_file(path: str) -> None:
    """Read KEY=VALUE lines (with optional 'export ' and quotes) into os.environ."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read --env-file {path}: {exc.strerror}") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key.strip(), value)
