"""Pure arithmetic on benchmark rounds: medians, paired ratios, and the issue's goals.

Ratios are paired: round i of server A is divided by round i of the baseline, which ran in
the same round (A B C, B C A, ...), and the median of those quotients is reported. Drift of the
shared machine (other jobs, thermal) hits both sides of a pair alike and cancels; a plain
quotient of medians would keep it. The same pairing gives the before/after ratio of a
`--baseline` run: fastserve / fastserve@REV.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

BASELINE = "uvicorn"
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms")
RATIO_KEYS = ("rps", "cpu_us", "p99_ms")
# "unchanged within 2 %" (the issues' rule for a change that must not cost speed).
UNCHANGED = 0.02


def median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every figure over the rounds, plus error totals; `flagged` if any round erred."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in ("rps", "cpu_us", "client_cpu", "sys_share", *LATENCY_KEYS):
        out[key] = median([r[key] for r in rounds if key in r])
    out["errors"] = sum(_errors(r) for r in rounds)
    out["flagged"] = any(r.get("flagged") for r in rounds) or not rounds
    return out


def _errors(r: dict[str, Any]) -> int:
    errors = r.get("errors") or {}
    return sum(errors.values()) if isinstance(errors, dict) else int(errors)


def paired_ratio(
    a: list[dict[str, Any]], b: list[dict[str, Any]], key: str = "rps"
) -> float | None:
    """Median over rounds of a[i][key] / b[i][key], skipping rounds where either is missing/0."""
    quotients = [x[key] / y[key] for x, y in zip(a, b, strict=False) if x.get(key) and y.get(key)]
    return median(quotients)


def add_summaries(
    scenario: dict[str, Any], baseline: str = BASELINE, before: str | None = None
) -> None:
    """Fill `median` and `ratio` (vs the baseline's rounds of the same run) for each server;
    with `before` (fastserve@REV), fastserve's entry also gets `vs_before`: fastserve / it."""
    servers: dict[str, dict[str, Any]] = scenario["servers"]
    base = servers.get(baseline, {}).get("rounds")
    for entry in servers.values():
        rounds = entry.get("rounds", [])
        entry["median"] = summarize(rounds)
        entry["ratio"] = (
            {key: paired_ratio(rounds, base, key) for key in RATIO_KEYS} if base else {}
        )
    old = servers.get(before or "", {}).get("rounds")
    after = before.split("@")[0] if before else ""
    if old and after in servers:
        rounds = servers[after].get("rounds", [])
        servers[after]["vs_before"] = {key: paired_ratio(rounds, old, key) for key in RATIO_KEYS}


def add_ratios(scenario: dict[str, Any], against: str, field: str) -> None:
    """Each server's paired ratios (RATIO_KEYS) to `against`'s rounds, under `field` (the
    HTTP/2 scenarios add `vs_granian` beside `ratio`, which is to uvicorn-zttp there)."""
    servers: dict[str, dict[str, Any]] = scenario["servers"]
    base = servers.get(against, {}).get("rounds")
    for entry in servers.values():
        rounds = entry.get("rounds", [])
        entry[field] = {key: paired_ratio(rounds, base, key) for key in RATIO_KEYS} if base else {}


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measured: str
    status: str  # PASS, MISS or N/A
    detail: str = ""
    # The same comparison by server CPU time per request (steadier on a shared machine).
    by_cpu: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _at_least(name: str, value: float | None, target: float, unit: str = "x") -> Goal:
    if value is None:
        return Goal(name, f">= {target:g}{unit}", "-", "N/A", "not measured in this run")
    shown = f"{value:.2f}{unit}"
    if value >= target:
        return Goal(name, f">= {target:g}{unit}", shown, "PASS", f"by {value / target - 1:.0%}")
    return Goal(name, f">= {target:g}{unit}", shown, "MISS", f"short by {1 - value / target:.0%}")


def _at_most(name: str, value: float | None, target: float, unit: str, fmt: str) -> Goal:
    if value is None:
        return Goal(name, f"<= {target:{fmt}}{unit}", "-", "N/A", "not measured in this run")
    shown = f"{value:{fmt}}{unit}"
    if value <= target:
        return Goal(
            name,
            f"<= {target:{fmt}}{unit}",
            shown,
            "PASS",
            f"{target - value:{fmt}}{unit} to spare",
        )
    return Goal(
        name, f"<= {target:{fmt}}{unit}", shown, "MISS", f"over by {value - target:{fmt}}{unit}"
    )


def _servers(results: dict[str, Any], scenario: str) -> dict[str, Any]:
    found: dict[str, Any] = results.get("scenarios", {}).get(scenario, {}).get("servers", {})
    return found


def _rounds(results: dict[str, Any], scenario: str, server: str) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = _servers(results, scenario).get(server, {}).get("rounds", [])
    return rounds


def _ratio(results: dict[str, Any], scenario: str, a: str, b: str, key: str = "rps") -> Any:
    ra, rb = _rounds(results, scenario, a), _rounds(results, scenario, b)
    return paired_ratio(ra, rb, key) if ra and rb else None


def _rss(results: dict[str, Any], scenario: str, server: str, key: str) -> float | None:
    value = _servers(results, scenario).get(server, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _cpu_speedup(results: dict[str, Any], scenario: str, a: str, b: str) -> str:
    """'2.31x': how many times less server CPU a request costs on `a` than on `b`."""
    ratio = _ratio(results, scenario, a, b, "cpu_us")
    return f"{1 / ratio:.2f}x" if ratio else ""


def before_after_goal(results: dict[str, Any], me: str = "fastserve") -> Goal | None:
    """With --baseline: plaintext req/s of this tree vs REV's build, "unchanged within 2 %"
    (a change may be faster; slower by more than 2 % is a MISS). None without a baseline."""
    before = results.get("meta", {}).get("baseline", {}).get("name")
    if not before:
        return None
    name = f"plaintext vs {before} (same run)"
    ratio = _ratio(results, "plaintext", me, before)
    goal = _at_least(name, ratio, 1 - UNCHANGED)
    cpu = _ratio(results, "plaintext", me, before, "cpu_us")
    return replace(goal, by_cpu=f"{cpu:.3f}x CPU/req" if cpu else "")


def evaluate_goals(results: dict[str, Any], me: str = "fastserve") -> list[Goal]:
    """The issue's goals, each PASS/MISS with the margin, or N/A when the run lacks the data."""
    goals = [
        _at_least("plaintext vs uvicorn", _ratio(results, "plaintext", me, "uvicorn"), 2.5),
        _at_least("plaintext vs granian", _ratio(results, "plaintext", me, "granian"), 1.0),
    ]
    goals = [
        replace(goals[0], by_cpu=_cpu_speedup(results, "plaintext", me, "uvicorn")),
        replace(goals[1], by_cpu=_cpu_speedup(results, "plaintext", me, "granian")),
    ]
    kept = _ratio(results, "accesslog", f"{me}+log", me)
    log_cpu = _ratio(results, "accesslog", f"{me}+log", me, "cpu_us")
    goals.append(
        replace(
            _at_most(
                "access log cost", None if kept is None else (1 - kept) * 100, 10, " %", ".1f"
            ),
            by_cpu=f"+{(log_cpu - 1) * 100:.1f} % CPU/req" if log_cpu else "",
        )
    )
    p99 = _ratio(results, "plaintext", me, "uvicorn", "p99_ms")
    goals.append(_at_most("p99 at 100 conns vs uvicorn", p99, 1.0, "x", ".2f"))
    post = _at_least("POST echo 64 KiB vs uvicorn", _ratio(results, "post64k", me, "uvicorn"), 1.5)
    goals.append(replace(post, by_cpu=_cpu_speedup(results, "post64k", me, "uvicorn")))
    scenarios = results.get("scenarios", {})
    count = scenarios.get("idle10k", {}).get("params", {}).get("count", 10_000)
    mine, theirs = (_rss(results, "idle10k", s, "loaded_kib") for s in (me, "uvicorn"))
    rss_ratio = mine / theirs if mine is not None and theirs else None
    goals.append(
        # issue 18: <= 0.75x (the issue 3 goal was <= 1x)
        _at_most(f"RSS at {_count_label(count)} idle conns vs uvicorn", rss_ratio, 0.75, "x", ".2f")
    )
    c1000 = median([r["rps"] for r in _rounds(results, "conns1000", me)])
    c100 = median([r["rps"] for r in _rounds(results, "plaintext", me)])
    scaling = _at_least("1,000 conns vs 100 conns", c1000 / c100 if c1000 and c100 else None, 0.9)
    cpu1000 = median([r.get("cpu_us") for r in _rounds(results, "conns1000", me)])
    cpu100 = median([r.get("cpu_us") for r in _rounds(results, "plaintext", me)])
    if cpu1000 and cpu100:  # the throughput the same CPU would give at 1,000 vs at 100 conns
        scaling = replace(scaling, by_cpu=f"{cpu100 / cpu1000:.2f}x")
    goals.append(scaling)
    peaks = [_rss(results, s, me, "peak_above_idle_kib") for s in ("download", "upload")]
    known = [p / 1024 for p in peaks if p is not None]
    size = scenarios.get("download", {}).get("params", {}).get("size", 1 << 30)
    goals.append(
        _at_most(
            f"peak RSS in slow {_size_label(size)} transfer",
            max(known) if known else None,
            64,
            " MiB",
            ".1f",
        )
    )
    goals += h2_goals(results, me)
    goals += observability_goals(results, me)
    goals += beyond_hello_goals(results, me)
    before = before_after_goal(results, me)
    if before is not None:
        goals.insert(0, before)
    return goals


def observability_goals(results: dict[str, Any], me: str = "fastserve") -> list[Goal]:
    """Issue 14's budgets, paired rounds of one run: text access log <= 10 %, JSON access log
    <= 15 %, metrics <= 2 % of plaintext throughput."""
    goals = []
    for variant, label, budget in (
        ("+log", "access log", 10.0),
        ("+json", "JSON access log", 15.0),
        ("+metrics", "metrics", 2.0),
    ):
        kept = _ratio(results, "observability", f"{me}{variant}", me)
        cpu = _ratio(results, "observability", f"{me}{variant}", me, "cpu_us")
        goal = _at_most(
            f"{label} cost (observability)",
            None if kept is None else (1 - kept) * 100,
            budget,
            " %",
            ".1f",
        )
        goals.append(replace(goal, by_cpu=f"{(cpu - 1) * 100:+.1f} % CPU/req" if cpu else ""))
    return goals


def beyond_hello_goals(results: dict[str, Any], me: str = "fastserve") -> list[Goal]:
    """Issue 18's goals past hello-world: bodies, connection churn, WebSockets, static files
    (server CPU per request: a 100 MiB file is bound by the client, not by req/s)."""
    goals = []
    for name, scenario, peer, target in (
        ("POST echo 64 KiB vs granian", "post64k", "granian", 1.2),
        ("1 MiB streamed vs uvicorn", "stream1m", "uvicorn", 1.8),
        ("Connection: close vs uvicorn", "close", "uvicorn", 1.8),
        ("1,000 conns vs uvicorn", "conns1000", "uvicorn", 2.0),
        ("WebSocket echo 32 B vs uvicorn", "ws_small", "uvicorn", 1.5),
        ("WebSocket echo 64 KiB vs uvicorn", "ws_64k", "uvicorn", 1.5),
    ):
        goal = _at_least(name, _ratio(results, scenario, me, peer), target)
        goals.append(replace(goal, by_cpu=_cpu_speedup(results, scenario, me, peer)))
    for peer, target in (("uvicorn", 1 / 3), ("granian", 1.0)):
        ratio = _ratio(results, "static", me, peer, "cpu_us")
        goals.append(_at_most(f"static 100 MiB CPU/request vs {peer}", ratio, target, "x", ".2f"))
    for key, label in (("soak", "keep-alive"), ("soak_close", "new connections")):
        entry = _servers(results, key).get(f"{me}+log", {})
        growth = None if entry.get("flagged") else entry.get("growth_pct")
        goals.append(_at_most(f"RSS growth over a soak, {label}", growth, 1.0, " %", ".2f"))
    return goals


def _median_of(results: dict[str, Any], scenario: str, server: str, key: str) -> float | None:
    return median([r.get(key) for r in _rounds(results, scenario, server) if not r.get("error")])


def h2_cpu_vs_http1(
    results: dict[str, Any], scenario: str = "h2c_m1", me: str = "fastserve"
) -> float | None:
    """Server CPU per HTTP/2 request over CPU per HTTP/1.1 plaintext request, both fastserve's
    medians of the same run (different scenarios, so not paired by round). None if either
    scenario is missing."""
    h2 = _median_of(results, scenario, me, "cpu_us")
    h1 = _median_of(results, "plaintext", me, "cpu_us")
    return h2 / h1 if h2 and h1 else None


def h2_goals(results: dict[str, Any], me: str = "fastserve") -> list[Goal]:
    """Issue 13's HTTP/2 goals: h2c -m 10 vs granian and uvicorn-zttp (paired rounds), CPU per
    HTTP/2 request vs our HTTP/1.1 one, RSS with 1,000 idle h2 connections vs uvicorn-zttp."""
    goals = []
    for peer, target in (("granian", 1.0), ("uvicorn-zttp", 2.5)):
        goal = _at_least(f"h2c -m 10 vs {peer}", _ratio(results, "h2c_m10", me, peer), target)
        goals.append(replace(goal, by_cpu=_cpu_speedup(results, "h2c_m10", me, peer)))
    # Like for like: -m 1 keeps one request in flight per connection, as wrk does on HTTP/1.1.
    cpu = _at_most(
        "CPU/request h2c -m 1 vs HTTP/1.1 plaintext", h2_cpu_vs_http1(results), 1.5, "x", ".2f"
    )
    m10 = h2_cpu_vs_http1(results, "h2c_m10", me)
    goals.append(replace(cpu, by_cpu=f"-m 10: {m10:.2f}x" if m10 else ""))
    count = results.get("scenarios", {}).get("h2idle1k", {}).get("params", {}).get("count", 1000)
    mine, theirs = (_rss(results, "h2idle1k", s, "loaded_kib") for s in (me, "uvicorn-zttp"))
    flagged = any(
        _servers(results, "h2idle1k").get(s, {}).get("flagged") for s in (me, "uvicorn-zttp")
    )
    name = f"RSS at {count:,} idle h2 conns vs uvicorn-zttp"
    if flagged:
        goals.append(Goal(name, "<= 1.00x", "-", "N/A", "a measurement was flagged"))
    else:
        ratio = mine / theirs if mine is not None and theirs else None
        goals.append(_at_most(name, ratio, 1.0, "x", ".2f"))
    return goals


def _count_label(count: int) -> str:
    """10000 -> '10k', 1500 -> '1,500' (goal names say what was actually measured)."""
    return f"{count // 1000}k" if count % 1000 == 0 else f"{count:,}"


def _size_label(size: int) -> str:
    """1 << 30 -> '1 GiB', 64 << 20 -> '64 MiB'."""
    if size % (1 << 30) == 0:
        return f"{size >> 30} GiB"
    return f"{size / (1 << 20):g} MiB"
