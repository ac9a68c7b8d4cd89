"""The prefork supervisor, with real processes and real signals on 127.0.0.1.

Every test starts `python -m fastserve tests.apps.workers_app:app --workers N --port 0`, reads
the port from stderr and talks to it with raw sockets; the app answers with its pid, so a test
sees which worker served it. Load loops are bounded in threads, requests and seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from fastserve.supervisor import backoff
from tests.apps.workers_procs import (
    Client,
    Fastserve,
    Load,
    listeners,
    process_state,
    write_app,
)

APP = "tests.apps.workers_app:app"
QUIET = ["--no-access-log", "--port", "0", "--timeout-graceful-shutdown", "5"]


def start(workers: int, *args: str, env: dict[str, str] | None = None) -> Fastserve:
    return Fastserve([APP, "--workers", str(workers), *QUIET, *args], env=env)


def wait_children(server: Fastserve, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = server.children()
        if len(pids) == count:
            return pids
        time.sleep(0.02)
    raise AssertionError(f"expected {count} workers, have {server.children()}:\n{server.log()}")


def serve_all(port: int, workers: list[int], limit: int = 600) -> set[int]:
    """GET /block (which blocks the serving worker's loop for 20 ms) from 6 threads until every
    worker has answered: a blocked worker cannot accept, so the others must."""
    seen: set[int] = set()
    lock = threading.Lock()

    def client() -> None:
        c = Client(port)
        for _ in range(limit // 6):
            with lock:
                if seen >= set(workers):
                    return
            pid = int(c.get("/block?0.02").split()[0])
            with lock:
                seen.add(pid)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return seen


def stop(server: Fastserve) -> None:
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.log()


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared", "reuse-port"])
def test_workers_start_and_all_serve(reuse_port: bool) -> None:
    args = ["--reuse-port"] if reuse_port else []
    with start(3, *args) as server:
        port = server.wait_running(3)
        workers = wait_children(server, 3)
        # One listening socket shared by all, or one SO_REUSEPORT listener per worker (the
        # supervisor's own reuse-port socket only holds the port: bound, never listening).
        assert listeners(port) == (3 if reuse_port else 1)
        assert serve_all(port, workers) == set(workers)
        stop(server)
    assert listeners(port) == 0


def test_kill_9_worker_is_replaced_during_load() -> None:
    with start(2) as server:
        port = server.wait_running(2)
        wait_children(server, 2)
        with Load(port, threads=4) as load:
            load.wait_requests(50)
            victim = int(Client(port).get("/").split()[0])
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            server.wait_for(r"was killed by SIGKILL; starting a new one", timeout=5)
            server.wait_for(r"Started worker", 3, timeout=5)
            started = time.monotonic() - killed_at
            server.wait_running(3)
            before = load.ok
            load.wait_requests(before + 200)
        assert victim not in server.children()
        assert len(server.children()) == 2
        # Only requests on connections the killed worker held may fail: at most one per
        # client thread (each has one connection at a time), and only around the kill.
        assert len(load.errors) <= 4, load.errors
        assert all(t - killed_at < 1.0 for t, _ in load.errors), load.errors
        assert started < 1.0, f"replacement started after {started:.3f}s"
        stop(server)


def test_sighup_rolling_restart_zero_failures(tmp_path: Path) -> None:
    """New and keep-alive connections keep succeeding while every worker is replaced, and
    the new workers import the code that is on disk now."""
    module = tmp_path / "hup_app.py"
    write_app(module, "v1")
    args = ["hup_app:app", "--app-dir", str(tmp_path), "--workers", "3", *QUIET]
    with Fastserve(args) as server:
        port = server.wait_running(3)
        old = set(wait_children(server, 3))
        write_app(module, "v2")
        with Load(port, threads=6) as load:
            load.wait_requests(100)
            for restart in (1, 2):
                server.signal(signal.SIGHUP)
                server.wait_for("Rolling restart done", restart, timeout=30)
                load.wait_requests(load.ok + 200)
        new = set(server.children())
        assert len(new) == 3 and not new & old
        assert load.errors == []
        assert {Client(port).get("/").split()[1] for _ in range(20)} == {"v2"}
        assert set(load.pids) & new, "the new workers served during the load loop"
        stop(server)


def test_sighup_with_preload_keeps_the_imported_code(tmp_path: Path) -> None:
    module = tmp_path / "preload_app.py"
    write_app(module, "v1")
    args = ["preload_app:app", "--app-dir", str(tmp_path), "--workers", "2", "--preload"]
    with Fastserve([*args, *QUIET]) as server:
        port = server.wait_running(2)
        write_app(module, "v2")
        server.signal(signal.SIGHUP)
        server.wait_for("Rolling restart done", timeout=20)
        assert Client(port).get("/").split()[1] == "v1"
        stop(server)


def test_sighup_onto_broken_code_keeps_the_old_workers(tmp_path: Path) -> None:
    module = tmp_path / "broken_app.py"
    write_app(module, "v1")
    args = ["broken_app:app", "--app-dir", str(tmp_path), "--workers", "2", *QUIET]
    with Fastserve(args) as server:
        port = server.wait_running(2)
        old = set(wait_children(server, 2))
        module.write_text("this is not Python\n")
        server.signal(signal.SIGHUP)
        server.wait_for("failed to start; replacement called off, 2 workers keep running")
        assert set(wait_children(server, 2)) == old
        assert {Client(port).get("/").split()[1] for _ in range(10)} == {"v1"}
        assert server.count("Started worker") == 3, "no restart loop"
        stop(server)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGHUP, 1012), (signal.SIGTERM, 1001)], ids=["restart", "stop"]
)
def test_websockets_are_told_whether_the_server_restarts(
    sig: int, code: int, tmp_path: Path
) -> None:
    """A worker retired by a rolling restart closes WebSockets with 1012 (Service Restart),
    a worker that stops with 1001 (Going Away) (RFC 6455 §7.4.1, IANA registry)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with start(1, "--pid", str(tmp_path / "pid")) as server:  # --pid: a supervisor for 1
        port = server.wait_running(1)
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
            ws.send("hi")
            assert str(ws.recv(timeout=5)).endswith(" hi")
            server.signal(sig)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        if sig == signal.SIGHUP:
            server.wait_for("Rolling restart done")
            stop(server)
        else:
            assert server.wait() == 0


def test_sigterm_lets_a_slow_request_finish() -> None:
    with start(2) as server:
        port = server.wait_running(2)
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(Client(port).get("/slow?1.5")))
        thread.start()
        server.wait_for("slow request started")
        server.signal(signal.SIGTERM)
        server.wait_for("Received SIGTERM")
        thread.join(10)
        assert result and result[0].endswith("slow done")
        assert server.wait() == 0
        assert server.count("Killing worker") == 0


