"""The benchmark harness (perf/): its pure logic, and one short real wrk run against fastserve.

The unit tests feed the parser, the statistics and the renderer known inputs; the smoke tests
serve perf/apps.py with fastserve on 127.0.0.1:0 and drive it with the harness's own clients
(wrk for 1 s when Debian's wrk is installed, the slow download/upload clients always).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from perf import (
    apps,
    bench,
    clients,
    h2load,
    instructions,
    report,
    scenarios,
    servers,
    stats,
    wrk,
)
from perf.venv import PERF_DIR, BenchEnv
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


CHECK = {
    "status": 200,
    "length": 13,
    "responses": 35000,
    "mismatches": 0,
    "first_status": -1,
    "first_length": -1,
}


def test_body_check_of_every_response_is_read_from_the_lua_summary() -> None:
    result = wrk.parse_output(wrk_stdout({**SUMMARY, "check": CHECK}))
    assert (result.checked, result.mismatches, result.first_mismatch) == (35000, 0, None)
    assert not result.failed
    assert result.as_dict()["checked"] == 35000


def test_a_wrong_body_flags_the_round_like_an_error() -> None:
    check = {**CHECK, "mismatches": 7, "first_status": 200, "first_length": 0}
    result = wrk.parse_output(wrk_stdout({**SUMMARY, "check": check}))
    assert result.failed and result.mismatches == 7
    assert result.first_mismatch == {"status": 200, "length": 0}
    assert (result.socket_errors, result.bad_status) == (0, 0)  # not a socket error
    row = result.as_dict()
    assert row["errors"]["mismatch"] == 7  # type: ignore[index]
    assert stats.summarize([row])["errors"] == 7


def test_responses_that_escaped_the_check_flag_the_round() -> None:
    result = wrk.parse_output(wrk_stdout({**SUMMARY, "check": {**CHECK, "responses": 34990}}))
    assert result.unchecked == 10 and result.failed


def test_without_an_expectation_nothing_is_checked() -> None:
    result = wrk.parse_output(wrk_stdout(SUMMARY))
    assert result.checked is None and result.unchecked == 0 and not result.failed
    with pytest.raises(wrk.WrkError, match="malformed wrk check"):
        wrk.parse_summary({**SUMMARY, "check": [1]})
    with pytest.raises(wrk.WrkError, match="mismatches"):
        wrk.parse_summary({**SUMMARY, "check": {"responses": 1}})


def test_every_wrk_scenario_expects_what_apps_answers() -> None:
    by_key = scenarios.BY_KEY
    assert by_key["plaintext"].expect_length == len(apps.PLAIN) == 13
    assert by_key["json"].expect_length == len(apps.json_body())
    assert by_key["post64k"].expect_length == by_key["post64k"].body_size  # an echo
    for scenario in scenarios.SCENARIOS:
        if scenario.kind == "wrk" and scenario.key != "static":
            assert scenario.expect_status == 200, scenario.key
    # 100 MiB bodies: the script's check would cap wrk (scenarios.py); wrk counts >= 400 itself.
    assert by_key["static"].expect_status is None and by_key["static"].expect_length is None


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


def test_round_order_rotates_so_each_server_takes_each_place() -> None:
    names = ["fastserve", "uvicorn", "granian"]
    orders = [scenarios.round_order(names, i) for i in range(6)]
    assert orders[0] == names  # round 1 as listed
    assert orders[1] == ["uvicorn", "granian", "fastserve"]
    for name in names:  # every place, equally often
        assert sorted(o.index(name) for o in orders) == [0, 0, 1, 1, 2, 2]
    assert scenarios.round_order([], 3) == []


class FakeProc:
    def poll(self) -> int | None:
        return None


class FakeServer:
    """What run_interleaved uses of a Running server (measuring is monkeypatched)."""

    def __init__(self, name: str) -> None:
        self.spec = servers.SPECS[name]
        self.proc = FakeProc()

    def cpu_seconds(self) -> float:
        return 0.0


def test_rotated_rounds_are_still_paired_by_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's speed changes from round to round (and slot to slot); whatever order a
    round ran in, round i of fastserve is divided by round i of uvicorn."""
    speed_of_round = [1.0, 0.5, 2.0, 0.8, 1.2]
    served: list[tuple[int, str]] = []

    def fake_measure(scenario: Any, server: FakeServer, duration: float) -> dict[str, Any]:
        if duration == 0.5:  # the warm-up
            return {"rps": 1.0}
        i = len(served) // 3
        served.append((i, server.spec.name))
        own = {"fastserve": 3.0, "uvicorn": 1.0, "granian": 2.0}[server.spec.name]
        slot_drift = 1 + 0.01 * (len(served) % 3)  # small, inside a round
        return {"rps": 1000 * own * speed_of_round[i] * slot_drift}

    monkeypatch.setattr(scenarios, "measure_wrk", fake_measure)
    monkeypatch.setattr(scenarios, "wait_until_idle", lambda cpu: 0.0)
    running: Any = {n: FakeServer(n) for n in ("fastserve", "uvicorn", "granian")}
    cfg = scenarios.RunConfig(rounds=5, duration=1.0, warmup=0.5)
    env = BenchEnv(Path("/nonexistent"), Path("/nonexistent/python"), "3.11.7")
    result = scenarios.run_interleaved(scenarios.BY_KEY["plaintext"], running, env, cfg)
    assert result["orders"][1] == ["uvicorn", "granian", "fastserve"]
    assert [r["slot"] for r in result["servers"]["fastserve"]["rounds"]] == [0, 2, 1, 0, 2]
    stats.add_summaries(result)
    fast = result["servers"]["fastserve"]
    # Without pairing, the rounds' speeds (0.5x to 2x) would swamp the 3x; paired, only the
    # small drift inside a round is left.
    assert fast["ratio"]["rps"] == pytest.approx(3.0, rel=0.025)
    assert result["servers"]["granian"]["ratio"]["rps"] == pytest.approx(2.0, rel=0.025)


