"""Starting a request: the part every protocol shares.

A protocol parses its wire format into a method, a target, headers and a version, and calls
`make_scope`; it creates a `RequestCycle` bound to the `Channel` that carries the exchange (an
HTTP/1.1 connection, an HTTP/2 stream), then `admit` it and `start` its task. From there the
cycle (cycle.py) runs the ASGI side and the channel moves bytes. Everything counted or
decided per request lives here, once: the scope, the --limit-concurrency refusal, the
in-flight and total counters (up in `admit`, down in `run`), and the task policy.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from ..trust import TrustedConnection
from .connection import Address
from .cycle import RequestCycle

if TYPE_CHECKING:
    from ..state import ServerState

# Request tasks are made by calling Task directly when the loop has no task factory (~1k
# instructions less than loop.create_task()). Any: typeshed's Task has no eager_start
# before 3.12.
TASK: Final[Any] = asyncio.Task

REFUSED: Final = b"Service Unavailable"


# What every connection's scope base starts as (connection_scope): copying a dict is a
# memcpy where building one is a store per key (~2k instructions a connection less).
BASE_SCOPE: Final[dict[str, Any]] = {
    "type": "http",
    "asgi": None,
    "http_version": "1.1",
    "scheme": "http",
    "method": "GET",
    "path": "",
    "raw_path": b"",
    "query_string": b"",
    "root_path": "",
    "headers": None,  # (placeholders: every request sets its own, make_scope)
    "client": None,
    "server": None,
    "state": None,
    "extensions": None,
}


def connection_scope(
    state: ServerState,
    http_version: str,
    transport: asyncio.BaseTransport,
    client: Address | None,
    server: Address | None,
) -> dict[str, Any]:
    """The scope keys that are the same for every request of a connection, and placeholders
    for the others (see make_scope). TLS connections get the ASGI TLS extension. The nested
    dicts are the connection's own: an app that changes them changes no other connection's."""
    proxy = state.proxy
    if proxy is not None and (client[0] if client else None) in proxy.trusted:
        base: dict[str, Any] = TrustedConnection(BASE_SCOPE)  # --proxy-headers: make_scope
    else:
        base = dict(BASE_SCOPE)
    base["asgi"] = {"version": "3.0", "spec_version": "2.4"}
    base["http_version"] = http_version
    base["root_path"] = state.root_path
    base["client"] = client
    base["server"] = server
    # ASGI extensions every connection serves (the TLS one is added below).
    extensions: dict[str, Any] = {
        "http.response.early_hint": {},
        "http.response.trailers": {},
        "http.response.pathsend": {},
    }
    base["extensions"] = extensions
    if state.tls and transport.get_extra_info("sslcontext") is not None:
        from ..tls import tls_extension

        base["scheme"] = "https"
        extensions["tls"] = tls_extension(transport)
    return base


def make_scope(
    base: dict[str, Any],
    state: ServerState,
    http_version: str,
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
) -> dict[str, Any]:
    """The ASGI http scope of one request. `base` holds the keys that are the same for every
    request of the connection (type, asgi, scheme, client, server, root_path, extensions) and
    a placeholder for each other key: copying a dict that already has every key is a memcpy,
    and filling it in then resizes nothing (-0.5k instructions a request)."""
    if 37 in raw_path:  # b"%": an int needle is ~10x faster than bytes
        path = unquote(raw_path.decode("latin-1"))
    else:
        path = raw_path.decode("latin-1")
    root_path = state.root_path
    if root_path:
        # As uvicorn, and as the ASGI spec's WSGI mapping implies (PATH_INFO = path minus
        # root_path): path and raw_path are the full path, the mount prefix included.
        path = root_path + path
        raw_path = root_path.encode() + raw_path
    # dict(), not base.copy(): compiled, it is PyDict_Copy() whatever the dict's type (copy()
    # of a TrustedConnection is a method call, ~150 instructions more) and gives a plain dict.
    scope = dict(base)
    scope["http_version"] = http_version
    scope["method"] = method
    scope["path"] = path
    scope["raw_path"] = raw_path
    scope["query_string"] = query
    scope["headers"] = headers
    scope["state"] = state.lifespan_state.copy()
    if type(base) is not dict and state.proxy is not None:
        # A trusted proxy's connection (connection_scope): X-Forwarded-For/-Proto and the
        # rest (--proxy-headers, middleware/proxy_headers.py) say who the client is. Other
        # connections pay the type test only.
        for name, _ in headers:
            if name.startswith(b"x-forwarded-") or name == b"forwarded":
                state.proxy.apply(scope)
                break
    return scope


def admit(cycle: RequestCycle, state: ServerState) -> bool:
    """Count the request in, or refuse it: over --limit-concurrency it gets a 503 at once,
    written through its channel like any response, and its app never runs (False)."""
    limit = state.limit_concurrency
    if limit is not None and state.in_flight >= limit:
        if state.metrics is not None:
            state.metrics.refused(503)
        cycle.answer(503, REFUSED)
        cycle.conn.cycle_done(cycle)
        return False
    total = state.total_requests + 1
    if total >= state.max_requests and not last_request(cycle, state):
        return False
    in_flight = state.in_flight + 1
    state.in_flight = in_flight
    state.total_requests = total
    if in_flight > state.gc_watermark:
        state.grow_gc_room(in_flight)  # (--gc-tune, rare: see state.py)
    return True


def last_request(cycle: RequestCycle, state: ServerState) -> bool:
    """--limit-max-requests, exactly (off the hot path: admit's one compare gets here only
    at the limit). The request that reaches it is served, with `connection: close`, and
    starts the shutdown (a worker's retirement): no connection is accepted and no request
    read after it. One already read (in the same loop pass, on another connection) is
    refused with a 503 and a close by a single process; a retiring worker (`restarting`:
    the supervisor is replacing it) serves it, as a failed request costs more than one past
    the limit."""
    if state.shutting_down:
        if state.restarting:
            return True
        cycle.answer(503, REFUSED, close=True)
        cycle.conn.cycle_done(cycle)
        return False
    state.shutting_down = True  # later requests' connections close after their response
    cycle.keep_alive = False
    if state.on_max_requests is not None:
        state.on_max_requests()
    return True


def start(
    cycle: RequestCycle, state: ServerState, deferred_eager: bool, fresh_context: bool
) -> bool:
    """Create the task that runs the app of an admitted request.

    - A task factory set by the app (instrumentation, eager_task_factory) is always honoured.
    - Python 3.12+ with --eager-start: an eager task, which runs the app at once. A protocol
      inside its parser's callbacks passes `deferred_eager`: then nothing is created and this
      returns False; the protocol calls `start_eagerly` once its parser has returned.
    - Otherwise Task() itself: what create_task() does without a factory, minus a call.
    `fresh_context`: started from another request's task (pipelining), the task gets a copy
    of the server's own context, so that request's context variables stay out of this one.
    With --reset-contextvars every request does, and that context is empty (not eager then).
    """
    loop = state.loop
    if state.reset_contextvars:
        fresh_context = True
    context = state.context.copy() if fresh_context else None
    if loop.get_task_factory() is not None:
        cycle.task = loop.create_task(run(cycle, state), context=context)
    elif state.eager and not fresh_context:
        if deferred_eager:
            return False
        start_eagerly(cycle, state)
    elif context is None:
        cycle.task = TASK(run(cycle, state), loop=loop)  # (a keyword less: -0.1k instructions)
    else:
        # (A pipelined request starts from the previous one's task: not eagerly inside it.)
        cycle.task = TASK(run(cycle, state), loop=loop, context=context)
    return True


def start_eagerly(cycle: RequestCycle, state: ServerState) -> None:
    # state.eager: Python 3.12+, where Task takes eager_start.
    cycle.task = TASK(run(cycle, state), loop=state.loop, eager_start=True)


async def run(cycle: RequestCycle, state: ServerState) -> None:
    """The request's task: the app, the cycle's error policy, and the count back down."""
    try:
        await state.app(cycle.scope, cycle.receive, cycle.send)
    except BaseException as exc:
        cycle.app_failed(exc)
        if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            raise
    else:
        cycle.app_returned()
    finally:
        state.in_flight -= 1
        cycle.conn.cycle_done(cycle)
