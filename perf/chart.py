"""Draw a run's JSON as one PNG: req/s per scenario per server, latency percentiles, memory.

Runs inside the bench venv (which has matplotlib): `python perf/chart.py RUN.json OUT.png`.
Self-contained on purpose (no `perf` imports), so it works as a plain script.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import matplotlib  # type: ignore[import-not-found, unused-ignore]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

COLOURS = {
    "fastserve": "#d62728",
    "fastserve+log": "#ff9896",
    "uvicorn": "#1f77b4",
    "uvicorn+log": "#aec7e8",
    "granian": "#2ca02c",
    "hypercorn": "#9467bd",
}


def bars(ax: Any, labels: list[str], values: list[float], notes: list[str], title: str) -> None:
    colours = [COLOURS.get(n, "#7f7f7f") for n in labels]
    ax.bar(range(len(labels)), values, color=colours)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    top = max(values or [1]) or 1
    for i, (value, note) in enumerate(zip(values, notes, strict=False)):
        ax.text(i, value + top * 0.02, note, ha="center", va="bottom", fontsize=6)
    ax.set_ylim(0, top * 1.2)


def throughput_panels(results: dict[str, Any]) -> list[tuple[str, Any]]:
    panels = []
    for scenario in results["scenarios"].values():
        if scenario.get("kind") not in ("wrk", "ws", "h2load"):
            continue
        names = list(scenario["servers"])
        values = [scenario["servers"][n]["median"].get("rps") or 0 for n in names]
        notes = []
        for n in names:
            entry = scenario["servers"][n]
            ratio = entry.get("ratio", {}).get("rps")
            flag = " !" if entry["median"].get("flagged") else ""
            notes.append(f"{ratio:.2f}x{flag}" if ratio else flag)
        unit = "msg/s" if scenario["kind"] == "ws" else "req/s"
        if scenario.get("baselines"):  # HTTP/2: the ratios are to uvicorn-zttp
            unit += f"; x {scenario['baselines'][0]}"
        panels.append((f"{scenario['title']} ({unit})", (names, values, notes)))
    return panels


def latency_panel(ax: Any, scenario: dict[str, Any]) -> None:
    names = list(scenario["servers"])
    keys = ("p50_ms", "p90_ms", "p99_ms")
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        values = [scenario["servers"][n]["median"].get(key) or 0 for n in names]
        xs = [i + (k - 1) * width for i in range(len(names))]
        ax.bar(
            xs,
            values,
            width=width,
            label=key.split("_")[0],
            color=[COLOURS.get(n, "#7f7f7f") for n in names],
            alpha=0.45 + 0.25 * k,
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_title(f"{scenario['title']}: p50 / p90 / p99 (ms, log)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6)


def memory_panel(ax: Any, results: dict[str, Any]) -> bool:
    """Grouped bars: per measurement (idle, idle conns, transfer peaks), one bar per server."""
    scenarios = results["scenarios"]
    idle = scenarios.get("idle10k", {})
    count = idle.get("params", {}).get("count", 10_000)
    groups = [
        ("idle10k", "idle_kib", "idle"),
        ("idle10k", "loaded_kib", f"{count:,} idle conns"),
        ("download", "peak_kib", "slow download peak"),
        ("upload", "peak_kib", "slow upload peak"),
    ]
    groups = [g for g in groups if scenarios.get(g[0], {}).get("servers")]
    names: list[str] = []
    for key, _, _ in groups:
        names += [n for n in scenarios[key]["servers"] if n not in names]
    if not groups or not names:
        return False
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [
            (scenarios[key]["servers"].get(name, {}).get(field) or 0) / 1024
            for key, field, _ in groups
        ]
        xs = [g + (k - (len(names) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width=width, label=name, color=COLOURS.get(name, "#7f7f7f"))
    ax.set_xticks(range(len(groups)), [g[2] for g in groups], rotation=20, ha="right", fontsize=7)
    ax.set_title("RSS (MiB, whole process tree)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6)
    return True


def cpu_panel(ax: Any, results: dict[str, Any]) -> bool:
    """Server CPU µs per request for each wrk scenario, one bar per server (log scale)."""
    scenarios = {
        k: s for k, s in results["scenarios"].items() if s.get("kind") == "wrk" and k != "accesslog"
    }
    names: list[str] = []
    for s in scenarios.values():
        names += [n for n in s["servers"] if n not in names]
    if not scenarios or not any(
        e.get("median", {}).get("cpu_us") for s in scenarios.values() for e in s["servers"].values()
    ):
        return False
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [
            s["servers"].get(name, {}).get("median", {}).get("cpu_us") or 0
            for s in scenarios.values()
        ]
        xs = [g + (k - (len(names) - 1) / 2) * width for g in range(len(scenarios))]
        ax.bar(xs, values, width=width, label=name, color=COLOURS.get(name, "#7f7f7f"))
    ax.set_xticks(range(len(scenarios)), list(scenarios), rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_title("server CPU µs per request (lower is better, log)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6)
    return True


def draw(results: dict[str, Any], out: str) -> None:
    panels = throughput_panels(results)
    lat = [s for k, s in results["scenarios"].items() if k in ("plaintext", "conns1000")]
    has_memory = any(k in results["scenarios"] for k in ("idle10k", "download", "upload"))
    count = len(panels) + len(lat) + (1 if has_memory else 0) + 1
    cols = 4
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4, rows * 3.2), squeeze=False)
    flat = [ax for row in axes for ax in row]
    i = 0
    for title, (names, values, notes) in panels:
        bars(flat[i], names, values, notes, title)
        i += 1
    for scenario in lat:
        latency_panel(flat[i], scenario)
        i += 1
    if has_memory and memory_panel(flat[i], results):
        i += 1
    if cpu_panel(flat[i], results):
        i += 1
    for ax in flat[i:]:
        ax.axis("off")
    meta = results.get("meta", {})
    fig.suptitle(
        f"fastserve vs peers: Python {meta.get('python', '?')}, one worker, server CPU 0, "
        f"wrk CPU 1; medians of {meta.get('rounds', '?')} interleaved rounds; "
        f"labels = ratio to uvicorn ({meta.get('stamp', '')}, {meta.get('commit', '')})",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out, dpi=110)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        results = json.load(fh)
    draw(results, sys.argv[2])


if __name__ == "__main__":
    main()
