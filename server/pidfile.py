"""--pid and --listen-file. Written at startup by whichever process owns the server (the
single server process, or the supervisor), removed at exit only if they are still its own."""

from __future__ import annotations

import logging
import os

from .config import ConfigError

log = logging.getLogger("fastserve.error")


def write_pid(path: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"cannot write --pid {path}: {exc.strerror}") from None


def remove_pid(path: str) -> None:
    """Remove the file unless another process has claimed it since (a newer server's)."""
    try:
        with open(path, encoding="ascii") as fh:
            if fh.read().strip() == str(os.getpid()):
                os.unlink(path)
    except (OSError, ValueError):
        pass


def write_listen_file(path: str, urls: list[str]) -> None:
    """The URLs, one a line, replaced atomically (a health check never reads half a file).
    A failure is a warning: only a health check reads the file, and a read-only root file
    system (Kubernetes, which ignores the image's HEALTHCHECK) must not stop the server."""
    temporary = f"{path}.{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{u}\n" for u in urls))
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot write --listen-file %s: %s", path, exc.strerror)


def remove_listen_file(path: str, urls: list[str]) -> None:
    """Remove the file unless another server has written its own since."""
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read().split() == urls:
                os.unlink(path)
    except OSError:
        pass
