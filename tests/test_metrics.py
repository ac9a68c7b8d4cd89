"""--metrics: scraped over a real socket, parsed with prometheus-client's own parser.

The supervisor test runs `--workers 3` in a subprocess under a bounded load, kills a worker
with SIGKILL and checks that every counter only grew and that the restart was counted by its
cause; the single-process tests run the server in this process and check what each metric
counts (requests by status class, refusals, unfinished responses, WebSockets, open
connections)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastserve.counters import DURATION_BUCKETS, STATUS_CLASSES, VERSIONS, Counters
from tests.apps.cli_procs import REPO, clean_env, fastserve_cmd
from tests.apps.workers_procs import Fastserve, Load
from tests.conftest import RunningServer, run_server
from tests.helpers import Serve, exchange, fetch, request, wait_until

APP = "tests.apps.workers_app:app"
METRICS = re.compile(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, bytes, bytes]:
    """(status, head, body) of one request to the metrics listener (it closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: m\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), head, body


def samples(port: int) -> Samples:
    """Every sample of a scrape, parsed by prometheus-client: (name, labels) -> value."""
    status, head, body = scrape(port)
    assert status == 200, head
    assert b"content-type: text/plain; version=0.0.4" in head.lower(), head
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in found.items() if n == name and wanted <= set(lbls))


def pids_of(found: Samples) -> set[int]:
    return set(labelled_pids(found).values())


def labelled_pids(found: Samples) -> dict[str, int]:
    """worker label -> pid, from fastserve_worker_pid."""
    return {dict(k)["worker"]: int(v) for (n, k), v in found.items() if n == "fastserve_worker_pid"}


def is_counter(name: str) -> bool:
    return name.endswith(("_total", "_bucket", "_count", "_sum"))


def assert_monotonic(before: Samples, after: Samples) -> None:
    for key, old in before.items():
        if is_counter(key[0]):
            assert key in after, f"{key} disappeared"
            assert after[key] >= old, f"{key} went down: {old} -> {after[key]}"


# -- the supervisor ------------------------------------------------------------------------------


def test_workers_sum_and_keep_the_counts_of_a_killed_worker() -> None:
    args = [APP, "--workers", "3", "--port", "0", "--no-access-log", "--metrics"]
    args += ["--metrics-port", "0", "--timeout-graceful-shutdown", "5"]
    with Fastserve(args) as server:
        port = server.wait_running(3)
        server.wait_for(METRICS.pattern)
        match = METRICS.search(server.log())
        assert match is not None
        mport = int(match.group(1))
        # A bounded load: 120 requests from 4 threads, each answered (keep-alive and not).
        with Load(port, threads=4, max_requests=30) as load:
            load.wait_requests(120)
        assert not load.errors, load.errors
        served = set(load.pids)
        # Every worker's report arrives with its next heartbeat (<= 1 s): the sum is exact.
        wait_until(
            lambda: total(samples(mport), "fastserve_requests_total") == 120,
            "the 120 requests summed over the workers",
        )
        first = samples(mport)
        assert value(first, "fastserve_requests_total", http_version="1.1", status_class="2xx")
        assert value(first, "fastserve_request_duration_seconds_count") == 120
        assert value(first, "fastserve_request_duration_seconds_bucket", le="+Inf") == 120
        assert value(first, "fastserve_workers_alive") == 3
        assert value(first, "fastserve_worker_starts_total") == 3
        assert value(first, "fastserve_worker_restarts_total", cause="crash") == 0
        pids = {value(first, "fastserve_worker_pid", worker=str(i)) for i in range(3)}
        assert {int(p) for p in pids} == set(server.children()) >= served
        assert all(
            value(first, "fastserve_worker_rss_bytes", worker=str(i)) > 1e6 for i in range(3)
        )
        assert value(first, "fastserve_event_loop_lag_seconds_count") > 0

        # The busiest worker is killed: the sum keeps its counts, to the request.
        busiest = max(load.pids, key=lambda pid: load.pids[pid])
        label = next(i for i in "012" if value(first, "fastserve_worker_pid", worker=i) == busiest)
        os.kill(busiest, signal.SIGKILL)
        wait_until(
            lambda: value(samples(mport), "fastserve_worker_restarts_total", cause="crash") == 1,
            "the crash counted",
        )
        kept = samples(mport)
        assert total(kept, "fastserve_requests_total") == 120
        assert value(kept, "fastserve_request_duration_seconds_count") == 120
        assert_monotonic(first, kept)

        # Under load, another one is killed: nothing goes down.
        victim = int(value(first, "fastserve_worker_pid", worker="1" if label != "1" else "2"))
        with Load(port, threads=4, max_requests=5_000, seconds=20, pause=0.002) as load:
            load.wait_requests(50)
            before = samples(mport)
            os.kill(victim, signal.SIGKILL)
            server.wait_for(r"was killed by SIGKILL", 2, timeout=10)

            def replaced() -> bool:
                now = samples(mport)
                return (
                    value(now, "fastserve_worker_restarts_total", cause="crash") == 2
                    and value(now, "fastserve_worker_starts_total") == 5
                    and value(now, "fastserve_workers_alive") == 3
                    and victim not in pids_of(now)
                )

            wait_until(replaced, "the second crash counted and the worker replaced")
            during = samples(mport)
            assert_monotonic(before, during)
            load.wait_requests(load.ok + 100)
        wait_until(
            lambda: total(samples(mport), "fastserve_requests_total") >= 120 + 100,
            "the requests since the second kill counted",
        )
        after = samples(mport)
        assert_monotonic(during, after)
        # The replacements took the dead workers' labels (a worker reports once it listens).

        def relabelled() -> bool:
            pids = labelled_pids(samples(mport))
            return set(pids) == {"0", "1", "2"} and not {busiest, victim} & set(pids.values())

        wait_until(relabelled, "workers 0, 1 and 2 reporting, the killed ones gone")
        assert value(after, "fastserve_worker_restarts_total", cause="hung") == 0
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.log()