def test_before_after_ratio_goal_and_table() -> None:
    r = wrk_round
    results: dict[str, Any] = {
        "meta": {"baseline": {"name": "fastserve@abc1234", "rev": "abc1234", "commit": "abc"}},
        "scenarios": {
            "plaintext": scenario(
                "plaintext",
                {
                    "fastserve": [r(30000, 5.0), r(20000, 5.0), r(33000, 5.0)],
                    "fastserve@abc1234": [r(30600, 5.0), r(20000, 5.0), r(31000, 5.0)],
                    "uvicorn": [r(15000, 9.0), r(10000, 9.0), r(15000, 9.0)],
                },
                before="fastserve@abc1234",
            )
        },
    }
    vs = results["scenarios"]["plaintext"]["servers"]["fastserve"]["vs_before"]
    assert vs["rps"] == pytest.approx(1.0)  # per round 0.980, 1.000, 1.065
    goal = stats.before_after_goal(results)
    assert goal is not None and goal.status == "PASS" and goal.target == ">= 0.98x"
    assert goal.name in {g.name for g in stats.evaluate_goals(results)}
    slower = results["scenarios"]["plaintext"]["servers"]["fastserve@abc1234"]["rounds"]
    for old in slower:
        old["rps"] *= 1.03  # this tree 3 % slower in every round: outside the 2 %
    assert stats.before_after_goal(results).status == "MISS"  # type: ignore[union-attr]
    assert stats.before_after_goal({"scenarios": {}}) is None
    table = table_cells(report.before_after_table(results))
    assert table[0]["fastserve / fastserve@abc1234"] == "plaintext"
    assert table[0]["req/s per round"].split() == ["0.952", "0.971", "1.034"]


