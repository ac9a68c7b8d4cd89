"""Behind proxies: --proxy-headers (X-Forwarded-*, RFC 7239 Forwarded) and --proxy-protocol
(HAProxy PROXY v1/v2), with spoofed and malformed input over real sockets."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastserve.config import ConfigError
from fastserve.middleware.proxy_headers import (
    ProxyHeaders,
    ProxyHeadersMiddleware,
    TrustedPeers,
    apply_hop,
    parse_forwarded,
)
from fastserve.protocols.proxy_protocol import ProxyHeaderError, parse_header
from tests.apps.cli_procs import ServerProcess, clean_env, fastserve_cmd
from tests.conftest import run_server
from tests.helpers import Serve, Wire, fetch, request, sent_and_read, until_closed


async def where_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what the scope says about the connection."""
    if scope["type"] != "http":
        return
    host = [v.decode() for n, v in scope["headers"] if n == b"host"]
    body = json.dumps(
        {
            "client": scope["client"],
            "server": scope["server"],
            "scheme": scope["scheme"],
            "host": host,
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def ask(srv: Any, headers: str = "") -> dict[str, Any]:
    response = fetch(srv, request("/", "GET", headers))
    assert response.status == 200
    result: dict[str, Any] = json.loads(response.body)
    return result


# -- X-Forwarded-* and Forwarded ---------------------------------------------------------------


def test_headers_are_ignored_with_no_proxy_headers(serve: Serve) -> None:
    with serve(where_app, proxy_headers=False) as srv:
        seen = ask(srv, "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n")
    assert seen["client"][0] == "127.0.0.1" and seen["scheme"] == "http"


def test_by_default_loopback_is_trusted_for_address_and_scheme_only(serve: Serve) -> None:
    """uvicorn's defaults: --proxy-headers on, loopback trusted, X-Forwarded-For and -Proto
    read. A local nginx's client is the client. Host is not taken from X-Forwarded-Host (nginx
    passes a client's own on), nor anything from RFC 7239 Forwarded (nor passed on untouched):
    Django's USE_X_FORWARDED_HOST=False keeps its meaning."""
    with serve(where_app) as srv:
        seen = ask(srv, "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n")
        host = ask(
            srv,
            "X-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 8443\r\n"
            "Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n",
        )
    assert seen["client"] == ["203.0.113.7", 0] and seen["scheme"] == "https"
    assert host["host"] == ["test"] and host["scheme"] == "http"
    assert host["client"][0] == "127.0.0.1"
    assert host["server"][0] == "127.0.0.1" and host["server"][1] != 8443


def test_forwarded_allow_ips_comes_from_the_environment(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$FORWARDED_ALLOW_IPS (uvicorn's variable) when the option is not given."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1")
    with serve(where_app) as srv:
        untrusted = ask(srv, "X-Forwarded-For: 203.0.113.7\r\n")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1, 127.0.0.1")
    with serve(where_app) as srv:
        trusted = ask(srv, "X-Forwarded-For: 203.0.113.7\r\n")
    with serve(where_app, forwarded_allow_ips=["10.0.0.2"]) as srv:  # a list, as uvicorn's
        listed = ask(srv, "X-Forwarded-For: 203.0.113.7\r\n")
    assert untrusted["client"][0] == "127.0.0.1"
    assert trusted["client"][0] == "203.0.113.7"
    assert listed["client"][0] == "127.0.0.1"


def test_the_environment_variables_of_the_command_line() -> None:
    """The option's own variables (FASTSERVE_, then UVICORN_) come before
    $FORWARDED_ALLOW_IPS, which comes before the loopback default."""
    cases = [
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1"}, "127.0.0.1"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.1", "UVICORN_FORWARDED_ALLOW_IPS": "*"}, "203.0.113.7"),
        (
            {"UVICORN_FORWARDED_ALLOW_IPS": "*", "FASTSERVE_FORWARDED_ALLOW_IPS": "10.0.0.1"},
            "127.0.0.1",
        ),
        ({}, "203.0.113.7"),
    ]
    for env, client in cases:
        cmd = fastserve_cmd("tests.test_proxy:where_app", "--port", "0", "--lifespan", "off")
        with ServerProcess(cmd, env=clean_env(**env)) as server:
            url = server.url()
            response = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10)
            server.stop()
        assert response.json()["client"][0] == client, env


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        ("X-Forwarded-Proto: https\r\n", "https"),
        # A list without a chain to align it with: not attributable to our proxy, ignored (as
        # uvicorn ignores any list): the connection's own scheme.
        ("X-Forwarded-Proto: https, http\r\n", "http"),
        ("X-Forwarded-Proto: http, https\r\n", "http"),
        ("X-Forwarded-Proto: http\r\nX-Forwarded-Proto: https\r\n", "http"),
        ("X-Forwarded-For: 198.51.100.2\r\nX-Forwarded-Proto: http, https\r\n", "http"),
        # One entry per hop: the one aligned with the client's, written by our proxy.
        ("X-Forwarded-For: 198.51.100.2, 127.0.0.1\r\nX-Forwarded-Proto: https, http\r\n", "https"),
        ("X-Forwarded-For: 6.6.6.6, 198.51.100.2\r\nX-Forwarded-Proto: https, http\r\n", "http"),
    ],
)
def test_which_x_forwarded_proto_counts(serve: Serve, headers: str, scheme: str) -> None:
    with serve(where_app) as srv:
        assert ask(srv, headers)["scheme"] == scheme