# -- one process -----------------------------------------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()  # connect
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message.get("text", "")})
        await send({"type": "websocket.close", "code": 4001})
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/hold":
        await receive()
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    if path == "/endless":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
    status = int(path[1:]) if path[1:].isdigit() else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


class Single:
    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        metrics = srv.server.metrics
        assert metrics is not None
        self.port = metrics.port

    def samples(self) -> Samples:
        return samples(self.port)


def single(**options: Any) -> Iterator[Single]:
    with run_server(app, metrics=True, metrics_port=0, **options) as srv:
        yield Single(srv)


@pytest.fixture
def metered(loop_name: str) -> Iterator[Single]:
    yield from single(loop=loop_name)


def test_requests_by_status_class_and_version(metered: Single) -> None:
    srv = metered.srv
    for status in (200, 204, 404, 500, 503):
        assert fetch(srv, request(f"/{status}")).status == status
    with srv.connect() as sock:
        sock.sendall(b"GET /200 HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    found = metered.samples()
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="2xx") == 2
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="4xx") == 1
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="5xx") == 2
    assert value(found, "fastserve_requests_total", http_version="1.0", status_class="2xx") == 1
    assert value(found, "fastserve_request_duration_seconds_count") == 6
    assert 0 < value(found, "fastserve_request_duration_seconds_sum") < 60
    # What the apps sent, as the access log's bytes (a 204's body is dropped on the wire).
    assert value(found, "fastserve_response_body_bytes_total") == 6 * 5
    assert value(found, "fastserve_connections_total", protocol="http1") == 6
    assert value(found, "fastserve_received_bytes_total") > 6 * 20
    # Gauges of a single process are worker 0's; there is no supervisor part.
    assert ("fastserve_requests_in_flight", (("worker", "0"),)) in found
    assert not any(k[0].startswith("fastserve_workers_alive") for k in found)


def test_http2_requests_and_connections(metered: Single) -> None:
    import httpx

    with httpx.Client(http1=False, http2=True, timeout=5) as http:
        for path in ("/200", "/404"):
            response = http.get(metered.srv.url + path)
            assert response.http_version == "HTTP/2"
    found = metered.samples()
    assert value(found, "fastserve_requests_total", http_version="2", status_class="2xx") == 1
    assert value(found, "fastserve_requests_total", http_version="2", status_class="4xx") == 1
    assert value(found, "fastserve_connections_total", protocol="h2") == 1
    assert value(found, "fastserve_received_bytes_total") > 24  # the preface at least


def test_refusals_by_status(serve: Serve) -> None:
    with serve(app, metrics=True, metrics_port=0, limit_request_line=100) as srv:
        assert srv.server.metrics is not None
        port = srv.server.metrics.port
        assert b" 400 " in exchange(srv, b"GARBAGE\r\n\r\n")[:20]
        assert b" 414 " in exchange(srv, request("/" + "a" * 200))[:20]
        assert b" 431 " in exchange(srv, request("/", headers="X: " + "a" * 9000 + "\r\n"))[:20]
        found = samples(port)
    for status in ("400", "414", "431"):
        assert value(found, "fastserve_requests_rejected_total", status=status) == 1, status
    assert value(found, "fastserve_requests_rejected_total", status="503") == 0
    assert ("fastserve_requests_rejected_total", (("status", "408"),)) in found