def test_servers_are_selected_by_family_and_the_baseline_runs_beside_fastserve() -> None:
    assert [servers.family(n) for n in ("fastserve-nogc", "uvicorn+log", "fastserve@abc")] == [
        "fastserve",
        "uvicorn",
        "fastserve",
    ]
    env = BenchEnv(Path("/nonexistent"), Path("/nonexistent/python"), "3.11.7")
    env.installed = {"fastserve": "0.1", "uvicorn": "0.54"}  # no zttp, no granian
    base = servers.baseline_spec("abc1234", env)
    run = bench.Bench(env, scenarios.RunConfig(), ["fastserve", "uvicorn"], Path("/tmp"), base)
    names = run.available(scenarios.PLAINTEXT_SERVERS)
    assert names == ["fastserve", "fastserve@abc1234", "fastserve-nogc", "uvicorn"]
    assert "server uvicorn-zttp" in run.results["skipped"]  # zttp is not installed
    assert "--no-gc-tune" in servers.SPECS["fastserve-nogc"].argv(env, 1)
    assert base.argv(env, 1)[0] == "/nonexistent/bin/fastserve"
    only_uvicorn = bench.Bench(env, scenarios.RunConfig(), ["uvicorn"], Path("/tmp"), base)
    assert only_uvicorn.available(scenarios.PLAINTEXT_SERVERS) == ["uvicorn"]
    exact = bench.Bench(env, scenarios.RunConfig(), ["=fastserve", "uvicorn"], Path("/tmp"))
    assert exact.available(scenarios.PLAINTEXT_SERVERS) == ["fastserve", "uvicorn"]


def test_instruction_count_arithmetic_and_callgrind_totals(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text("version: 1\ncmd: python\nevents: Ir\nsummary: 123456789\n")
    assert instructions.callgrind_total(out) == 123456789
    assert instructions.per_request(500_000_000, 900_000_000, 10_000) == 40_000.0


def test_instruction_driver_serves_right_answers_in_process() -> None:
    """The in-process driver (no valgrind) runs this tree's fastserve and checks its answers."""
    asyncio.run(instructions.drive(requests=200, connections=10, gc_tune=False))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_instruction_driver_writes_the_access_log(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """`instructions.py --access-log FORMAT` counts requests whose lines are really made and
    written: one per request."""
    asyncio.run(instructions.drive(200, 10, gc_tune=False, access_log=fmt))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 200
    if fmt == "json":
        assert {json.loads(line)["path"] for line in lines} == {"/plaintext"}
    else:
        assert all('"GET /plaintext HTTP/1.1" 200 13 ' in line for line in lines)


def table_cells(lines: list[str]) -> list[dict[str, str]]:
    """A markdown table -> one {header: cell} per row (the separator line dropped)."""

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]


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


def scenario(
    title: str, rounds: dict[str, list[dict[str, Any]]], before: str | None = None
) -> dict[str, Any]:
    result = {
        "title": title,
        "kind": "wrk",
        "servers": {name: {"rounds": r} for name, r in rounds.items()},
    }
    stats.add_summaries(result, before=before)
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
        "skipped": {"server uvicorn-zttp": "zttp not installed"},
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
    assert goals["RSS at 10k idle conns vs uvicorn"].target == "<= 0.75x"  # issue 18
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
    """Cells, not whole rows: what each table says about each server."""
    results = sample_results()
    throughput = {row["scenario"]: row for row in table_cells(report.throughput_table(results))}
    plain = throughput["plaintext, 100 conns"]
    assert (plain["fastserve"], plain["uvicorn"]) == ("31,000 (2.83x)", "11,000 (1.00x)")
    assert plain["granian"] == "32,500 (2.98x)" and plain["fastserve+log"] == ""
    assert throughput["POST echo 64 KiB"]["fastserve"].endswith("!")  # a flagged round
    latency = table_cells(report.latency_table(results))[0]
    assert latency["fastserve"] == "1.25 / 2.50 / 5.00"
    cpu = table_cells(report.cpu_table(results))[0]
    assert (cpu["fastserve"], cpu["uvicorn"]) == ("32.3 (0.35x)", "91.7 (1.00x)")
    memory = {row["memory (MiB)"]: row for row in table_cells(report.memory_table(results))}
    assert memory["RSS with 10,000 idle conns"]["uvicorn"] == "97.7"
    assert memory["slow upload: peak above idle"]["fastserve"] == "90.0"
    goals = {
        row["goal"]: row for row in table_cells(report.goals_table(stats.evaluate_goals(results)))
    }
    assert goals["access log cost"]["result"].startswith("PASS")
    assert goals["access log cost"]["by server CPU per request"] == "+5.3 % CPU/req"
    text = report.render(results, stats.evaluate_goals(results))
    assert "- server uvicorn-zttp: zttp not installed" in text
    assert "fastserve 5.0 %" in report.access_log_costs(results)
    assert report.before_after_table(results) == []  # no --baseline in this run


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
    ("path", "method", "body_size", "length"),
    [("/plaintext", "GET", 0, 13), ("/echo", "POST", 1024, 1024)],
)
def test_wrk_smoke_against_fastserve(path: str, method: str, body_size: int, length: int) -> None:
    """One real 1 s wrk run through the Lua script: counts parsed, no errors, every response
    checked; then the same with a wrong expected length: every response is a mismatch."""
    with run_server(apps.app, loop="uvloop") as srv:

        def run(expect_length: int) -> wrk.WrkResult:
            return wrk.run(
                srv.url + path,
                connections=4,
                duration=1,
                method=method,
                body_size=body_size,
                cpu=None,
                expect_status=200,
                expect_length=expect_length,
            )

        result = run(length)
        wrong = run(length + 1)
    assert result.requests > 0 and result.duration_s > 0.5
    assert not result.failed, (result.errors, result.first_mismatch)
    assert result.checked == result.requests and result.mismatches == 0
    assert result.bytes >= result.requests * length
    assert 0 < result.latency_us["p50"] <= result.latency_us["p99"]
    assert wrong.failed and wrong.mismatches == wrong.checked == wrong.requests > 0
    assert wrong.first_mismatch == {"status": 200, "length": length}


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


