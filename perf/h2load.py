"""Drive nghttp2's `h2load` (Debian: nghttp2-client) for the HTTP/2 scenarios, and read its output.

h2load has no machine-readable summary, so `parse_output` reads its text, line by line, keyed by
the words it prints (never by position): requests total/started/done/succeeded/failed/errored/
timeout, status classes, traffic bytes (the exact counts in parentheses), req/s, the negotiated
protocol and the "time for request" row (min/max/mean/sd). Latency percentiles come from the
per-request log (`--log-file`: start, status, microseconds to the end of the response).

A run is flagged like a wrk run with errors when any request failed, errored or timed out, any
answer was not 2xx, no request was done, the protocol was not the expected one (an HTTP/1.1
fallback measures the wrong thing), or the body bytes do not add up. h2load does not look at
bodies; the DATA bytes it counts must be at least `expected length x succeeded` and at most
`expected length x started` (responses still in flight when the time is up may be counted).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from .wrk import pin_prefix


class H2loadError(RuntimeError):
    """h2load did not run, or printed no summary."""


# "time for request:  4.40ms  53.60ms  20.04ms  6.06ms  72.80%"
_TIME = re.compile(r"([\d.]+)(us|ms|s)\b")
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6}
_COUNT = re.compile(r"(\d+) ([\w/]+)")
_PARENS = re.compile(r"\((\d+)\) (\w+)")


@dataclass(frozen=True)
class H2loadResult:
    """One h2load run. Times are in microseconds."""

    requests: dict[str, int]  # total, started, done, succeeded, failed, errored, timeout
    status: dict[str, int]  # "2xx", "3xx", "4xx", "5xx"
    rps: float
    duration_s: float
    traffic: dict[str, int] = field(default_factory=dict)  # total, headers, data (bytes)
    request_time_us: dict[str, float] = field(default_factory=dict)  # min, max, mean, sd
    protocol: str | None = None  # "h2c", "h2", "http/1.1"
    tls: str | None = None  # "TLSv1.3"
    latency_us: dict[str, float] = field(default_factory=dict)  # p50/p90/p99/max (the log)
    # What the scenario demands (set by `check`): protocol, and the body length per response.
    expect_protocol: str | None = None
    expect_length: int | None = None

    @property
    def done(self) -> int:
        return self.requests.get("done", 0)

    @property
    def non_2xx(self) -> int:
        return sum(self.status.get(k, 0) for k in ("3xx", "4xx", "5xx"))

    @property
    def body_ok(self) -> bool | None:
        """Do the DATA bytes add up to the expected length per response? None: not checked."""
        if self.expect_length is None or "data" not in self.traffic:
            return None
        low = self.expect_length * self.requests.get("succeeded", 0)
        high = self.expect_length * max(self.requests.get("started", 0), self.done)
        return low <= self.traffic["data"] <= high

    @property
    def wrong_protocol(self) -> bool:
        return self.expect_protocol is not None and self.protocol != self.expect_protocol

    @property
    def failed(self) -> bool:
        r = self.requests
        return (
            self.done == 0
            or r.get("failed", 0) > 0
            or r.get("errored", 0) > 0
            or r.get("timeout", 0) > 0
            or r.get("succeeded", 0) < self.done
            or self.non_2xx > 0
            or self.wrong_protocol
            or self.body_ok is False
        )

    def as_dict(self) -> dict[str, object]:
        """A round as the harness records it (the keys stats.summarize and the tables read)."""
        lat = self.latency_us
        errors = {
            "errored": self.requests.get("errored", 0),
            "timeout": self.requests.get("timeout", 0),
            "status": self.non_2xx,
            # h2load counts non-2xx answers as failed too: only the other failures here.
            "failed": max(0, self.requests.get("failed", 0) - self.non_2xx),
        }
        if self.body_ok is False:
            errors["body"] = 1
        if self.wrong_protocol:
            errors["protocol"] = 1
        out: dict[str, object] = {
            "requests": self.done,
            "duration_s": self.duration_s,
            "rps": round(self.rps, 1),
            "counts": dict(self.requests),
            "status": dict(self.status),
            "bytes": self.traffic.get("total", 0),
            "data_bytes": self.traffic.get("data"),
            "body_ok": self.body_ok,
            "protocol": self.protocol,
            "errors": errors,
            "mean_ms": _ms(self.request_time_us.get("mean")),
            "p50_ms": _ms(lat.get("p50")),
            "p90_ms": _ms(lat.get("p90")),
            "p99_ms": _ms(lat.get("p99")),
            "max_ms": _ms(lat.get("max", self.request_time_us.get("max"))),
        }
        if self.tls:
            out["tls"] = self.tls
        return {k: v for k, v in out.items() if v is not None or k in ("body_ok", "data_bytes")}


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def parse_time_us(text: str) -> float:
    """'4.40ms' -> 4400.0, '517us' -> 517.0, '3.01s' -> 3010000.0."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise H2loadError(f"not an h2load duration: {text!r}")
    return float(m.group(1)) * _UNIT_US[m.group(2)]


