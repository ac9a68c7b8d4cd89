"""Render a run's results as markdown (the console output and results/*.md)."""

from __future__ import annotations

from typing import Any

from .stats import Goal, h2_cpu_vs_http1, paired_ratio


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def server_order(results: dict[str, Any]) -> list[str]:
    """Servers in first-seen order across scenarios (fastserve first, as the harness runs them)."""
    order: list[str] = []
    for scenario in results.get("scenarios", {}).values():
        for name in scenario.get("servers", {}):
            if name not in order:
                order.append(name)
    return order


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def throughput_table(results: dict[str, Any]) -> list[str]:
    """Req/s (median) per scenario and server, with the paired ratio to uvicorn; ! = errors."""
    names = server_order(results)
    lines = [_row(["scenario", *names]), _row(["---"] + ["---:"] * len(names))]
    for scenario in _interleaved(results):
        cells = [scenario["title"]]
        for name in names:
            entry = scenario["servers"].get(name)
            if not entry:
                cells.append("")
                continue
            med = entry.get("median", {})
            mark = " !" if med.get("flagged") else ""
            ratio = entry.get("ratio", {}).get("rps")
            cells.append(f"{fmt_rate(med.get('rps'))}{fmt_ratio(ratio)}{mark}")
        lines.append(_row(cells))
    return lines