def test_limit_concurrency_refusal_is_a_503(serve: Serve) -> None:
    with serve(app, metrics=True, metrics_port=0, limit_concurrency=1) as srv:
        assert srv.server.metrics is not None
        port = srv.server.metrics.port
        with srv.connect() as held:
            held.sendall(request("/hold"))
            wait_until(
                lambda: value(samples(port), "fastserve_requests_in_flight", worker="0") == 1,
                "the held request in flight",
            )
            assert fetch(srv, request("/200")).status == 503
        found = samples(port)
    assert value(found, "fastserve_requests_rejected_total", status="503") == 1


def test_unfinished_responses_by_how_they_ended(metered: Single) -> None:
    srv = metered.srv
    sock = srv.connect()
    sock.sendall(request("/endless"))
    sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset mid-download
    wait_until(
        lambda: (
            value(metered.samples(), "fastserve_requests_unfinished_total", ended="client gone")
            == 1
        ),
        "the aborted download counted",
    )
    found = metered.samples()
    assert value(found, "fastserve_requests_total", http_version="1.1", status_class="2xx") == 1
    assert value(found, "fastserve_requests_unfinished_total", ended="app error") == 0


def test_connections_and_websockets(metered: Single) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync import client as websockets

    srv = metered.srv
    with srv.connect() as idle:
        idle.sendall(request("/200"))
        idle.recv(1000)
        wait_until(
            lambda: (
                value(
                    metered.samples(), "fastserve_connections_active", protocol="http1", worker="0"
                )
                == 1
            ),
            "one open HTTP/1.1 connection",
        )
        with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws") as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
    wait_until(
        lambda: value(metered.samples(), "fastserve_websocket_closes_total", code="4xxx") == 1,
        "the WebSocket close counted",
    )
    found = metered.samples()
    assert value(found, "fastserve_connections_total", protocol="websocket") == 1
    assert value(found, "fastserve_websocket_messages_total", direction="received") == 1
    assert value(found, "fastserve_websocket_messages_total", direction="sent") == 1


def test_metrics_listener_answers_only_metrics(metered: Single) -> None:
    status, head, body = scrape(metered.port, "/")
    assert status == 404 and b"/metrics" in body
    status, head, body = scrape(metered.port, "/metrics", "POST")
    assert status == 405
    status, head, body = scrape(metered.port, "/metrics", "HEAD")
    assert status == 200 and body == b"" and b"content-length: " in head
    status, _, body = scrape(metered.port, "/metrics?x=1")
    assert status == 200 and b"fastserve_info{" in body
    info = [line for line in body.decode().splitlines() if line.startswith("fastserve_info{")]
    assert 'build="pure Python"' in info[0] or 'build="compiled"' in info[0]
    assert re.search(r'version="\d+\.\d+', info[0]) and 'loop="' in info[0]


def test_metrics_off_by_default(serve: Serve) -> None:
    with serve(app) as srv:
        assert srv.server.metrics is None
        assert srv.server.state is not None and srv.server.state.metrics is None


