"""What the benchmark measures, and the interleaved runner for throughput scenarios.

Throughput scenarios (wrk, WebSocket echo) keep every server of the scenario running at once,
each on its own port, all pinned to the server CPU, idle while another is measured. Each server
is warmed up, then the rounds go A B C D, A B C D, ... so that drift of the shared machine lands
on every server alike. After each run the harness waits until that server has stopped using
CPU (a slow server still works through queued requests and closing connections after wrk
stops, on the CPU the next server needs). The order rotates from round to round (A B C,
B C A, C A B, ...), so no server always runs first, or always right after the same neighbour.
Memory scenarios (`memory.py`) run one server at a time.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import apps, h2load, wrk
from .servers import Running, answers
from .venv import PERF_DIR, BenchEnv

PEERS = ("fastserve", "uvicorn", "granian", "hypercorn")
# plaintext also runs fastserve without its GC tuning (the peers run with Python's defaults)
# and uvicorn on its zttp parser.
PLAINTEXT_SERVERS = (
    "fastserve",
    "fastserve-nogc",
    "uvicorn",
    "uvicorn-zttp",
    "granian",
    "hypercorn",
)
# granian runs with --no-ws (servers.py): no WebSocket scenario for it.
WS_SERVERS = ("fastserve", "uvicorn", "hypercorn")
# HTTP/2 (h2load): uvicorn speaks it only on zttp (`--http zttp --http2`); plain `uvicorn`
# (httptools) is listed so that its skip is printed with the reason, not silent.
H2_SERVERS = ("fastserve", "uvicorn-zttp", "uvicorn", "granian", "hypercorn")
# The HTTP/2 ratios are to these (uvicorn-zttp is the uvicorn that speaks HTTP/2).
H2_BASELINES = ("uvicorn-zttp", "granian")
CLIENT_CPU = 1


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    # "wrk", "ws", "h2load" (interleaved rounds) or "idle", "transfer", "soak" (memory.py)
    kind: str
    path: str = "/plaintext"
    connections: int = 100
    method: str = "GET"
    body_size: int = 0  # request body (wrk) or message size (ws)
    close: bool = False
    servers: tuple[str, ...] = PEERS
    # What every response must be (wrk_json.lua checks each one): a fast wrong answer is
    # not fast. None: the body's length is not checked.
    expect_status: int | None = 200  # None: no check by the script (wrk's own status count)
    expect_length: int | None = len(apps.PLAIN)
    # HTTP/2 (kind "h2load", or "idle" with http "2"): streams in flight per connection
    # (h2load -m), and TLS with ALPN h2 instead of prior-knowledge h2c.
    http: str = "1.1"
    streams: int = 1
    tls: bool = False

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("key", "title", "servers")}


KIB = 1024
MIB = 1024 * KIB
SCENARIOS: list[Scenario] = [
    Scenario("plaintext", "plaintext, 100 conns", "wrk", servers=PLAINTEXT_SERVERS),
    Scenario("json", "JSON, 100 conns", "wrk", "/json", expect_length=len(apps.json_body())),
    Scenario(
        "post1k",
        "POST echo 1 KiB",
        "wrk",
        "/echo",
        method="POST",
        body_size=KIB,
        expect_length=KIB,
    ),
    Scenario(
        "post64k",
        "POST echo 64 KiB",
        "wrk",
        "/echo",
        method="POST",
        body_size=64 * KIB,
        expect_length=64 * KIB,
    ),
    Scenario(
        "stream1m",
        "1 MiB streamed (16 x 64 KiB)",
        "wrk",
        "/stream?size=1048576&chunk=65536",
        expect_length=MIB,  # wrk's parser hands over the body without the chunk framing
    ),
    Scenario("conns1000", "plaintext, 1,000 conns", "wrk", connections=1000),
    Scenario("close", "Connection: close", "wrk", close=True),
    Scenario(
        "accesslog",
        "plaintext, access log on/off",
        "wrk",
        servers=("fastserve", "fastserve+log", "uvicorn", "uvicorn+log"),
    ),
    Scenario(
        "observability",
        "plaintext, access log (text, JSON) and metrics on/off",
        "wrk",
        servers=("fastserve", "fastserve+log", "fastserve+json", "fastserve+metrics"),
    ),
    Scenario(
        "ceiling",
        "plaintext, beside the lean reference path (perf/lean.py)",
        "wrk",
        servers=("fastserve", "uvicorn", "lean"),
    ),
    Scenario(
        "static",
        "static file 100 MiB (pathsend where offered), 4 conns",
        "wrk",
        "/static",
        connections=4,
        # Not checked by the script: it copies each body into Lua, and at 100 MiB that caps
        # wrk near 60-90 MB/s whatever the server (measured). wrk still counts statuses >= 400
        # and a wrong Content-Length breaks its parsing of the connection.
        expect_status=None,
        expect_length=None,
    ),
    Scenario("idle10k", "RSS with 10k idle keep-alive conns", "idle"),
    # RSS growth between two request counts (RunConfig.soak_requests), access log on.
    Scenario(
        "soak",
        "RSS growth, keep-alive, access log on",
        "soak",
        servers=("fastserve+log", "uvicorn+log"),
    ),
    Scenario(
        "soak_close",
        "RSS growth, a connection per request, access log on",
        "soak",
        close=True,
        servers=("fastserve+log", "uvicorn+log"),
    ),
    Scenario("download", "slow reader: large download", "transfer", "/download"),
    Scenario("upload", "slow consumer: large upload", "transfer", "/upload", method="POST"),
    Scenario(
        "h2c_m10",
        "HTTP/2 h2c, 100 conns x 10 streams",
        "h2load",
        servers=H2_SERVERS,
        http="2",
        streams=10,
    ),
    Scenario(
        "h2c_m1",
        "HTTP/2 h2c, 100 conns x 1 stream",
        "h2load",
        servers=H2_SERVERS,
        http="2",
        streams=1,
    ),
    Scenario(
        "h2tls_m10",
        "HTTP/2 TLS (ALPN h2), 100 conns x 10 streams",
        "h2load",
        servers=H2_SERVERS,
        http="2",
        streams=10,
        tls=True,
    ),
    Scenario(
        "h2tls_m1",
        "HTTP/2 TLS (ALPN h2), 100 conns x 1 stream",
        "h2load",
        servers=H2_SERVERS,
        http="2",
        streams=1,
        tls=True,
    ),
    Scenario(
        "h2idle1k",
        "RSS with 1,000 idle h2c conns",
        "idle",
        connections=1000,
        servers=H2_SERVERS,
        http="2",
    ),
    Scenario(
        "ws_small",
        "WebSocket echo 32 B, 50 conns",
        "ws",
        "/ws",
        50,
        body_size=32,
        servers=WS_SERVERS,
    ),
    Scenario(
        "ws_64k",
        "WebSocket echo 64 KiB, 50 conns",
        "ws",
        "/ws",
        50,
        body_size=64 * KIB,
        servers=WS_SERVERS,
    ),
]
BY_KEY = {s.key: s for s in SCENARIOS}


@dataclass(frozen=True)
class RunConfig:
    rounds: int = 7
    duration: float = 4.0
    warmup: float = 2.0
    idle_conns: int = 10_000
    transfer_size: int = 1 << 30
    transfer_rate: float = 128 * (1 << 20)
    # soak: RSS after this many requests (warm), and after this many (the issue: 1M and 3M)
    soak_requests: tuple[int, int] = (1_000_000, 3_000_000)


def measure_wrk(scenario: Scenario, server: Running, duration: float) -> dict[str, Any]:
    """One wrk run; any socket error, bad status or dead server flags the round."""
    lines_before = server.log_lines() if server.spec.access_log else 0
    cpu_before = server.cpu_times()
    client_before = client_cpu_seconds()
    try:
        result = wrk.run(
            server.url + scenario.path,
            connections=scenario.connections,
            duration=duration,
            method=scenario.method,
            body_size=scenario.body_size,
            close=scenario.close,
            cpu=CLIENT_CPU,
            expect_status=scenario.expect_status,
            expect_length=scenario.expect_length,
        )
    except wrk.WrkError as exc:
        return {"flagged": True, "error": str(exc)}
    out: dict[str, Any] = result.as_dict()
    add_cpu(out, cpu_before, server.cpu_times(), result.requests)
    add_client_cpu(out, client_before, result.duration_s)
    out["flagged"] = result.failed or server.proc.poll() is not None
    if server.spec.access_log:
        # The access log must really be written: count the lines this round added.
        out["logged_lines"] = server.log_lines() - lines_before
    return out


def measure_h2load(scenario: Scenario, server: Running, duration: float) -> dict[str, Any]:
    """One h2load run; failed/errored/timed-out requests, non-2xx answers, the wrong protocol
    (an HTTP/1.1 fallback) or body bytes that do not add up flag the round."""
    cpu_before = server.cpu_times()
    client_before = client_cpu_seconds()
    try:
        result = h2load.run(
            server.url + scenario.path,
            clients=scenario.connections,
            streams=scenario.streams,
            duration=duration,
            cpu=CLIENT_CPU,
            log_file=server.log_path.with_suffix(".h2load.tsv"),
            expect_protocol="h2" if scenario.tls else "h2c",
            expect_length=scenario.expect_length,
        )
    except h2load.H2loadError as exc:
        return {"flagged": True, "error": str(exc)}
    out: dict[str, Any] = result.as_dict()
    add_cpu(out, cpu_before, server.cpu_times(), result.done)
    add_client_cpu(out, client_before, duration)
    out["flagged"] = result.failed or server.proc.poll() is not None
    return out


def measure_ws(
    scenario: Scenario, server: Running, env: BenchEnv, duration: float
) -> dict[str, Any]:
    """One WebSocket echo run (messages/s reported as `rps`)."""
    argv = [
        *wrk.pin_prefix(CLIENT_CPU),
        str(env.python),
        str(PERF_DIR / "clients.py"),
        "ws",
        "--port",
        str(server.port),
        "--connections",
        str(scenario.connections),
        "--duration",
        str(duration),
        "--size",
        str(scenario.body_size),
    ]
    cpu_before = server.cpu_times()
    client_before = client_cpu_seconds()
    result = run_client(argv, timeout=duration + 60)
    if "error" in result:
        return {"flagged": True, **result}
    cpu: dict[str, Any] = {}
    add_cpu(cpu, cpu_before, server.cpu_times(), int(result["messages"]))
    add_client_cpu(cpu, client_before, float(result["seconds"]))
    return {
        **cpu,
        "rps": result["mps"],
        "messages": result["messages"],
        "errors": {"ws": result["errors"]},
        "flagged": result["errors"] > 0,
        "first_error": result.get("first_error"),
    }


def add_cpu(
    out: dict[str, Any], before: tuple[float, float], after: tuple[float, float], count: int
) -> None:
    """Server CPU time per request (or message), from (user, system) times read before and
    after. It is steadier than req/s on a shared machine: a neighbour that steals CPU 0 lowers
    req/s, but not the CPU each request costs. `sys_share`: the kernel's part of it, which a
    server lowers only by fewer or cheaper system calls and page faults."""
    user, system = after[0] - before[0], after[1] - before[1]
    cpu_s = user + system
    out["cpu_s"] = round(cpu_s, 3)
    out["cpu_us"] = round(cpu_s / count * 1e6, 2) if count else None
    if cpu_s > 0:
        out["sys_share"] = round(system / cpu_s, 3)


def client_cpu_seconds() -> float:
    """CPU time (user + system) of this process's children that have ended and been waited
    for: read before and after a load generator's run, the difference is that run's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_client_cpu(out: dict[str, Any], before: float, seconds: float) -> None:
    """The load generator's CPU over its run, as a share of its one core (`client_cpu`).
    Near 1.0 the client, not the server, set the pace, and the req/s ratios between servers
    shrink toward 1; the server CPU per request still compares them. (A Python client's
    share includes its start-up, ~0.1 s.)"""
    if seconds > 0:
        out["client_cpu"] = round((client_cpu_seconds() - before) / seconds, 3)


