"""Apps in other shapes than a bare ASGI 3 callable: ASGI 2, WSGI, Starlette and FastAPI.

No `from __future__ import annotations` here: FastAPI reads the annotations of endpoints
defined inside `fastapi_app()` at runtime, and local classes cannot be resolved from strings.
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from tests.apps.core_apps import Probe, Receive, Scope, Send, respond


class ASGI2App:
    """ASGI 2: instantiated with the scope, then called with receive and send."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"asgi2 " + self.scope["path"].encode())


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read()
    text = b"wsgi %s %s %d" % (
        environ["REQUEST_METHOD"].encode(),
        environ["PATH_INFO"].encode(),
        len(body),
    )
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text]


# -- framework apps ---------------------------------------------------------------------------


def starlette_app(probe: Probe) -> Any:
    """Routing, JSON, path/query params, streaming, form upload, body stream, background task
    and lifespan state, the way a Starlette user writes them."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    class Stamp(BaseHTTPMiddleware):
        """The most common middleware pattern: it wraps receive() and streams the response."""

        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            response.headers["x-stamp"] = "yes"
            return response

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        probe.put("startup")
        yield {"greeting": "hi"}
        probe.put("shutdown")

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world", "greeting": request.state.greeting})

    async def item(request: Request) -> JSONResponse:
        item_id = request.path_params["item_id"]
        return JSONResponse({"id": item_id, "q": request.query_params.get("q")})

    async def form(request: Request) -> JSONResponse:
        async with request.form() as data:
            upload: Any = data["file"]
            content = await upload.read()
            return JSONResponse(
                {"name": data["name"], "filename": upload.filename, "size": len(content)}
            )

    async def upload(request: Request) -> PlainTextResponse:
        sizes = [len(chunk) async for chunk in request.stream()]
        return PlainTextResponse(f"{sum(sizes)}")

    async def stream(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"line %d\n" % i
                await asyncio.sleep(0)

        return StreamingResponse(lines(), media_type="text/plain")

    async def background(request: Request) -> PlainTextResponse:
        return PlainTextResponse("queued", background=BackgroundTask(probe.put, "background ran"))

    routes = [
        Route("/", home),
        Route("/items/{item_id:int}", item),
        Route("/form", form, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", background),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Stamp)])


def fastapi_app(probe: Probe) -> Any:
    """Pydantic bodies, validation errors, dependencies, uploads, sync endpoints (thread
    pool), streaming and background tasks, the way a FastAPI user writes them."""
    from fastapi import BackgroundTasks, Depends, FastAPI, Form, UploadFile
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel

    class Item(BaseModel):
        name: str
        price: float

    app = FastAPI()

    def token(x_token: str = "anonymous") -> str:
        return x_token

    @app.post("/items")
    async def create(item: Item, who: str = Depends(token)) -> dict[str, Any]:
        return {"name": item.name, "double": item.price * 2, "who": who}

    @app.get("/items/{item_id}")
    async def read(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.post("/upload")
    async def upload(file: UploadFile, name: str = Form()) -> dict[str, Any]:
        return {"name": name, "filename": file.filename, "size": len(await file.read())}

    @app.get("/sync")
    def sync() -> dict[str, Any]:
        return {"thread": threading.current_thread() is not threading.main_thread()}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b"part %d\n" % i

        return StreamingResponse(parts())

    @app.post("/notify")
    async def notify(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(probe.put, "notified")
        return {"ok": True}

    return app