# --- HTTP/2 (h2load) -------------------------------------------------------------------------
# Captured from real runs (h2load nghttp2/1.52.0, 2026-11-30), pasted verbatim. A clean
# timing-based run: granian --http 2, h2c, -c100 -m10 -D 3.
H2LOAD_OK = """starting benchmark...
spawning thread #0: 100 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Warm-up started for thread #0.
progress: 10% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 3.01s, 47617.67 req/s, 1.82MB/s
requests: 142853 total, 143853 started, 142853 done, 142853 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 142853 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 5.46MB (5730220) total, 1.24MB (1296277) headers (space savings 90.35%), 1.77MB (1857089) data
                     min         max         mean         sd        +/- sd
time for request:     4.40ms     53.60ms     20.04ms      6.06ms    72.80%
time for connect:       57us      2.05ms       940us       682us    51.00%
time to 1st byte:    15.00ms     34.86ms     25.18ms      6.67ms    50.00%
req/s           :     451.42      495.93      475.48        9.18    64.00%
"""  # noqa: E501

# uvicorn --http zttp --http2 over TLS, a path the app does not serve (404), -c10 -m10 -D 1.
H2LOAD_404_TLS = """starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 19881.00 req/s, 1.82MB/s
requests: 19881 total, 19981 started, 19881 done, 0 succeeded, 19881 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 19882 4xx, 0 5xx
traffic: 1.82MB (1909125) total, 1.14MB (1192920) headers (space savings 23.08%), 174.74KB (178929) data
                     min         max         mean         sd        +/- sd
time for request:      289us     16.83ms      4.81ms      2.28ms    74.66%
time for connect:     1.98ms      6.07ms      4.12ms      1.36ms    60.00%
time to 1st byte:     6.14ms     12.17ms      8.64ms      2.26ms    70.00%
req/s           :    1883.53     2068.29     1983.44       63.47    60.00%
"""  # noqa: E501

# A server that drops every connection after the preface (-n 2000 -c 10 -m 10).
H2LOAD_ERRORED = """starting benchmark...
spawning thread #0: 10 total client(s). 2000 total requests
Application protocol: h2c

finished in 9.36ms, 0.00 req/s, 0B/s
requests: 2000 total, 100 started, 0 done, 0 succeeded, 2000 failed, 2000 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:      147us       554us       304us       119us    80.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
"""


def test_h2load_output_is_parsed_by_its_words() -> None:
    result = h2load.check(h2load.parse_output(H2LOAD_OK), "h2c", 13)
    assert result.requests["done"] == result.requests["succeeded"] == 142853
    assert result.requests["started"] == 143853 and result.requests["timeout"] == 0
    assert result.status == {"2xx": 142853, "3xx": 0, "4xx": 0, "5xx": 0}
    assert (result.rps, result.duration_s, result.protocol) == (47617.67, 3.01, "h2c")
    assert result.traffic == {"total": 5730220, "headers": 1296277, "data": 1857089}
    assert result.request_time_us == {"min": 4400.0, "max": 53600.0, "mean": 20040.0, "sd": 6060.0}
    assert result.body_ok is True  # 1857089 bytes = 13 x 142853
    assert not result.failed
    row = result.as_dict()
    assert (row["rps"], row["requests"], row["mean_ms"]) == (47617.7, 142853, 20.04)
    assert row["errors"] == {"errored": 0, "timeout": 0, "status": 0, "failed": 0}
    assert stats.summarize([row])["errors"] == 0 and "p99_ms" not in row  # no log given


