"""Turn an APP string ("package.module:attr.sub") into an ASGI 3 callable."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from .config import Config, ConfigError
from .types import ASGIApp, Receive, Scope, Send


def import_from_string(target: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise ConfigError(f"APP must be 'module:attribute', got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name and module_name.startswith(exc.name)) or exc.name == module_name:
            raise ConfigError(f"cannot import module {module_name!r}") from None
        raise
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attrs!r}") from None
    return obj


def load_app(config: Config) -> ASGIApp:
    """Import (or take) the app, call the factory, and adapt ASGI2/WSGI apps to ASGI 3."""
    # As uvicorn: the app directory ("" = the working directory) goes first on sys.path.
    if config.app_dir not in sys.path[:1]:
        sys.path.insert(0, config.app_dir)
    app: Any = config.app
    if isinstance(app, str):
        app = import_from_string(app)
    if config.factory:
        try:
            app = app()
        except TypeError as exc:
            raise ConfigError(f"--factory: the app factory failed: {exc}") from None
    elif inspect.isfunction(app) and _is_factory(app):
        raise ConfigError("APP looks like an app factory: pass --factory")
    return adapt_interface(app, config.interface)


def _is_factory(func: Any) -> bool:
    try:
        return len(inspect.signature(func).parameters) == 0
    except (TypeError, ValueError):
        return False


def adapt_interface(app: Any, interface: str) -> ASGIApp:
    if interface == "auto":
        if inspect.isclass(app):
            # A class is ASGI 2 (`cls(scope)` then `instance(receive, send)`) unless its
            # instances are awaitable: `cls(scope, receive, send)` is then an ASGI 3 call.
            interface = "asgi3" if hasattr(app, "__await__") else "asgi2"
        elif _takes_params(app) == 2:
            interface = "wsgi"
        elif inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
            getattr(app, "__call__", None)  # noqa: B004 (ASGI apps may be plain callables)
        ):
            interface = "asgi3"
        elif _takes_params(app) == 1:
            interface = "asgi2"
        else:
            interface = "asgi3"
    if interface == "wsgi":
        try:
            from a2wsgi import WSGIMiddleware
        except ImportError:
            raise ConfigError("--interface wsgi needs a2wsgi: pip install a2wsgi") from None
        wrapped: ASGIApp = WSGIMiddleware(app)  # type: ignore[assignment]  # its own TypedDicts
        return wrapped
    if interface == "asgi2":
        return _ASGI2(app)
    if not callable(app):
        raise ConfigError(f"APP is not callable: {app!r}")
    asgi: ASGIApp = app
    return asgi


def _takes_params(app: Any) -> int:
    try:
        return len(inspect.signature(app).parameters)
    except (TypeError, ValueError):
        return -1


class _ASGI2:
    """ASGI 2 (`app(scope)` returns `instance(receive, send)`) seen as ASGI 3."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)
