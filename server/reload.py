"""`--reload` (development): serve in a child process, restart it when Python files change.

The parent binds the socket once and hands it to each child by file descriptor, so `--port 0`
keeps its port across restarts and a connection arriving mid-restart waits in the listen queue
instead of being refused. Each child is a new interpreter (`sys.executable`), not a fork, so
it imports every module afresh: changed code is what it serves. The parent itself never
imports the app. File events come from watchfiles (inotify on Linux).

Which changes restart, as uvicorn's --reload-include/--reload-exclude say (`ReloadFilter`):
a file whose path matches an include glob ('*.py', plus --reload-include) and no exclude glob
('.*', '.py[cod]', '.sw.*', '~*', plus --reload-exclude; a default named in the other list is
dropped from its own), outside every directory given to --reload-exclude. Globs match from the
right, as pathlib's `PurePath.match` (uvicorn's too): '*.html' and 'templates/*' both work.
Whatever is included, watchfiles' usual noise stays out: `__pycache__`, `.git`, `.venv`,
`node_modules`..., editor swap and backup files. --reload-delay (0.25 s) is how long the
watcher waits for the changes to stop before restarting: a `git checkout` or a formatter run
is one restart, not one per file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .sockets import bind_sockets

log = logging.getLogger("fastserve.error")

# The server process composes main.serve_config with this module's child_config itself: main
# imports this module, so this module must not import main (the dependency runs one way).
CHILD_CODE = (
    "import sys; from fastserve.main import serve_config; from fastserve.reload import "
    "child_config; sys.exit(serve_config(child_config(sys.argv[1])))"
)
# The child gets this long beyond --timeout-graceful-shutdown before it is killed.
STOP_MARGIN = 2.0


def run_with_reload(config: Config) -> int:
    """Serve, restarting the server process on every change; returns on SIGINT/SIGTERM."""
    if not isinstance(config.app, str):
        raise ConfigError("--reload needs the app as an import string ('module:attribute')")
    try:
        import watchfiles
    except ImportError:
        raise ConfigError("--reload needs watchfiles: pip install 'fastserve[standard]'") from None
    dirs = [str(Path(d).resolve()) for d in (as_list(config.reload_dirs) or [os.getcwd()])]
    for directory in dirs:
        if not os.path.isdir(directory):
            raise ConfigError(f"--reload-dir {directory}: no such directory")
    if config.workers not in (None, "1"):
        log.warning("--reload runs one server process: --workers is ignored")
    if config.reload_delay < 0:
        raise ConfigError("--reload-delay must be 0 or more seconds")
    # watchfiles' `step`: how long no new change must come before a batch is yielded;
    # `debounce` (its default 1.6 s, or longer) caps the wait while changes keep coming.
    step = max(1, round(config.reload_delay * 1000))
    sockets = bind_sockets(config)
    metrics = None
    if config.metrics:  # served by this process: the counts outlive each server process
        from .metrics import ReloadMetrics

        metrics = ReloadMetrics(config)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    log.info("Started reloader [%d], watching %s", os.getpid(), ", ".join(dirs))
    child = start_child(config, sockets, metrics)
    try:
        for changes in watchfiles.watch(
            *dirs,
            watch_filter=ReloadFilter(
                as_list(config.reload_includes), as_list(config.reload_excludes)
            ),
            stop_event=stop,
            raise_interrupt=False,
            step=step,
            debounce=max(1600, step),
        ):
            names = sorted({Path(path).name for _, path in changes})
            log.warning("Changes detected in %s; restarting", ", ".join(names))
            stop_child(child, config)
            child = start_child(config, sockets, metrics)
    finally:
        stop_child(child, config)
        if metrics is not None:
            metrics.close()
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def as_list(value: list[str] | str) -> list[str]:
    """uvicorn's Config also takes one string for reload_dirs/_includes/_excludes."""
    return [value] if isinstance(value, str) else list(value)


# uvicorn's defaults (its FileFilter), which an explicit pattern in the other list removes.
DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")


class ReloadFilter:
    """Which changed paths restart the server (the module docstring says how); a watchfiles
    `watch_filter`. (watchfiles is optional: imported when --reload runs, not with this module.)"""

    def __init__(self, includes: list[str], excludes: list[str]) -> None:
        from watchfiles import DefaultFilter

        dirs = [Path(e).resolve() for e in excludes if os.path.isdir(e)]
        patterns = [e for e in excludes if not os.path.isdir(e)]
        self.includes = [p for p in DEFAULT_INCLUDES if p not in excludes] + list(includes)
        self.excludes = [p for p in DEFAULT_EXCLUDES if p not in includes] + patterns
        self.noise = DefaultFilter(ignore_paths=dirs)

    def __call__(self, change: Any, path: str) -> bool:
        p = Path(path)
        return (
            any(p.match(pattern) for pattern in self.includes)
            and not any(p.match(pattern) for pattern in self.excludes)
            and self.noise(change, path)
        )


def start_child(
    config: Config, sockets: list[socket.socket], metrics: Any = None
) -> subprocess.Popen[bytes]:
    """`metrics` (--metrics): a metrics.ReloadMetrics, which reads the child's reports."""
    fds = [sock.fileno() for sock in sockets]
    if metrics is None:
        payload = child_payload(config, fds)
        return subprocess.Popen([sys.executable, "-c", CHILD_CODE, payload], pass_fds=fds)
    read_fd, write_fd = os.pipe()
    payload = child_payload(config, fds, metrics_fd=write_fd)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, payload], pass_fds=[*fds, write_fd]
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    metrics.child_started(child.pid, read_fd)
    return child


def stop_child(child: subprocess.Popen[bytes], config: Config) -> None:
    """SIGTERM (the child drains as any server does), then SIGKILL after the graceful limit."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    timeout = config.timeout_graceful_shutdown
    try:
        child.wait(None if timeout is None else timeout + STOP_MARGIN)
    except subprocess.TimeoutExpired:
        log.warning("Server process [%d] did not stop in time; killing it", child.pid)
        child.kill()
        child.wait()


def child_payload(config: Config, fds: list[int], metrics_fd: int | None = None) -> str:
    """The child's Config as JSON: every CLI-settable field (plain data), minus the reload."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.name not in ("sockets", "install_signal_handlers", "callback_notify"):
            values[f.name] = getattr(config, f.name)
    values.update(reload=False, workers="1", pid=None, fd=None, uds=None, env_file=None)
    # The watching is the parent's (and main warns about these options without --reload).
    values.update(reload_dirs=[], reload_includes=[], reload_excludes=[])
    values["_fds"] = fds
    if metrics_fd is not None:
        values["_metrics_fd"] = metrics_fd
    return json.dumps(values)


def child_config(payload: str) -> Config:
    """The server process's Config, from `child_payload`'s JSON (`python -c CHILD_CODE JSON`)."""
    values = json.loads(payload)
    sockets = [socket.socket(fileno=fd) for fd in values.pop("_fds")]
    metrics_fd = values.pop("_metrics_fd", None)
    if metrics_fd is not None:  # its metrics go to the reloader (metrics.Reporter)
        from . import metrics

        metrics.report_fd = metrics_fd
    return Config(**values, sockets=sockets)