def test_h2load_non_2xx_errors_and_the_wrong_protocol_flag_a_round() -> None:
    not_found = h2load.check(h2load.parse_output(H2LOAD_404_TLS), "h2", 13)
    assert (not_found.tls, not_found.protocol, not_found.non_2xx) == ("TLSv1.3", "h2", 19882)
    assert not_found.failed and not not_found.wrong_protocol
    errors = not_found.as_dict()["errors"]
    assert errors == {"errored": 0, "timeout": 0, "status": 19882, "failed": 0}
    errored = h2load.check(h2load.parse_output(H2LOAD_ERRORED), "h2c", 13)
    assert (errored.done, errored.requests["errored"], errored.rps) == (0, 2000, 0.0)
    assert errored.duration_s == 0.0094 and errored.failed
    assert errored.as_dict()["errors"]["errored"] == 2000  # type: ignore[index]
    # A clean run over the wrong protocol (a server that fell back to HTTP/1.1) is flagged.
    fallback = h2load.parse_output(H2LOAD_OK.replace("protocol: h2c", "protocol: http/1.1"))
    wrong = h2load.check(fallback, "h2c", 13)
    assert wrong.wrong_protocol and wrong.failed
    assert wrong.as_dict()["errors"]["protocol"] == 1  # type: ignore[index]


def test_h2load_body_bytes_must_add_up_to_the_expected_length() -> None:
    parsed = h2load.parse_output(H2LOAD_OK)
    assert h2load.check(parsed, "h2c", None).body_ok is None  # not checked
    short = h2load.check(parsed, "h2c", 14)  # 14 x 142853 > the DATA bytes counted
    assert short.body_ok is False and short.failed
    assert short.as_dict()["errors"]["body"] == 1  # type: ignore[index]
    # Responses still in flight when time is up may be counted: up to 13 x started is fine.
    in_flight = replace(parsed, traffic={**parsed.traffic, "data": 13 * 142853 + 13 * 999})
    assert h2load.check(in_flight, "h2c", 13).body_ok is True
    too_long = replace(parsed, traffic={**parsed.traffic, "data": 13 * 143853 + 1})
    assert h2load.check(too_long, "h2c", 13).body_ok is False


def test_h2load_durations_percentiles_and_a_missing_summary() -> None:
    assert [h2load.parse_time_us(t) for t in ("517us", "4.40ms", "3.01s")] == [
        517.0,
        4400.0,
        3010000.0,
    ]
    with pytest.raises(h2load.H2loadError):
        h2load.parse_time_us("fast")
    log = "".join(f"1796081504850306\t200\t{us}\n" for us in range(1, 101))  # 1..100 µs
    assert h2load.percentiles(log + "garbage\n") == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert h2load.percentiles("") == {}
    with_log = h2load.check(h2load.parse_output(H2LOAD_OK), "h2c", 13, {"p50": 2e4, "p99": 4e4})
    assert (with_log.as_dict()["p50_ms"], with_log.as_dict()["p99_ms"]) == (20.0, 40.0)
    with pytest.raises(h2load.H2loadError, match="no summary"):
        h2load.parse_output("starting benchmark...\nconnect to 127.0.0.1 failed\n")
    argv = h2load.command("http://127.0.0.1:9/plaintext", clients=100, streams=10, duration=0.4)
    assert argv[1:] == ["-t1", "-c100", "-m10", "-D", "1", "http://127.0.0.1:9/plaintext"]