def parse_output(text: str) -> H2loadResult:
    """h2load's stdout -> H2loadResult. Raises H2loadError when the summary is missing."""
    requests: dict[str, int] = {}
    status: dict[str, int] = {}
    traffic: dict[str, int] = {}
    request_time: dict[str, float] = {}
    rps = duration = None
    protocol = tls = None
    for raw in text.splitlines():
        line = raw.strip()
        head, _, rest = line.partition(":")
        if line.startswith("finished in "):
            # "finished in 3.01s, 47617.67 req/s, 1.82MB/s"
            parts = [p.strip() for p in line[len("finished in ") :].split(",")]
            duration = parse_time_us(parts[0]) / 1e6
            if len(parts) > 1 and parts[1].endswith(" req/s"):
                rps = float(parts[1].split()[0])
        elif head == "requests":
            requests = {word: int(n) for n, word in _COUNT.findall(rest)}
        elif head == "status codes":
            status = {word: int(n) for n, word in _COUNT.findall(rest)}
        elif head == "traffic":
            traffic = {word: int(n) for n, word in _PARENS.findall(rest)}
        elif head == "time for request":
            values = [parse_time_us(t) for t in rest.split()[:4]]
            if len(values) == 4:
                request_time = dict(zip(("min", "max", "mean", "sd"), values, strict=True))
        elif head == "Application protocol":
            protocol = rest.strip()
        elif head == "TLS Protocol":
            tls = rest.strip()
    if "done" not in requests or duration is None:
        tail = text.strip()[-300:]
        raise H2loadError(f"h2load printed no summary: {tail!r}")
    if rps is None:
        rps = requests["done"] / duration if duration > 0 else 0.0
    return H2loadResult(
        requests=requests,
        status=status,
        rps=rps,
        duration_s=round(duration, 4),
        traffic=traffic,
        request_time_us=request_time,
        protocol=protocol,
        tls=tls,
    )


def percentiles(log_text: str, levels: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    """h2load's --log-file (start µs, status, µs to the end of the response; tab-separated) ->
    {"p50": µs, "p90": ..., "p99": ..., "max": ...} by nearest rank; {} for an empty log."""
    times: list[float] = []
    for line in log_text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[2].strip().lstrip("-").isdigit():
            times.append(float(cols[2]))
    if not times:
        return {}
    times.sort()
    out = {
        f"p{level:g}": times[max(0, math.ceil(level / 100 * len(times)) - 1)] for level in levels
    }
    out["max"] = times[-1]
    return out


def h2load_path() -> str | None:
    return shutil.which("h2load")


def command(
    url: str, *, clients: int, streams: int, duration: float, log_file: Path | None = None
) -> list[str]:
    """Timing-based run: -D whole seconds (h2load takes no fractions), one thread. For an
    http:// URL h2load speaks h2c with prior knowledge; for https:// it offers ALPN h2 first."""
    argv = [
        h2load_path() or "h2load",
        "-t1",
        f"-c{clients}",
        f"-m{streams}",
        "-D",
        str(max(1, round(duration))),
    ]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    return [*argv, url]


def run(
    url: str,
    *,
    clients: int,
    streams: int,
    duration: float,
    cpu: int | None = 1,
    log_file: Path | None = None,
    expect_protocol: str | None = None,
    expect_length: int | None = None,
) -> H2loadResult:
    """One h2load run (bounded: duration + 30 s), parsed, with percentiles from its log."""
    argv = pin_prefix(cpu) + command(
        url, clients=clients, streams=streams, duration=duration, log_file=log_file
    )
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired as exc:
        raise H2loadError(f"h2load did not finish in {duration + 30:.0f} s") from exc
    except FileNotFoundError as exc:
        raise H2loadError("h2load is not installed (Debian: nghttp2-client)") from exc
    result = parse_output(proc.stdout)
    latency: dict[str, float] = {}
    if log_file is not None:
        try:
            latency = percentiles(log_file.read_text(errors="replace"))
        finally:
            log_file.unlink(missing_ok=True)
    return check(result, expect_protocol, expect_length, latency)


def check(
    result: H2loadResult,
    expect_protocol: str | None,
    expect_length: int | None,
    latency: dict[str, float] | None = None,
) -> H2loadResult:
    """The result with what the scenario expects (and the log's percentiles) attached."""
    return replace(
        result,
        expect_protocol=expect_protocol,
        expect_length=expect_length,
        latency_us=latency or result.latency_us,
    )


def probe(url: str, timeout: float = 10.0) -> int | None:
    """200 when one HTTP/2 GET of `url` succeeded (2xx), else None: the readiness check of a
    server started for HTTP/2 only (granian --http 2, or TLS) that an HTTP/1.1 GET can't reach."""
    argv = [h2load_path() or "h2load", "-n1", "-c1", "-m1", url]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        result = parse_output(proc.stdout)
    except (subprocess.TimeoutExpired, OSError, H2loadError):
        return None
    return 200 if result.requests.get("succeeded") == 1 and result.status.get("2xx") else None
