"""fastserve inside gunicorn: `gunicorn -k fastserve.workers.FastserveWorker app:app`.

Not to be confused with `worker.py` (singular), which is fastserve's *own* worker process,
forked by fastserve's supervisor (`--workers N`). This module is for deployments whose process
manager is gunicorn's arbiter instead: gunicorn binds the sockets, forks, restarts and signals
the processes; each one runs fastserve's `Server` (HTTP/1.1, WebSockets, HTTP/2, lifespan) on
the sockets gunicorn hands over. gunicorn is an optional dependency (`fastserve[gunicorn]`).

The worker-class contract (gunicorn's documentation, "Design" and "Server hooks", and its base
`Worker`): the arbiter builds the object before the fork; in the child `init_process()` sets
signals up, loads the app (`self.wsgi`) and calls `run()`, which must call `self.notify()`
more often than every `self.timeout` seconds (half of `--timeout`), or the arbiter sends
SIGABRT and then SIGKILL. The arbiter's signals to a worker: SIGTERM graceful stop (after a
HUP, a TTOU, a stop), SIGQUIT and SIGINT quick stop, SIGUSR1 reopen the log files, SIGABRT
timed out.

gunicorn settings with a fastserve meaning become `Config` fields (`config_from_gunicorn`);
what gunicorn cannot express can be set in `CONFIG_KWARGS` of a subclass, as with uvicorn's
worker class.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from .config import Config, ConfigError
from .importer import adapt_interface
from .loops import get_loop_factory
from .server import Server, StartupFailed
from .worker import Stopper

log = logging.getLogger("fastserve.error")

# gunicorn's limits (gunicorn/http/message.py): the request line is capped at 8190 bytes and
# 0 means "unlimited", which its parser caps at 1 MiB; at most 32768 header fields (0 or
# more: 32768); a field size of 0 or less means its default, 8190.
GUNICORN_MAX_LINE = 8190
GUNICORN_UNLIMITED_LINE = 1024 * 1024
GUNICORN_MAX_FIELDS = 32768
GUNICORN_FIELD_SIZE = 8190


def request_line_limit(value: int) -> int:
    if value < 0:
        return GUNICORN_MAX_LINE
    if value == 0:
        return GUNICORN_UNLIMITED_LINE
    return min(value, GUNICORN_MAX_LINE)


def request_fields_limit(value: int) -> int:
    return GUNICORN_MAX_FIELDS if value <= 0 or value > GUNICORN_MAX_FIELDS else value


def field_size_limit(value: int) -> int:
    return GUNICORN_FIELD_SIZE if value <= 0 else value


def drain_time(graceful_timeout: float) -> float:
    """The arbiter SIGKILLs a stopping worker `graceful_timeout` seconds after SIGTERM. The
    drain gets that minus a margin (1 s, or a fifth of a short timeout) in which fastserve
    cancels what is still running and runs the app's lifespan shutdown."""
    return max(0.0, graceful_timeout - min(1.0, graceful_timeout / 5))


# -- the access log format ---------------------------------------------------------------------

# gunicorn's %(t)s: the time the line is written, `[10/Oct/2000:13:55:36 -0700]`. fastserve's
# lines carry no time field, so the format gets this marker (a NUL: request data in a line is
# escaped, so it never holds one) and a filter on the access logger puts the time in.
TIME_MARK = "\x00t"
# gunicorn's atoms (docs: "access_log_format") -> fastserve's fields (accesslog.access_fields)
# or fixed text. %(u)s is the Basic-auth user name; fastserve does not decode credentials into
# its logs, so it is always "-", as gunicorn writes it for requests without one.
ATOMS = {
    "h": "%(client_addr)s",
    "l": "-",
    "u": "-",
    "t": TIME_MARK,
    "r": "%(request_line)s",
    "m": "%(method)s",
    "U": "%(path)s",
    "q": "%(query)s",
    "H": "%(protocol)s",
    "s": "%(status)s",
    "B": "%(bytes)s",
    "b": "%(bytes)s",
    "f": "%(referer)s",
    "a": "%(user_agent)s",
    "D": "%(duration_us)s",
    "M": "%(duration_ms)d",
    "p": "<%(pid)s>",
}
_ATOM = re.compile(r"%\(([^)]*)\)([-#0 +]*\d*(?:\.\d+)?[a-zA-Z])")
_REQUEST_HEADER = re.compile(r"\{[^{}]+\}i")


