"""fastserve side by side with uvicorn, granian and hypercorn: one command, see perf/README.md.

    python perf/bench.py [--python 3.11|3.13|PATH] [--scenarios a,b] [--servers a,b] [--quick]
                         [--baseline REV]

Creates or reuses perf/.venv-<X.Y>/ (fastserve installed from this working tree, plus the peers),
and with --baseline REV perf/.venv-<X.Y>-<shortrev>/ (fastserve built at REV, run beside the
tree's as `fastserve@<shortrev>`, in the same rounds),
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python perf/bench.py`: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import h2load, memory, report, scenarios, servers, stats, venv, wrk
from perf.scenarios import SCENARIOS, RunConfig, Scenario

RESULTS = venv.PERF_DIR / "results"
QUICK = RunConfig(
    rounds=2,
    duration=1,
    warmup=1,
    idle_conns=1000,
    transfer_size=64 << 20,
    transfer_rate=256 << 20,
    soak_requests=(50_000, 150_000),
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
        "--servers",
        default=",".join((*scenarios.PEERS, "lean")),
        help="comma-separated; a name selects its variants too (fastserve: fastserve-nogc, "
        "fastserve+log; uvicorn: uvicorn-zttp, uvicorn+log); =name selects that one alone",
    )
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run fastserve built at git revision REV (compiled, own venv) as "
        "fastserve@<shortrev>, interleaved with the tree's; the report gives fastserve / "
        "fastserve@REV per scenario",
    )
    p.add_argument(
        "--fastserve-rev",
        metavar="REV",
        help="measure fastserve as committed at REV instead of the working tree (which may "
        "hold other people's unfinished edits)",
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


def meta(env: venv.BenchEnv, cfg: RunConfig, quick: bool, stamp: str) -> dict[str, Any]:
    wanted = (
        "fastserve",
        "uvicorn",
        "zttp",
        "granian",
        "hypercorn",
        "uvloop",
        "httptools",
        "websockets",
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    h2load_version = ""
    if h2load.h2load_path():
        h2load_version = subprocess.run(
            ["h2load", "--version"], capture_output=True, text=True
        ).stdout.strip()
    return {
        "stamp": stamp,
        "python": env.python_version,
        "commit": git_describe(),
        "quick": quick,
        "rounds": cfg.rounds,
        "duration_s": cfg.duration,
        "warmup_s": cfg.warmup,
        "cpus": os.cpu_count(),
        # The machine is shared: how busy it was when the run ended (1, 5, 15 min).
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "pinned": bool(wrk.pin_prefix(0)),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "wrk": wrk_version.splitlines()[0] if wrk_version else "?",
        "h2load": h2load_version or "not installed",
        "versions": {k: env.installed[k] for k in wanted if k in env.installed},
        "fastserve_build": venv.fastserve_build(env),
        "argv": sys.argv[1:],
    }


def selected(wanted: tuple[str, ...], names: list[str]) -> list[str]:
    """The servers of `wanted` that `--servers` asked for, by name or by family; a name
    written `=name` selects that server alone, not its variants."""
    exact = {n[1:] for n in names if n.startswith("=")}
    return [n for n in wanted if n in exact or n in names or servers.family(n) in names]


def with_baseline(names: list[str], baseline: str | None) -> list[str]:
    """`baseline` (fastserve@REV) right after fastserve, wherever fastserve runs."""
    if baseline is None or "fastserve" not in names:
        return names
    at = names.index("fastserve") + 1
    return [*names[:at], baseline, *names[at:]]


class Bench:
    """One run: the servers it keeps running, and the results it gathers."""

    def __init__(
        self,
        env: venv.BenchEnv,
        cfg: RunConfig,
        names: list[str],
        log_dir: Path,
        baseline: servers.ServerSpec | None = None,
    ):
        self.env, self.cfg, self.names, self.log_dir = env, cfg, names, log_dir
        self.specs = dict(servers.SPECS)
        self.baseline = baseline.name if baseline else None
        if baseline is not None:
            self.specs[baseline.name] = baseline
        self.pool: dict[str, servers.Running] = {}
        self.results: dict[str, Any] = {"scenarios": {}, "skipped": {}}
        self.tls: servers.Tls | None = None
        self.h2_checked: dict[str, str | None] = {}  # server -> why it has no HTTP/2 here

    def available(self, wanted: tuple[str, ...]) -> list[str]:
        names = [n for n in selected(wanted, self.names) if self.installed(n)]
        return with_baseline(names, self.baseline)

    def installed(self, name: str) -> bool:
        """Whether the bench venv has what `name` needs; a missing one is skipped once."""
        spec = self.specs.get(name)
        if spec is None:
            return False
        missing = [d for d in (spec.dist, *spec.needs) if not self.env.has(d)]
        if missing:
            why = self.env.skipped.get(name, f"{', '.join(missing)} not installed")
            self.skip(f"server {name}", why)
        return not missing

    def ensure_pool(
        self, wanted: list[str], on_fail: Callable[[str, Exception], None] | None = None
    ) -> None:
        """Keep exactly `wanted` running (start the missing ones, stop the others). A server
        that does not start stops the run, unless `on_fail` takes it (it is then left out)."""
        for name in [n for n in self.pool if n not in wanted]:
            self.pool.pop(name).stop()
        for name in wanted:
            if name not in self.pool:
                self._start(name, on_fail)
        for name in wanted:
            if name in self.pool and not scenarios.server_alive(self.pool[name]):
                self.pool.pop(name).stop()  # restart a server that died
                self._start(name, on_fail)

    def _start(self, name: str, on_fail: Callable[[str, Exception], None] | None) -> None:
        try:
            self.pool[name] = servers.start(self.specs[name], self.env, self.log_dir)
        except servers.ServerFailed as exc:
            if on_fail is None:
                raise
            on_fail(name, exc)

    def tls_cert(self) -> servers.Tls | None:
        """The run's throwaway certificate (made once, in the temporary log directory)."""
        if self.tls is None:
            try:
                self.tls = servers.self_signed_cert(self.log_dir)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.skip("HTTP/2 over TLS", f"no certificate: {exc}")
        return self.tls

    def h2_specs(self, scenario: Scenario) -> dict[str, servers.ServerSpec]:
        """Server name -> its HTTP/2 variant for `scenario`; each server that can't run it is
        skipped with the reason (printed once)."""
        if not h2load.h2load_path():
            self.skip("HTTP/2", "h2load is not installed (Debian: nghttp2-client)")
            return {}
        tls = self.tls_cert() if scenario.tls else None
        if scenario.tls and tls is None:
            return {}
        label = "h2 over TLS" if scenario.tls else "h2c"
        out: dict[str, servers.ServerSpec] = {}
        for name in self.available(scenario.servers):
            spec = self.specs[name]
            if name not in self.h2_checked:
                self.h2_checked[name] = servers.h2_unsupported(spec, self.env)
            why = self.h2_checked[name]
            variant = servers.h2_variant(spec, tls)
            if why is None and variant is not None:
                out[name] = variant
                self.specs[variant.name] = variant
            else:
                if name == "uvicorn":
                    why = "httptools has no HTTP/2; uvicorn serves it as uvicorn-zttp (--http2)"
                self.skip(f"server {name} ({label})", why or "no HTTP/2")
        return out

    def stop_all(self) -> None:
        while self.pool:
            _, server = self.pool.popitem()
            server.stop()

    def run(self, scenario: Scenario) -> None:
        if scenario.http == "2":
            self.run_h2(scenario)
            return
        names = self.available(scenario.servers)
        print(f"== {scenario.key}: {scenario.title} ({', '.join(names)})", flush=True)
        if scenario.kind in ("wrk", "ws"):
            if scenario.kind == "ws" and not self.env.has("websockets"):
                # clients.py falls back to the websockets client without ws_bench.py, and
                # the servers need it to speak WebSocket at all.
                self.skip("websocket", "the websockets library is not installed")
                return
            self.ensure_pool(names)
            ordered = {n: self.pool[n] for n in names}
            result = scenarios.run_interleaved(scenario, ordered, self.env, self.cfg)
            stats.add_summaries(result, before=self.baseline)
        else:
            self.stop_all()  # memory scenarios run alone on the machine
            result = memory.run_memory(
                scenario, names, self.env, self.cfg, self.log_dir, self.specs
            )
        self.results["scenarios"][scenario.key] = result

    def run_h2(self, scenario: Scenario) -> None:
        """An HTTP/2 scenario: h2load rounds (interleaved like wrk's), or idle h2 connections.
        Every server runs as its HTTP/2 variant; ratios are to uvicorn-zttp and granian."""
        specs = self.h2_specs(scenario)
        print(f"== {scenario.key}: {scenario.title} ({', '.join(specs)})", flush=True)
        if not specs:
            return
        if scenario.kind != "h2load":
            self.stop_all()  # memory scenarios run alone on the machine
            result = memory.run_memory(
                scenario, list(specs), self.env, self.cfg, self.log_dir, specs
            )
            self.results["scenarios"][scenario.key] = result
            return
        display = {spec.name: name for name, spec in specs.items()}

        def failed(key: str, exc: Exception) -> None:
            self.skip(f"server {display[key]} ({scenario.key})", f"did not start: {exc}")

        self.ensure_pool([spec.name for spec in specs.values()], on_fail=failed)
        ordered = {name: self.pool[s.name] for name, s in specs.items() if s.name in self.pool}
        if not ordered:
            return
        result = scenarios.run_interleaved(scenario, ordered, self.env, self.cfg)
        stats.add_summaries(result, baseline=scenarios.H2_BASELINES[0], before=self.baseline)
        stats.add_ratios(result, scenarios.H2_BASELINES[1], "vs_granian")
        result["baselines"] = list(scenarios.H2_BASELINES)
        self.results["scenarios"][scenario.key] = result

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
    python = args.python or default_python()
    # Resolved once: others commit while a run goes on, and "HEAD" must mean one commit.
    fastserve_rev = venv.resolve_rev(args.fastserve_rev)[0] if args.fastserve_rev else None
    env = venv.prepare(python, reinstall_fastserve=not args.no_install, fastserve_rev=fastserve_rev)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n.removeprefix("=") not in servers.SPECS]
    if unknown:
        raise SystemExit(f"unknown server(s) {', '.join(unknown)}: {', '.join(servers.SPECS)}")
    baseline, baseline_meta = None, None
    if args.baseline:
        # Both sides compiled, or the comparison measures the build, not the change.
        build = venv.require_compiled(env, "fastserve (this tree)")
        base_env = venv.prepare_baseline(python, args.baseline)
        full, short = venv.resolve_rev(args.baseline)
        baseline = servers.baseline_spec(short, base_env)
        baseline_meta = {
            "name": baseline.name,
            "rev": args.baseline,
            "commit": full,
            "fastserve_build": venv.require_compiled(base_env, baseline.name),
            "venv": str(base_env.root.relative_to(venv.REPO)),
        }
        print(f"[bench] fastserve ({build}) beside {baseline.name} ({full[:12]})")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix="fastserve-bench-"))
    bench = Bench(env, cfg, names, log_dir, baseline)
    started = time.monotonic()
    try:
        for scenario in chosen:
            bench.run(scenario)
    finally:
        bench.stop_all()
    bench.results["meta"] = meta(env, cfg, args.quick, stamp)
    bench.results["meta"]["wall_s"] = round(time.monotonic() - started)
    if fastserve_rev:
        bench.results["meta"]["commit"] = fastserve_rev[:7]
    if baseline_meta is not None:
        bench.results["meta"]["baseline"] = baseline_meta
    goals = goals_of(bench.results)
    bench.results["goals"] = [g.as_dict() for g in goals]
    md = write_outputs(bench.results, env, args.results or RESULTS, args.quick)
    print()
    print(md.read_text())
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