def test_metrics_without_prometheus_client_says_what_to_install(tmp_path: Path) -> None:
    """A prometheus_client that cannot be imported (as when the extra is not installed)."""
    fake = tmp_path / "prometheus_client"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = clean_env(PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [*fastserve_cmd("examples.hello:app", "--port", "0", "--metrics")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3, result.stderr
    assert "pip install 'fastserve[metrics]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_port_in_use_is_a_startup_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = ["--metrics", "--metrics-port", str(taken.getsockname()[1])]
        result = subprocess.run(
            [sys.executable, "-m", "fastserve", APP, "--port", "0", "--workers", "2", *metrics],
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 3, result.stderr
    assert "cannot bind the metrics listener" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_report_survives_being_cut_in_two() -> None:
    """The heartbeat pipe may deliver a report in two reads: the one-byte notices around it
    are still seen, and the report is kept whole."""
    from fastserve.worker import Worker

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    worker = Worker(0, read_fd, time.monotonic())
    try:
        os.write(write_fd, b".R" + b'S{"c":{"a":1},"g":{}}\n' + b'.S{"c":')
        assert worker.ping(time.monotonic()) == b".R."
        assert worker.ready and worker.report == b'{"c":{"a":1},"g":{}}'
        os.write(write_fd, b'{"a":2},"g":{}}\nM')
        assert worker.ping(time.monotonic()) == b"M"
        assert worker.report == b'{"c":{"a":2},"g":{}}'
    finally:
        worker.close()
        os.close(write_fd)


def test_histogram_buckets_hold_values_up_to_their_bound() -> None:
    """Prometheus buckets are `le`: a value equal to a bound is in that bound's bucket."""
    from fastserve.counters import LAG_BUCKETS, Counters

    counters = Counters()
    for lag in (0.0, 0.001, 0.002, 30.0):
        counters.loop_lag(lag)
    assert counters.lag[0] == 2
    assert counters.lag[1] == 1
    assert counters.lag[len(LAG_BUCKETS)] == 1  # +Inf
    assert counters.lag_sum == pytest.approx(30.003)
    from fastserve.counters import _BUCKETS, DURATION_BUCKETS  # the request list's layout

    assert len(DURATION_BUCKETS) + 1 == _BUCKETS


def test_loop_lag_is_sampled(metered: Single) -> None:
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), metered.srv.loop).result(5)
    wait_until(
        lambda: value(metered.samples(), "fastserve_event_loop_lag_seconds_count") >= 2,
        "two loop-lag samples",
    )


@pytest.mark.timeout(90)
def test_counts_survive_reload(tmp_path: Path) -> None:
    """--reload: the reloader serves the metrics, so a new server process adds to the
    counts of the one before it."""
    from tests.apps.workers_procs import write_app

    module = tmp_path / "metered_app.py"
    write_app(module, "v1")
    args = ["metered_app:app", "--reload", "--reload-dir", str(tmp_path), "--app-dir"]
    args += [str(tmp_path), "--port", "0", "--lifespan", "off", "--no-access-log"]
    args += ["--metrics", "--metrics-port", "0"]
    with Fastserve(args) as server:
        port = server.wait_running()
        match = METRICS.search(server.log())
        assert match is not None
        mport = int(match.group(1))
        with Load(port, threads=2, max_requests=20) as load:
            load.wait_requests(40)
        first_process = set(load.pids)
        wait_until(lambda: total(samples(mport), "fastserve_requests_total") == 40, "40 requests")
        first = samples(mport)
        write_app(module, "v2")
        server.wait_for("Changes detected in metered_app.py; restarting")
        server.wait_running(2)
        with Load(port, threads=2, max_requests=5) as load:
            load.wait_requests(10)
        assert set(load.pids).isdisjoint(first_process)  # served by the new process
        wait_until(lambda: total(samples(mport), "fastserve_requests_total") == 50, "50 requests")
        after = samples(mport)
        assert_monotonic(first, after)
        assert value(after, "fastserve_worker_restarts_total", cause="reload") == 1
        assert value(after, "fastserve_worker_starts_total") == 2
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.log()


# -- counters.py's counting, pure logic ----------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "bucket"),
    [
        (0.0, 0),
        (DURATION_BUCKETS[0], 0),  # a bound is its own bucket's (le: less than or equal)
        (DURATION_BUCKETS[0] * 1.5, 1),
        (DURATION_BUCKETS[1], 1),
        (0.03, DURATION_BUCKETS.index(0.05)),
        (0.9, DURATION_BUCKETS.index(1.0)),
        (DURATION_BUCKETS[-1], len(DURATION_BUCKETS) - 1),
        (DURATION_BUCKETS[-1] + 1, len(DURATION_BUCKETS)),  # +Inf
    ],
)
def test_a_duration_goes_to_its_histogram_bucket(duration: float, bucket: int) -> None:
    counters = Counters()
    counters.count(1, 200, duration, 13)
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    expected[bucket] = 1
    assert counters.duration() == expected
    assert counters.duration_sum == duration and counters.response_bytes == 13


def test_runs_of_alike_requests_are_all_counted_wherever_they_switch() -> None:
    """Requests alike (version, status class, bucket) are counted as a run; every switch, and
    every read, must fold the run in: the counts are exact whatever the order."""
    counters = Counters()
    seen = [(1, 200), (1, 200), (1, 404), (2, 200), (1, 200), (1, 200), (1, 200), (0, 500)]
    for row, status in seen:
        counters.count(row, status, 0.0, 1)
    first = counters.by_class()
    counters.count(1, 200, 0.0, 1)  # a run going on after a read
    counters.count(1, 999, 0.0, 1)  # 6xx-9xx: "other"
    classes = len(STATUS_CLASSES)
    expected = [0] * (len(VERSIONS) * classes)
    for row, status in [*seen, (1, 200)]:
        expected[row * classes + status // 100] += 1
    expected[1 * classes + classes - 1] += 1
    assert first[1 * classes + 2] == 5
    assert counters.by_class() == expected
    assert counters.duration()[0] == len(seen) + 2
