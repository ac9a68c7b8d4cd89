"""Memory scenarios: RSS with many idle keep-alive connections, peak RSS during a large
transfer through a slow peer (flow control), and RSS growth over millions of requests (soak).
One server at a time, each freshly started.

RSS is VmRSS from /proc/PID/status summed over the server's process tree (granian and hypercorn
run their worker as a child). "Idle" is measured after the server has answered a request and
settled for a second, so lazily built state is already counted in the baseline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from . import servers, wrk
from .scenarios import CLIENT_CPU, RunConfig, Scenario
from .venv import PERF_DIR, BenchEnv


def settle_rss(server: servers.Running, samples: int = 3, gap: float = 0.3) -> int:
    readings = []
    for _ in range(samples):
        time.sleep(gap)
        readings.append(server.rss_kib())
    return int(statistics.median(readings))


def open_fds(server: servers.Running) -> int:
    total = 0
    for pid in servers.process_tree(server.proc.pid):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def client_argv(env: BenchEnv, command: str, *args: str) -> list[str]:
    return [
        *wrk.pin_prefix(CLIENT_CPU),
        str(env.python),
        str(PERF_DIR / "clients.py"),
        command,
        *args,
    ]


def measure_idle(
    server: servers.Running, env: BenchEnv, count: int, h2: bool = False
) -> dict[str, Any]:
    """Open `count` keep-alive connections (one request each), hold them, read the server's RSS.
    With `h2`: HTTP/2 connections (preface, SETTINGS, one GET on stream 1, then idle)."""
    time.sleep(1.0)
    idle = settle_rss(server)
    fds_idle = open_fds(server)
    argv = client_argv(
        env,
        "idle",
        "--port",
        str(server.port),
        "--count",
        str(count),
        "--hold",
        "120",
        *(["--h2"] if h2 else []),
    )
    client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdin is not None
        ready = _read_tagged(client, "READY", timeout=120)
        if ready is None:
            return {"flagged": True, "error": "idle client did not report READY", "idle_kib": idle}
        loaded = settle_rss(server)
        fds = open_fds(server) - fds_idle
        client.stdin.write("release\n")
        client.stdin.flush()
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    opened = int(ready.get("opened", 0))
    return {
        "idle_kib": idle,
        "loaded_kib": loaded,
        "delta_kib": loaded - idle,
        "per_conn_bytes": (loaded - idle) * 1024 / opened if opened else None,
        "opened": opened,
        "server_fds_added": fds,
        "open_seconds": ready.get("seconds"),
        # Every connection must be open and still held by the server when RSS is read.
        "flagged": opened < count or fds < opened * 0.99 or server.proc.poll() is not None,
    }


def measure_soak(scenario: Scenario, server: servers.Running, cfg: RunConfig) -> dict[str, Any]:
    """Requests in 5 s wrk runs until the first count of cfg.soak_requests (warm-up: lazily
    built state, caches, the allocator's arenas), RSS; on to the second count, RSS again.
    What a long-running worker must show: no growth between the two."""
    from . import apps

    done = 0
    failed = False
    readings: list[tuple[int, int]] = []
    for target in cfg.soak_requests:
        while done < target:
            try:
                result = wrk.run(
                    server.url + scenario.path,
                    connections=scenario.connections,
                    duration=5.0,
                    close=scenario.close,
                    cpu=CLIENT_CPU,
                    expect_status=200,
                    expect_length=len(apps.PLAIN),
                )
            except wrk.WrkError as exc:
                return {"flagged": True, "error": str(exc)[:300], "requests": done}
            done += result.requests
            failed = failed or result.failed
            if server.proc.poll() is not None or result.requests == 0:
                return {"flagged": True, "error": "server died or stalled", "requests": done}
        readings.append((done, settle_rss(server)))
    (n1, rss1), (n2, rss2) = readings
    return {
        "requests_1": n1,
        "rss_1_kib": rss1,
        "requests_2": n2,
        "rss_2_kib": rss2,
        "growth_pct": (rss2 - rss1) / rss1 * 100,
        "kib_per_million": (rss2 - rss1) / ((n2 - n1) / 1e6),
        "flagged": failed,
    }


def _read_tagged(proc: subprocess.Popen[str], tag: str, timeout: float) -> dict[str, Any] | None:
    import json
    import select

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                return None
            continue
        line = proc.stdout.readline()
        if not line:
            return None
        if line.startswith(tag + " "):
            parsed: dict[str, Any] = json.loads(line[len(tag) + 1 :])
            return parsed
    return None


def measure_transfer(
    scenario: Scenario, server: servers.Running, env: BenchEnv, cfg: RunConfig
) -> dict[str, Any]:
    """Run the slow download/upload client while sampling the server's RSS every 50 ms."""
    idle = settle_rss(server)
    size, rate = cfg.transfer_size, cfg.transfer_rate
    deadline = size / rate * 2 + 20
    argv = client_argv(
        env,
        scenario.key,
        "--port",
        str(server.port),
        "--size",
        str(size),
        "--rate",
        str(int(rate)),
        "--deadline",
        str(deadline),
    )
    out_path = server.log_path.with_suffix(f".{scenario.key}.out")
    peak = idle
    with open(out_path, "w+") as out:
        client = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            limit = time.monotonic() + deadline + 20
            while client.poll() is None and time.monotonic() < limit:
                peak = max(peak, server.rss_kib())
                time.sleep(0.05)
        finally:
            if client.poll() is None:
                client.kill()
            client.wait()
        out.seek(0)
        text = out.read()
    result = _result_line(text)
    return {
        "idle_kib": idle,
        "peak_kib": peak,
        "peak_above_idle_kib": peak - idle,
        "bytes": result.get("bytes"),
        "seconds": result.get("seconds"),
        "size": size,
        "rate": rate,
        "complete": bool(result.get("complete")),
        "error": result.get("error"),
        "flagged": not result.get("complete") or server.proc.poll() is not None,
    }


def _result_line(text: str) -> dict[str, Any]:
    import json

    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line[7:])
            return parsed
    return {"error": text.strip()[-300:] or "client printed nothing"}


