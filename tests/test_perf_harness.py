"""The benchmark harness (perf/): its pure logic, and one short real wrk run against fastserve.

The unit tests feed the parser, the statistics and the renderer known inputs; the smoke tests
serve perf/apps.py with fastserve on 127.0.0.1:0 and drive it with the harness's own clients
(wrk for 1 s when Debian's wrk is installed, the slow download/upload clients always).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from perf import apps, clients, report, scenarios, servers, stats, wrk
from perf.venv import PERF_DIR
from tests.conftest import run_server

SUMMARY = {
    "requests": 35000,
    "duration_us": 5_000_000,
    "bytes": 4_200_000,
    "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
    "latency_us": {
        "mean": 2800.0,
        "stdev": 300.5,
        "max": 19000.0,
        "percentiles": {"50": 2700.0, "75": 2900.0, "90": 3100.0, "99": 4500.0, "99.9": 9000.0},
    },
}


def wrk_stdout(summary: dict[str, Any]) -> str:
    human = "Running 5s test @ http://127.0.0.1:1/plaintext\n  1 threads and 100 connections\n"
    return human + f"Requests/sec:   7000.00\n{wrk.MARKER}{json.dumps(summary)}\n"


def test_parse_output_reads_counts_rate_and_percentiles() -> None:
    result = wrk.parse_output(wrk_stdout(SUMMARY))
    assert result.requests == 35000
    assert result.duration_s == 5.0
    assert result.rps == 7000.0
    assert result.latency_us["p99"] == 4500.0
    assert result.latency_us["p99.9"] == 9000.0
    assert not result.failed
    row = result.as_dict()
    assert (row["rps"], row["p50_ms"], row["p90_ms"], row["p99_ms"]) == (7000.0, 2.7, 3.1, 4.5)


@pytest.mark.parametrize(
    ("errors", "socket_errors", "bad_status"),
    [({"status": 12}, 0, 12), ({"connect": 1, "timeout": 2}, 3, 0), ({"read": 5}, 5, 0)],
)
def test_errors_and_non_2xx_flag_a_run(
    errors: dict[str, int], socket_errors: int, bad_status: int
) -> None:
    summary = {**SUMMARY, "errors": {**SUMMARY["errors"], **errors}}  # type: ignore[dict-item]
    result = wrk.parse_output(wrk_stdout(summary))
    assert (result.socket_errors, result.bad_status) == (socket_errors, bad_status)
    assert result.failed


def test_a_run_without_requests_is_flagged() -> None:
    assert wrk.parse_output(wrk_stdout({**SUMMARY, "requests": 0})).failed


def test_missing_or_malformed_summary_is_an_error() -> None:
    with pytest.raises(wrk.WrkError, match="no JSON summary"):
        wrk.parse_output("Running 1s test\nRequests/sec: 10\n")
    with pytest.raises(wrk.WrkError, match="requests"):
        wrk.parse_summary({"duration_us": 1})
    with pytest.raises(wrk.WrkError, match="malformed"):
        wrk.parse_summary({**SUMMARY, "errors": [1, 2]})


def test_wrk_command_clamps_threads_and_rounds_durations() -> None:
    argv = wrk.command("http://127.0.0.1:9/x", connections=1, duration=0.4, threads=4)
    assert argv[1:5] == ["-t1", "-c1", "-d1s", "--timeout=5s"]
    assert argv[-1] == "http://127.0.0.1:9/x" and str(wrk.SCRIPT) in argv


def test_median_and_paired_ratio() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert stats.median([]) is None
    a = [{"rps": 30.0}, {"rps": 40.0}, {"rps": 99.0}, {"rps": 10.0}]
    b = [{"rps": 10.0}, {"rps": 20.0}, {"rps": 0.0}, {"rps": 10.0}]
    # Per-round quotients 3, 2, (skipped: baseline 0), 1 -> median 2.
    assert stats.paired_ratio(a, b) == 2.0
    assert stats.paired_ratio(a, []) is None


def wrk_round(rps: float, p99: float, flagged: bool = False) -> dict[str, Any]:
    """A round of a server that kept CPU 0 busy: CPU per request is 1/rps."""
    return {
        "rps": rps,
        "cpu_us": round(1e6 / rps, 2),
        "p50_ms": p99 / 4,
        "p90_ms": p99 / 2,
        "p99_ms": p99,
        "errors": {"status": 3 if flagged else 0},
        "flagged": flagged,
    }


def scenario(title: str, rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result = {
        "title": title,
        "kind": "wrk",
        "servers": {name: {"rounds": r} for name, r in rounds.items()},
    }
    stats.add_summaries(result)
    return result


def test_add_summaries_medians_ratios_and_flags() -> None:
    result = scenario(
        "plaintext",
        {
            "fastserve": [
                wrk_round(30000, 4.0),
                wrk_round(33000, 5.0),
                wrk_round(36000, 6.0, True),
            ],
            "uvicorn": [wrk_round(10000, 8.0), wrk_round(11000, 10.0), wrk_round(12000, 12.0)],
        },
    )
    fast = result["servers"]["fastserve"]
    assert fast["median"]["rps"] == 33000 and fast["median"]["p99_ms"] == 5.0
    assert fast["median"]["flagged"] and fast["median"]["errors"] == 3
    assert fast["ratio"]["rps"] == 3.0 and fast["ratio"]["p99_ms"] == 0.5
    assert result["servers"]["uvicorn"]["ratio"]["rps"] == 1.0
    assert not result["servers"]["uvicorn"]["median"]["flagged"]


def sample_results() -> dict[str, Any]:
    r = wrk_round
    return {
        "meta": {"stamp": "20250101-000000", "python": "3.11.7", "rounds": 2},
        "skipped": {"websocket": "fastserve does not complete a WebSocket handshake yet"},
        "scenarios": {
            "plaintext": scenario(
                "plaintext, 100 conns",
                {
                    "fastserve": [r(30000, 5.0), r(32000, 5.0)],
                    "uvicorn": [r(10000, 9.0), r(12000, 10.0)],
                    "granian": [r(33000, 4.0), r(32000, 4.0)],
                },
            ),
            "accesslog": scenario(
                "access log",
                {
                    "fastserve": [r(30000, 5.0)],
                    "fastserve+log": [r(28500, 5.0)],
                },
            ),
            "post64k": scenario(
                "POST echo 64 KiB",
                {
                    "fastserve": [r(4000, 30.0, True)],
                    "uvicorn": [r(3000, 40.0)],
                },
            ),
            "conns1000": scenario("1,000 conns", {"fastserve": [r(28000, 50.0)]}),
            "idle10k": {
                "kind": "idle",
                "params": {"count": 10000},
                "servers": {
                    "fastserve": {"idle_kib": 30000, "loaded_kib": 70000, "per_conn_bytes": 4096},
                    "uvicorn": {"idle_kib": 31000, "loaded_kib": 100000, "per_conn_bytes": 7000},
                },
            },
            "download": {
                "kind": "transfer",
                "servers": {"fastserve": {"peak_kib": 40000, "peak_above_idle_kib": 10 * 1024}},
            },
            "upload": {
                "kind": "transfer",
                "servers": {"fastserve": {"peak_kib": 120000, "peak_above_idle_kib": 90 * 1024}},
            },
        },
    }


def test_goals_pass_miss_and_not_measured() -> None:
    goals = {g.name: g for g in stats.evaluate_goals(sample_results())}
    assert goals["plaintext vs uvicorn"].status == "PASS"  # rounds 3.0x and 2.67x
    assert goals["plaintext vs uvicorn"].measured == "2.83x"
    assert goals["plaintext vs uvicorn"].by_cpu == "2.82x"  # median of 3.0 and 2.67 (rounded)
    assert goals["access log cost"].by_cpu == "+5.3 % CPU/req"
    assert goals["plaintext vs granian"].status == "MISS"  # 0.91x and 1.0x -> 0.95x
    assert goals["plaintext vs granian"].detail == "short by 5%"
    assert goals["access log cost"].measured == "5.0 %"
    assert goals["access log cost"].status == "PASS"
    assert goals["p99 at 100 conns vs uvicorn"].status == "PASS"
    assert goals["POST echo 64 KiB vs uvicorn"].status == "MISS"  # 1.33x
    assert goals["RSS at 10k idle conns vs uvicorn"].measured == "0.70x"
    assert goals["1,000 conns vs 100 conns"].measured == "0.90x"  # 28000 / 31000
    assert goals["1,000 conns vs 100 conns"].status == "PASS"
    assert goals["1,000 conns vs 100 conns"].by_cpu == "0.90x"  # CPU/request 35.7 vs 32.3 µs
    peak = goals["peak RSS in slow 1 GiB transfer"]  # the worse of the two transfers
    assert (peak.measured, peak.status, peak.detail) == ("90.0 MiB", "MISS", "over by 26.0 MiB")
    quick = sample_results()
    quick["scenarios"]["idle10k"]["params"]["count"] = 1000
    quick["scenarios"]["download"]["params"] = {"size": 64 << 20}
    names = [g.name for g in stats.evaluate_goals(quick)]
    assert "RSS at 1k idle conns vs uvicorn" in names
    assert "peak RSS in slow 64 MiB transfer" in names
    empty = stats.evaluate_goals({"scenarios": {}})
    assert {g.status for g in empty} == {"N/A"}


def test_render_tables_ratios_flags_memory_and_goals() -> None:
    results = sample_results()
    text = report.render(results, stats.evaluate_goals(results))
    assert "| scenario | fastserve | uvicorn | granian | fastserve+log |" in text
    assert "| plaintext, 100 conns | 31,000 (2.83x) | 11,000 (1.00x) | 32,500 (2.98x) |  |" in text
    assert "| POST echo 64 KiB | 4,000 (1.33x) ! | 3,000 (1.00x) |" in text
    assert "| plaintext, 100 conns | 1.25 / 2.50 / 5.00 | 2.38 / 4.75 / 9.50 |" in text
    assert "| RSS with 10,000 idle conns | 68.4 | 97.7 |" in text
    assert "| slow upload: peak above idle | 90.0 |" in text
    assert "- websocket: fastserve does not complete" in text
    assert "Access log cost (paired rounds, log on vs off): fastserve 5.0 %." in text
    assert (
        "| access log cost | <= 10.0 % | 5.0 % | PASS (5.0 % to spare) | +5.3 % CPU/req |" in text
    )
    assert "| plaintext, 100 conns | 32.3 (0.35x) | 91.7 (1.00x) | 30.8 (0.34x) |  |" in text


def test_a_server_that_exited_is_reported_with_its_last_log_line() -> None:
    results = sample_results()
    plaintext = results["scenarios"]["plaintext"]["servers"]
    plaintext["granian"]["died"] = {"exit": -9, "log_tail": ["starting", "worker killed"]}
    text = report.render(results, [])
    assert "- granian exited (-9) during plaintext, 100 conns: worker killed" in text


def test_rss_readers_see_this_process() -> None:
    assert servers.vm_rss_kib(os.getpid()) > 1000
    assert os.getpid() in servers.process_tree(os.getpid())
    assert servers.vm_rss_kib(2**22 + 12345) == 0  # no such process


@pytest.mark.skipif(wrk.wrk_path() is None, reason="Debian's wrk is not installed")
@pytest.mark.parametrize(
    ("path", "method", "body_size", "min_bytes"),
    [("/plaintext", "GET", 0, 13), ("/echo", "POST", 1024, 1024)],
)
def test_wrk_smoke_against_fastserve(
    path: str, method: str, body_size: int, min_bytes: int
) -> None:
    """One real 1 s wrk run through the Lua script: counts parsed, no errors, bodies delivered."""
    with run_server(apps.app, loop="uvloop") as srv:
        result = wrk.run(
            srv.url + path, connections=4, duration=1, method=method, body_size=body_size, cpu=None
        )
    assert result.requests > 0 and result.duration_s > 0.5
    assert not result.failed, result.errors
    assert result.bytes >= result.requests * min_bytes
    assert 0 < result.latency_us["p50"] <= result.latency_us["p99"]


def result_line(out: str) -> dict[str, Any]:
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    parsed: dict[str, Any] = json.loads(line[7:])
    return parsed


def test_slow_download_and_upload_clients(capsys: pytest.CaptureFixture[str]) -> None:
    """The flow-control clients move every byte through apps.py's /download and /upload."""
    size = 4 << 20
    with run_server(apps.app) as srv:
        clients.download(srv.port, size, rate=64 << 20, deadline=10)
        down = result_line(capsys.readouterr().out)
        clients.upload(srv.port, size, rate=64 << 20, deadline=10)
        up = result_line(capsys.readouterr().out)
    assert down["complete"] and down["bytes"] == size
    assert up["complete"] and up["bytes"] == size
    assert up["seconds"] >= 0.05  # the app consumed at 64 MiB/s: ~60 ms for 4 MiB