def run_client(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run a clients.py command to completion and parse its RESULT line."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"client did not finish in {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line[7:])
            return parsed
    return {"error": f"client exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}


# Waiting for a server to go idle after a run: CPU time is read every SETTLE_STEP seconds,
# and the server is idle once a step adds less than a tenth of it (at most SETTLE_LIMIT s).
SETTLE_STEP = 0.05
SETTLE_LIMIT = 15.0


def wait_until_idle(
    cpu_seconds: Callable[[], float],
    step: float = SETTLE_STEP,
    limit: float = SETTLE_LIMIT,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until `cpu_seconds()` stops growing; return how long that took (bounded)."""
    waited = 0.0
    last = cpu_seconds()
    while waited < limit:
        sleep(step)
        waited += step
        now = cpu_seconds()
        if now - last < step / 10:
            break
        last = now
    return waited


def round_order(names: list[str], i: int) -> list[str]:
    """The order of round `i` (from 0): the list rotated by i, so each server takes each
    place in turn. Round i of every server still runs inside the same round, which is what
    the paired ratios pair (stats.paired_ratio)."""
    if not names:
        return []
    k = i % len(names)
    return names[k:] + names[:k]


def run_interleaved(
    scenario: Scenario, running: dict[str, Running], env: BenchEnv, cfg: RunConfig
) -> dict[str, Any]:
    """Warm every server up, then `cfg.rounds` rounds, the order rotated each round (A B C,
    B C A, ...); raw rounds per server, in round order."""

    def once(server: Running, duration: float) -> dict[str, Any]:
        if scenario.kind == "ws":
            result = measure_ws(scenario, server, env, duration)
        elif scenario.kind == "h2load":
            result = measure_h2load(scenario, server, duration)
        else:
            result = measure_wrk(scenario, server, duration)
        # Without this, a server that falls behind (hypercorn at 1,000 connections) kept
        # CPU 0 busy for seconds into the next server's round: fastserve's p99 at 1,000
        # connections went from ~40 ms to 1.2-2.8 s whenever it ran right after hypercorn.
        result["settle_s"] = round(wait_until_idle(server.cpu_seconds), 2)
        return result

    for server in running.values():
        once(server, cfg.warmup)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in running}
    died: dict[str, dict[str, Any]] = {}
    orders: list[list[str]] = []
    for i in range(cfg.rounds):
        order = round_order(list(running), i)
        orders.append(order)
        for slot, name in enumerate(order):
            server = running[name]
            if name in died:
                result = {"flagged": True, "error": "server exited"}
            else:
                result = once(server, cfg.duration)
            result["slot"] = slot
            rounds[name].append(result)
            if name not in died and server.proc.poll() is not None:
                died[name] = record_death(scenario, server)
            print(
                f"  [{scenario.key}] round {i + 1}/{cfg.rounds} {progress(name, result)}",
                flush=True,
            )
    servers: dict[str, dict[str, Any]] = {name: {"rounds": r} for name, r in rounds.items()}
    for name, server in running.items():
        if name not in died and server.proc.poll() is not None:  # died during the warm-up
            died[name] = record_death(scenario, server)
        if name in died:
            servers[name]["died"] = died[name]
    return {
        "title": scenario.title,
        "kind": scenario.kind,
        "params": scenario.params(),
        "orders": orders,
        "servers": servers,
    }


def record_death(scenario: Scenario, server: Running) -> dict[str, Any]:
    """A server that exited mid-scenario: its exit code and the end of its log, kept in the
    results (the log directory is temporary) and printed at once."""
    tail = server.log_tail(1200).strip().splitlines()[-8:]
    print(f"  [{scenario.key}] {server.spec.name} EXITED with {server.proc.returncode}:",
          *("    " + line for line in tail), sep="\n", flush=True)  # fmt: skip
    return {"exit": server.proc.returncode, "log_tail": tail}


def progress(name: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{name:<14} ERROR {result['error']}"
    text = f"{name:<14} {result.get('rps', 0):>10,.0f}/s"
    if "p99_ms" in result:
        text += f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
    if "cpu_us" in result and result["cpu_us"] is not None:
        text += f"  cpu {result['cpu_us']:.1f} µs/req"
    if result.get("flagged"):
        text += f"  FLAGGED errors={result.get('errors')}"
        if result.get("mismatches"):
            text += f" first wrong answer: {result.get('first_mismatch')}"
    return text


def server_alive(server: Running) -> bool:
    return server.proc.poll() is None and answers(server)