def test_http2_streams_get_the_proxy_headers(serve: Serve) -> None:
    """HTTP/2 requests are read through the same scope builder as HTTP/1.1 ones."""
    pytest.importorskip("zttp")
    from tests.test_http2 import H2Client

    with serve(where_app) as srv:
        client = H2Client(srv.port)
        headers = [("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https")]
        seen = json.loads(client.response(client.request("/", headers=headers))[1])
        client.close()
    with serve(where_app, forwarded_allow_ips="10.0.0.1") as srv:
        client = H2Client(srv.port)
        untrusted = json.loads(client.response(client.request("/", headers=headers))[1])
        client.close()
    assert seen["client"] == ["203.0.113.9", 0] and seen["scheme"] == "https"
    assert untrusted["client"][0] == "127.0.0.1" and untrusted["scheme"] == "http"


def test_the_asgi_middleware_for_apps_that_wrap_themselves(serve: Serve) -> None:
    """ProxyHeadersMiddleware, with uvicorn's name and arguments (app, trusted_hosts)."""
    app = ProxyHeadersMiddleware(where_app, trusted_hosts="127.0.0.1")
    with serve(app, proxy_headers=False) as srv:
        seen = ask(srv, "X-Forwarded-For: 203.0.113.8\r\nX-Forwarded-Proto: https\r\n")
    assert seen["client"] == ["203.0.113.8", 0] and seen["scheme"] == "https"


def test_headers_from_an_untrusted_peer_are_ignored(serve: Serve) -> None:
    with serve(where_app, proxy_headers=True, forwarded_allow_ips="10.0.0.1") as srv:
        seen = ask(
            srv,
            "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: evil.example\r\nForwarded: for=5.6.7.8;proto=https\r\n",
        )
    assert seen["client"][0] == "127.0.0.1"
    assert seen["scheme"] == "http" and seen["host"] == ["test"]


def test_x_forwarded_host_when_asked(serve: Serve) -> None:
    with serve(where_app, forwarded_host=True) as srv:  # loopback is trusted by default
        seen = ask(
            srv,
            "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: shop.example\r\nX-Forwarded-Port: 8443\r\n",
        )
    assert seen["client"] == ["203.0.113.7", 0]
    assert seen["scheme"] == "https"
    assert seen["host"] == ["shop.example"]
    assert seen["server"] == ["shop.example", 8443]


def test_the_chain_is_walked_from_the_right(serve: Serve) -> None:
    trusted = "127.0.0.1, 10.0.0.0/8"
    with serve(where_app, proxy_headers=True, forwarded_allow_ips=trusted) as srv:
        # The client forged the leftmost entry; our proxies appended the last two.
        spoofed = ask(srv, "X-Forwarded-For: 6.6.6.6, 198.51.100.2, 10.1.2.3\r\n")
        # Two headers are one list (RFC 9110 §5.3).
        split = ask(srv, "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 198.51.100.2\r\n")
        # Only our proxies in the chain: the leftmost is the best we know.
        internal = ask(srv, "X-Forwarded-For: 10.0.0.9, 10.0.0.8\r\n")
        # A proxy that appends the scheme too: the entry aligned with the client is used.
        aligned = ask(
            srv,
            "X-Forwarded-For: 198.51.100.2, 10.1.2.3\r\nX-Forwarded-Proto: https, http\r\n",
        )
    assert spoofed["client"][0] == "198.51.100.2"
    assert split["client"][0] == "198.51.100.2"
    assert internal["client"][0] == "10.0.0.9"
    assert aligned["client"][0] == "198.51.100.2" and aligned["scheme"] == "https"


