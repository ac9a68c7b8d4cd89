"""Entry points shared by the CLI and the Python API: pick single process, workers or reload.

Imports run one way: this module uses `supervisor` and `reload`, which never import it (what
they share with it, the pid file, is in `pidfile`; a --reload server process starts through
`reload.CHILD_CODE`, which calls `serve_config` here). tests/test_imports.py checks it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .config import STARTUP_FAILURE, Config, ConfigError, load_env_file
from .logs import configure_logging
from .loops import implemented as implemented_loop
from .pidfile import write_pid
from .protocols import implemented
from .server import Server, StartupFailed
from .types import ASGIApp

log = logging.getLogger("fastserve.error")


def run(app: ASGIApp | str, **options: Any) -> None:
    """Serve `app` (an ASGI app or an "module:attr" string) with the given Config options.

    Blocks until the server stops. Raises SystemExit(3) if it cannot start.
    """
    code = serve_options(app, options)
    if code:
        raise SystemExit(code)


def serve_options(app: ASGIApp | str, options: dict[str, Any]) -> int:
    """Build the Config and serve it; returns the exit code. A bad value (a malformed
    --header...) is one error line and exit code 3, like every other config error."""
    try:
        config = Config(app=app, **options)
    except ConfigError as exc:
        # Logging is configured from a Config and there is none: the defaults it is then.
        configure_logging(Config())
        log.error("%s", exc)
        return STARTUP_FAILURE
    return serve_config(config)


def worker_count(config: Config) -> int:
    """--workers N, --workers auto, else $WEB_CONCURRENCY, else 1."""
    value = config.workers
    if value is None:
        value = os.environ.get("WEB_CONCURRENCY") or "1"
    if value == "auto":
        from .cpus import auto_workers

        return auto_workers()
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--workers must be a number or 'auto', got {value!r}") from None
    if count < 1:
        raise ConfigError("--workers must be at least 1")
    return count


def serve_config(config: Config) -> int:
    """Run the server the config describes; returns the process exit code."""
    try:
        if config.env_file:
            load_env_file(config.env_file)
        configure_logging(config)
        # Once, here: an unknown --http/--ws is an error before anything starts, and the
        # warning for a substituted name is one line, as workers and reload children get the
        # rewritten config.
        config = implemented_loop(implemented(config))
        workers = worker_count(config)
        if config.metrics:
            from .metrics import require_prometheus

            require_prometheus()
        if config.is_ssl:
            # Checked once here, so bad TLS files are one error line, not one per worker.
            from .tls import create_ssl_context, without_obsolete_version

            create_ssl_context(config)
            config = without_obsolete_version(config)
        if not config.reload and (
            config.reload_dirs or config.reload_includes or config.reload_excludes
        ):  # as uvicorn, which says so too
            log.warning("--reload-dir, --reload-include, --reload-exclude: need --reload")
        if config.reload:
            from .reload import run_with_reload

            return run_with_reload(config)
        # As PID 1 (a container's entrypoint) a single worker still runs under the supervisor:
        # it reaps orphaned processes, which a lone server cannot do without stealing the exit
        # statuses of the app's own subprocesses.
        as_init = os.getpid() == 1 and config.install_signal_handlers
        # Recycling replaces a worker with a new one first: a single process cannot.
        recycles = config.workers_max_rss is not None or config.workers_lifetime is not None
        if workers > 1 or (config.workers is not None and config.pid) or as_init or recycles:
            from .supervisor import Supervisor

            return Supervisor(config, workers).run()
        if config.pid:
            write_pid(config.pid)
        server = Server(config)
        # A SIGTERM that stopped it is not raised again into its default action (the end of
        # the process by that signal, uvicorn's exit status 143): a clean stop exits 0.
        server.reraise_to_default = False
        server.run()
    except (ConfigError, StartupFailed) as exc:
        log.error("%s", exc)
        return STARTUP_FAILURE
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m fastserve")
