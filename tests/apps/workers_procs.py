"""Helpers for the process-level tests of the supervisor, the reloader and the container
entrypoint: a fastserve subprocess whose stderr is read line by line, a raw-socket HTTP/1.1
client, and a bounded load loop."""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNING = re.compile(r"fastserve running on http://127\.0\.0\.1:(\d+)")


class Fastserve:
    """`python -m fastserve ARGS` (optionally behind a prefix such as `unshare ...`)."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        command: Sequence[str] | None = None,
        cwd: Path = ROOT,
        pass_fds: Sequence[int] = (),
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("WEB_CONCURRENCY", None)
        argv = [*(command or [sys.executable, "-m", "fastserve"]), *args]
        self.proc = subprocess.Popen(
            [*prefix, *argv],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,  # a listening socket to serve on (`--fd N`, gunicorn's fd://N)
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def count(self, pattern: str) -> int:
        with self.changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> None:
        """Block until `pattern` has appeared `count` times in stderr."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.count_locked(pattern) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no {count} x {pattern!r} in:\n" + self.log())
                self.changed.wait(min(left, 0.5))

    def count_locked(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_running(self, workers: int = 1, timeout: float = 15.0) -> int:
        """Wait for `workers` startup lines; returns the port."""
        self.wait_for(RUNNING.pattern, workers, timeout)
        with self.changed:
            for line in self.lines:
                match = RUNNING.search(line)
                if match:
                    return int(match.group(1))
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self, pid: int | None = None) -> list[int]:
        """The live child processes of `pid` (default: the fastserve process)."""
        return children(self.pid if pid is None else pid)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("fastserve did not exit:\n" + self.log()) from None

    def kill(self) -> None:
        """Last resort in a `finally`: kill the whole tree we started."""
        if self.proc.poll() is None:
            for pid in descendants(self.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Fastserve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def children(pid: int) -> list[int]:
    """Live (non-zombie) children of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                found.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return sorted(p for p in found if process_state(p) not in ("Z", "gone"))


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in children(pid):
        out.extend([child, *descendants(child)])
    return out


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


VERSIONED_APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{os.getpid()} VERSION".encode()})
"""


def write_app(module: Path, version: str) -> None:
    """(Re)write `module` as an app that answers "PID VERSION": which process served, and
    which code it imported (for --reload and SIGHUP)."""
    module.write_text(VERSIONED_APP.replace("VERSION", version))


def listeners(port: int) -> int:
    """How many TCP sockets listen on 127.0.0.1:`port` (state 0A in /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                count += 1
    return count


class StaleConnection(Exception):
    """A reused keep-alive connection was closed before any byte of the response arrived."""


class Client:
    """HTTP/1.1 GET over raw sockets. With keep_alive it reuses one connection and, as RFC 9112
    §9.3.1.1 allows for idempotent requests, retries once on a new connection when the reused
    one turns out to have been closed by the server; a new connection is never retried."""

    def __init__(self, port: int, keep_alive: bool = False, timeout: float = 10.0) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.retries = 0

    def get(self, path: str = "/") -> str:
        if self.sock is not None:
            try:
                return self.exchange(self.sock, path)
            except StaleConnection:
                self.close()
                self.retries += 1
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock = sock if self.keep_alive else None
        try:
            return self.exchange(sock, path)
        except StaleConnection as exc:
            self.close()
            raise ConnectionError(f"new connection closed without a response: {exc}") from None
        finally:
            if not self.keep_alive:
                sock.close()

    def exchange(self, sock: socket.socket, path: str) -> str:
        connection = "keep-alive" if self.keep_alive else "close"
        request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {connection}\r\n\r\n"
        data = b""
        try:
            sock.sendall(request.encode())
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not data:
                raise StaleConnection(repr(exc)) from None
            raise
        if not data:
            raise StaleConnection("EOF")
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 200"):
            raise ConnectionError(f"unexpected response {lines[0]!r}")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("response body cut short")
            body += chunk
        if headers.get("connection") == "close" and sock is self.sock:
            self.close()
        return body.decode()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Load:
    """A bounded load loop: `threads` clients (half keep-alive, half a new connection per
    request) send GET `path` until stopped, at most `seconds` and `max_requests` each."""

    def __init__(
        self,
        port: int,
        threads: int = 4,
        path: str = "/",
        seconds: float = 20.0,
        max_requests: int = 20_000,
        pause: float = 0.0,
    ) -> None:
        self.port = port
        self.path = path
        self.seconds = seconds
        self.max_requests = max_requests
        self.pause = pause
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.pids: collections.Counter[int] = collections.Counter()
        self.errors: list[tuple[float, str]] = []
        self.retries = 0
        self.ok = 0
        self.threads = [
            threading.Thread(target=self.run, args=(i % 2 == 0,), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(15)

    def run(self, keep_alive: bool) -> None:
        client = Client(self.port, keep_alive)
        deadline = time.monotonic() + self.seconds
        for _ in range(self.max_requests):
            if self.stopped.is_set() or time.monotonic() > deadline:
                break
            try:
                body = client.get(self.path)
            except OSError as exc:
                client.close()
                with self.lock:
                    self.errors.append((time.monotonic(), repr(exc)))
                continue
            with self.lock:
                self.ok += 1
                self.pids[int(body.split()[0])] += 1
            if self.pause:
                time.sleep(self.pause)
        client.close()
        with self.lock:
            self.retries += client.retries

    def wait_requests(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ok < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.ok >= count, f"only {self.ok} requests in {timeout}s"