def test_lean_reference_path_answers_like_the_servers() -> None:
    """perf/lean.py (the ceiling beside the servers) must answer the plaintext route right,
    on a kept-alive connection, or its numbers mean nothing."""
    port = servers.free_port()
    env = {**os.environ, "PYTHONPATH": str(PERF_DIR)}
    lean = PERF_DIR / "lean.py"
    proc = subprocess.Popen([sys.executable, str(lean), "--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 10
        while servers.probe(port) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "lean.py did not start"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for path, status, body in (
                (b"/plaintext", b"200", b"Hello, world!"),
                (b"/x", b"404", b""),
            ):
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                head, _, rest = head.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 " + status), head
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(rest) < length:
                    rest += sock.recv(4096)
                assert rest == body or not body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_wait_until_idle_waits_for_the_cpu_to_stop_and_is_bounded() -> None:
    """Between rounds the harness waits for the server it just measured to stop using CPU."""
    readings = iter([1.0, 2.0, 3.0, 3.5, 3.501, 9.0])
    slept: list[float] = []
    waited = scenarios.wait_until_idle(
        lambda: next(readings), step=0.05, limit=10, sleep=slept.append
    )
    assert slept == [0.05] * 4 and waited == pytest.approx(0.2)  # idle at the 3.501 reading
    busy = iter(float(i) for i in range(1000))
    slept.clear()
    waited = scenarios.wait_until_idle(lambda: next(busy), step=0.5, limit=2, sleep=slept.append)
    assert slept == [0.5] * 4 and waited == pytest.approx(2.0)  # never idle: gives up
