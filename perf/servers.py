"""Start, check and stop the servers under test, and read their memory from /proc.

Every server runs the same `apps:app` from perf/ (PYTHONPATH), one worker, pinned to CPU 0,
with its output in a log file (never an unread pipe: a full pipe would stall a server that logs).
Each runs in its own session so the harness can stop it and every child it forked by the
process-group id it created, and always does (`Running.stop()` in a `finally`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import h2load
from .venv import PERF_DIR, BenchEnv
from .wrk import pin_prefix

SERVER_CPU = 0
# Idle keep-alive connections must survive long enough to be counted (idle-RSS scenario).
KEEP_ALIVE_S = 120


@dataclass(frozen=True)
class Tls:
    """A throwaway self-signed certificate for 127.0.0.1 (made per run, see self_signed_cert)."""

    certfile: Path
    keyfile: Path


H2Argv = Callable[[BenchEnv, int, Tls | None], list[str]]


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
    # HTTP/2: the argv that serves prior-knowledge h2c (tls None) or ALPN h2 over TLS; None
    # when this variant has no HTTP/2 (uvicorn on httptools). `h2_help`: words its `--help`
    # must show, so an installed version without those options is skipped with the reason.
    h2: H2Argv | None = None
    h2_help: tuple[str, ...] = ()
    scheme: str = "http"
    # Readiness: an HTTP/1.1 GET, or (HTTP/2-only or TLS variants) one h2load request.
    probe_h2: bool = False


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


def _tls_args(tls: Tls | None, cert_opt: str, key_opt: str) -> list[str]:
    return [] if tls is None else [cert_opt, str(tls.certfile), key_opt, str(tls.keyfile)]


def _fastserve_h2(*extra: str) -> H2Argv:
    # HTTP/2 is on by default when zttp is installed; --http2 insists (an error without it).
    def argv(env: BenchEnv, port: int, tls: Tls | None) -> list[str]:
        tls_args = _tls_args(tls, "--ssl-certfile", "--ssl-keyfile")
        return _fastserve(False, *extra, "--http2", *tls_args)(env, port)

    return argv


def _uvicorn(
    log: bool, http: str = "httptools", *extra: str
) -> Callable[[BenchEnv, int], list[str]]:
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
            *extra,
        ]

    return argv


def _uvicorn_h2(env: BenchEnv, port: int, tls: Tls | None) -> list[str]:
    # uvicorn 0.54+: `--http2` requires `--http zttp`; TLS offers h2 by ALPN.
    tls_args = _tls_args(tls, "--ssl-certfile", "--ssl-keyfile")
    return _uvicorn(False, "zttp", "--http2", *tls_args)(env, port)


def _granian(env: BenchEnv, port: int) -> list[str]:
    return _granian_argv(env, port)


def _granian_h2(env: BenchEnv, port: int, tls: Tls | None) -> list[str]:
    # `--http 2`: HTTP/2 only (prior knowledge on cleartext, ALPN h2 over TLS).
    tls_args = _tls_args(tls, "--ssl-certificate", "--ssl-keyfile")
    return _granian_argv(env, port, "2", *tls_args)


def _granian_argv(env: BenchEnv, port: int, http: str = "1", *extra: str) -> list[str]:
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
        http,
        "--runtime-mode",
        "st",
        "--no-ws",
        *extra,
        "apps:app",
    ]


def _hypercorn(env: BenchEnv, port: int) -> list[str]:
    return _hypercorn_argv(env, port)


def _hypercorn_h2(env: BenchEnv, port: int, tls: Tls | None) -> list[str]:
    # hypercorn speaks h2c with prior knowledge on its plain port, and offers h2 by ALPN.
    return _hypercorn_argv(env, port, *_tls_args(tls, "--certfile", "--keyfile"))


def _hypercorn_argv(env: BenchEnv, port: int, *extra: str) -> list[str]:
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
        *extra,
        "apps:app",
    ]


def _lean(env: BenchEnv, port: int) -> list[str]:
    # Not a server: the bare httptools + create_task path (perf/lean.py), the ceiling.
    return [str(env.bin("python")), str(PERF_DIR / "lean.py"), "--port", str(port)]


FASTSERVE_H2_HELP = ("--http2", "--ssl-certfile")
SPECS: dict[str, ServerSpec] = {
    "fastserve": ServerSpec(
        "fastserve",
        "fastserve",
        _fastserve(False),
        h2=_fastserve_h2(),
        h2_help=FASTSERVE_H2_HELP,
    ),
    # fastserve runs with its GC tuning (gc.freeze() and a gen-0 threshold of 7000, server.py
    # tune_gc), the peers with Python's defaults: this variant shows what the tuning is worth.
    "fastserve-nogc": ServerSpec(
        "fastserve-nogc",
        "fastserve",
        _fastserve(False, "--no-gc-tune"),
        h2=_fastserve_h2("--no-gc-tune"),
        h2_help=FASTSERVE_H2_HELP,
    ),
    "uvicorn": ServerSpec("uvicorn", "uvicorn", _uvicorn(False)),
    "uvicorn-zttp": ServerSpec(
        "uvicorn-zttp",
        "uvicorn",
        _uvicorn(False, "zttp"),
        needs=("zttp",),
        h2=_uvicorn_h2,
        h2_help=("--http2", "zttp", "--ssl-certfile"),
    ),
    "granian": ServerSpec(
        "granian", "granian", _granian, h2=_granian_h2, h2_help=("[auto|1|2]", "--ssl-certificate")
    ),
    "hypercorn": ServerSpec(
        "hypercorn",
        "hypercorn",
        _hypercorn,
        h2=_hypercorn_h2,
        h2_help=("--certfile", "--keyfile"),
    ),
    "fastserve+log": ServerSpec("fastserve+log", "fastserve", _fastserve(True), True),
    "uvicorn+log": ServerSpec("uvicorn+log", "uvicorn", _uvicorn(True), True),
    # What observability costs (issue 14): the JSON access log, and Prometheus metrics (the
    # counters in the hot path; the listener on a port of its own, unscraped).
    "fastserve+json": ServerSpec(
        "fastserve+json", "fastserve", _fastserve(True, "--access-log-json"), True
    ),
    "fastserve+metrics": ServerSpec(
        "fastserve+metrics", "fastserve", _fastserve(False, "--metrics", "--metrics-port", "0")
    ),
    # Runs on uvicorn's dependencies (httptools, uvloop).
    "lean": ServerSpec("lean", "uvicorn", _lean),
}


def baseline_spec(short: str, env: BenchEnv) -> ServerSpec:
    """fastserve as built at an earlier revision (`bench.py --baseline REV`), from its venv."""
    name = f"fastserve@{short}"
    return ServerSpec(
        name, "fastserve", _fastserve(False), env=env, h2=_fastserve_h2(), h2_help=FASTSERVE_H2_HELP
    )


def h2_variant(spec: ServerSpec, tls: Tls | None) -> ServerSpec | None:
    """`spec` serving HTTP/2 (prior-knowledge h2c, or ALPN h2 over TLS): its own process,
    named `<name>.h2c` / `<name>.h2tls` (the key of the harness's pool; the tables show the
    server's own name). None when the variant has no HTTP/2."""
    h2 = spec.h2
    if h2 is None:
        return None

    def argv(env: BenchEnv, port: int) -> list[str]:
        return h2(env, port, tls)

    suffix = "h2tls" if tls else "h2c"
    return replace(
        spec,
        name=f"{spec.name}.{suffix}",
        argv=argv,
        scheme="https" if tls else "http",
        probe_h2=True,
    )


def h2_unsupported(spec: ServerSpec, env: BenchEnv) -> str | None:
    """Why this installed server can't run the HTTP/2 variant (None: it can). Read from its
    `--help`: an older version lacks the options, and says so here instead of failing later."""
    if spec.h2 is None:
        return "no HTTP/2 in this variant"
    if not spec.h2_help:
        return None
    argv = spec.argv(spec.env or env, 0)
    try:
        proc = subprocess.run([argv[0], "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{Path(argv[0]).name} --help` failed: {exc}"
    if proc.returncode != 0:  # e.g. a build that does not import
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`{Path(argv[0]).name} --help` exited {proc.returncode}: {last[:200]}"
    missing = [word for word in spec.h2_help if word not in proc.stdout]
    if missing:
        return f"`{Path(argv[0]).name} --help` shows no {', '.join(missing)} (this version)"
    return None


def self_signed_cert(directory: Path) -> Tls:
    """A throwaway self-signed certificate for 127.0.0.1 (EC P-256, valid 2 days), written to
    `directory`: with the `cryptography` package when this interpreter has it, else with the
    `openssl` command. Raises RuntimeError when neither is available."""
    cert, key = directory / "bench-cert.pem", directory / "bench-key.pem"
    try:
        _cert_with_cryptography(cert, key)
    except ImportError:
        if not shutil.which("openssl"):
            raise RuntimeError("neither the cryptography package nor openssl is found") from None
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return Tls(cert, key)


def _cert_with_cryptography(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


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
        return f"{self.spec.scheme}://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        """VmRSS of the server process plus every descendant (granian/hypercorn fork workers)."""
        return sum(vm_rss_kib(pid) for pid in process_tree(self.proc.pid))

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's process tree."""
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU time used so far by the server's process tree."""
        times = [cpu_times(pid) for pid in process_tree(self.proc.pid)]
        return sum(t[0] for t in times), sum(t[1] for t in times)

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
        if answers(running):
            return
        time.sleep(0.1)
    tail = running.log_tail(600).strip().splitlines()[-3:]
    raise ServerFailed(
        f"{running.spec.name} did not answer within {timeout:.0f} s"
        + (f"; its log ends: {' | '.join(tail)}" if tail else "")
    )


def answers(running: Running) -> bool:
    """One GET /plaintext succeeds: over HTTP/1.1, or for an HTTP/2 variant with h2load (granian
    --http 2 and the TLS servers answer no plain HTTP/1.1 GET)."""
    if not running.spec.probe_h2:
        return probe(running.port) == 200
    try:  # h2load is a process: spawn it only once the port accepts
        socket.create_connection(("127.0.0.1", running.port), timeout=2).close()
    except OSError:
        return False
    return h2load.probe(running.url + "/plaintext") == 200


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


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) (fields 14 and 15 of /proc/PID/stat) in seconds; 0s if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


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
