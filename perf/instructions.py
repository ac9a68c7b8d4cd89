"""Instructions per request, counted by valgrind (callgrind): a deterministic complement to the
harness's req/s, for before/after comparisons on a noisy machine.

    python3 perf/instructions.py                        # this working tree, Python 3.11
    python3 perf/instructions.py --baseline d7054e5     # ... and fastserve built at d7054e5
    python3 perf/instructions.py --python 3.13 --fastserve-rev HEAD --baseline HEAD~3

In-process, no sockets: fastserve's HTTP1Protocol, set up the way server.py does it (a Config,
a ServerState, one protocol per connection), on a uvloop loop, with in-memory transports that
only keep what is written. Each of `--connections` connections gets the same pipelined-free
GET /plaintext of perf/apps.py (wrk's request), batch after batch, and the loop runs until
every response has left. Each build runs from its venv, as the harness installs it (compiled:
perf/venv.py), twice under callgrind: with `--warmup` requests and with `--warmup` +
`--requests`. The difference divided by `--requests` is what one request costs in steady state:
interpreter start-up, imports and warm-up cancel out. The counts move by a few instructions per
request from one run to the next (timers that fire on wall-clock time); anything beyond ~0.2 %
is the code. The kernel's share of a request (one recv, one send: about half of its CPU in the
harness) is not counted.

GC: the server's `tune_gc()` (gc.freeze, gen-0 threshold 7000) is off unless --gc-tune, as in
the counts of perf/README.md's log.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python perf/instructions.py`: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import venv

SCRIPT = Path(__file__).resolve()
# wrk's request, as the harness sends it.
REQUEST = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
BODY = b"Hello, world!"
EAGER = sys.version_info >= (3, 12)


# -- the worker: runs inside the build's venv, under valgrind --------------------------------


class MemoryTransport(asyncio.Transport):
    """A transport that keeps what is written; nothing else happens (no syscalls)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closing = False
        self.peer = ("127.0.0.1", 40000 + index)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.out.append(b"".join(list_of_data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)


def make_config(
    app: Any, gc_tune: bool, metrics: bool = False, access_log: str | None = None
) -> Any:
    """A Config as the CLI would build it for the harness; only fields this revision has
    (the same script drives older builds)."""
    from fastserve.config import Config

    wanted: dict[str, Any] = {
        "app": app,
        "loop": "uvloop",
        "lifespan": "off",
        "access_log": access_log is not None,
        "access_log_json": access_log == "json",
        "gc_tune": gc_tune,
        "metrics": metrics,  # --metrics: the counters only (no listener in-process)
        # Long enough that no deadline passes while valgrind runs (it is ~50x slower).
        "timeout_keep_alive": 3600,
        "timeout_request_header": 3600,
    }
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in wanted.items() if k in names})


