"""fastserve side by side with uvicorn, granian and hypercorn: one command, see perf/README.md.

    python perf/bench.py [--python 3.11|3.13|PATH] [--scenarios a,b] [--servers a,b] [--quick]

Creates or reuses perf/.venv-<X.Y>/ (fastserve installed from this working tree, plus the peers),
runs every scenario with the server on CPU 0 and the load generator on CPU 1, and writes
perf/results/<stamp>-py<X.Y>.json, latest-py<X.Y>.md and latest-py<X.Y>.png. Loopback only;
every step is bounded in time and every server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python perf/bench.py`: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import memory, report, scenarios, servers, stats, venv, wrk
from perf.scenarios import SCENARIOS, RunConfig, Scenario

RESULTS = venv.PERF_DIR / "results"
QUICK = RunConfig(
    rounds=2, duration=1, warmup=1, idle_conns=1000, transfer_size=64 << 20, transfer_rate=256 << 20
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="fastserve benchmark harness (see perf/README.md)")
    p.add_argument(
        "--python",
        default=None,
        help="interpreter: a pyenv version prefix (3.11, 3.13) or a path "
        "(default: 3.11 from pyenv if present, else this interpreter)",
    )
    p.add_argument("--scenarios", default="all", help="comma-separated keys (see --list)")
    p.add_argument(
        "--servers", default=",".join((*scenarios.PEERS, "lean")), help="comma-separated"
    )
    p.add_argument("--quick", action="store_true", help="smoke check: short runs, 2 rounds")
    p.add_argument("--rounds", type=int, help="interleaved rounds per scenario (default 7)")
    p.add_argument("--duration", type=float, help="seconds per wrk round (default 4)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per server (default 2)")
    p.add_argument("--idle-conns", type=int, help="idle connections to hold (default 10000)")
    p.add_argument("--transfer-size", type=int, help="bytes of the slow transfers (1 GiB)")
    p.add_argument("--transfer-rate", type=float, help="slow peer's bytes/s (128 MiB/s)")
    p.add_argument(
        "--no-install",
        action="store_true",
        help="reuse the venv as is (no fresh fastserve install from the tree)",
    )
    p.add_argument("--results", type=Path, help="output directory (default perf/results)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RUN.json",
        help="only redraw the markdown and chart of a saved run",
    )
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> RunConfig:
    base = QUICK if args.quick else RunConfig()
    changes = {
        key: getattr(args, key)
        for key in ("rounds", "duration", "warmup", "idle_conns", "transfer_size", "transfer_rate")
        if getattr(args, key) is not None
    }
    return RunConfig(**{**base.__dict__, **changes})


def pick_scenarios(spec: str) -> list[Scenario]:
    if spec == "all":
        return list(SCENARIOS)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in scenarios.BY_KEY]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; see --list")
    return [scenarios.BY_KEY[k] for k in keys]


def default_python() -> str | None:
    try:
        venv.find_python("3.11")
    except SystemExit:
        return None
    return "3.11"


def git_describe() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=venv.REPO, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--", "server").strip() else "")


def fastserve_build(env: venv.BenchEnv) -> str:
    """`fastserve --version`'s build note: its hot path compiled (mypyc) or pure Python."""
    out = subprocess.run(
        [str(env.python), "-m", "fastserve", "--version"], capture_output=True, text=True
    ).stdout
    return out[out.find("(") + 1 : out.rfind(")")] if "(" in out else "?"


def meta(env: venv.BenchEnv, cfg: RunConfig, quick: bool, stamp: str) -> dict[str, Any]:
    wanted = ("fastserve", "uvicorn", "granian", "hypercorn", "uvloop", "httptools", "websockets")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "stamp": stamp,
        "python": env.python_version,
        "commit": git_describe(),
        "quick": quick,
        "rounds": cfg.rounds,
        "duration_s": cfg.duration,
        "warmup_s": cfg.warmup,
        "cpus": os.cpu_count(),
        "pinned": bool(wrk.pin_prefix(0)),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "wrk": wrk_version.splitlines()[0] if wrk_version else "?",
        "versions": {k: env.installed[k] for k in wanted if k in env.installed},
        "fastserve_build": fastserve_build(env),
        "argv": sys.argv[1:],
    }


