"""Wire protocols, chosen by name (`--http NAME`, `--ws NAME`), as event loops are in `loops/`.

Each table maps a name to "module:attr". Only the chosen entry is imported, once, at startup:
a missing library is then a `ConfigError` (exit code 3), not a failure on the first request.
A registry with a `deferred` library (WebSockets: `websockets`) checks at startup only that
the library is installed, and imports its entry on the entry's first call: a worker that never
sees a WebSocket handshake never loads the library (2.4 MiB of RSS per worker, measured with
the compiled build on 3.11), and the first handshake a worker sees waits about 15 ms for it.

- `HTTP` entries are connection factories, `attr(state) -> asyncio.Protocol`, called once per
  accepted connection (`connection_factory` below builds what `loop.create_server` calls).
- `WS` entries are upgrade hand-overs, `attr(state, scope, transport, rest, write_paused)`:
  the HTTP/1.1 protocol calls the one in `ServerState.ws_upgrade` when a WebSocket handshake
  request is complete, with the transport it gives up (reading on; writing maybe paused).
  `None` turns WebSockets off (an upgrade request then reaches the app as plain HTTP).

A name uvicorn accepts but fastserve has no implementation of (`--http h11`, `--ws wsproto`)
is served by the entry named in the registry's `instead`, with one warning line saying so;
`implemented()` rewrites the Config to that name, so forked workers and `--reload` children,
which get the rewritten Config, do not warn again. Any other name is a `ConfigError`.

How a new protocol plugs in (HTTP/2 is the one expected): every protocol change on a
connection is a hand-over. The protocol in place reads the first bytes (or the outcome of the
TLS handshake), decides, and calls `transport.set_protocol(new)`,
`new.connection_made(transport)` and `new.data_received(rest)`. That is how the PROXY header
reader passes a connection on to HTTP/1.1 (`proxy_protocol.ProxyProtocol.hand_over`) and how
HTTP/1.1 passes one on to a WebSocket (`websocket.upgrade_to_websocket`). So:

1. Write the protocol (say `h2.py`, an `H2Protocol(state)` whose streams feed the shared
   request layer, `request.py` and `cycle.py`) and add `"h2": "fastserve.protocols.h2:H2Protocol"`
   to `HTTP`.
2. Prior knowledge (h2c without TLS, or `--http2`): a sniffer in front, a `NoAppRunning` like
   `ProxyProtocol`, buffers until it can compare the first 24 bytes with the HTTP/2 preface
   (`PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`, RFC 9113 §3.4) and hands over to the h2 entry
   or the HTTP/1.1 one. `connection_factory` is where it goes, after the PROXY reader.
3. ALPN (TLS): `tls.create_ssl_context` offers `["h2", "http/1.1"]`; the choice is known once
   the handshake is done, so the same front protocol reads
   `transport.get_extra_info("ssl_object").selected_alpn_protocol()` in `connection_made` and
   hands over at once, no bytes to sniff.
4. WebSockets over HTTP/2 (RFC 8441, extended CONNECT) run on a stream, not a connection:
   `h2.py` offers them when the `--ws` entry is on (`state.ws_upgrade is not None`) and gives
   `websocket.websocket_over_h2` the stream's own transport (`h2.WebSocketTransport`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config, ConfigError

if TYPE_CHECKING:
    from ..state import ServerState
    from .connection import Address

log = logging.getLogger("fastserve.error")

# HTTP entries: `attr(state, None, local)` (local: see connection_factory), or
# `attr(state, (client, server))` behind a PROXY header.
ConnectionFactory = Callable[..., asyncio.Protocol]


@dataclass(frozen=True)
class Registry:
    """The implementations one Config field (`--http`, `--ws`) chooses from."""

    field: str
    what: str  # for messages: "--ws foo: unknown WebSocket implementation"
    table: dict[str, str | None]
    # Names uvicorn accepts that fastserve serves with another entry (one warning line).
    instead: dict[str, str]
    # Where `auto` goes when its entry cannot be imported (None: that is an error).
    auto_fallback: str | None = None
    # The library every entry is built on, when it is imported on first use, not at startup.
    deferred: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.field

    def names(self) -> list[str]:
        return [*self.table, *self.instead]

    def load(self, name: str) -> Any:
        """The object registered as `name` (None for a disabled entry); ImportError if its
        library is missing."""
        target = self.table[name]
        if target is None:
            return None
        if self.deferred is None:
            return _resolve(target)
        if importlib.util.find_spec(self.deferred) is None:
            raise ModuleNotFoundError(f"No module named {self.deferred!r}", name=self.deferred)
        return _on_first_call(target)


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _on_first_call(target: str) -> Callable[..., Any]:
    """A stand-in for the callable at `target` that imports it when first called."""
    loaded: Callable[..., Any] | None = None

    def call(*args: Any) -> Any:
        nonlocal loaded
        if loaded is None:
            loaded = _resolve(target)
        return loaded(*args)

    call.__qualname__ = f"on_first_call({target})"
    return call


HTTP = Registry(
    field="http",
    what="HTTP",
    table={
        "auto": "fastserve.protocols.http1:HTTP1Protocol",
        "httptools": "fastserve.protocols.http1:HTTP1Protocol",
    },
    # uvicorn's pure-Python parser, and uvicorn 0.54's Zig-core one (`--http zttp`, which
    # also carries its --http2): the same HTTP/1.1, parsed by llhttp instead. HTTP/2 runs on
    # zttp here whatever --http says (--http2/--no-http2).
    instead={"h11": "httptools", "zttp": "httptools"},
)

WS = Registry(
    field="ws",
    what="WebSocket",
    table={
        # One implementation, on the websockets library's sans-I/O ServerProtocol. uvicorn's
        # `websockets` (the library's legacy asyncio API) and `websockets-sansio` name the same
        # library; for a user the behaviour is RFC 6455's either way, so no warning.
        # (ServerState.ws_upgrade holds the chosen one; http1.py calls it.)
        "auto": "fastserve.protocols.websocket:upgrade_to_websocket",
        "websockets": "fastserve.protocols.websocket:upgrade_to_websocket",
        "websockets-sansio": "fastserve.protocols.websocket:upgrade_to_websocket",
        "none": None,
    },
    instead={"wsproto": "websockets-sansio"},
    # websockets is in the `standard` extra: without it, `auto` serves upgrades as plain HTTP
    # (as uvicorn does), while naming an implementation is an error.
    auto_fallback="none",
    deferred="websockets",
)

REGISTRIES = {registry.field: registry for registry in (HTTP, WS)}


def implemented(config: Config) -> Config:
    """`config` with `http` and `ws` naming what will run. A name served by another entry
    is replaced by it (one warning line); an unknown name or a missing library is a
    ConfigError. Returns `config` itself when nothing changes, so a second call is silent."""
    changes = {}
    for registry in REGISTRIES.values():
        name = getattr(config, registry.field)
        chosen = _implemented(registry, name)
        if chosen != name:
            changes[registry.field] = chosen
    return config.replace(**changes) if changes else config


def _implemented(registry: Registry, name: str) -> str:
    option = registry.option
    if name in registry.instead:
        chosen = registry.instead[name]
        log.warning(
            "%s %s is not implemented in fastserve; running %s instead", option, name, chosen
        )
        name = chosen
    elif name not in registry.table:
        names = ", ".join(registry.names())
        raise ConfigError(
            f"{option} {name}: unknown {registry.what} implementation (choose from {names})"
        )
    try:
        registry.load(name)
    except ImportError as exc:
        if name == "auto" and registry.auto_fallback is not None:
            return registry.auto_fallback
        missing = exc.name or str(exc)
        raise ConfigError(
            f"{option} {name} needs the {missing!r} package (pip install 'fastserve[standard]')"
        ) from None
    return name


def connection_factory(
    state: ServerState, local: Address | None = None
) -> Callable[[], asyncio.Protocol]:
    """What `loop.create_server` calls for each accepted connection: the `--http` entry,
    behind the PROXY header reader with --proxy-protocol (the place for an HTTP/2 sniffer).
    `local`: the listener's address when every connection it accepts has it (one address,
    not a wildcard: sockets.fixed_address): the scope's `server`, known without converting
    each transport's sockname (~4k instructions of a new connection's ~96k)."""
    config = state.config
    protocol: ConnectionFactory = HTTP.load(config.http)
    if config.proxy_protocol:
        from .proxy_protocol import proxy_protocol_factory

        return proxy_protocol_factory(state, protocol)

    def factory() -> asyncio.Protocol:
        return protocol(state, None, local)

    return factory


def http2_upgrade(config: Config) -> Callable[..., None] | None:
    """HTTP/2's hand-over (h2.py), or None: --no-http2, or zttp missing (then --http2 is a
    ConfigError that says what to install)."""
    if config.http2 is False:
        return None
    try:
        from .h2 import upgrade_to_h2
    except ImportError:
        if config.http2:
            raise ConfigError(
                "--http2 needs zttp: pip install 'fastserve[standard]' (or zttp)"
            ) from None
        return None
    return upgrade_to_h2