def test_rfc7239_forwarded(serve: Serve) -> None:
    trusted = "127.0.0.1,192.0.2.43"
    options = {"forwarded_rfc7239": True, "forwarded_host": True}
    with serve(where_app, forwarded_allow_ips=trusted, **options) as srv:
        seen = ask(
            srv,
            'Forwarded: for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https;'
            "host=api.example, for=192.0.2.43\r\n",
        )
        broken = ask(srv, 'Forwarded: for="[2001:db8::1\r\n')
        obfuscated = ask(srv, "Forwarded: for=_hidden;proto=https\r\n")
    assert seen["client"] == ["2001:db8:cafe::17", 4711]
    assert seen["scheme"] == "https"
    assert seen["host"] == ["api.example"] and seen["server"] == ["api.example", 443]
    assert broken["client"][0] == "127.0.0.1"  # malformed: not trusted at all
    assert obfuscated["client"] == ["_hidden", 0] and obfuscated["scheme"] == "https"


def test_x_forwarded_for_wins_over_forwarded(serve: Serve) -> None:
    with serve(where_app, forwarded_rfc7239=True) as srv:
        seen = ask(srv, "Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 198.51.100.9\r\n")
    assert seen["client"][0] == "198.51.100.9"


def test_hostile_values_are_ignored(serve: Serve) -> None:
    with serve(where_app, forwarded_allow_ips="*", forwarded_host=True) as srv:
        seen = ask(
            srv,
            "X-Forwarded-Proto: javascript\r\nX-Forwarded-Host: a b/c\r\n"
            "X-Forwarded-Port: 99999\r\n",
        )
    assert seen["scheme"] == "http" and seen["host"] == ["test"]
    assert seen["server"][1] != 99999


def test_websocket_scheme_follows_x_forwarded_proto() -> None:
    import asyncio

    import websockets

    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scopes.append(scope)
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close"})

    with run_server(app, proxy_headers=True) as srv:

        async def connect() -> None:
            headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.3"}
            uri = f"ws://127.0.0.1:{srv.port}/"
            async with websockets.connect(uri, additional_headers=headers) as ws:
                await ws.wait_closed()

        asyncio.run(connect())
    assert scopes[0]["scheme"] == "wss" and scopes[0]["client"][0] == "198.51.100.3"


def test_unix_socket_peers_are_trusted_when_listed(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    for allow, expected in (("unix", "198.51.100.4"), ("127.0.0.1", None)):
        options = {"uds": path, "proxy_headers": True, "forwarded_allow_ips": allow}
        with run_server(where_app, **options), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            wire = Wire(sock)
            wire.send(request("/", "GET", "X-Forwarded-For: 198.51.100.4\r\n"))
            seen = json.loads(wire.response().body)
        client = seen["client"][0] if seen["client"] else None
        assert client == expected


def test_trusted_peers_unit() -> None:
    peers = TrustedPeers("10.0.0.0/8, 192.0.2.1, ::1, 2001:db8::/32")
    assert "10.200.3.4" in peers and "192.0.2.1" in peers and "192.0.2.2" not in peers
    assert "::1" in peers and "2001:db8::5" in peers and "2001:db9::5" not in peers
    assert "::ffff:10.1.1.1" in peers  # IPv4-mapped, as a dual-stack socket reports it
    assert "unknown" not in peers and None not in peers and "" not in peers
    assert None in TrustedPeers("unix") and "8.8.8.8" in TrustedPeers("*")
    with pytest.raises(ConfigError):
        TrustedPeers("10.0.0.0/33")
    with pytest.raises(ConfigError):
        TrustedPeers("localhost")


def test_parse_forwarded_unit() -> None:
    assert parse_forwarded('for="a,b";proto=http, FOR=c') == [
        {"for": "a,b", "proto": "http"},
        {"for": "c"},
    ]
    assert parse_forwarded('for="\\"x\\""') == [{"for": '"x"'}]
    assert parse_forwarded("for") == []
    assert parse_forwarded('for="unterminated') == []


# -- PROXY protocol ---------------------------------------------------------------------------

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_inet(src: str, dst: str, sport: int, dport: int, command: int = 1) -> bytes:
    block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2 + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(block)) + block