def access_log_format(gunicorn_format: str) -> tuple[str, list[str]]:
    """gunicorn's access log format as a fastserve --access-log-format, and the atoms it has
    no equivalent for (%(T)s, %(L)s, response headers, environ), which become "-"."""
    missing: list[str] = []

    def atom(match: re.Match[str]) -> str:
        name, conversion = match.group(1), match.group(2)
        if name in ATOMS:
            return ATOMS[name]
        if _REQUEST_HEADER.fullmatch(name):
            return f"%({name.lower()}){conversion}"
        missing.append(f"%({name}){conversion}")
        return "-"

    # A literal "%%" stays as it is (both formats are %-formats).
    parts = gunicorn_format.split("%%")
    return "%%".join(_ATOM.sub(atom, part) for part in parts), missing


class AccessTime(logging.Filter):
    """Writes each access line's time where gunicorn's %(t)s stood."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and TIME_MARK in record.msg:
            stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(record.created))
            record.msg = record.msg.replace(TIME_MARK, stamp)
        return True


# -- gunicorn's settings -> Config -------------------------------------------------------------


def _setting(cfg: Any, name: str, default: Any) -> Any:
    """A setting newer gunicorns have (root_path, asgi_loop...), or `default` on older ones."""
    setting = cfg.settings.get(name)
    return default if setting is None else setting.get()


def config_from_gunicorn(cfg: Any, access_log: bool, **extra: Any) -> tuple[Config, list[str]]:
    """The Config for gunicorn's settings `cfg`, and a warning line per setting fastserve
    cannot honour. `extra` (CONFIG_KWARGS) overrides."""
    warnings: list[str] = []
    options: dict[str, Any] = {
        "backlog": cfg.backlog,
        "timeout_keep_alive": float(cfg.keepalive),
        "timeout_graceful_shutdown": drain_time(float(cfg.graceful_timeout)),
        "limit_request_line": request_line_limit(cfg.limit_request_line),
        "limit_request_fields": request_fields_limit(cfg.limit_request_fields),
        "limit_request_field_size": field_size_limit(cfg.limit_request_field_size),
        # As uvicorn's gunicorn worker: X-Forwarded-For/-Proto are honoured from gunicorn's
        # --forwarded-allow-ips (default $FORWARDED_ALLOW_IPS, else the loopback addresses).
        "proxy_headers": True,
        "forwarded_allow_ips": ",".join(cfg.forwarded_allow_ips),
        "access_log": access_log,
        "root_path": _setting(cfg, "root_path", ""),
        "loop": _setting(cfg, "asgi_loop", "auto"),
        "lifespan": _setting(cfg, "asgi_lifespan", "auto"),
        "http2_max_concurrent_streams": _setting(cfg, "http2_max_concurrent_streams", 100),
    }
    ws_max = _setting(cfg, "websocket_max_message_size", None)
    if ws_max:
        options["ws_max_size"] = ws_max
    protocols = _setting(cfg, "http_protocols", None)  # gunicorn 24+: ["h1"] unless told
    if protocols is not None:
        names = protocols.split(",") if isinstance(protocols, str) else protocols
        options["http2"] = "h2" in [str(name).strip() for name in names]
    proxy_protocol = _setting(cfg, "proxy_protocol", False)
    if proxy_protocol not in (False, None, "off"):
        options["proxy_protocol"] = True
        allowed = list(_setting(cfg, "proxy_allow_ips", cfg.forwarded_allow_ips))
        if allowed != list(cfg.forwarded_allow_ips):
            warnings.append(
                "fastserve trusts PROXY protocol headers from --forwarded-allow-ips; "
                "--proxy-allow-from is not used"
            )
    if cfg.is_ssl:
        ssl = cfg.ssl_options
        options.update(
            ssl_certfile=ssl.get("certfile"),
            ssl_keyfile=ssl.get("keyfile"),
            ssl_ca_certs=ssl.get("ca_certs"),
            ssl_cert_reqs=int(ssl.get("cert_reqs") or 0),
            ssl_ciphers=ssl.get("ciphers"),
        )
        hook = cfg.settings.get("ssl_context")
        if hook is not None and hook.get() is not type(hook).default:
            warnings.append("the ssl_context server hook is not used: fastserve builds its own")
    if access_log:
        fmt, missing = access_log_format(cfg.access_log_format)
        options["access_log_format"] = fmt
        if missing:
            warnings.append(
                "access_log_format: no fastserve equivalent for "
                + ", ".join(missing)
                + " (written as '-')"
            )
    options.update(extra)
    return Config(**options), warnings


# -- the worker ------------------------------------------------------------------------------


class FastserveWorker(Worker):
    """A gunicorn worker that serves an ASGI app (or a WSGI/ASGI2 one, adapted) with fastserve.

    Subclass it and set `CONFIG_KWARGS` for fastserve options gunicorn has no setting for:
        class MyWorker(FastserveWorker):
            CONFIG_KWARGS = {"limit_request_body": 10_000_000}
    """

    CONFIG_KWARGS: dict[str, Any] = {}

    server: Server | None = None
    stopper: Stopper | None = None
    beat: asyncio.TimerHandle | None = None

    def init_process(self) -> None:
        """In the child, before gunicorn loads the app: fastserve logs through gunicorn's
        handlers, so --error-logfile, --access-logfile and --log-level apply."""
        for name, source in (
            ("fastserve.error", self.log.error_log),
            ("fastserve.access", self.log.access_log),
        ):
            logger = logging.getLogger(name)
            logger.handlers = list(source.handlers)
            logger.setLevel(source.level)
            logger.propagate = False
        logging.getLogger("fastserve").setLevel(self.log.error_log.level)
        super().init_process()

    def init_signals(self) -> None:
        """gunicorn's handlers while the app loads (a SIGTERM then only clears `alive`); the
        event loop's from `serve()` on. SIGABRT (the arbiter's timeout) stays a plain
        handler, so that it also runs while the event loop is blocked."""
        super().init_signals()
        signal.signal(signal.SIGABRT, self.handle_abort)

    def handle_abort(self, sig: int, frame: Any) -> None:
        """Timed out: the arbiter's `worker_abort` hook (where users dump the stack), then
        exit at once, wherever the loop was stuck; SIGKILL follows if even that fails."""
        self.alive = False
        self.cfg.worker_abort(self)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(1)

    def run(self) -> None:
        access_log = bool(self.log.access_log.handlers)
        try:
            config, warnings = config_from_gunicorn(self.cfg, access_log, **self.CONFIG_KWARGS)
            app = adapt_interface(self.wsgi, config.interface)
        except (ConfigError, TypeError, ValueError) as exc:
            log.error("fastserve worker: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        for line in warnings:
            log.warning("%s", line)
        if TIME_MARK in (config.access_log_format or ""):
            logging.getLogger("fastserve.access").addFilter(AccessTime())
        server = Server(config.replace(install_signal_handlers=False))
        server.app = app
        if self.cfg.max_requests > 0:
            server.max_requests = self.max_requests  # gunicorn added the jitter
        self.server = server
        self.notify()
        try:
            with asyncio.Runner(loop_factory=get_loop_factory(config.loop)) as runner:
                runner.run(self.serve(server))
        except (ConfigError, StartupFailed) as exc:
            log.error("%s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if not server.started and self.alive:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def serve(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        self.stopper = Stopper(server)
        loop.add_signal_handler(signal.SIGTERM, self.graceful_stop)
        loop.add_signal_handler(signal.SIGQUIT, self.quick_stop)
        loop.add_signal_handler(signal.SIGINT, self.quick_stop)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        if not self.alive:  # SIGTERM while the app was loading
            return
        self.heartbeat()
        try:
            await server.serve(sockets=[listener.sock for listener in self.sockets])
        finally:
            if self.beat is not None:
                self.beat.cancel()

    def heartbeat(self) -> None:
        """Tell the arbiter the loop turns (a blocked loop misses it and gets killed), and
        stop when it is gone or gunicorn's reloader cleared `alive`."""
        self.notify()
        if self.ppid != os.getppid():
            log.info("fastserve worker [%d]: gunicorn's arbiter is gone; stopping", os.getpid())
            self.graceful_stop()
        elif not self.alive:
            self.graceful_stop()
        # self.timeout is half of --timeout: beat at least four times per --timeout.
        interval = max(0.05, min(1.0, self.timeout / 2))
        self.beat = asyncio.get_running_loop().call_later(interval, self.heartbeat)

    def graceful_stop(self) -> None:
        """SIGTERM: stop accepting, answer what is in flight (bounded by graceful_timeout)."""
        self.alive = False
        if self.stopper is not None and not self.stopper.stopping:
            self.stopper.stop(signal.SIGTERM, False)

    def quick_stop(self) -> None:
        """SIGQUIT / SIGINT: gunicorn's quick shutdown; in-flight requests are cancelled."""
        self.alive = False
        self.cfg.worker_int(self)
        if self.server is not None:
            self.server.force_exit = True
            self.server.handle_exit(signal.SIGQUIT)