def run_memory(
    scenario: Scenario,
    names: list[str],
    env: BenchEnv,
    cfg: RunConfig,
    log_dir: Path,
    specs: dict[str, servers.ServerSpec] | None = None,
) -> dict[str, Any]:
    """Each server in turn: start it fresh, measure, stop it (always). `specs`: the bench's
    servers (a --baseline build besides servers.SPECS)."""
    specs = specs or servers.SPECS
    result: dict[str, Any] = {
        "title": scenario.title,
        "kind": scenario.kind,
        "params": scenario.params(),
        "servers": {},
    }
    h2 = scenario.http == "2"
    # idle10k holds --idle-conns; the HTTP/2 one holds its own count (1,000, the goal).
    count = scenario.connections if h2 else cfg.idle_conns
    if scenario.kind == "idle":
        result["params"]["count"] = count
    elif scenario.kind == "soak":
        result["params"]["requests"] = list(cfg.soak_requests)
    else:
        result["params"].update(size=cfg.transfer_size, rate=cfg.transfer_rate)
    for name in names:
        try:
            server = servers.start(specs[name], env, log_dir)
        except servers.ServerFailed as exc:  # recorded and flagged; the other servers go on
            result["servers"][name] = {"flagged": True, "error": str(exc)[:500]}
            print(f"  [{scenario.key}] {name:<10} did not start: {exc}", flush=True)
            continue
        try:
            if scenario.kind == "idle":
                entry = measure_idle(server, env, count, h2)
            elif scenario.kind == "soak":
                entry = measure_soak(scenario, server, cfg)
            else:
                entry = measure_transfer(scenario, server, env, cfg)
        finally:
            server.stop()
        result["servers"][name] = entry
        print(f"  [{scenario.key}] {name:<10} {describe(entry)}", flush=True)
    return result


def describe(entry: dict[str, Any]) -> str:
    if "loaded_kib" in entry:
        per_conn = entry["per_conn_bytes"] or 0
        text = (
            f"idle {entry['idle_kib'] / 1024:.1f} MiB, with {entry['opened']} conns "
            f"{entry['loaded_kib'] / 1024:.1f} MiB ({per_conn:,.0f} B/conn)"
        )
    elif "peak_kib" in entry:
        moved = (entry.get("bytes") or 0) / 2**20
        text = (
            f"peak {entry['peak_above_idle_kib'] / 1024:.1f} MiB above idle, "
            f"{moved:.0f} MiB in {entry.get('seconds')} s"
        )
    elif "growth_pct" in entry:
        text = (
            f"RSS {entry['rss_1_kib'] / 1024:.1f} MiB at {entry['requests_1']:,} requests, "
            f"{entry['rss_2_kib'] / 1024:.1f} MiB at {entry['requests_2']:,} "
            f"({entry['growth_pct']:+.2f} %)"
        )
    else:
        text = entry.get("error", "?")
    return text + ("  FLAGGED" if entry.get("flagged") else "")
