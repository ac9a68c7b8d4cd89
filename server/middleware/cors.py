"""Built-in CORS (the Fetch standard's CORS protocol), on only with --cors-allow-origins.

- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here, the
  app never sees it: 204 with the allowed methods/headers and Access-Control-Max-Age when
  origin, method and every requested header are allowed, else 400 without CORS headers (the
  browser then refuses the real request).
- Any other request from an allowed origin goes to the app, and its response gains
  Access-Control-Allow-Origin (and -Credentials). Disallowed origins get the app's response
  unchanged, which the browser will not hand to the page.
- `*` as origin allows any origin; with --cors-allow-credentials the request's own origin is
  echoed instead, as browsers reject `*` on credentialed requests. Whenever the answer
  depends on Origin, responses carry `Vary: Origin` so caches keep them apart.
"""

from __future__ import annotations

from typing import Any

from ..types import ASGIApp, Receive, Scope, Send, SendMessage

# Request headers a browser sends without asking (Fetch: CORS-safelisted request headers).
SAFELISTED = frozenset(["accept", "accept-language", "content-language", "content-type"])


class CORSMiddleware:
    def __init__(self, app: ASGIApp, config: Any) -> None:
        self.app = app
        origins = list(config.cors_allow_origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(o.strip() for o in origins if o.strip() and o != "*")
        self.credentials = bool(config.cors_allow_credentials)
        methods = [m.strip().upper() for m in config.cors_allow_methods.split(",") if m.strip()]
        self.any_method = "*" in methods
        self.methods = frozenset(methods)
        headers = [h.strip().lower() for h in config.cors_allow_headers.split(",") if h.strip()]
        self.any_header = "*" in headers
        self.headers = frozenset(headers) | SAFELISTED
        self.max_age = str(int(config.cors_max_age)).encode()
        # The answer varies with Origin unless every origin gets a literal `*`.
        self.vary = not self.any_origin or self.credentials
        self.allow_methods = ", ".join(sorted(self.methods - {"*"})).encode()
        self.allow_headers = ", ".join(sorted(set(headers) - {"*"})).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = request_preflight = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                request_preflight = value
        if scope["method"] == "OPTIONS" and origin is not None and request_preflight is not None:
            await self.preflight(scope, origin, request_preflight, send)
            return
        allowed = origin is not None and self.origin_allowed(origin)
        if not allowed and not self.vary:
            await self.app(scope, receive, send)
            return
        extra = self.simple_headers(origin) if allowed and origin is not None else []

        async def send_with_cors(message: SendMessage) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                message["headers"] = self.decorate(headers, extra)
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def origin_allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin.decode("latin-1") in self.origins

    def allow_origin(self, origin: bytes) -> bytes:
        return b"*" if self.any_origin and not self.credentials else origin

    def simple_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        out = [(b"access-control-allow-origin", self.allow_origin(origin))]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out

    def decorate(
        self, headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        if extra:
            taken = {n.lower() for n, _ in headers}
            headers += [(n, v) for n, v in extra if n not in taken]
        if self.vary:
            headers = _add_vary(headers, b"Origin")
        return headers

    async def preflight(self, scope: Scope, origin: bytes, method: bytes, send: Send) -> None:
        requested = [
            h.strip().lower()
            for name, value in scope["headers"]
            if name == b"access-control-request-headers"
            for h in value.decode("latin-1").split(",")
            if h.strip()
        ]
        problem = None
        if not self.origin_allowed(origin):
            problem = "origin"
        elif not self.any_method and method.decode("latin-1").upper() not in self.methods:
            problem = "method"
        elif not self.any_header and any(h not in self.headers for h in requested):
            problem = "headers"
        if problem is not None:
            body = f"Disallowed CORS {problem}".encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            headers = _add_vary(headers, b"Origin") if self.vary else headers
            await _respond(send, 400, headers, body)
            return
        headers = self.simple_headers(origin)
        headers.append(
            (b"access-control-allow-methods", method if self.any_method else self.allow_methods)
        )
        allow_headers = ", ".join(requested).encode() if self.any_header else self.allow_headers
        if allow_headers:
            headers.append((b"access-control-allow-headers", allow_headers))
        headers.append((b"access-control-max-age", self.max_age))
        if self.vary:
            headers = _add_vary(headers, b"Origin")
        await _respond(send, 204, headers, b"")


def _add_vary(headers: list[tuple[bytes, bytes]], field: bytes) -> list[tuple[bytes, bytes]]:
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            listed = {v.strip().lower() for v in value.split(b",")}
            if field.lower() not in listed and b"*" not in listed:
                headers[i] = (name, value + b", " + field)
            return headers
    headers.append((b"vary", field))
    return headers


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