def test_h2_variants_of_the_servers() -> None:
    env = BenchEnv(Path("/nonexistent"), Path("/nonexistent/python"), "3.11.7")
    tls = servers.Tls(Path("/c.pem"), Path("/k.pem"))
    granian = servers.h2_variant(servers.SPECS["granian"], tls)
    assert granian is not None and granian.name == "granian.h2tls" and granian.scheme == "https"
    argv = granian.argv(env, 1)
    assert argv[argv.index("--http") + 1] == "2" and argv[-1] == "apps:app"
    assert argv[argv.index("--ssl-certificate") + 1] == "/c.pem"
    uvicorn = servers.h2_variant(servers.SPECS["uvicorn-zttp"], None)
    assert uvicorn is not None and uvicorn.probe_h2 and uvicorn.scheme == "http"
    argv = uvicorn.argv(env, 1)
    assert "--http2" in argv and argv[argv.index("--http") + 1] == "zttp"
    assert "--ssl-certfile" not in argv
    fastserve = servers.h2_variant(servers.SPECS["fastserve"], tls)
    assert fastserve is not None and "--http2" in fastserve.argv(env, 1)
    hypercorn = servers.h2_variant(servers.SPECS["hypercorn"], tls)
    assert hypercorn is not None and hypercorn.argv(env, 1)[-3:] == [
        "--keyfile",
        "/k.pem",
        "apps:app",
    ]
    assert servers.h2_variant(servers.SPECS["uvicorn"], None) is None  # httptools: no HTTP/2
    assert servers.h2_unsupported(servers.SPECS["uvicorn"], env) == "no HTTP/2 in this variant"
    # An installed version whose --help lacks the options is skipped with the reason.
    old = replace(servers.SPECS["granian"], argv=lambda env, port: [sys.executable])
    assert "[auto|1|2]" in (servers.h2_unsupported(old, env) or "")
    broken = replace(old, argv=lambda env, port: ["/bin/false"])
    assert "exited 1" in (servers.h2_unsupported(broken, env) or "")


def test_h2_skips_are_printed_with_their_reason(capsys: pytest.CaptureFixture[str]) -> None:
    env = BenchEnv(Path("/nonexistent"), Path("/nonexistent/python"), "3.11.7")
    env.installed = {"uvicorn": "0.54"}  # neither zttp nor the others
    run = bench.Bench(env, scenarios.RunConfig(), ["uvicorn"], Path("/tmp"))
    if h2load.h2load_path() is None:
        assert run.h2_specs(scenarios.BY_KEY["h2c_m10"]) == {}
        assert "SKIP HTTP/2: h2load is not installed" in capsys.readouterr().out
        return
    assert run.h2_specs(scenarios.BY_KEY["h2c_m10"]) == {}
    out = capsys.readouterr().out
    assert "SKIP server uvicorn-zttp: zttp not installed" in out
    assert "SKIP server uvicorn (h2c): httptools has no HTTP/2" in out