def test_sigterm_kills_workers_after_the_graceful_timeout() -> None:
    args = [APP, "--workers", "2", "--no-access-log", "--port", "0"]
    with Fastserve([*args, "--timeout-graceful-shutdown", "0.5"]) as server:
        port = server.wait_running(2)
        errors: list[OSError] = []
        thread = threading.Thread(target=get_into, args=(Client(port), "/block?30", errors))
        thread.start()
        server.wait_for("blocking request started")  # that worker's loop is now stuck
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        assert server.count("still running after the graceful shutdown timeout") == 1
        thread.join(10)
        assert errors, "the blocked request was cut off"


def get_into(client: Client, path: str, errors: list[OSError]) -> None:
    try:
        client.get(path)
    except OSError as exc:
        errors.append(exc)


def test_startup_failure_exits_3_without_restart_loop() -> None:
    env = {"WORKERS_APP_FAIL_STARTUP": "1"}
    with start(2, "--lifespan", "on", env=env) as server:
        assert server.wait() == 3
        assert server.count("Started worker") == 2
        assert server.count("failed to start; stopping the server") >= 1


def test_import_error_exits_3() -> None:
    with Fastserve(["tests.apps.no_such_module:app", "--workers", "2", *QUIET]) as server:
        assert server.wait() == 3
        assert server.count("Started worker") == 2
    with Fastserve(["tests.apps.no_such_module:app", "--workers", "2", "--preload"]) as server:
        assert server.wait() == 3
        assert server.count("Started worker") == 0
        assert server.count("cannot import module") == 1


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared", "reuse-port"])
def test_port_in_use_exits_3_before_forking(reuse_port: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [APP, "--workers", "2", "--port", port] + (["--reuse-port"] if reuse_port else [])
        with Fastserve(args) as server:
            assert server.wait() == 3
            assert server.count("address already in use") == 1
            assert server.count("Started worker") == 0


def test_blocked_worker_is_killed_and_replaced() -> None:
    with start(2, "--timeout-worker-healthcheck", "1") as server:
        port = server.wait_running(2)
        errors: list[OSError] = []
        thread = threading.Thread(target=get_into, args=(Client(port, timeout=20), "/spin", errors))
        thread.start()
        server.wait_for(r"sent no heartbeat for .* \(event loop blocked\?\); killing it")
        server.wait_for(r"was killed by SIGKILL; starting a new one")
        thread.join(10)
        assert errors, "the request on the blocked worker could not be answered"
        server.wait_running(3)
        assert len(wait_children(server, 2)) == 2
        stop(server)


def test_sigttin_and_sigttou_change_the_worker_count() -> None:
    with start(2) as server:
        port = server.wait_running(2)
        server.signal(signal.SIGTTIN)
        server.wait_running(3)
        assert serve_all(port, wait_children(server, 3)) == set(server.children())
        # Standard signals do not queue: two sent at once may arrive as one, so wait for each.
        server.signal(signal.SIGTTOU)
        server.wait_for("Received SIGTTOU: 2 workers")
        server.signal(signal.SIGTTOU)
        server.wait_for("Received SIGTTOU: 1 workers")
        [only] = wait_children(server, 1)
        assert {int(Client(port).get("/")) for _ in range(10)} == {only}
        server.signal(signal.SIGTTOU)  # never below one
        server.wait_for("already at 1 worker")
        server.signal(signal.SIGTTIN)
        server.wait_for("Received SIGTTIN: 2 workers")
        wait_children(server, 2)
        stop(server)


def test_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "fastserve.pid"
    with start(2, "--pid", str(pid_file)) as server:
        server.wait_running(2)
        assert pid_file.read_text() == f"{server.pid}\n"
        stop(server)
    assert not pid_file.exists()


def test_limit_max_requests_replaces_the_worker_first() -> None:
    with start(2, "--limit-max-requests", "30", "--limit-max-requests-jitter", "5") as server:
        port = server.wait_running(2)
        first = set(wait_children(server, 2))
        with Load(port, threads=2, pause=0.005, max_requests=200) as load:
            server.wait_for("reached --limit-max-requests", 2, timeout=30)
            server.wait_for(r"Retiring worker \[\d+\] \(replaced\)", 2, timeout=30)
            server.wait_for(r"Worker \[\d+\] stopped", 2, timeout=30)
            load.stop()
        assert load.errors == []
        assert server.count("reached --limit-max-requests") >= 2
        after = set(server.children())
        assert first - after, "at least one original worker retired"
        stop(server)


def test_no_zombies_after_workers_die() -> None:
    with start(3) as server:
        port = server.wait_running(3)
        victims = wait_children(server, 3)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        server.wait_running(6)
        assert len(wait_children(server, 3)) == 3
        assert all(process_state(pid) == "gone" for pid in victims)
        assert int(Client(port).get("/")) in server.children()
        stop(server)


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff(n) for n in range(12)]
    assert delays[:2] == [0.0, 0.0]
    assert delays == sorted(delays)
    assert delays[-1] == 10.0


def test_crash_loop_backs_off(tmp_path: Path) -> None:
    """A worker that keeps dying right after it starts is restarted ever more slowly."""
    with start(1, "--pid", str(tmp_path / "pid")) as server:
        server.wait_running(1)
        for round_ in range(4):
            [pid] = wait_children(server, 1)
            os.kill(pid, signal.SIGKILL)
            server.wait_for("starting a new one", round_ + 1)
        assert server.count(r"starting a new one in 0\.[1-9]s") >= 2
        stop(server)
