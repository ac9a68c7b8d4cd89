"""TLS: HTTPS with trustme certificates, the ASGI tls extension, ALPN, the TLS 1.2 floor,
client certificates (mTLS), and clear startup errors for bad files or passwords."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import websockets
from cryptography.hazmat.primitives import serialization

from tests.apps.core_apps import Probe
from tests.conftest import run_server
from tests.helpers import Serve

ROOT = Path(__file__).resolve().parent.parent


class Certs:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.certfile = directory / "server.pem"
        self.keyfile = directory / "server.key"
        self.cafile = directory / "ca.pem"
        self.server.cert_chain_pems[0].write_to_path(str(self.certfile))
        self.server.private_key_pem.write_to_path(str(self.keyfile))
        self.ca.cert_pem.write_to_path(str(self.cafile))
        key = serialization.load_pem_private_key(self.server.private_key_pem.bytes(), None)
        self.encrypted_keyfile = directory / "encrypted.key"
        self.encrypted_keyfile.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"s3cret"),
            )
        )

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"ssl_certfile": str(self.certfile), "ssl_keyfile": str(self.keyfile), **extra}

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def scope_app(probe: Probe) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        probe.put(scope)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["scheme"].encode()})

    return app


def test_https_request_and_the_tls_extension(serve: Serve, certs: Certs) -> None:
    probe = Probe()
    with serve(scope_app(probe), **certs.options()) as srv:
        url = f"https://127.0.0.1:{srv.port}/"
        with httpx.Client(verify=certs.client_context()) as client:
            response = client.get(url)
            again = client.get(url)  # the same connection: the extension is per connection
    assert response.status_code == 200 and response.text == "https"
    assert again.status_code == 200
    scope = probe.get()
    tls = scope["extensions"]["tls"]
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int) and tls["cipher_suite"] > 0
    assert tls["server_cert"] == certs.certfile.read_text()
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None


def test_plain_http_has_no_tls_extension(serve: Serve) -> None:
    probe = Probe()
    with serve(scope_app(probe)) as srv:
        assert httpx.get(srv.url).text == "http"
    assert "tls" not in probe.get().get("extensions", {})


def tls_socket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def test_alpn_offers_h2_then_http11(certs: Certs) -> None:
    with run_server(scope_app(Probe()), **certs.options()) as srv:
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with tls_socket(srv.port, ctx) as sock:
            assert sock.selected_alpn_protocol() == "h2"
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["http/1.1"])
        with tls_socket(srv.port, ctx) as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"


def test_alpn_offers_http11_only_without_http2(certs: Certs) -> None:
    with run_server(scope_app(Probe()), http2=False, **certs.options()) as srv:
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with tls_socket(srv.port, ctx) as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["h2"])
        # No common protocol: the server goes on without ALPN (RFC 7301 allows it).
        with tls_socket(srv.port, ctx) as sock:
            assert sock.selected_alpn_protocol() is None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls12_and_tls13_are_accepted(certs: Certs, version: ssl.TLSVersion) -> None:
    probe = Probe()
    with run_server(scope_app(probe), **certs.options()) as srv:
        ctx = certs.client_context()
        ctx.minimum_version = ctx.maximum_version = version
        with tls_socket(srv.port, ctx) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    expected = {ssl.TLSVersion.TLSv1_2: 0x0303, ssl.TLSVersion.TLSv1_3: 0x0304}[version]
    assert probe.get()["extensions"]["tls"]["tls_version"] == expected


def test_tls11_is_refused(certs: Certs) -> None:
    with run_server(scope_app(Probe()), **certs.options()) as srv:
        ctx = certs.client_context()
        with warnings.catch_warnings():  # the client side is deprecated, deliberately
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
            with pytest.raises(ssl.SSLError) as info:
                tls_socket(srv.port, ctx).close()
    if "NO_PROTOCOLS_AVAILABLE" in str(info.value).upper():
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    # The server answers with a protocol_version alert or just closes (asyncio does).
    message = str(info.value).upper()
    assert "VERSION" in message or "EOF" in message, info.value


def test_mutual_tls(serve: Serve, certs: Certs, tmp_path: Path) -> None:
    probe = Probe()
    client_cert = certs.ca.issue_cert("alice@example.org", common_name="alice, admin")
    other_ca = trustme.CA()
    stranger = other_ca.issue_cert("mallory@example.org", common_name="mallory")
    options = certs.options(ssl_ca_certs=str(certs.cafile), ssl_cert_reqs=2)
    with serve(scope_app(probe), **options) as srv:
        url = f"https://127.0.0.1:{srv.port}/"
        ctx = certs.client_context()
        client_cert.configure_cert(ctx)
        with httpx.Client(verify=ctx) as client:
            assert client.get(url).status_code == 200
        for configure in (None, stranger.configure_cert):
            ctx = certs.client_context()
            if configure is not None:
                configure(ctx)
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                httpx.get(url, verify=ctx)
    tls = probe.get()["extensions"]["tls"]
    assert tls["client_cert_chain"] == [client_cert.cert_chain_pems[0].bytes().decode()]
    # RFC 4514: the most specific RDN first, the comma in the name escaped.
    assert tls["client_cert_name"].startswith("CN=alice\\, admin,OU=")
    assert ",O=trustme" in tls["client_cert_name"]
    assert probe.events.empty()  # the refused clients never reached the app


def test_optional_client_certificate(certs: Certs) -> None:
    probe = Probe()
    options = certs.options(ssl_ca_certs=str(certs.cafile), ssl_cert_reqs=1)
    with run_server(scope_app(probe), **options) as srv:
        response = httpx.get(f"https://127.0.0.1:{srv.port}/", verify=certs.client_context())
    assert response.status_code == 200
    assert probe.get()["extensions"]["tls"]["client_cert_chain"] == []


def test_encrypted_key_with_its_password(certs: Certs) -> None:
    options = certs.options(ssl_keyfile=str(certs.encrypted_keyfile), ssl_keyfile_password="s3cret")
    with run_server(scope_app(Probe()), **options) as srv:
        response = httpx.get(f"https://127.0.0.1:{srv.port}/", verify=certs.client_context())
    assert response.status_code == 200


def test_websocket_over_tls_is_wss(certs: Certs) -> None:
    probe = Probe()
    with run_server(scope_app(probe), **certs.options()) as srv:

        async def connect() -> None:
            uri = f"wss://localhost:{srv.port}/ws"
            async with websockets.connect(uri, ssl=certs.client_context()) as ws:
                await ws.wait_closed()

        asyncio.run(connect())
    scope = probe.get()
    assert scope["scheme"] == "wss"
    assert scope["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)


# -- startup errors: one line, exit code 3 ------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fastserve", "tests.apps.core_apps:core_app", "--port", "0"]
    return subprocess.run(
        [*command, "--lifespan", "off", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


@pytest.fixture
def bad_setups(certs: Certs, tmp_path: Path) -> Iterator[dict[str, list[str]]]:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    cert, key = str(certs.certfile), str(certs.keyfile)
    yield {
        "missing certificate": ["--ssl-certfile", str(tmp_path / "nope.pem"), "--ssl-keyfile", key],
        "missing key": ["--ssl-certfile", cert, "--ssl-keyfile", str(tmp_path / "nope.key")],
        "not a certificate": ["--ssl-certfile", str(not_pem), "--ssl-keyfile", key],
        "key of another certificate": ["--ssl-certfile", cert, "--ssl-keyfile", str(other_key)],
        "encrypted key, no password": [
            "--ssl-certfile",
            cert,
            "--ssl-keyfile",
            str(certs.encrypted_keyfile),
        ],
        "wrong password": [
            "--ssl-certfile",
            cert,
            "--ssl-keyfile",
            str(certs.encrypted_keyfile),
            "--ssl-keyfile-password",
            "wrong",
        ],
        "bad cipher string": ["--ssl-certfile", cert, "--ssl-keyfile", key, "--ssl-ciphers", "NO"],
        "client certs without a CA": [
            "--ssl-certfile",
            cert,
            "--ssl-keyfile",
            key,
            "--ssl-cert-reqs",
            "2",
        ],
    }


@pytest.mark.timeout(120)
def test_bad_tls_setup_is_one_line_and_exit_code_3(bad_setups: dict[str, list[str]]) -> None:
    for case, args in bad_setups.items():
        result = run_cli(*args)
        assert result.returncode == 3, (case, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1, (case, result.stderr)
        assert "Traceback" not in result.stderr, (case, result.stderr)
        assert "ssl" in errors[0].lower() or "tls" in errors[0].lower(), (case, errors[0])


def test_bad_tls_setup_with_workers_is_one_line(certs: Certs, tmp_path: Path) -> None:
    """Checked before forking: one error line, not one per worker, and exit code 3."""
    missing = str(tmp_path / "nope.pem")
    result = run_cli("--workers", "3", "--ssl-certfile", missing, "--ssl-keyfile", missing)
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, result.stderr


# -- HTTP/2 over TLS (ALPN h2) -------------------------------------------------------------------


def test_httpx_negotiates_h2_over_tls(certs: Certs) -> None:
    probe = Probe()
    with run_server(scope_app(probe), **certs.options()) as srv:
        ctx = certs.client_context()
        with httpx.Client(verify=ctx, http2=True, timeout=5) as client:
            response = client.get(f"https://127.0.0.1:{srv.port}/h2?x=1")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    scope = probe.get()
    assert (scope["http_version"], scope["scheme"]) == ("2", "https")
    assert scope["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_http2_over_tls(certs: Certs) -> None:
    with run_server(scope_app(Probe()), **certs.options()) as srv:
        out = subprocess.run(
            [
                "curl",
                "-s",
                "--http2",
                "--cacert",
                str(certs.cafile),
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                f"https://localhost:{srv.port}/",
            ],
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert out.stdout == b"2 200"


def test_after_alpn_h2_a_bad_preface_is_a_goaway_not_a_400(certs: Certs) -> None:
    """Once ALPN chose h2 the connection is HTTP/2 from its first byte (RFC 9113 §3.4): an
    HTTP/1.1 request there is a connection error, answered with GOAWAY PROTOCOL_ERROR."""
    with run_server(scope_app(Probe()), **certs.options()) as srv:
        ctx = certs.client_context()
        ctx.set_alpn_protocols(["h2"])
        with tls_socket(srv.port, ctx) as sock:
            assert sock.selected_alpn_protocol() == "h2"
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                data += chunk
    assert not data.startswith(b"HTTP/1.1")
    frames = []
    while len(data) >= 9:
        length, kind = int.from_bytes(data[:3], "big"), data[3]
        frames.append((kind, data[9 : 9 + length]))
        data = data[9 + length :]
    goaways = [payload for kind, payload in frames if kind == 0x7]
    assert goaways and int.from_bytes(goaways[0][4:8], "big") == 0x1  # PROTOCOL_ERROR


def test_ssl_context_factory_from_the_default(certs: Certs) -> None:
    """uvicorn's Config(ssl_context_factory=...): the factory gets the context the options
    describe from default_factory() and may change it; that context serves."""
    calls: list[bool] = []

    def factory(config: Any, default_factory: Any) -> ssl.SSLContext:
        ctx: ssl.SSLContext = default_factory()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the change must show on the wire
        calls.append(True)
        return ctx

    with run_server(scope_app(Probe()), ssl_context_factory=factory, **certs.options()) as srv:
        with tls_socket(srv.port, certs.client_context()) as sock:
            assert sock.version() == "TLSv1.2"
        ctx = certs.client_context()
        with httpx.Client(verify=ctx, timeout=5) as http:
            assert http.get(f"https://localhost:{srv.port}/").text == "https"
    assert calls


def test_ssl_context_factory_without_certificate_options(certs: Certs) -> None:
    def factory(config: Any, default_factory: Any) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.certfile, certs.keyfile)
        return ctx

    with (
        run_server(scope_app(Probe()), ssl_context_factory=factory) as srv,
        httpx.Client(verify=certs.client_context(), timeout=5) as http,
    ):
        response = http.get(f"https://localhost:{srv.port}/")
        assert response.text == "https"  # the scope's scheme: TLS is on


@pytest.mark.parametrize("kind", ["not a context", "default without certfile"])
def test_ssl_context_factory_misuse_is_a_config_error(kind: str) -> None:
    from fastserve.config import ConfigError

    def factory(config: Any, default_factory: Any) -> Any:
        return "nope" if kind == "not a context" else default_factory()

    with (
        pytest.raises(ConfigError, match="ssl_context_factory"),
        run_server(scope_app(Probe()), ssl_context_factory=factory),
    ):
        pass
