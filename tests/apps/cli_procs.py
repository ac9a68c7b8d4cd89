"""The `fastserve` command as a subprocess, for the CLI tests: stdout and stderr read line by
line, the URL from the startup line, an environment without FASTSERVE_*/UVICORN_* settings.
(The supervisor's tests have their own runner, `workers_procs.Fastserve`, which also tracks
worker processes.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTUP = re.compile(r"fastserve running on (\S+)")
HELLO = "examples.hello:app"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSERVE_", "UVICORN_"))}
    env.pop("WEB_CONCURRENCY", None)
    env.update(extra)
    return env


class ServerProcess:
    """A fastserve subprocess whose stdout/stderr lines are collected by reader threads."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> None:
        self.proc = subprocess.Popen(
            cmd,
            cwd=kw.pop("cwd", REPO),
            env=env or clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, lines: list[str] | None = None, timeout: float = 15) -> str:
        """The first line (of stderr by default) matching `pattern`."""
        lines = self.err if lines is None else lines
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not any(r.is_alive() for r in self.readers):
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}; stderr: {self.err}")

    def url(self) -> str:
        match = STARTUP.search(self.wait_for(STARTUP.pattern))
        assert match is not None
        return match.group(1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def fastserve_cmd(*args: str) -> list[str]:
    return [str(BIN / "fastserve"), *args]


def run_cli(*args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fastserve_cmd(*args),
        cwd=REPO,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