def h2_scenario(key: str, rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result = scenario(key, rounds)
    result["kind"] = "h2load"
    stats.add_summaries(result, baseline="uvicorn-zttp")
    stats.add_ratios(result, "granian", "vs_granian")
    result["baselines"] = ["uvicorn-zttp", "granian"]
    return result


def h2_results() -> dict[str, Any]:
    r = wrk_round
    results = sample_results()
    results["scenarios"]["h2c_m10"] = h2_scenario(
        "HTTP/2 h2c -m 10",
        {
            "fastserve": [r(40000, 5.0), r(30000, 5.0)],
            "uvicorn-zttp": [r(20000, 9.0), r(10000, 9.0)],
            "granian": [r(50000, 4.0), r(30000, 4.0)],
        },
    )
    results["scenarios"]["h2c_m1"] = h2_scenario(
        "HTTP/2 h2c -m 1", {"fastserve": [r(20000, 5.0), r(25000, 5.0)]}
    )
    results["scenarios"]["h2idle1k"] = {
        "kind": "idle",
        "params": {"count": 1000},
        "servers": {
            "fastserve": {"idle_kib": 30000, "loaded_kib": 36000, "per_conn_bytes": 6144},
            "uvicorn-zttp": {"idle_kib": 31000, "loaded_kib": 40000, "per_conn_bytes": 9216},
        },
    }
    return results


def test_h2_goals_ratios_cpu_vs_http1_and_memory() -> None:
    results = h2_results()
    goals = {g.name: g for g in stats.evaluate_goals(results)}
    # Paired per round: fastserve/granian 0.8 and 1.0 -> 0.9; /uvicorn-zttp 2 and 3 -> 2.5.
    assert goals["h2c -m 10 vs granian"].measured == "0.90x"
    assert goals["h2c -m 10 vs granian"].status == "MISS"
    assert goals["h2c -m 10 vs uvicorn-zttp"].measured == "2.50x"
    assert goals["h2c -m 10 vs uvicorn-zttp"].status == "PASS"
    # CPU per request: h2c -m 1 median 45 µs vs plaintext 32.3 µs (cpu_us = 1e6 / rps).
    cpu = goals["CPU/request h2c -m 1 vs HTTP/1.1 plaintext"]
    assert (cpu.measured, cpu.status) == ("1.39x", "PASS")
    assert cpu.by_cpu == "-m 10: 0.90x"
    assert goals["RSS at 1,000 idle h2 conns vs uvicorn-zttp"].measured == "0.90x"
    results["scenarios"]["h2idle1k"]["servers"]["fastserve"]["flagged"] = True
    flagged = {g.name: g for g in stats.evaluate_goals(results)}
    assert flagged["RSS at 1,000 idle h2 conns vs uvicorn-zttp"].status == "N/A"
    del results["scenarios"]["plaintext"]
    assert stats.h2_cpu_vs_http1(results) is None


def test_h2_tables_and_the_http1_comparison_line() -> None:
    results = h2_results()
    lines = report.h2_tables(results)
    start = lines.index(next(x for x in lines if x.startswith("| HTTP/2 req/s")))
    rates = {row["HTTP/2 req/s (x uvicorn-zttp / x granian)"]: row for row in table_cells(
        lines[start : start + 4]
    )}  # fmt: skip
    assert rates["HTTP/2 h2c -m 10"]["fastserve"] == "35,000 (2.50x / 0.90x)"
    assert rates["HTTP/2 h2c -m 1"]["granian"] == ""
    assert "h2c_m1 1.39x, h2c_m10 0.90x" in report.h2_vs_http1_line(results)
    memory = {row["memory (MiB)"]: row for row in table_cells(report.memory_table(results))}
    assert memory["RSS with 1,000 idle h2c conns"]["fastserve"] == "35.2"
    assert "### HTTP/2 (h2load)" in report.render(results, stats.evaluate_goals(results))
    del results["scenarios"]["plaintext"]
    assert "plaintext did not run" in report.h2_vs_http1_line(results)
    assert report.h2_tables(sample_results()) == []


def test_h2_idle_client_request_is_valid_hpack() -> None:
    hpack = pytest.importorskip("hpack")
    frame = clients.h2_get(b"/plaintext")
    length, kind, flags = int.from_bytes(frame[:3], "big"), frame[3], frame[4]
    assert (length, kind, flags, frame[5:9]) == (len(frame) - 9, 1, 0x5, b"\0\0\0\1")
    assert hpack.Decoder().decode(frame[9:]) == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/plaintext"),
        (":authority", "bench"),
    ]
    assert len(apps.PLAIN) == clients.PLAIN_LENGTH


def test_h2_idle_client_against_fastserve() -> None:
    """The idle HTTP/2 client completes one GET per connection and keeps them open."""

    async def open_some(port: int) -> int:
        sem = asyncio.Semaphore(5)
        writers = await asyncio.gather(*(clients._open_one_h2(port, sem) for _ in range(5)))
        for writer in writers:
            if writer is not None:
                writer.transport.abort()
        return sum(w is not None for w in writers)

    with run_server(apps.app, http2=True) as srv:
        assert asyncio.run(open_some(srv.port)) == 5


@pytest.mark.skipif(h2load.h2load_path() is None, reason="h2load (nghttp2-client) is missing")
def test_h2load_smoke_against_fastserve(tmp_path: Path) -> None:
    """A real 1 s h2load run over h2c: parsed, no failure, body bytes add up, percentiles.

    20 connections: zttp (fastserve's and uvicorn's HTTP/2 core) ends a connection after
    4,096 streams ("HTTP/2 flood detected"); 2 connections reached that within 1 s here."""
    with run_server(apps.app, http2=True) as srv:
        result = h2load.run(
            srv.url + "/plaintext",
            clients=20,
            streams=1,
            duration=1,
            cpu=None,
            log_file=tmp_path / "h2load.tsv",
            expect_protocol="h2c",
            expect_length=len(apps.PLAIN),
        )
        assert h2load.probe(srv.url + "/plaintext") == 200
    assert result.done > 0 and not result.failed, result
    assert result.body_ok and 0 < result.latency_us["p50"] <= result.latency_us["p99"]
    assert not (tmp_path / "h2load.tsv").exists()  # read, then removed