def latency_table(results: dict[str, Any]) -> list[str]:
    """p50 / p90 / p99 in ms per scenario and server."""
    names = server_order(results)
    lines = [_row(["scenario (p50 / p90 / p99 ms)", *names]), _row(["---"] * (len(names) + 1))]
    for scenario in _interleaved(results):
        if scenario.get("kind") != "wrk":
            continue
        cells = [scenario["title"]]
        for name in names:
            med = scenario["servers"].get(name, {}).get("median")
            cells.append(
                " / ".join(fmt_ms(med.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms"))
                if med
                else ""
            )
        lines.append(_row(cells))
    return lines


def cpu_table(results: dict[str, Any]) -> list[str]:
    """Server CPU µs per request (median) and its paired ratio to uvicorn (lower is better)."""
    names = server_order(results)
    lines = [_row(["server CPU µs per request", *names]), _row(["---"] + ["---:"] * len(names))]
    for scenario in _interleaved(results):
        cells = [scenario["title"]]
        for name in names:
            entry = scenario["servers"].get(name)
            cpu = entry.get("median", {}).get("cpu_us") if entry else None
            if cpu is None:
                cells.append("")
                continue
            cells.append(f"{cpu:,.1f}{fmt_ratio(entry.get('ratio', {}).get('cpu_us'))}")
        lines.append(_row(cells))
    return lines if len(lines) > 2 else []


def client_table(results: dict[str, Any]) -> list[str]:
    """The load generator's median CPU share of its core, per scenario and server; `*` where
    it was 0.9 or more (the client set the pace: req/s ratios there understate the servers')."""
    return share_table(results, "client_cpu", "client CPU (share of its core)", mark=0.9)


def kernel_table(results: dict[str, Any]) -> list[str]:
    """The kernel's median share of each server's CPU (system time over user + system)."""
    return share_table(results, "sys_share", "kernel share of server CPU", mark=None)


def share_table(results: dict[str, Any], key: str, title: str, mark: float | None) -> list[str]:
    """A median share per scenario and server (`*` from `mark` on); empty if no round has it."""
    names = server_order(results)
    lines = [_row([title, *names]), _row(["---"] + ["---:"] * len(names))]
    seen = False
    for scenario in _interleaved(results):
        cells = [scenario["title"]]
        for name in names:
            entry = scenario["servers"].get(name)
            share = entry.get("median", {}).get(key) if entry else None
            if share is None:
                cells.append("")
                continue
            seen = True
            flag = " *" if mark is not None and share >= mark else ""
            cells.append(f"{share:.2f}{flag}")
        lines.append(_row(cells))
    return lines if seen else []


def soak_table(results: dict[str, Any]) -> list[str]:
    """RSS at the two request counts of each soak scenario, and the growth between them."""
    lines = [_row(["soak", "server", "RSS 1 (MiB)", "RSS 2 (MiB)", "growth", "KiB per 1M"])]
    lines.append(_row(["---", "---", "---:", "---:", "---:", "---:"]))
    for key, scenario in results.get("scenarios", {}).items():
        if scenario.get("kind") != "soak":
            continue
        for name, e in scenario.get("servers", {}).items():
            if "growth_pct" not in e:
                lines.append(_row([key, name, "-", "-", e.get("error", "?")[:60], "-"]))
                continue
            note = " !" if e.get("flagged") else ""
            lines.append(
                _row(
                    [
                        f"{key} ({e['requests_1']:,} -> {e['requests_2']:,} requests)",
                        name,
                        f"{e['rss_1_kib'] / 1024:.1f}",
                        f"{e['rss_2_kib'] / 1024:.1f}",
                        f"{e['growth_pct']:+.2f} %{note}",
                        f"{e['kib_per_million']:,.0f}",
                    ]
                )
            )
    return lines if len(lines) > 2 else []


def memory_table(results: dict[str, Any]) -> list[str]:
    """RSS figures: idle vs 10k idle connections, and peaks of the slow transfers."""
    scenarios = results.get("scenarios", {})
    names = [n for n in server_order(results) if "+" not in n]
    lines = [_row(["memory (MiB)", *names]), _row(["---"] + ["---:"] * len(names))]
    count = scenarios.get("idle10k", {}).get("params", {}).get("count", 10_000)
    h2_count = scenarios.get("h2idle1k", {}).get("params", {}).get("count", 1000)
    rows = [
        ("idle10k", "idle_kib", "RSS idle"),
        ("idle10k", "loaded_kib", f"RSS with {count:,} idle conns"),
        ("idle10k", "per_conn_bytes", "bytes per idle conn"),
        ("h2idle1k", "idle_kib", "RSS idle (HTTP/2 server)"),
        ("h2idle1k", "loaded_kib", f"RSS with {h2_count:,} idle h2c conns"),
        ("h2idle1k", "per_conn_bytes", "bytes per idle h2c conn"),
        ("download", "peak_above_idle_kib", "slow download: peak above idle"),
        ("upload", "peak_above_idle_kib", "slow upload: peak above idle"),
    ]
    for key, field, label in rows:
        servers = scenarios.get(key, {}).get("servers")
        if not servers:
            continue
        cells = [label]
        for name in names:
            entry = servers.get(name, {})
            value = entry.get(field)
            note = " !" if entry.get("flagged") else ""
            if value is None:
                cells.append("-")
            elif field == "per_conn_bytes":
                cells.append(f"{value:,.0f}{note}")
            else:
                cells.append(f"{value / 1024:.1f}{note}")
        lines.append(_row(cells))
    return lines if len(lines) > 2 else []


def access_log_costs(results: dict[str, Any]) -> str:
    """'fastserve 4.1 %, uvicorn 55.0 %': throughput lost by turning the access log on."""
    servers = results.get("scenarios", {}).get("accesslog", {}).get("servers", {})
    parts = []
    for name in servers:
        if name.endswith("+log") and name[:-4] in servers:
            kept = paired_ratio(
                servers[name].get("rounds", []), servers[name[:-4]].get("rounds", [])
            )
            if kept is not None:
                parts.append(f"{name[:-4]} {(1 - kept) * 100:.1f} %")
    return ", ".join(parts)


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def before_after_table(results: dict[str, Any]) -> list[str]:
    """With --baseline: fastserve / fastserve@REV per scenario, paired per round (lower CPU
    per request and p99 are better), and the per-round req/s quotients behind the median."""
    before = results.get("meta", {}).get("baseline", {}).get("name")
    if not before:
        return []
    header = [f"fastserve / {before}", "req/s", "CPU µs/req", "p99", "req/s per round"]
    lines = [_row(header), _row(["---", "---:", "---:", "---:", "---"])]
    for scenario in _interleaved(results):
        servers = scenario.get("servers", {})
        vs = servers.get("fastserve", {}).get("vs_before")
        if not vs:
            continue
        now, old = servers["fastserve"].get("rounds", []), servers[before].get("rounds", [])
        per_round = [
            f"{x['rps'] / y['rps']:.3f}"
            for x, y in zip(now, old, strict=False)
            if x.get("rps") and y.get("rps")
        ]
        cells = [fmt_x(vs.get(k)) for k in ("rps", "cpu_us", "p99_ms")]
        lines.append(_row([scenario["title"], *cells, " ".join(per_round)]))
    return lines if len(lines) > 2 else []


def _h2(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in results.get("scenarios", {}).values() if s.get("kind") == "h2load"]


def h2_tables(results: dict[str, Any]) -> list[str]:
    """The HTTP/2 scenarios: req/s with paired ratios to uvicorn-zttp and granian, server CPU
    µs per request, latency; then fastserve's CPU per HTTP/2 request vs its HTTP/1.1 one."""
    h2 = _h2(results)
    if not h2:
        return []
    names: list[str] = []
    for scenario in h2:
        names += [n for n in scenario.get("servers", {}) if n not in names]
    base, other = (h2[0].get("baselines") or ["uvicorn-zttp", "granian"])[:2]

    def table(title: str, cell: Any) -> list[str]:
        lines = [_row([title, *names]), _row(["---"] + ["---:"] * len(names))]
        for scenario in h2:
            cells = [scenario["title"]]
            for name in names:
                entry = scenario["servers"].get(name)
                cells.append(cell(entry) if entry else "")
            lines.append(_row(cells))
        return [*lines, ""]

    def rate(entry: dict[str, Any]) -> str:
        med = entry.get("median", {})
        mark = " !" if med.get("flagged") else ""
        a, b = entry.get("ratio", {}).get("rps"), entry.get("vs_granian", {}).get("rps")
        ratios = f" ({fmt_x2(a)} / {fmt_x2(b)})" if a or b else ""
        return f"{fmt_rate(med.get('rps'))}{ratios}{mark}"

    def cpu(entry: dict[str, Any]) -> str:
        value = entry.get("median", {}).get("cpu_us")
        ratio = entry.get("ratio", {}).get("cpu_us")
        return "-" if value is None else f"{value:,.1f}{fmt_ratio(ratio)}"

    def latency(entry: dict[str, Any]) -> str:
        med = entry.get("median", {})
        return " / ".join(fmt_ms(med.get(k)) for k in ("p50_ms", "p99_ms"))

    out = [
        "### HTTP/2 (h2load)",
        "",
        f"(a / b) are the median per-round ratios to {base} and to {other}; `!` marks a"
        " round with failed, errored or timed-out requests, non-2xx answers, the wrong protocol"
        " or body bytes that do not add up.",
        "",
        *table(f"HTTP/2 req/s (x {base} / x {other})", rate),
        *table(f"HTTP/2 server CPU µs per request (x {base})", cpu),
        *table("HTTP/2 latency p50 / p99 ms", latency),
    ]
    return [*out, h2_vs_http1_line(results), ""]


def fmt_x2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def h2_vs_http1_line(results: dict[str, Any]) -> str:
    """fastserve's server CPU per HTTP/2 request over its HTTP/1.1 plaintext one (same run)."""
    scenarios = results.get("scenarios", {})
    if "plaintext" not in scenarios:
        return (
            "CPU per HTTP/2 request vs fastserve's HTTP/1.1 request: not compared (plaintext"
            " did not run in this run)."
        )
    parts = []
    for key in ("h2c_m1", "h2c_m10", "h2tls_m1", "h2tls_m10"):
        ratio = h2_cpu_vs_http1(results, key)
        if ratio is not None:
            parts.append(f"{key} {ratio:.2f}x")
    if not parts:
        return "CPU per HTTP/2 request vs fastserve's HTTP/1.1 request: no fastserve HTTP/2 figure."
    return (
        "fastserve's server CPU per HTTP/2 request / per HTTP/1.1 plaintext request (medians of"
        f" this run): {', '.join(parts)}."
    )


def goals_table(goals: list[Goal]) -> list[str]:
    header = ["goal", "target", "measured", "result", "by server CPU per request"]
    lines = [_row(header), _row(["---"] * len(header))]
    for goal in goals:
        result = goal.status + (f" ({goal.detail})" if goal.detail else "")
        lines.append(_row([goal.name, goal.target, goal.measured, result, goal.by_cpu]))
    return lines


def _baseline_line(meta: dict[str, Any]) -> list[str]:
    base = meta.get("baseline")
    if not base:
        return []
    return [
        f"Baseline: {base.get('name')} = {base.get('rev')} ({str(base.get('commit', ''))[:12]},"
        f" {base.get('fastserve_build', 'build not recorded')}), in the same rounds."
    ]


def _interleaved(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in results.get("scenarios", {}).values() if s.get("kind") in ("wrk", "ws")]


def render(results: dict[str, Any], goals: list[Goal]) -> str:
    meta = results.get("meta", {})
    out = [
        f"# Benchmark run {meta.get('stamp', '')}",
        "",
        f"Python {meta.get('python', '?')}, {meta.get('cpus', '?')} CPUs, "
        f"rounds {meta.get('rounds', '?')} x {meta.get('duration_s', '?')} s, "
        f"fastserve {meta.get('commit', '?')}{' (quick)' if meta.get('quick') else ''}"
        f" ({meta.get('fastserve_build', 'build not recorded')}).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}.",
        *_baseline_line(meta),
        "",
        "Median req/s (WebSocket: messages/s) over interleaved rounds; (Nx) is the median of the"
        " per-round ratios to uvicorn; `!` marks a run with socket errors, non-2xx answers or"
        " answers that are not what the scenario expects (status, body length)."
        " The CPU table divides the server's CPU time (utime + stime, whole process tree) by the"
        " requests served: on a shared machine it is steadier than req/s (lower is better).",
        "",
        *throughput_table(results),
        "",
        *latency_table(results),
        "",
    ]
    cpu = cpu_table(results)
    if cpu:
        out += [*cpu, ""]
    for table in (kernel_table(results), client_table(results)):
        if table:
            out += [*table, ""]
    before_after = before_after_table(results)
    if before_after:
        out += [*before_after, ""]
    costs = access_log_costs(results)
    if costs:
        out += [f"Access log cost (paired rounds, log on vs off): {costs}.", ""]
    out += h2_tables(results)
    memory = memory_table(results)
    if memory:
        out += [*memory, ""]
    soak = soak_table(results)
    if soak:
        out += [*soak, ""]
    deaths = [
        f"- {name} exited ({entry['died'].get('exit')}) during {scenario['title']}: "
        f"{(entry['died'].get('log_tail') or ['(no output)'])[-1][:200]}"
        for scenario in _interleaved(results)
        for name, entry in scenario["servers"].items()
        if entry.get("died")
    ]
    if deaths:
        out += [
            "Servers that exited during a scenario (their rounds are flagged):",
            "",
            *deaths,
            "",
        ]
    skipped = results.get("skipped", {})
    if skipped:
        out += ["Skipped:", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    out += ["## Goals", "", *goals_table(goals), ""]
    return "\n".join(out)
