"""fastserve: a fast, strict ASGI server."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, ConfigError
from .main import run
from .server import Server

__all__ = ["Config", "ConfigError", "Server", "__version__", "run"]