def v2_inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    block = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    block += struct.pack("!HH", sport, dport) + b"\x03\x00\x04abcd"  # plus a TLV, ignored
    return V2 + bytes([0x21, 0x21]) + struct.pack("!H", len(block)) + block


def proxied(srv: Any, header: bytes | list[bytes], requests: int = 1) -> list[dict[str, Any]]:
    with srv.connect() as sock:
        for part in [header] if isinstance(header, bytes) else header:
            sock.sendall(part)
        wire = Wire(sock)
        seen = []
        for _ in range(requests):
            wire.send(request("/"))
            seen.append(json.loads(wire.response().body))
    return seen


@pytest.mark.parametrize(
    ("header", "client", "server"),
    [
        (
            b"PROXY TCP4 198.51.100.1 203.0.113.9 56324 443\r\n",
            ["198.51.100.1", 56324],
            ["203.0.113.9", 443],
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n",
            ["2001:db8::1", 4000],
            ["2001:db8::2", 80],
        ),
        (
            v2_inet("198.51.100.2", "203.0.113.9", 1234, 443),
            ["198.51.100.2", 1234],
            ["203.0.113.9", 443],
        ),
        (v2_inet6("2001:db8::7", "2001:db8::8", 5, 6), ["2001:db8::7", 5], ["2001:db8::8", 6]),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-inet", "v2-inet6"],
)
def test_proxy_protocol_sets_the_addresses(
    serve: Serve, header: bytes, client: list[Any], server: list[Any]
) -> None:
    with serve(where_app, proxy_protocol=True) as srv:
        first, second = proxied(srv, header, requests=2)  # keep-alive keeps the addresses
    assert first["client"] == client and first["server"] == server
    assert second == first


def test_proxy_header_dribbled_byte_by_byte(serve: Serve) -> None:
    header = v2_inet("198.51.100.5", "203.0.113.9", 9, 443)
    with serve(where_app, proxy_protocol=True) as srv:
        (seen,) = proxied(srv, [bytes([b]) for b in header])
        (seen_v1,) = proxied(srv, [bytes([b]) for b in b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    assert seen["client"] == ["198.51.100.5", 9]
    assert seen_v1["client"] == ["1.2.3.4", 1]


def test_proxy_header_and_request_in_one_packet(serve: Serve) -> None:
    with serve(where_app, proxy_protocol=True) as srv, srv.connect() as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.6 203.0.113.9 7 443\r\n" + request("/"))
        seen = json.loads(Wire(sock).response().body)
    assert seen["client"] == ["198.51.100.6", 7]


def test_local_and_unknown_keep_the_real_peer(serve: Serve) -> None:
    with serve(where_app, proxy_protocol=True) as srv:
        (local,) = proxied(srv, v2_inet("0.0.0.0", "0.0.0.0", 0, 0, command=0))
        (unknown,) = proxied(srv, b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    assert local["client"][0] == "127.0.0.1"
    assert unknown["client"][0] == "127.0.0.1"


MALFORMED = {
    "no header from a trusted peer": request("/"),
    "bad address": b"PROXY TCP4 not-an-ip 192.168.0.11 56324 443\r\n" + request("/"),
    "bad port": b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n" + request("/"),
    "port out of range": b"PROXY TCP4 192.168.0.1 192.168.0.11 1 65536\r\n" + request("/"),
    "family mismatch": b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n" + request("/"),
    "truncated v1": b"PROXY TCP4 192.168.0.1 192.16...\r\n",
    "double space": b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + request("/"),
    "v1 line too long": b"PROXY TCP4 " + b"1" * 200 + b"\r\n",
    "v2 bad version": V2 + b"\x31\x11\x00\x0c" + b"\x00" * 12 + request("/"),
    "v2 datagram": V2 + b"\x21\x12\x00\x0c" + b"\x00" * 12 + request("/"),
    "v2 short address block": V2 + b"\x21\x11\x00\x04" + b"\x00" * 4 + request("/"),
    "v2 too long": V2 + b"\x21\x11\xff\xff" + b"\x00" * 5000,
}


# The header deadline is far beyond until_closed's timeout in the refusal tests: the close
# must come from the refusal itself, not from the deadline passing.
NO_DEADLINE = {"proxy_protocol": True, "timeout_request_header": 60}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_proxy_header_closes_the_connection(serve: Serve, case: str) -> None:
    with serve(where_app, **NO_DEADLINE) as srv, srv.connect() as sock:
        try:
            sock.sendall(MALFORMED[case])
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert until_closed(sock, timeout=10) == b""  # closed, and not a byte of HTTP


def test_untrusted_peers_may_not_send_a_header(serve: Serve) -> None:
    with serve(where_app, forwarded_allow_ips="10.0.0.1", **NO_DEADLINE) as srv:
        with srv.connect() as sock:
            sock.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + request("/"))
            assert until_closed(sock, timeout=10) == b""
        with srv.connect() as sock:
            sock.sendall(v2_inet("1.2.3.4", "5.6.7.8", 1, 2) + request("/"))
            assert until_closed(sock, timeout=10) == b""
        # Plain HTTP from an untrusted peer is served, with its real address, even when its
        # first bytes could have begun a header ("P" of POST; CRLF of the v2 signature).
        for first, rest, method in (
            (b"P", b"OST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "POST"),
            (b"\r\n", request("/"), "GET"),
        ):
            with srv.connect() as sock:
                sent_and_read(sock, first)  # the server reads the prefix on its own
                sock.sendall(rest)
                seen = json.loads(Wire(sock).response(method).body)
            assert seen["client"][0] == "127.0.0.1"


def test_proxy_header_must_arrive_in_time(serve: Serve) -> None:
    options = {"proxy_protocol": True, "timeout_request_header": 0.5}
    with serve(where_app, **options) as srv, srv.connect() as sock:
        sock.sendall(b"PROXY TCP4 1.2.3.4")
        started = time.monotonic()
        assert until_closed(sock, timeout=10) == b""
        assert time.monotonic() - started < 5  # the deadline, not the 10 s default


def test_proxy_protocol_with_tls_is_a_config_error(tmp_path: Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("localhost")
    certfile, keyfile = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    with (
        pytest.raises(ConfigError, match="proxy-protocol"),
        run_server(
            where_app, proxy_protocol=True, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)
        ),
    ):
        pass


def test_parse_header_unit() -> None:
    assert parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2") is None  # needs more
    assert parse_header(b"PRO") is None
    assert parse_header(V2[:5]) is None
    assert parse_header(v2_inet("1.2.3.4", "5.6.7.8", 1, 2)[:20]) is None
    parsed = parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET")
    assert parsed == (32, ("1.2.3.4", 1), ("5.6.7.8", 2))
    for bad in (b"GET / HTTP/1.1\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V2[:11] + b"X"):
        with pytest.raises(ProxyHeaderError):
            parse_header(bad)


def effect(proxy: ProxyHeaders, hop: dict[str, str] | None) -> dict[str, Any]:
    """The scope a hop makes of a plain request's."""
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"x")],
    }
    if hop:
        apply_hop(scope, hop, proxy.host)
    return scope


def test_the_single_proxy_shortcut_agrees_with_the_full_walk() -> None:
    """ProxyHeaders.single_hop (what one proxy sends, the common case) gives find_hop's
    answer wherever it answers, and leaves every other shape to find_hop."""
    fields = {
        "xff": [b"203.0.113.7", b" 198.51.100.2:4711 ", b"", b"6.6.6.6, 203.0.113.7", b"[::1]:80"],
        "xfp": [b"https", b"HTTP", b" wss ", b"", b"https, http"],
    }
    for host, rfc7239 in ((False, False), (True, True)):
        proxy = ProxyHeaders("127.0.0.1", forwarded_host=host, forwarded_rfc7239=rfc7239)
        answered = 0
        for xff in [None, *fields["xff"]]:
            for xfp in [None, *fields["xfp"]]:
                for extra in ([], [(b"x-forwarded-host", b"h")], [(b"forwarded", b"for=1.1.1.1")]):
                    headers = [(b"host", b"x"), *extra]
                    if xff is not None:
                        headers.append((b"x-forwarded-for", xff))
                    if xfp is not None:
                        headers.append((b"x-forwarded-proto", xfp))
                    quick = proxy.single_hop(headers)
                    if quick is not None:
                        answered += 1
                        full = proxy.find_hop(headers)
                        assert effect(proxy, quick) == effect(proxy, full), headers
        assert answered > 20
    # Two fields of one name, a list, or what the options make it read: the full walk.
    proxy = ProxyHeaders("127.0.0.1")
    assert proxy.single_hop([(b"x-forwarded-for", b"a"), (b"x-forwarded-for", b"b")]) is None
    assert proxy.single_hop([(b"x-forwarded-proto", b"https, http")]) is None
    assert ProxyHeaders("*", forwarded_host=True).single_hop([(b"x-forwarded-host", b"h")]) is None