class Bench:
    """One run: the servers it keeps running, and the results it gathers."""

    def __init__(self, env: venv.BenchEnv, cfg: RunConfig, names: list[str], log_dir: Path):
        self.env, self.cfg, self.names, self.log_dir = env, cfg, names, log_dir
        self.pool: dict[str, servers.Running] = {}
        self.results: dict[str, Any] = {"scenarios": {}, "skipped": {}}

    def available(self, wanted: tuple[str, ...]) -> list[str]:
        return [n for n in wanted if n.split("+")[0] in self.names]

    def ensure_pool(self, wanted: list[str]) -> None:
        """Keep exactly `wanted` running (start the missing ones, stop the others)."""
        for name in [n for n in self.pool if n not in wanted]:
            self.pool.pop(name).stop()
        for name in wanted:
            if name not in self.pool:
                self.pool[name] = servers.start(servers.SPECS[name], self.env, self.log_dir)
        for name in wanted:
            if not scenarios.server_alive(self.pool[name]):  # restart a server that died
                self.pool.pop(name).stop()
                self.pool[name] = servers.start(servers.SPECS[name], self.env, self.log_dir)

    def stop_all(self) -> None:
        while self.pool:
            _, server = self.pool.popitem()
            server.stop()

    def run(self, scenario: Scenario) -> None:
        names = self.available(scenario.servers)
        print(f"== {scenario.key}: {scenario.title} ({', '.join(names)})", flush=True)
        if scenario.kind in ("wrk", "ws"):
            if scenario.kind == "ws" and not self.websocket_ready():
                return
            self.ensure_pool(names)
            ordered = {n: self.pool[n] for n in names}
            result = scenarios.run_interleaved(scenario, ordered, self.env, self.cfg)
            stats.add_summaries(result)
        else:
            self.stop_all()  # memory scenarios run alone on the machine
            result = memory.run_memory(scenario, names, self.env, self.cfg, self.log_dir)
        self.results["scenarios"][scenario.key] = result

    def websocket_ready(self) -> bool:
        """WebSocket scenarios run once fastserve completes a handshake; until then, skipped."""
        if not self.env.has("websockets"):
            self.skip("websocket", "the websockets client library is not installed")
            return False
        self.ensure_pool([n for n in self.pool if n != "fastserve"] + ["fastserve"])
        if scenarios.websocket_supported(self.pool["fastserve"].port):
            return True
        self.skip("websocket", "fastserve does not complete a WebSocket handshake yet")
        return False

    def skip(self, what: str, why: str) -> None:
        if what not in self.results["skipped"]:
            print(f"SKIP {what}: {why}", flush=True)
        self.results["skipped"][what] = why


def render_saved(run_json: Path, python_spec: str | None) -> int:
    """Recompute goals and rewrite latest-*.md/.png from a saved run (no benchmark)."""
    results = json.loads(run_json.read_text())
    results["goals"] = [g.as_dict() for g in goals_of(results)]
    run_json.write_text(json.dumps(results, indent=1) + "\n")
    version = ".".join(results["meta"]["python"].split(".")[:2])
    env = venv.prepare(python_spec or version, reinstall_fastserve=False)
    tag = f"py{version}"
    prefix = "quick" if results["meta"].get("quick") else "latest"
    _write_views(results, env, run_json, run_json.parent, f"{prefix}-{tag}")
    return 0


def _write_views(
    results: dict[str, Any], env: venv.BenchEnv, run_json: Path, out_dir: Path, name: str
) -> Path:
    if run_json.name != f"{name}.json":
        shutil.copyfile(run_json, out_dir / f"{name}.json")
    md = out_dir / f"{name}.md"
    md.write_text(report.render(results, goals_of(results)))
    png = out_dir / f"{name}.png"
    if env.has("matplotlib"):
        chart = [str(env.python), str(venv.PERF_DIR / "chart.py"), str(run_json), str(png)]
        if subprocess.run(chart, timeout=120).returncode != 0:
            print("chart: matplotlib failed, no PNG written")
    else:
        print("chart: matplotlib is not installed in the bench venv, no PNG written")
    print(f"results: {run_json}\n         {md}\n         {png}")
    return md


def write_outputs(results: dict[str, Any], env: venv.BenchEnv, out_dir: Path, quick: bool) -> Path:
    if quick:  # smoke checks go to results/quick/ (git-ignored), never over real results
        out_dir = out_dir / "quick"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"py{'.'.join(env.python_version.split('.')[:2])}"
    stamp = results["meta"]["stamp"]
    run_json = out_dir / f"{stamp}-{tag}.json"
    run_json.write_text(json.dumps(results, indent=1) + "\n")
    prefix = "quick" if quick else "latest"
    return _write_views(results, env, run_json, out_dir, f"{prefix}-{tag}")


def ensure_wrk() -> None:
    """wrk comes from Debian; as root with apt-get at hand, install it (a fresh machine)."""
    if wrk.wrk_path():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("[setup] installing wrk with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, timeout=600)
    if not wrk.wrk_path():
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")


def goals_of(results: dict[str, Any]) -> list[stats.Goal]:
    return stats.evaluate_goals(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_saved(args.render, args.python)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.key:<10} {s.kind:<9} {s.title}")
        return 0
    ensure_wrk()
    servers.raise_nofile()
    cfg = run_config(args)
    chosen = pick_scenarios(args.scenarios)
    env = venv.prepare(args.python or default_python(), reinstall_fastserve=not args.no_install)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    bench_servers = []
    for name in names:
        dist = servers.SPECS[name].dist if name in servers.SPECS else name
        if name not in servers.SPECS or not env.has(dist):
            print(f"SKIP server {name}: {env.skipped.get(name, 'not installed in the bench venv')}")
        else:
            bench_servers.append(name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix="fastserve-bench-"))
    bench = Bench(env, cfg, bench_servers, log_dir)
    for name in set(names) - set(bench_servers):
        bench.results["skipped"][f"server {name}"] = env.skipped.get(name, "not installed")
    started = time.monotonic()
    try:
        for scenario in chosen:
            bench.run(scenario)
    finally:
        bench.stop_all()
    bench.results["meta"] = meta(env, cfg, args.quick, stamp)
    bench.results["meta"]["wall_s"] = round(time.monotonic() - started)
    goals = goals_of(bench.results)
    bench.results["goals"] = [g.as_dict() for g in goals]
    md = write_outputs(bench.results, env, args.results or RESULTS, args.quick)
    print()
    print(md.read_text())
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
