"""ASGI behaviour of the core server: the scope, lifespan, real frameworks and the ASGI2/WSGI
adapters, exercised over real sockets (httpx, or raw bytes where the exact request matters)."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import re
from typing import Any

import httpx
import pytest

from fastserve.server import StartupFailed
from tests.apps.core_apps import (
    Probe,
    lifespan_failing_app,
    lifespan_raising_app,
    no_lifespan_app,
    recording_lifespan,
    scope_app,
    under_task_factory,
)
from tests.apps.framework_apps import ASGI2App, fastapi_app, starlette_app, wsgi_app
from tests.helpers import Serve, Wire, request, sent_and_read, settle, until_closed


def raw_scope(srv: Any, data: bytes) -> tuple[dict[str, Any], tuple[str, int]]:
    """Send raw request bytes to scope_app; return the scope it saw and our socket address."""
    with srv.connect() as sock:
        wire = Wire(sock)
        wire.send(data)
        response = wire.response()
        assert response.status == 200, response.body
        local = sock.getsockname()
    return json.loads(response.body), (local[0], local[1])


# -- the scope --------------------------------------------------------------------------------


def test_scope_fields(serve: Serve) -> None:
    with serve(scope_app) as srv:
        scope, local = raw_scope(
            srv, request("/caf%C3%A9/a%2Fb/%20x?q=caf%C3%A9&y=1", "PURGE", "Content-Length: 0\r\n")
        )
        port = srv.port
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    major, minor = scope["asgi"]["spec_version"].split(".")
    assert (int(major), int(minor)) >= (2, 3)
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "PURGE"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a/b/ x"  # percent-decoded, as UTF-8
    assert scope["raw_path"] == "/caf%C3%A9/a%2Fb/%20x"  # exactly as sent
    assert scope["query_string"] == "q=caf%C3%A9&y=1"  # never decoded
    assert scope["root_path"] == ""
    assert scope["client"] == list(local)
    assert scope["server"] == ["127.0.0.1", port]
    assert scope["state"] == {}  # no lifespan state (lifespan off)


def test_scope_http10_and_empty_query(serve: Serve) -> None:
    with serve(scope_app) as srv:
        scope, _ = raw_scope(srv, b"GET /plain HTTP/1.0\r\n\r\n")
    assert scope["http_version"] == "1.0"
    assert scope["path"] == "/plain"
    assert scope["query_string"] == ""


# The server reads a request's HTTP version off the first line of the read that starts it
# (http1.py, data_received) when it can tell that line is the request line, and asks httptools
# otherwise. Each case: the pieces sent, one read each (`sent_and_read`: the server has read
# a piece before the next one is sent), and the http_version each request's scope must carry.
VERSION_CASES = {
    "pipelined 1.1 then 1.0": (
        [b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.0\r\n\r\n"],
        ["1.1", "1.0"],
    ),
    "pipelined 1.0 then 1.1": (
        [
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ],
        ["1.0", "1.1"],
    ),
    "a header line ends like a 1.1 request line": (
        [b"GET /a HTTP/1.0\r\nX-A: b", b" HTTP/1.1\r\n\r\n"],
        ["1.0"],
    ),
    "the next request's header ends like one": (
        [b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.0\r\nX: y", b" HTTP/1.1\r\n\r\n"],
        ["1.1", "1.0"],
    ),
    "method split": ([b"GE", b"T /a HTTP/1.0\r\n\r\n"], ["1.0"]),
    "version split": ([b"GET /a HTTP/1.", b"0\r\n\r\n"], ["1.0"]),
    "leading empty line": ([b"\r\nGET /a HTTP/1.0\r\n\r\n"], ["1.0"]),
    "1.1 after a kept-alive 1.0": (
        [
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ],
        ["1.0", "1.1"],
    ),
}


@pytest.mark.parametrize("case", list(VERSION_CASES))
def test_http_version_of_each_request_however_its_bytes_arrive(serve: Serve, case: str) -> None:
    pieces, versions = VERSION_CASES[case]
    with serve(scope_app) as srv, srv.connect() as sock:
        for piece in pieces:
            sent_and_read(sock, piece)
        received = until_closed(sock)  # every case ends with a request that closes
    seen = [m.decode() for m in re.findall(rb'"http_version": "([0-9.]+)"', received)]
    assert seen == versions


def test_scope_headers_lowercased_in_order_duplicates_kept_whitespace_stripped(
    serve: Serve,
) -> None:
    head = (
        b"GET / HTTP/1.1\r\n"
        b"Host: test\r\n"
        b"X-Mixed-CASE:   padded value \t\r\n"
        b"Accept: a\r\n"
        b"x-dup: 1\r\n"
        b"Accept: b\r\n"
        b"X-Dup: 2\r\n"
        b"X-Empty:\r\n"
        b"\r\n"
    )
    with serve(scope_app) as srv:
        scope, _ = raw_scope(srv, head)
    assert scope["headers"] == [
        ["host", "test"],
        ["x-mixed-case", "padded value"],
        ["accept", "a"],
        ["x-dup", "1"],
        ["accept", "b"],
        ["x-dup", "2"],
        ["x-empty", ""],
    ]


def test_root_path(serve: Serve) -> None:
    """--root-path: the app is mounted under a prefix a proxy strips; as uvicorn does (and as
    the ASGI spec's WSGI mapping implies), path and raw_path then include the prefix."""
    with serve(scope_app, root_path="/api") as srv:
        scope, _ = raw_scope(srv, request("/items?x=1"))
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items"
    assert scope["raw_path"] == "/api/items"
    assert scope["query_string"] == "x=1"


# -- lifespan ---------------------------------------------------------------------------------


REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


@pytest.mark.parametrize("eager_start", [True, False])
def test_each_request_has_its_own_task_and_context(serve: Serve, eager_start: bool) -> None:
    """Frameworks (anyio cancel scopes, per-request sessions keyed on the task, contextvars)
    need every request to run in a task of its own, with a context that starts clean: a
    value set by one request must never leak into the next one on the same connection,
    whether its app starts at once (eager task, Python 3.12+) or on the next loop pass."""
    seen: list[tuple[str, object]] = []
    tasks: list[asyncio.Task[Any] | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append((REQUEST_VAR.get(), scope["path"]))
        REQUEST_VAR.set(scope["path"])
        task = asyncio.current_task()
        tasks.append(task)
        if scope["path"] == "/wait":
            await asyncio.sleep(0.01)  # the rest of the app runs on a later loop pass
            assert asyncio.current_task() is task and REQUEST_VAR.get() == "/wait"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve(app, eager_start=eager_start) as srv, srv.connect() as sock:
        wire = Wire(sock)
        paths = ["/a", "/wait", "/b", "/b"]
        for path in paths:
            wire.send(request(path))
            assert wire.response().body == b"ok"
        wire.send(b"".join(request(path) for path in ("/p1", "/p2")))  # pipelined
        assert [wire.response().body for _ in range(2)] == [b"ok", b"ok"]
    assert seen == [("unset", path) for path in [*paths, "/p1", "/p2"]]
    assert all(isinstance(task, asyncio.Task) for task in tasks)
    # No task ran two requests (one connection task running its requests one after another
    # would pass every other check here). The list keeps the tasks alive: identity is exact.
    assert [sum(t is task for t in tasks) for task in tasks] == [1] * len(tasks)


@pytest.mark.parametrize("eager_start", [True, False])
def test_a_task_factory_set_by_the_app_makes_the_request_tasks(
    serve: Serve, eager_start: bool
) -> None:
    """Instrumentation sets a loop task factory (at lifespan startup): every request task,
    kept-alive or pipelined, must come from it (the server calls Task() itself only when
    the loop has none)."""
    made: list[asyncio.Task[Any]] = []
    served: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        served.append(asyncio.current_task() in made)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    instrumented = under_task_factory(app, made)
    with serve(instrumented, eager_start=eager_start, lifespan="on") as srv, srv.connect() as sock:
        wire = Wire(sock)
        for _ in range(2):
            wire.send(request("/"))
            assert wire.response().body == b"ok"
        wire.send(request("/p1") + request("/p2"))  # pipelined
        assert [wire.response().body for _ in range(2)] == [b"ok", b"ok"]
    assert served == [True] * 4


def test_messages_may_be_any_mapping(serve: Serve) -> None:
    """ASGI messages are dicts in practice, but `send()` takes any mapping (the server reads
    dicts directly and other mappings through a copy)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        start = collections.UserDict(
            {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]}
        )
        await send(start)
        first = {"type": "http.response.body", "body": b"one ", "more_body": True}
        await send(collections.UserDict(first))
        await send(collections.OrderedDict(type="http.response.body", body=b"two"))

    with serve(app) as srv:
        response = httpx.get(srv.url + "/")
    assert response.status_code == 201
    assert response.headers["x-a"] == "1"
    assert response.text == "one two"


def test_lifespan_messages_and_state_shallow_copied_into_scopes(serve: Serve) -> None:
    probe = Probe()
    with serve(recording_lifespan(probe), lifespan="on") as srv:
        assert probe.get() == "lifespan.startup"
        states = [httpx.get(srv.url + "/").json()["state"] for _ in range(2)]
        settle(srv)
        assert probe.events.empty()  # no shutdown while serving
    assert probe.get() == "lifespan.shutdown"
    # Each request sees the startup values; the nested dict is shared (a shallow copy), and
    # a key one request adds to its own copy does not reach the next request.
    assert [s["answer"] for s in states] == [42, 42]
    assert [s["shared"]["count"] for s in states] == [1, 2]
    assert all("mutated_by_request" not in s for s in states)


@pytest.mark.parametrize(
    ("app", "mode", "reason"),
    [
        (lifespan_failing_app, "on", "database unreachable"),
        (lifespan_failing_app, "auto", "database unreachable"),
        # (In auto mode an exception before startup.complete means "unsupported": below.)
        (lifespan_raising_app, "on", "startup exploded"),
    ],
)
def test_lifespan_startup_failure_stops_the_server(
    serve: Serve, app: Any, mode: str, reason: str
) -> None:
    with pytest.raises(StartupFailed, match=reason), serve(app, lifespan=mode):
        pass


@pytest.mark.parametrize("app", [no_lifespan_app, lifespan_raising_app])
def test_lifespan_auto_tolerates_an_app_without_lifespan(serve: Serve, app: Any) -> None:
    with serve(app, lifespan="auto") as srv:
        assert httpx.get(srv.url + "/hello").text == "hello"


def test_lifespan_on_requires_support(serve: Serve) -> None:
    with pytest.raises(StartupFailed), serve(no_lifespan_app, lifespan="on"):
        pass


def test_lifespan_off_sends_nothing(serve: Serve) -> None:
    probe = Probe()
    with serve(recording_lifespan(probe), lifespan="off") as srv:
        state = httpx.get(srv.url + "/").json()["state"]
    assert state == {}
    assert probe.events.empty()  # the server has stopped: it sent nothing, ever


# -- frameworks -------------------------------------------------------------------------------


def test_starlette_app(serve: Serve) -> None:
    probe = Probe()
    with serve(starlette_app(probe), lifespan="on") as srv, httpx.Client(base_url=srv.url) as c:
        assert probe.get() == "startup"
        assert c.get("/").json() == {"hello": "world", "greeting": "hi"}
        assert c.get("/items/7?q=x").json() == {"id": 7, "q": "x"}
        assert c.get("/items/nope").status_code == 404
        files = {"file": ("a.bin", b"\0" * 100_000, "application/octet-stream")}
        form = c.post("/form", data={"name": "n"}, files=files)
        assert form.json() == {"name": "n", "filename": "a.bin", "size": 100_000}
        big = b"z" * (3 * 1024 * 1024)
        assert c.post("/upload", content=big).text == str(len(big))
        chunks = (b"x" * 1000 for _ in range(100))  # a generator: sent chunked
        assert c.post("/upload", content=chunks).text == "100000"
        streamed = c.get("/stream")
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert streamed.text == "".join(f"line {i}\n" for i in range(5))
        background = c.get("/background")
        assert background.text == "queued"
        assert probe.get() == "background ran"
        assert all(r.headers["x-stamp"] == "yes" for r in (form, streamed, background))
    assert probe.get() == "shutdown"


def test_fastapi_app(serve: Serve) -> None:
    probe = Probe()
    with serve(fastapi_app(probe)) as srv, httpx.Client(base_url=srv.url) as c:
        created = c.post("/items", json={"name": "pen", "price": 1.5})
        assert created.json() == {"name": "pen", "double": 3.0, "who": "anonymous"}
        assert c.post("/items", json={"name": "pen"}).status_code == 422
        assert c.get("/items/3", params={"q": "é"}).json() == {"item_id": 3, "q": "é"}
        files = {"file": ("f.txt", b"12345", "text/plain")}
        uploaded = c.post("/upload", data={"name": "doc"}, files=files)
        assert uploaded.json() == {"name": "doc", "filename": "f.txt", "size": 5}
        assert c.get("/sync").json() == {"thread": True}
        assert c.get("/stream").text == "part 0\npart 1\npart 2\n"
        assert c.post("/notify").json() == {"ok": True}
        assert probe.get() == "notified"
        assert c.get("/openapi.json").json()["info"]["title"] == "FastAPI"


def test_fastapi_behind_root_path(serve: Serve) -> None:
    with serve(fastapi_app(Probe()), root_path="/api") as srv:
        assert httpx.get(srv.url + "/items/1").json() == {"item_id": 1, "q": None}
        spec = httpx.get(srv.url + "/openapi.json").json()
    assert spec["servers"] == [{"url": "/api"}]


# -- other interfaces -------------------------------------------------------------------------


@pytest.mark.parametrize("interface", ["auto", "asgi2"])
def test_asgi2_app(serve: Serve, interface: str) -> None:
    with serve(ASGI2App, interface=interface) as srv:
        assert httpx.get(srv.url + "/two").text == "asgi2 /two"


@pytest.mark.parametrize("interface", ["auto", "wsgi"])
def test_wsgi_app(serve: Serve, interface: str) -> None:
    with serve(wsgi_app, interface=interface) as srv:
        response = httpx.post(srv.url + "/w", content=b"hello")
    assert response.text == "wsgi POST /w 5"
