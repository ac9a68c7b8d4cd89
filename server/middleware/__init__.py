"""ASGI middleware the server wraps around the app when asked (proxy headers, CORS)."""

from .cors import CORSMiddleware
from .proxy_headers import ProxyHeadersMiddleware, TrustedPeers

__all__ = ["CORSMiddleware", "ProxyHeadersMiddleware", "TrustedPeers"]