async def drive(
    requests: int,
    connections: int,
    gc_tune: bool,
    metrics: bool = False,
    access_log: str | None = None,
) -> None:
    from fastserve.protocols.http1 import HTTP1Protocol
    from fastserve.server import tune_gc
    from fastserve.state import ServerState
    from perf.apps import app  # the app every server of the harness serves

    loop = asyncio.get_running_loop()
    config = make_config(app, gc_tune, metrics, access_log)
    if metrics and not getattr(config, "metrics", False):
        raise SystemExit("--metrics: this build has no metrics")
    log = None
    if access_log is not None:
        from fastserve.accesslog import AccessLog
        from fastserve.logs import configure_logging

        # The lines are made and written as the server does (to stdout: the worker's is
        # /dev/null then).
        configure_logging(config)
        log = AccessLog(config, loop)
    if gc_tune:
        tune_gc()
    state = ServerState(config, app, loop, {}, log)
    transports = [MemoryTransport(i) for i in range(connections)]
    protocols = []
    for transport in transports:
        protocol = HTTP1Protocol(state)
        protocol.connection_made(transport)
        protocols.append(protocol)
    batches = -(-requests // connections)
    for _ in range(batches):
        for protocol in protocols:
            protocol.data_received(REQUEST)
        # The request tasks run in the next loop pass(es): a bounded number of them, then
        # whatever is left is an error.
        for _ in range(8):
            await asyncio.sleep(0)
            if not state.in_flight:
                break
        else:
            raise SystemExit(f"requests still in flight: {state.in_flight}")
        if EAGER:
            # A small final response is held to the end of the loop pass (server.state's
            # outbox, 3.12+): one more pass, so that it has left before the next batch.
            await asyncio.sleep(0)
    # The answers must be right, or the count means nothing: every connection got one
    # response per batch (checked in full on the first: bytes.count is cheap but not free).
    first = b"".join(transports[0].out)
    found = first.count(b"HTTP/1.1 200 ")
    if found != batches or first.count(b"\r\n\r\n" + BODY) != batches:
        raise SystemExit(f"connection 0: {found} good responses of {batches}: {first[:300]!r}")
    short = [i for i, t in enumerate(transports) if len(t.out) < batches]
    if short:
        raise SystemExit(f"connections {short[:5]} got fewer than {batches} writes")
    if log is not None:
        log.flush()  # (the last batch: its lines are counted too)
    state.close()


def worker(args: argparse.Namespace) -> int:
    import uvloop

    from fastserve.cli import build_info

    print(f"WORKER build {build_info()}", flush=True)
    if args.access_log:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
    uvloop.run(drive(args.requests, args.connections, args.gc_tune, args.metrics, args.access_log))
    return 0


# -- the driver: builds the venvs, runs valgrind, prints the counts ---------------------------


def callgrind_total(out_file: Path) -> int:
    """Total instructions (Ir) of a callgrind output file: its `summary:` (or `totals:`)."""
    text = out_file.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no instruction total in {out_file}")
    return int(match.group(1))


def per_request(low: int, high: int, requests: int) -> float:
    """Instructions per request from the two runs' totals (the second served `requests` more)."""
    return (high - low) / requests


def count(
    env: venv.BenchEnv, requests: int, args: argparse.Namespace, tmp: Path, metrics: bool = False
) -> int:
    """Total instructions of one worker run under callgrind."""
    tag = "-metrics" if metrics else ""
    out_file = tmp / f"callgrind-{env.root.name}{tag}-{requests}.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        str(env.python),
        str(SCRIPT),
        "--worker",
        "--requests",
        str(requests),
        "--connections",
        str(args.connections),
        *(["--gc-tune"] if args.gc_tune else []),
        *(["--metrics"] if metrics else []),
        *(["--access-log", args.access_log] if args.access_log else []),
    ]
    # A fixed hash seed: set and dict layouts, and so the work they cost, repeat run to run.
    child_env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(argv, capture_output=True, text=True, env=child_env, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        raise SystemExit(f"{env.root.name}: worker failed ({proc.returncode}):\n{tail}")
    return callgrind_total(out_file)


METERED = " --metrics"  # the label suffix of a build counted with --metrics on


def measure(builds: dict[str, venv.BenchEnv], args: argparse.Namespace) -> dict[str, Any]:
    """Every build's two runs, two at a time (callgrind counts, so a busy CPU does not skew
    them; it only takes longer)."""
    low, high = args.warmup, args.warmup + args.requests
    jobs = [(label, n) for label in builds for n in (low, high)]
    with (
        tempfile.TemporaryDirectory(prefix="fastserve-callgrind-") as tmp,
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        futures = {
            job: pool.submit(count, builds[job[0]], job[1], args, where, job[0].endswith(METERED))
            for job in jobs
        }
        totals = {job: future.result() for job, future in futures.items()}
    out: dict[str, Any] = {}
    for label, env in builds.items():
        out[label] = {
            "build": venv.fastserve_build(env),
            "instructions_per_request": round(
                per_request(totals[label, low], totals[label, high], args.requests)
            ),
            "totals": [totals[label, low], totals[label, high]],
        }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="instructions per request under callgrind")
    p.add_argument("--python", default="3.11", help="pyenv version prefix or path (3.11)")
    p.add_argument("--baseline", metavar="REV", help="also count fastserve built at REV")
    p.add_argument(
        "--fastserve-rev", metavar="REV", help="count REV's build instead of the working tree's"
    )
    p.add_argument("--no-install", action="store_true", help="use the venv's fastserve as is")
    p.add_argument("--requests", type=int, default=10_000, help="counted requests (10000)")
    p.add_argument("--warmup", type=int, default=1_000, help="requests before those (1000)")
    p.add_argument("--connections", type=int, default=100, help="fake connections (100)")
    p.add_argument("--gc-tune", action="store_true", help="run the server's tune_gc() first")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="also count the (first) build with --metrics on (its counters; no listener)",
    )
    p.add_argument(
        "--access-log",
        choices=["text", "json"],
        help="count every build with the access log on, in this format (lines to /dev/null)",
    )
    p.add_argument("--json", type=Path, help="also write the counts to this file")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the callgrind files here (for callgrind_annotate: where the difference is)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install -y valgrind)")
    if args.requests % args.connections or args.warmup % args.connections:
        raise SystemExit("--requests and --warmup must be multiples of --connections")
    # Resolved once: others commit while this runs, and "HEAD" must mean one commit.
    rev = venv.resolve_rev(args.fastserve_rev)[0] if args.fastserve_rev else None
    env = venv.prepare(
        args.python, reinstall_fastserve=not args.no_install, peers=False, fastserve_rev=rev
    )
    builds = {f"fastserve@{rev[:7]}" if rev else "fastserve": env}
    if args.metrics:
        builds[next(iter(builds)) + METERED] = env
    if args.baseline:
        full, short = venv.resolve_rev(args.baseline)
        builds[f"fastserve@{short}"] = venv.prepare_baseline(args.python, full)
    log = f", access log {args.access_log}" if args.access_log else ""
    print(f"[callgrind] {args.warmup} + {args.requests} requests, {args.connections} conns{log}")
    counts = measure(builds, args)
    last = list(counts.values())[-1]["instructions_per_request"]
    print(f"\n| build | fastserve | instructions/request | vs {list(counts)[-1]} |")
    print("|---|---|---:|---:|")
    for name, entry in counts.items():
        ipr = entry["instructions_per_request"]
        print(f"| {name} | {entry['build']} | {ipr:,} | {ipr / last:.3f}x |")
    if args.json:
        meta = {
            "requests": args.requests,
            "warmup": args.warmup,
            "connections": args.connections,
            "gc_tune": args.gc_tune,
            "access_log": args.access_log,
            "commits": {"fastserve": rev or "working tree", "baseline": args.baseline},
        }
        args.json.write_text(json.dumps({"meta": meta, "builds": counts}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
