"""ASGI 3 type aliases (the messages stay plain dicts: they are built on the hot path).

The variances are chosen so both common spellings of an app type-check against `ASGIApp`:
the server hands over a `dict` scope and `dict` messages (acceptable to an app typed with
either `dict` or `MutableMapping`), and its `send` accepts any `MutableMapping`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
SendMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[SendMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientDisconnected(OSError):
    """`send()` was called after the client went away (ASGI spec 2.4 asks for an OSError).

    Defined here, in a module that is never compiled: mypyc cannot compile a subclass of
    OSError (see setup.py)."""
