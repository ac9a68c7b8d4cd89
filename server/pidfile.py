"""--pid: the pid file. Written at startup by whichever process owns the server (the single
server process, or the supervisor), removed at exit only if it still names that process."""

from __future__ import annotations

import os

from .config import ConfigError


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
