"""The RFC 9112 request rules of http1_rules.py, called directly.

The black-box tests (test_validation.py, test_limits.py) check that a bad request gets its
status over a socket; these pin each rule's edges and the reason text a client reads in the
body, which a mutation pass (docs/testing.md) showed the socket tests left free. The Host
check is called unremembered (`_check_host`): `check_host` answers from a cache of values
already found valid, which would hide a broken check behind an earlier request.
"""

from __future__ import annotations

import httptools
import pytest

from fastserve.protocols import http1_rules
from fastserve.protocols.http1_rules import (
    RejectRequest,
    _check_host,
    check_host,
    check_transfer_encoding,
    other_method,
    parser_reason,
    skipped_body_head,
    split_absolute_target,
)

HOST = "Invalid Host header"
TARGET = "Invalid request target"


def refused(call: object, *args: object) -> tuple[int, str]:
    """(status, reason) of the RejectRequest that `call(*args)` raises."""
    assert callable(call)
    with pytest.raises(RejectRequest) as info:
        call(*args)
    assert str(info.value) == info.value.reason  # the exception's message is the reason
    return info.value.status, info.value.reason


VALID_HOSTS = [
    b"example.com",
    b"example.com:8080",
    b"a:",  # port = *DIGIT: empty is allowed
    b"example.com \t",  # trailing OWS (llhttp strips only the leading)
    b"[::1]",
    b"[::1]:",
    b"[::1]:8",
    b"[::1]:8443",
    b"[2001:db8::ffff:192.0.2.1]",
    b"EXAMPLE.com",
]

INVALID_HOSTS = [
    b"a b",
    b"a,b",
    b"a:8o",
    b"a\x0b",  # a vertical tab is not OWS
    b"[::1]X ",  # garbage after the literal, hidden by trailing OWS
    b"[g::1]",
    b"[::1",
    b"[]",
    b"[1.2.3.4]",  # an IP-literal is IPv6 (or IPvFuture, which we do not take)
    b"[::1]8080",
    b"[::1]:8o",
    b"[::1]]",
    b"u@h",
]


@pytest.mark.parametrize("host", VALID_HOSTS)
def test_valid_hosts(host: bytes) -> None:
    _check_host(host)


@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_invalid_hosts(host: bytes) -> None:
    assert refused(_check_host, host) == (400, HOST)


def test_valid_hosts_are_remembered_up_to_a_bound() -> None:
    """The cache of valid values is bounded: Host values are the client's choice."""
    saved = dict(http1_rules._VALID_HOSTS)
    http1_rules._VALID_HOSTS.clear()
    try:
        for i in range(2000):
            check_host(b"h%d.example" % i)
        assert len(http1_rules._VALID_HOSTS) == 1024
        assert refused(check_host, b"a b") == (400, HOST)  # invalid ones never are
    finally:
        http1_rules._VALID_HOSTS.clear()
        http1_rules._VALID_HOSTS.update(saved)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (b"example.com:443", "CONNECT"),
        (b"[::1]:443", "CONNECT"),
    ],
)
def test_connect_takes_the_authority_form(url: bytes, expected: str) -> None:
    assert other_method(b"CONNECT", url) == expected


@pytest.mark.parametrize("url", [b"/", b"/a:b", b"*", b"*:1", b"example.com"])
def test_connect_without_host_and_port_is_400(url: bytes) -> None:
    assert refused(other_method, b"CONNECT", url) == (400, "CONNECT needs a host:port target")


def test_other_registered_methods_pass_through() -> None:
    assert other_method(b"PURGE", b"/") == "PURGE"
    assert other_method(b"PROPFIND", b"/a:b") == "PROPFIND"


@pytest.mark.parametrize(
    "te", [b"chunked", b"CHUNKED", b" chunked", b"gzip , chunked", b",chunked", b"\tchunked\t"]
)
def test_transfer_encoding_ending_in_chunked(te: bytes) -> None:
    if b"gzip" in te:
        assert refused(check_transfer_encoding, te, "1.1") == (
            501,
            "Transfer coding not implemented",
        )
    else:
        check_transfer_encoding(te, "1.1")


@pytest.mark.parametrize(
    "te", [b"gzip", b"chunked, chunked", b"chunked, gzip", b"\x0bchunked", b"chunkedX", b","]
)
def test_invalid_transfer_encoding(te: bytes) -> None:
    assert refused(check_transfer_encoding, te, "1.1") == (400, "Invalid Transfer-Encoding")


def test_transfer_encoding_in_http10() -> None:
    expected = (400, "Transfer-Encoding in an HTTP/1.0 request")
    assert refused(check_transfer_encoding, b"chunked", "1.0") == expected


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        (b"http://example.com/a/b?q=1", (b"example.com", b"/a/b", b"q=1")),
        (b"HTTPS://EXAMPLE.com:8443", (b"EXAMPLE.com:8443", b"/", b"")),
        (b"http://h?q", (b"h", b"/", b"q")),
        (b"http://h/p#frag", (b"h", b"/p", b"")),
        (b"http://h/p?a?b", (b"h", b"/p", b"a?b")),
        (b"http://h/b?c=http://x", (b"h", b"/b", b"c=http://x")),
        (b"http://[::1]:80/x", (b"[::1]:80", b"/x", b"")),
    ],
)
def test_absolute_targets(url: bytes, parts: tuple[bytes, bytes, bytes]) -> None:
    assert split_absolute_target(url) == parts


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (b"ftp://h/", TARGET),
        (b"h/", TARGET),
        (b"http:///x", TARGET),
        (b"http://?q", TARGET),
        (b"http://u@h/", TARGET),
        (b"http://a b/", HOST),
        (b"http://a/b/c d", None),  # (the path is llhttp's to check, not ours)
    ],
)
def test_invalid_absolute_targets(url: bytes, reason: str | None) -> None:
    if reason is None:
        assert split_absolute_target(url) == (b"a", b"/b/c d", b"")
    else:
        assert refused(split_absolute_target, url) == (400, reason)


def test_skipped_body_heads() -> None:
    chunked = [(b"transfer-encoding", b"chunked")]
    assert skipped_body_head(chunked, True) == (
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert skipped_body_head(chunked, False) == (
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert skipped_body_head([(b"content-length", b"1")], True) == (
        b"POST / HTTP/1.1\r\ncontent-length: 1\r\n\r\n"
    )
    assert skipped_body_head([(b"content-length", b"0")], True) is None
    assert skipped_body_head([(b"host", b"x")], False) is None


def test_parser_reasons_are_one_bounded_line() -> None:
    error = httptools.HttpParserError("bad\r\nthing " + "x" * 100)
    assert parser_reason(error) == "Invalid HTTP request: bad  thing " + "x" * 69  # 80 chars
    method = httptools.HttpParserInvalidMethodError("whatever")
    assert parser_reason(method) == "Invalid HTTP method"