async def _echo_altered(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A WebSocket echo that answers each message with its first byte changed."""
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        data = message["bytes"]
        await send({"type": "websocket.send", "bytes": bytes([data[0] ^ 1]) + data[1:]})


@pytest.mark.parametrize("size", [32, 200, 70_000])
def test_ws_bench_raw_client_counts_right_echoes_and_refuses_wrong_ones(size: int) -> None:
    """ws_bench.py's raw client (bytes made once) completes the handshake, counts every echo
    of each frame-length form (7-bit, 16-bit, 64-bit) and closes cleanly; an echo with one
    byte changed is an error, never a counted message. The library client still runs too."""
    from perf import ws_bench

    def measure(url: str, client: str = "raw") -> dict[str, Any]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as run_client
            result: dict[str, Any] = runner.run(ws_bench.measure(url, 3, size, 0.3, client=client))
        return result

    with run_server(ws_bench.app) as srv:
        right = measure(srv.url.replace("http://", "ws://") + "/")
        library = measure(srv.url.replace("http://", "ws://") + "/", "sansio")
    with run_server(_echo_altered) as srv:
        wrong = measure(srv.url.replace("http://", "ws://") + "/")
    assert right["errors"] == 0, right["first_error"]
    assert right["messages"] > 3
    assert library["errors"] == 0 and library["messages"] > 3, library["first_error"]
    assert wrong["messages"] == 0 and wrong["errors"] == 3
    assert "wrong echo" in wrong["first_error"]


def test_client_cpu_share_is_summarized_and_marked_where_the_client_set_the_pace() -> None:
    rounds = {
        "fastserve": [{**wrk_round(30000, 5.0), "client_cpu": c} for c in (0.97, 0.95, 0.99)],
        "uvicorn": [{**wrk_round(10000, 9.0), "client_cpu": c} for c in (0.41, 0.40, 0.45)],
        "granian": [wrk_round(20000, 6.0) for _ in range(3)],  # a run without the figure
    }
    results = {"scenarios": {"plaintext": scenario("plaintext, 100 conns", rounds)}}
    row = table_cells(report.client_table(results))[0]
    assert (row["fastserve"], row["uvicorn"], row["granian"]) == ("0.97 *", "0.41", "")
    assert "client CPU" in report.render(results, [])
    no_figures = {"plaintext": scenario("plaintext", {"uvicorn": [wrk_round(1, 1.0)]})}
    assert report.client_table({"scenarios": no_figures}) == []
    kernel = {"uvicorn": [{**wrk_round(1, 1.0), "sys_share": v} for v in (0.3, 0.5, 0.4)]}
    kernel_results = {"scenarios": {"plaintext": scenario("plaintext", kernel)}}
    assert table_cells(report.kernel_table(kernel_results))[0]["uvicorn"] == "0.40"


@pytest.mark.skipif(wrk.wrk_path() is None, reason="Debian's wrk is not installed")
def test_a_wrk_round_carries_the_clients_cpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """scenarios.measure_wrk reads wrk's own CPU (its ended child) beside the server's: a
    1 s run against a real fastserve busies the client a measurable, bounded share."""
    plaintext = next(s for s in scenarios.SCENARIOS if s.key == "plaintext")
    monkeypatch.setattr(scenarios, "CLIENT_CPU", None)  # not pinned: any CPU will do
    with run_server(apps.app, loop="uvloop") as srv:
        server = SimpleNamespace(  # what measure_wrk reads of a harness server (Running)
            url=srv.url,
            spec=SimpleNamespace(access_log=False),
            proc=SimpleNamespace(poll=lambda: None),
            cpu_times=lambda: os.times()[:2],  # this process: the server runs in a thread
        )
        out = scenarios.measure_wrk(replace(plaintext, connections=4), server, 1.0)  # type: ignore[arg-type]
    assert not out["flagged"], out
    assert 0.01 < out["client_cpu"] <= 1.5
    assert 0 < out["sys_share"] < 1 and out["cpu_us"] > 0
