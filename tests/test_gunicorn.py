"""fastserve's gunicorn worker class, with a real gunicorn on 127.0.0.1.

Each test starts `python -m gunicorn -k fastserve.workers.FastserveWorker` on a listening
socket it binds itself (port 0) and hands over as `--bind fd://N`, so no port is guessed.
Requests go over raw sockets (tests/apps/workers_procs.py's Client: keep-alive connections
retry once when the server closed them idle, as RFC 9112 §9.3.1.1 allows); the app answers
with the serving worker's pid. Load is bounded in threads, requests and seconds.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gunicorn")

from gunicorn.config import Config as GunicornConfig

from fastserve.workers import (
    access_log_format,
    config_from_gunicorn,
    drain_time,
)
from tests.apps.workers_procs import Client, Fastserve, Load
from tests.helpers import until_closed, wait_until

WORKER = "fastserve.workers.FastserveWorker"
APP = "tests.apps.gunicorn_app:app"
# gunicorn 24+ opens a control socket in ~/.gunicorn by default: two test servers would share it.
CONTROL = ["--no-control-socket"] if "control_socket_disable" in GunicornConfig().settings else []


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Gunicorn(Fastserve):
    """`python -m gunicorn -k FastserveWorker ARGS APP` serving on a socket bound here."""

    def __init__(self, *args: str, app: str = APP, env: dict[str, str] | None = None) -> None:
        sock = listening_socket()
        self.port: int = sock.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            WORKER,
            "--bind",
            f"fd://{sock.fileno()}",
        ]
        try:
            super().__init__(
                [*CONTROL, *args, app], env=env, command=command, pass_fds=[sock.fileno()]
            )
        finally:
            sock.close()  # gunicorn holds it now

    def __enter__(self) -> Gunicorn:
        return self

    def workers(self, count: int, timeout: float = 15.0) -> list[int]:
        """Wait until gunicorn has `count` worker processes; their pids."""
        found: list[int] = []

        def have() -> bool:
            found[:] = self.children()
            return len(found) == count

        wait_until(have, f"{count} gunicorn workers (log:\n{self.log()})", timeout)
        return found

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        assert self.wait() == 0, self.log()


def get(port: int, path: str = "/") -> str:
    return Client(port).get(path)


def burst(port: int, connections: int, per_connection: int) -> tuple[int, list[str], set[int]]:
    """`connections` keep-alive clients, each sending `per_connection` GETs: (ok, errors, pids)."""
    ok: list[int] = []
    errors: list[str] = []
    pids: set[int] = set()
    lock = threading.Lock()

    def client() -> None:
        c = Client(port, keep_alive=True)
        for _ in range(per_connection):
            try:
                pid = int(c.get("/").split()[0])
            except OSError as exc:
                with lock:
                    errors.append(repr(exc))
                c.close()
                continue
            with lock:
                ok.append(1)
                pids.add(pid)
        c.close()

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return len(ok), errors, pids


# -- with a real gunicorn --------------------------------------------------------------------


def test_two_workers_serve_a_burst() -> None:
    """2,000 requests over 20 keep-alive connections, all answered, by both workers."""
    with Gunicorn("-w", "2") as server:
        server.wait_running(2)
        workers = server.workers(2)
        ok, errors, pids = burst(server.port, connections=20, per_connection=100)
        assert errors == []
        assert ok == 2000
        assert pids == set(workers)
        server.stop()


def test_hup_replaces_the_workers_without_a_failed_request() -> None:
    with Gunicorn("-w", "2", "--graceful-timeout", "5") as server:
        server.wait_running(2)
        old = set(server.workers(2))
        with Load(server.port, threads=6) as load:
            load.wait_requests(100)
            server.signal(signal.SIGHUP)
            wait_until(
                lambda: len(set(server.children()) - old) == 2 and not set(server.children()) & old,
                f"two new workers and none of the old ones (log:\n{server.log()})",
                20,
            )
            new = set(server.children())
            wait_until(lambda: bool(set(load.pids) & new), "a new worker to serve", 15)
            load.wait_requests(load.ok + 200)
        assert load.errors == []
        assert load.ok > 300
        server.stop()


def test_a_killed_worker_is_replaced_and_serving_continues() -> None:
    with Gunicorn("-w", "2") as server:
        server.wait_running(2)
        workers = server.workers(2)
        with Load(server.port, threads=4) as load:
            load.wait_requests(50)
            victim = workers[0]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            server.wait_for(rf"Worker \(pid:{victim}\) was sent SIGKILL", timeout=10)
            server.wait_running(3)  # the replacement is listening
            load.wait_requests(load.ok + 200)
        now = server.children()
        assert victim not in now and len(now) == 2
        # Only requests on connections the killed worker held may fail: one per client thread
        # at most, and only around the kill.
        assert len(load.errors) <= 4, load.errors
        assert all(t - killed_at < 2.0 for t, _ in load.errors), load.errors
        server.stop()


def test_max_requests_retires_the_worker() -> None:
    """--max-requests 20: a worker stops after its 20th request and gunicorn starts another;
    no request fails meanwhile (the next ones wait in the listen queue)."""
    with Gunicorn("-w", "1", "--max-requests", "20", "--max-requests-jitter", "0") as server:
        server.wait_running(1)
        pids: list[int] = []
        while len(set(pids)) < 3:
            assert len(pids) < 2000, f"no worker retired after {len(pids)} requests"
            pids.append(int(get(server.port).split()[0]))
        # Exact (request.admit counts every request): the 20th is the worker's last.
        assert pids.count(pids[0]) == 20 and pids.count(pids[20]) == 20, pids
        assert server.count("Maximum request limit of 20 reached") >= 2
        server.stop()


def test_sigterm_drains_an_in_flight_request() -> None:
    with Gunicorn("-w", "1", "--graceful-timeout", "10") as server:
        server.wait_running(1)
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(get(server.port, "/slow?1.5")))
        thread.start()
        server.wait_for("slow request started")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        thread.join(15)
        assert result and result[0].endswith("slow done"), server.log()
        assert server.wait() == 0, server.log()
        assert server.count("Application shutdown complete") == 1
        assert time.monotonic() - started < 10


def test_sigquit_is_a_quick_stop() -> None:
    """SIGQUIT (and SIGINT): in-flight requests are not waited for, and no lifespan shutdown."""
    with Gunicorn("-w", "1", "--graceful-timeout", "30") as server:
        server.wait_running(1)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /slow?20 HTTP/1.1\r\nHost: t\r\n\r\n")
            server.wait_for("slow request started")
            started = time.monotonic()
            server.signal(signal.SIGQUIT)
            answer = until_closed(sock, timeout=10)
        # The app is cancelled before its response started: fastserve answers 500 and closes.
        assert answer.startswith(b"HTTP/1.1 500 "), answer
        assert time.monotonic() - started < 10
        assert server.wait(10) == 0, server.log()
        assert server.count("Application shutdown complete") == 0


def test_blocked_event_loop_is_killed_by_the_timeout() -> None:
    """--timeout 2: a worker that keeps answering slow (but asynchronous) requests for longer
    than that is healthy (its heartbeat reaches the arbiter); one whose loop is stuck is
    aborted and replaced."""
    with Gunicorn("-w", "1", "--timeout", "2") as server:
        server.wait_running(1)
        deadline = time.monotonic() + 4.0
        pids = set()
        while time.monotonic() < deadline:
            pids.add(int(get(server.port, "/slow?0.5").split()[0]))
        assert len(pids) == 1, f"a healthy worker was replaced:\n{server.log()}"
        assert server.count("WORKER TIMEOUT") == 0
        (victim,) = pids
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(b"GET /spin HTTP/1.1\r\nHost: t\r\n\r\n")
            server.wait_for(rf"WORKER TIMEOUT \(pid:{victim}\)", timeout=15)
            assert until_closed(sock, timeout=10) == b""
        server.wait_running(2)
        assert int(get(server.port).split()[0]) != victim
        server.stop()


def test_settings_reach_fastserve(tmp_path: Path) -> None:
    """--limit-request-line, --forwarded-allow-ips, --access-logfile with a gunicorn
    --access-logformat, and SIGUSR1 reopening the log file."""
    access = tmp_path / "access.log"
    fmt = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %({x-test}i)s %(p)s %(T)s'
    args = ["-w", "1", "--limit-request-line", "100", "--forwarded-allow-ips", "127.0.0.1"]
    args += ["--access-logfile", str(access), "--access-logformat", fmt]
    with Gunicorn(*args) as server:
        server.wait_running(1)
        server.wait_for(r"access_log_format: no fastserve equivalent for %\(T\)s")
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            seen = client.get(
                "/seen", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
            )
            assert seen.text.split()[1:3] == ["203.0.113.9", "https"]
            assert client.get("/" + "a" * 200).status_code == 414
            client.get("/", headers={"X-Test": "hello"})
        wait_until(lambda: "hello" in access.read_text(), "the access line")
        line = next(x for x in access.read_text().splitlines() if "hello" in x)
        pid = server.children()[0]
        stamp = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
        pattern = rf'127\.0\.0\.1 {stamp} "GET / HTTP/1\.1" 200 \d+ hello <{pid}> -'
        assert re.fullmatch(pattern, line), line
        access.rename(tmp_path / "access.log.1")
        server.signal(signal.SIGUSR1)  # the arbiter reopens its files and tells the workers
        server.wait_for("Handling signal: usr1")

        def logged_to_new_file() -> bool:
            get(server.port, "/reopened")  # until the worker has reopened the file
            return access.exists() and "/reopened" in access.read_text()

        wait_until(logged_to_new_file, "a line in the reopened access log")
        server.stop()


def test_tls_from_gunicorn_settings(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    with Gunicorn("-w", "1", "--certfile", str(certfile), "--keyfile", str(keyfile)) as server:
        server.wait_for(r"fastserve running on https://127\.0\.0\.1")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with httpx.Client(verify=context) as client:
            answer = client.get(f"https://127.0.0.1:{server.port}/seen")
        assert answer.status_code == 200
        assert answer.text.split()[2] == "https"
        server.stop()


def test_lifespan_startup_failure_stops_gunicorn() -> None:
    """The worker exits with gunicorn's "failed to boot" code: the arbiter stops (code 3)
    instead of restarting workers in a loop. One worker: when two fail to boot at once,
    gunicorn 27's arbiter itself exits 1 with a traceback (its halt() reaps the second one and
    raises HaltServer again)."""
    with Gunicorn("-w", "1", env={"WORKERS_APP_FAIL_STARTUP": "1"}) as server:
        assert server.wait(20) == 3, server.log()
        assert server.count("application startup failed") == 1
        assert server.count("Booting worker") == 1


# -- the mapping, on gunicorn's own Config ---------------------------------------------------


def gunicorn_config(args: Sequence[str]) -> GunicornConfig:
    cfg = GunicornConfig()
    parsed = cfg.parser().parse_args([*args, "app:app"])
    for name, value in vars(parsed).items():
        if value is not None and name in cfg.settings:
            cfg.set(name, value)
    return cfg


def test_defaults_map_to_gunicorns_meaning() -> None:
    config, warnings = config_from_gunicorn(gunicorn_config([]), access_log=False)
    assert warnings == []
    assert config.timeout_keep_alive == 2.0  # gunicorn's --keep-alive default
    assert config.limit_request_line == 4094  # gunicorn's default, not fastserve's 8190
    assert config.limit_request_fields == 100
    assert config.limit_request_field_size == 8190
    assert config.timeout_graceful_shutdown == 29.0  # 30 s, less the margin
    assert config.backlog == 2048
    assert config.proxy_headers is True
    assert config.access_log is False
    if "http_protocols" in GunicornConfig().settings:  # gunicorn 24+: "h1" unless told
        assert config.http2 is False
        h2, _ = config_from_gunicorn(gunicorn_config(["--http-protocols", "h2,h1"]), False)
        assert h2.http2 is True


def test_limits_follow_gunicorns_rules() -> None:
    args = ["--limit-request-line", "0", "--limit-request-fields", "0"]
    args += ["--limit-request-field_size", "0", "--keep-alive", "7", "--graceful-timeout", "2"]
    config, _ = config_from_gunicorn(gunicorn_config(args), access_log=False)
    assert config.limit_request_line == 1024 * 1024  # 0: "unlimited", which gunicorn caps
    assert config.limit_request_fields == 32768
    assert config.limit_request_field_size == 8190
    assert config.timeout_keep_alive == 7.0
    assert config.timeout_graceful_shutdown == pytest.approx(1.6)
    config, _ = config_from_gunicorn(gunicorn_config(["--limit-request-line", "9000"]), False)
    assert config.limit_request_line == 8190


def test_forwarded_allow_ips_and_ssl_and_config_kwargs(tmp_path: Path) -> None:
    args = ["--forwarded-allow-ips", "10.0.0.0/8,127.0.0.1", "--certfile", "c.pem"]
    args += ["--keyfile", "k.pem", "--ca-certs", "ca.pem", "--cert-reqs", "2"]
    config, _ = config_from_gunicorn(
        gunicorn_config(args), access_log=False, limit_request_body=1000
    )
    assert config.forwarded_allow_ips == "10.0.0.0/8,127.0.0.1"
    assert (config.ssl_certfile, config.ssl_keyfile, config.ssl_ca_certs) == (
        "c.pem",
        "k.pem",
        "ca.pem",
    )
    assert config.ssl_cert_reqs == 2
    assert config.limit_request_body == 1000


def test_access_log_format_translation() -> None:
    default = GunicornConfig().access_log_format
    fmt, missing = access_log_format(default)
    assert missing == []
    assert "%(client_addr)s" in fmt and "%(request_line)s" in fmt and "%(user_agent)s" in fmt
    fmt, missing = access_log_format("%(h)s %(T)s %(L)s %({x-a}o)s %({HOME}e)s 100%% %(M)s %(D)s")
    assert fmt == "%(client_addr)s - - - - 100%% %(duration_ms)d %(duration_us)s"
    assert missing == ["%(T)s", "%(L)s", "%({x-a}o)s", "%({HOME}e)s"]
    fmt, _ = access_log_format("%({X-Request-Id}i)s")
    assert fmt == "%({x-request-id}i)s"


def test_drain_time_leaves_a_margin() -> None:
    assert drain_time(30) == 29.0
    assert drain_time(2) == pytest.approx(1.6)
    assert drain_time(0) == 0.0
