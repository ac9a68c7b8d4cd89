"""Start, check and stop the servers under test, and read their memory from /proc.

Every server runs the same `apps:app` from perf/ (PYTHONPATH), one worker, pinned to CPU 0,
with its output in a log file (never an unread pipe: a full pipe would stall a server that logs).
Each runs in its own session so the harness can stop it and every child it forked by the
process-group id it created, and always does (`Running.stop()` in a `finally`).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .venv import PERF_DIR, BenchEnv
from .wrk import pin_prefix

SERVER_CPU = 0
# Idle keep-alive connections must survive long enough to be counted (idle-RSS scenario).
KEEP_ALIVE_S = 120


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server variant: `argv(env, port)` and the distributions it needs."""

    name: str  # "fastserve", "uvicorn+log", "fastserve-nogc", "fastserve@d7054e5", ...
    dist: str
    argv: Callable[[BenchEnv, int], list[str]]
    access_log: bool = False
    needs: tuple[str, ...] = ()  # more distributions than `dist`
    # The venv this server runs from, when it is not the bench's own (a --baseline build).
    env: BenchEnv | None = None


def family(name: str) -> str:
    """The server a variant belongs to: "fastserve-nogc", "fastserve+log" and
    "fastserve@d7054e5" are fastserve's, "uvicorn-zttp" is uvicorn's. `--servers fastserve`
    selects the whole family."""
    for i, ch in enumerate(name):
        if ch in "+-@":
            return name[:i]
    return name


def _fastserve(log: bool, *extra: str) -> Callable[[BenchEnv, int], list[str]]:
    def argv(env: BenchEnv, port: int) -> list[str]:
        return [
            str(env.bin("fastserve")),
            "apps:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--lifespan",
            "on",
            "--timeout-keep-alive",
            str(KEEP_ALIVE_S),
            "--access-log" if log else "--no-access-log",
            *extra,
        ]

    return argv


def _uvicorn(log: bool, http: str = "httptools") -> Callable[[BenchEnv, int], list[str]]:
    def argv(env: BenchEnv, port: int) -> list[str]:
        return [
            str(env.bin("uvicorn")),
            "apps:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            http,
            "--lifespan",
            "on",
            "--timeout-keep-alive",
            str(KEEP_ALIVE_S),
            "--access-log" if log else "--no-access-log",
        ]

    return argv


def _granian(env: BenchEnv, port: int) -> list[str]:
    # --backpressure: granian serves at most this many connections at once (default
    # backlog/workers = 2048), so 10,000 idle ones would never all be accepted without it.
    # Its fast options, so that it is measured at its best: HTTP/1 only (no HTTP/2 detection
    # per connection), the single-threaded runtime (one worker thread: no cross-thread
    # hand-off), and no WebSocket support (the WebSocket scenarios are skipped for granian).
    return [
        str(env.bin("granian")),
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--loop",
        "uvloop",
        "--backlog",
        "2048",
        "--backpressure",
        "16384",
        "--http",
        "1",
        "--runtime-mode",
        "st",
        "--no-ws",
        "apps:app",
    ]


def _hypercorn(env: BenchEnv, port: int) -> list[str]:
    return [
        str(env.bin("hypercorn")),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--worker-class",
        "uvloop",
        "--backlog",
        "2048",
        "--keep-alive",
        str(KEEP_ALIVE_S),
        "apps:app",
    ]


def _lean(env: BenchEnv, port: int) -> list[str]:
    # Not a server: the bare httptools + create_task path (perf/lean.py), the ceiling.
    return [str(env.bin("python")), str(PERF_DIR / "lean.py"), "--port", str(port)]


SPECS: dict[str, ServerSpec] = {
    "fastserve": ServerSpec("fastserve", "fastserve", _fastserve(False)),
    # fastserve runs with its GC tuning (gc.freeze() and a gen-0 threshold of 7000, server.py
    # tune_gc), the peers with Python's defaults: this variant shows what the tuning is worth.
    "fastserve-nogc": ServerSpec("fastserve-nogc", "fastserve", _fastserve(False, "--no-gc-tune")),
    "uvicorn": ServerSpec("uvicorn", "uvicorn", _uvicorn(False)),
    "uvicorn-zttp": ServerSpec("uvicorn-zttp", "uvicorn", _uvicorn(False, "zttp"), needs=("zttp",)),
    "granian": ServerSpec("granian", "granian", _granian),
    "hypercorn": ServerSpec("hypercorn", "hypercorn", _hypercorn),
    "fastserve+log": ServerSpec("fastserve+log", "fastserve", _fastserve(True), True),
    "uvicorn+log": ServerSpec("uvicorn+log", "uvicorn", _uvicorn(True), True),
    # Runs on uvicorn's dependencies (httptools, uvloop).
    "lean": ServerSpec("lean", "uvicorn", _lean),
}


def baseline_spec(short: str, env: BenchEnv) -> ServerSpec:
    """fastserve as built at an earlier revision (`bench.py --baseline REV`), from its venv."""
    name = f"fastserve@{short}"
    return ServerSpec(name, "fastserve", _fastserve(False), env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 10,000 held connections need 10,000 fds.

    Called once in the harness; the servers and clients it starts inherit the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Running:
    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        """VmRSS of the server process plus every descendant (granian/hypercorn fork workers)."""
        return sum(vm_rss_kib(pid) for pid in process_tree(self.proc.pid))

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's process tree."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.proc.pid))

    def log_lines(self) -> int:
        try:
            with open(self.log_path, "rb") as fh:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        except OSError:
            return 0

    def log_tail(self, limit: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server's own process group, SIGKILL it if it lingers past 10 s."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # Children that outlived the leader still belong to the group we created.
        _signal_group(self.proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start(spec: ServerSpec, env: BenchEnv, log_dir: Path, *, timeout: float = 30.0) -> Running:
    """Launch the server and wait until it answers GET /plaintext with 200."""
    port = free_port()
    log_path = log_dir / f"{spec.name}.log"
    argv = pin_prefix(SERVER_CPU) + spec.argv(spec.env or env, port)
    child_env = dict(os.environ, PYTHONPATH=str(PERF_DIR), PYTHONUNBUFFERED="0")
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv,
            cwd=PERF_DIR,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(spec, port, proc, log_path)
    try:
        wait_ready(running, timeout)
    except BaseException:
        running.stop()
        raise
    return running


class ServerFailed(RuntimeError):
    pass


def wait_ready(running: Running, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise ServerFailed(
                f"{running.spec.name} exited with {running.proc.returncode}:\n{running.log_tail()}"
            )
        if probe(running.port) == 200:
            return
        time.sleep(0.1)
    raise ServerFailed(f"{running.spec.name} did not answer within {timeout:.0f} s")


def probe(port: int, path: str = "/plaintext") -> int | None:
    """Status code of one GET over a fresh connection, or None if it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
            )
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
        return int(parts[1])
    return None


def vm_rss_kib(pid: int) -> int:
    """VmRSS from /proc/PID/status, in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) in seconds; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces; the fields after its ')' do not.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree
