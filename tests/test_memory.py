"""What a connection and a request leave behind: nothing that only Python's cyclic garbage
collector could free. fastserve runs gen-0 collections 10x less often (--gc-tune), so an
object kept alive by a reference cycle stays in memory until a collection comes: a closed
HTTP/1.1 connection (~2 KB: protocol, parser, scope base) and, on an idle HTTP/2 connection,
the protocol it was handed over from and its last stream, cycle and task (perf/: 1,000 idle
h2c connections, 10.9 -> 6.9 KB each).

Each test turns the collector off, serves, and waits until the objects' count is back where
it was: only reference counting can bring it back.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fastserve import Config
from fastserve.state import (
    GC_OBJECTS_PER_REQUEST,
    GC_THRESHOLD,
    GC_THRESHOLD_CAP,
    NO_LIMIT,
    ServerState,
)
from tests.apps.cli_procs import ServerProcess, fastserve_cmd
from tests.apps.core_apps import App, core_app
from tests.helpers import Serve, Wire, settle, until_closed, wait_until


def count(name: str) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj).__name__ == name)


def timers() -> int:
    """Loop timers not cancelled (asyncio keeps cancelled ones queued for a while)."""
    return sum(
        1 for obj in gc.get_objects() if type(obj).__name__ == "TimerHandle" and not obj.cancelled()
    )


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_closed_http1_connection_is_freed_without_the_collector(
    serve: Serve, no_collector: None
) -> None:
    with serve(core_app) as srv:
        before = {name: count(name) for name in ("HTTP1Protocol", "RequestCycle")}
        for close in (b"Connection: close\r\n", b""):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
                sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n" + close + b"\r\n")
                if close:
                    assert until_closed(sock).startswith(b"HTTP/1.1 200 ")
                else:  # the client closes a keep-alive connection
                    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            wait_until(lambda: not srv.server.state.connections, "the server to see the close")
            settle(srv)
            assert {name: count(name) for name in before} == before


def test_an_idle_http2_connection_keeps_no_request_state(serve: Serve, no_collector: None) -> None:
    pytest.importorskip("zttp")
    from tests.test_http2_frames import END_STREAM, Frames, RawH2

    with serve(core_app) as srv:
        names = ("HTTP1Protocol", "H2Protocol", "H2Stream", "RequestCycle", "Task")
        before = {name: count(name) for name in names}
        raw = RawH2(srv.port)  # prior knowledge: HTTP1Protocol reads the preface, hands over
        with raw.sock:
            raw.send(Frames().get(1, "/stream"))
            while not ((got := raw.next_frame()) and got[2] == 1 and got[1] & END_STREAM):
                assert got is not None, "closed before the response ended"
            settle(srv)
            after = {name: count(name) for name in names}
        assert after == {**before, "H2Protocol": before["H2Protocol"] + 1}


def test_idle_http2_connections_share_one_timer(serve: Serve, no_collector: None) -> None:
    """--timeout-keep-alive of idle HTTP/2 connections runs on one loop timer (idle.py), not
    one per connection (~500 B each)."""
    pytest.importorskip("zttp")
    from tests.test_http2_frames import END_STREAM, Frames, RawH2

    with serve(core_app, timeout_keep_alive=60) as srv:
        settle(srv)
        before = timers()
        clients = [RawH2(srv.port) for _ in range(5)]
        try:
            for raw in clients:
                raw.send(Frames().get(1, "/stream"))
                while not ((got := raw.next_frame()) and got[2] == 1 and got[1] & END_STREAM):
                    assert got is not None, "closed before the response ended"
            settle(srv)
            assert timers() <= before + 1
            assert len(srv.server.state.idle_conns.deadlines) == 5
        finally:
            for raw in clients:
                raw.sock.close()


@pytest.mark.parametrize("protocol", ["http1", "http1-json", "h2", "websocket"])
def test_access_log_forgets_a_closed_connections_line(serve: Serve, protocol: str) -> None:
    """The access log remembers each client's last line text (accesslog.AccessLog.heads and
    json_parts): a connection's close must drop it, or a long-running worker keeps one per
    port it has ever served (perf/: RSS +200 KiB per million requests in 5 s wrk runs)."""
    options: dict[str, object] = {"access_log": True, "log_level": "info"}
    if protocol == "http1-json":
        options["access_log_json"] = True
    app: App = core_app
    if protocol == "websocket":
        from tests.apps.ws_apps import echo_app

        app = echo_app()
    with serve(app, **options) as srv:
        state = srv.server.state
        assert state is not None and state.access_log is not None
        access = state.access_log
        cache = access.json_parts if protocol == "http1-json" else access.heads
        for _ in range(3):
            if protocol == "h2":
                pytest.importorskip("zttp")
                from tests.test_http2_frames import END_STREAM, Frames, RawH2

                raw = RawH2(srv.port)
                with raw.sock:
                    raw.send(Frames().get(1, "/echo"))
                    while not ((got := raw.next_frame()) and got[2] == 1 and got[1] & END_STREAM):
                        assert got is not None, "closed before the response ended"
                    wait_until(lambda: len(cache) == 1, "the line remembered")
            elif protocol == "websocket":
                from tests.apps.ws_apps import ws_connect

                with ws_connect(srv.port) as ws:
                    ws.send("hi")
                    assert ws.recv(timeout=5) == "hi"
                    wait_until(lambda: len(cache) == 1, "the line remembered")
            else:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
                    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
                    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
                    wait_until(lambda: len(cache) == 1, "the line remembered")
            wait_until(lambda: not state.connections, "the server to see the close")
            wait_until(lambda: not cache, "the closed connection's line forgotten")


HEAP_PROBE = r"""
import ctypes, sys
from fastserve.server import tune_malloc
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
print(tune_malloc() if sys.argv[1] == "tuned" else "-")
blocks = [bytearray(65536) for _ in range(64)]  # 4 MiB on the heap (each under mmap's 128 KiB)
top = libc.sbrk(0)
del blocks
print(top - libc.sbrk(0))  # how much of the heap's top was given back
before = libc.sbrk(0)
big = [bytearray(3 << 20) for _ in range(4)]  # 12 MiB in blocks of 3 MiB: heap or mmap?
print(libc.sbrk(0) - before)  # how much the heap grew for them
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
@pytest.mark.parametrize(
    "env",
    [{}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}],
    ids=["", "trim-set", "mmap-set"],
)
def test_a_freed_heap_top_is_kept_unless_the_operator_chose(env: dict[str, str]) -> None:
    """--gc-tune's tune_malloc(): 4 MiB of 64 KiB blocks freed at the heap's top stay in the
    process (glibc's default gives back all but 128 KiB with brk, to fault it in again for
    the next bodies), and blocks of 3 MiB come from the heap, not each from its own mmap();
    with MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ set, the operator's choice stands.
    (In the "mmap-set" case a threshold of 128 KiB maps the 3 MiB blocks: the heap stays.)"""

    def run(mode: str) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run(
            [sys.executable, "-c", HEAP_PROBE, mode],
            env={**environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.split()

    set_it, kept, grew = run("tuned")
    _, given_back, default_grew = run("default")
    assert int(given_back) > 2 << 20  # the default trims (the probe sees the brk it measures)
    assert int(default_grew) < 1 << 20  # and maps blocks of 3 MiB on their own
    if env:
        assert (set_it, int(kept) > 2 << 20, int(grew) < 1 << 20) == ("False", True, True)
    else:
        assert (set_it, kept, int(grew) > 6 << 20) == ("True", "0", True)  # (4 MiB reused)


@pytest.mark.parametrize("tuned", [True, False])
def test_the_young_generation_grows_with_the_requests_in_flight(tuned: bool) -> None:
    """--gc-tune: the gen-0 threshold starts at GC_THRESHOLD and, once more requests run at
    once than it has room for, rises to keep twice what they hold alive (a collection would
    otherwise walk live requests it cannot free, over and over); --no-gc-tune leaves
    Python's own. 300 requests held together, over real sockets, in a server subprocess (the
    test process's collector is left alone)."""
    together = 300
    flag = [] if tuned else ["--no-gc-tune"]
    cmd = fastserve_cmd("tests.apps.core_apps:gc_threshold_app", "--port", "0", *flag)
    with ServerProcess(cmd) as server:
        host, port = server.url().removeprefix("http://").rsplit(":", 1)
        address = (host, int(port))

        def threshold(sock: socket.socket, path: str) -> int:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            return int(Wire(sock).response(timeout=20).body)

        with socket.create_connection(address, timeout=20) as sock:
            before = threshold(sock, "/")
        socks = [socket.create_connection(address, timeout=20) for _ in range(together)]
        try:
            for sock in socks:
                sock.sendall(f"GET /together?n={together} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            during = [int(Wire(sock).response(timeout=20).body) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    if tuned:
        assert before == GC_THRESHOLD
        # (Each answer reads the threshold when all 300 run: the last raise came before.)
        assert min(during) >= GC_OBJECTS_PER_REQUEST * together
        assert max(during) <= 2 * GC_OBJECTS_PER_REQUEST * together
    else:  # Python's own threshold (700 up to 3.12, 2000 on 3.13), as a fresh process has it
        default = subprocess.run(
            [sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert before == int(default.stdout)
        assert set(during) == {before}


def test_the_young_generation_stops_growing_at_its_cap_and_never_shrinks() -> None:
    """grow_gc_room on its own (a real ServerState): each raise moves the watermark to twice
    the requests in flight; at GC_THRESHOLD_CAP it stops, and the watermark with it; a
    threshold already above what is wanted (the operator's, or an earlier raise) stays."""
    saved = gc.get_threshold()
    loop = asyncio.new_event_loop()
    try:
        state = ServerState(Config(app=core_app, gc_tune=True), core_app, loop, {}, None)
        assert state.gc_watermark == GC_THRESHOLD // (2 * GC_OBJECTS_PER_REQUEST)
        gc.set_threshold(GC_THRESHOLD, saved[1], saved[2])
        state.grow_gc_room(200)
        assert gc.get_threshold() == (2 * GC_OBJECTS_PER_REQUEST * 200, saved[1], saved[2])
        assert state.gc_watermark == 400
        state.grow_gc_room(150)  # (fewer: never lowered)
        assert gc.get_threshold()[0] == 2 * GC_OBJECTS_PER_REQUEST * 200
        assert state.gc_watermark == 300
        state.grow_gc_room(GC_THRESHOLD_CAP)
        assert gc.get_threshold()[0] == GC_THRESHOLD_CAP
        assert state.gc_watermark == NO_LIMIT
        untuned = ServerState(Config(app=core_app, gc_tune=False), core_app, loop, {}, None)
        assert untuned.gc_watermark == NO_LIMIT
    finally:
        gc.set_threshold(*saved)
        loop.close()
