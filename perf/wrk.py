"""Drive Debian's `wrk` and read its numbers from the JSON line that wrk_json.lua prints.

wrk's human summary is meant for eyes (units like "1.34ms", "9.65MB"); parsing it is fragile.
The Lua `done()` hook gets the raw counters instead, so the wrapper reads exact integers:
requests, duration, socket errors and non-2xx/3xx statuses, and latency percentiles in µs.
When told what every response must be (status, body length), the script checks each one and
adds how many did not match (`check`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "wrk_json.lua"
MARKER = "WRK_JSON "
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


class WrkError(RuntimeError):
    """wrk did not run, or printed no summary."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies are in microseconds."""

    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int] = field(default_factory=dict)
    latency_us: dict[str, float] = field(default_factory=dict)
    # Responses the Lua script checked, or None when it checked none (no expectation given).
    checked: int | None = None
    mismatches: int = 0
    first_mismatch: dict[str, int] | None = None  # {"status": ..., "length": ...}

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.get(k, 0) for k in SOCKET_ERRORS)

    @property
    def bad_status(self) -> int:
        """Responses with status >= 400 (wrk's errors.status)."""
        return self.errors.get("status", 0)

    @property
    def unchecked(self) -> int:
        """Responses the script should have checked but did not see (0 when not checking)."""
        return 0 if self.checked is None else max(0, self.requests - self.checked)

    @property
    def failed(self) -> bool:
        """A fast wrong answer is not fast: any socket error, bad status, response that is not
        what the scenario expects, or one that escaped the check flags the run."""
        return (
            self.socket_errors > 0
            or self.bad_status > 0
            or self.mismatches > 0
            or self.unchecked > 0
            or self.requests == 0
        )

    def as_dict(self) -> dict[str, object]:
        lat = self.latency_us
        errors = dict(self.errors)
        if self.mismatches:  # counted with the errors (stats.summarize adds them up)
            errors["mismatch"] = self.mismatches
        out: dict[str, object] = {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 4),
            "rps": round(self.rps, 1),
            "bytes": self.bytes,
            "errors": errors,
            "p50_ms": round(lat.get("p50", 0.0) / 1000, 3),
            "p90_ms": round(lat.get("p90", 0.0) / 1000, 3),
            "p99_ms": round(lat.get("p99", 0.0) / 1000, 3),
            "max_ms": round(lat.get("max", 0.0) / 1000, 3),
            "checked": self.checked,
            "mismatches": self.mismatches,
        }
        if self.first_mismatch is not None:
            out["first_mismatch"] = self.first_mismatch
        return out


def parse_output(text: str) -> WrkResult:
    """Find the WRK_JSON line in wrk's stdout and turn it into a WrkResult."""
    for line in reversed(text.splitlines()):
        if line.startswith(MARKER):
            return parse_summary(json.loads(line[len(MARKER) :]))
    raise WrkError("wrk printed no JSON summary (is the Lua script wrk_json.lua in use?)")


def parse_summary(data: dict[str, object]) -> WrkResult:
    """The Lua summary dict -> WrkResult, with the percentiles keyed p50/p75/p90/p99/p99.9."""
    errors_raw = data.get("errors") or {}
    lat_raw = data.get("latency_us") or {}
    if not isinstance(errors_raw, dict) or not isinstance(lat_raw, dict):
        raise WrkError(f"malformed wrk summary: {data!r}")
    errors = {str(k): int(v) for k, v in errors_raw.items()}
    latency = {k: float(lat_raw[k]) for k in ("mean", "stdev", "max") if k in lat_raw}
    for pct, value in (lat_raw.get("percentiles") or {}).items():
        latency["p" + str(pct)] = float(value)
    duration_us = _int(data, "duration_us")
    checked, mismatches, first = parse_check(data.get("check"))
    return WrkResult(
        requests=_int(data, "requests"),
        duration_s=duration_us / 1e6,
        bytes=_int(data, "bytes"),
        errors=errors,
        latency_us=latency,
        checked=checked,
        mismatches=mismatches,
        first_mismatch=first,
    )


def parse_check(check: object) -> tuple[int | None, int, dict[str, int] | None]:
    """The script's `check` object -> (responses checked, mismatches, the first mismatch's
    status and body length). No `check`: nothing was checked (None, 0, None)."""
    if check is None:
        return None, 0, None
    if not isinstance(check, dict):
        raise WrkError(f"malformed wrk check: {check!r}")
    checked, mismatches = _int(check, "responses"), _int(check, "mismatches")
    first = None
    if mismatches and _int(check, "first_status") >= 0:
        first = {"status": _int(check, "first_status"), "length": _int(check, "first_length")}
    return checked, mismatches, first


def _int(data: dict[Any, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int | float):
        raise WrkError(f"wrk summary lacks {key!r}: {data!r}")
    return int(value)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def pin_prefix(cpu: int | None) -> list[str]:
    """`taskset -c N` when pinning is possible (two CPUs or more and taskset installed)."""
    if cpu is None or (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def command(
    url: str, *, connections: int, duration: float, threads: int = 1, timeout: float = 5.0
) -> list[str]:
    # wrk refuses more threads than connections.
    threads = max(1, min(threads, connections))
    return [
        wrk_path() or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(SCRIPT),
        url,
    ]


def run(
    url: str,
    *,
    connections: int,
    duration: float,
    method: str = "GET",
    body_size: int = 0,
    close: bool = False,
    cpu: int | None = 1,
    expect_status: int | None = None,
    expect_length: int | None = None,
) -> WrkResult:
    """Run wrk once against `url` (bounded: duration + a grace period) and parse its summary.

    With `expect_status` (and `expect_length`), every response is checked by the script."""
    env = dict(
        os.environ,
        WRK_METHOD=method,
        WRK_BODY_SIZE=str(body_size),
        WRK_CLOSE="1" if close else "0",
        WRK_EXPECT_STATUS="" if expect_status is None else str(expect_status),
        WRK_EXPECT_LENGTH="" if expect_length is None else str(expect_length),
    )
    argv = pin_prefix(cpu) + command(url, connections=connections, duration=duration)
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish in {duration + 30:.0f} s") from exc
    if proc.returncode != 0:
        raise WrkError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return parse_output(proc.stdout)
