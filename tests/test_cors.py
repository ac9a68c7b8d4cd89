"""Built-in CORS: off by default; preflights answered by the server; responses decorated."""

from __future__ import annotations

from typing import Any

import httpx

from tests.apps.core_apps import Probe
from tests.conftest import run_server
from tests.helpers import Serve

SITE = "https://app.example"


def cors_app(probe: Probe) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        probe.put((scope["method"], scope["path"]))
        headers = [(b"content-type", b"text/plain")]
        if scope["path"] == "/vary":
            headers.append((b"vary", b"Accept-Encoding"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"app"})

    return app


def preflight(url: str, origin: str = SITE, method: str = "PUT", headers: str = "") -> Any:
    extra = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        extra["Access-Control-Request-Headers"] = headers
    return httpx.options(url, headers=extra)


def test_cors_is_off_by_default(serve: Serve) -> None:
    probe = Probe()
    with serve(cors_app(probe)) as srv:
        response = httpx.get(srv.url, headers={"Origin": SITE})
        answer = preflight(srv.url + "/x")
    assert "access-control-allow-origin" not in response.headers
    assert answer.text == "app"  # the app answered the OPTIONS itself
    assert probe.get() == ("GET", "/") and probe.get() == ("OPTIONS", "/x")


def test_allowed_preflight_is_answered_by_the_server(serve: Serve) -> None:
    probe = Probe()
    options = {
        "cors_allow_origins": [SITE, "https://other.example"],
        "cors_allow_methods": "GET,PUT",
        "cors_allow_headers": "X-Token, X-Trace",
        "cors_max_age": 120,
    }
    with serve(cors_app(probe), **options) as srv:
        answer = preflight(srv.url + "/x", headers="x-token, Content-Type")
        bad_origin = preflight(srv.url, origin="https://evil.example")
        bad_method = preflight(srv.url, method="DELETE")
        bad_header = preflight(srv.url, headers="X-Other")
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == SITE
    assert answer.headers["access-control-allow-methods"] == "GET, PUT"
    assert answer.headers["access-control-allow-headers"] == "x-token, x-trace"
    assert answer.headers["access-control-max-age"] == "120"
    assert answer.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in answer.headers
    for refused, what in ((bad_origin, "origin"), (bad_method, "method"), (bad_header, "headers")):
        assert refused.status_code == 400
        assert refused.text == f"Disallowed CORS {what}"
        assert "access-control-allow-origin" not in refused.headers
    assert probe.events.empty()  # no preflight reached the app


def test_responses_are_decorated_for_allowed_origins_only(serve: Serve) -> None:
    probe = Probe()
    with serve(cors_app(probe), cors_allow_origins=[SITE]) as srv:
        allowed = httpx.post(srv.url, headers={"Origin": SITE})
        other = httpx.get(srv.url, headers={"Origin": "https://evil.example"})
        no_origin = httpx.get(srv.url)
        merged = httpx.get(srv.url + "/vary", headers={"Origin": SITE})
        # A plain OPTIONS (no Access-Control-Request-Method) is not a preflight.
        plain_options = httpx.options(srv.url, headers={"Origin": SITE})
    assert allowed.text == "app" and allowed.headers["access-control-allow-origin"] == SITE
    assert allowed.headers["vary"] == "Origin"
    assert other.text == "app" and "access-control-allow-origin" not in other.headers
    assert other.headers["vary"] == "Origin"  # caches must not mix the two answers
    assert no_origin.headers["vary"] == "Origin"
    assert merged.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    assert plain_options.text == "app"


def test_wildcard_origin() -> None:
    with run_server(cors_app(Probe()), cors_allow_origins=["*"]) as srv:
        response = httpx.get(srv.url, headers={"Origin": "https://any.example"})
        answer = preflight(srv.url, origin="https://any.example")
    assert response.headers["access-control-allow-origin"] == "*"
    assert "vary" not in response.headers
    assert answer.status_code == 204 and answer.headers["access-control-allow-origin"] == "*"


def test_credentials_echo_the_origin() -> None:
    options = {"cors_allow_origins": ["*"], "cors_allow_credentials": True}
    with run_server(cors_app(Probe()), **options) as srv:
        response = httpx.get(srv.url, headers={"Origin": "https://any.example"})
    # Browsers refuse `*` together with credentials.
    assert response.headers["access-control-allow-origin"] == "https://any.example"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["vary"] == "Origin"


def test_any_method_and_header() -> None:
    options = {"cors_allow_origins": [SITE], "cors_allow_methods": "*", "cors_allow_headers": "*"}
    with run_server(cors_app(Probe()), **options) as srv:
        answer = preflight(srv.url, method="PROPFIND", headers="X-Anything, X-Else")
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-methods"] == "PROPFIND"
    assert answer.headers["access-control-allow-headers"] == "x-anything, x-else"
