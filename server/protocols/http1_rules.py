"""What HTTP/1.1 allows in a request (RFC 9112), and how a refusal is worded.

The protocol (`http1.py`) calls these off the common path: a request with a plain
origin-form target and no Transfer-Encoding touches none of the functions here, only the
constant tables.
"""

from __future__ import annotations

from typing import Final

import httptools


class RejectRequest(Exception):
    """The client sent something we answer with a 4xx/5xx and a closed connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}


def other_method(method: bytes, url: bytes) -> str:
    """A method not in METHODS (llhttp has checked it is a registered one)."""
    if method == b"CONNECT" and (url[:1] in (b"/", b"*") or b":" not in url):
        # RFC 9112 §3.2.3: CONNECT takes the authority form, uri-host ":" port, only.
        raise RejectRequest(400, "CONNECT needs a host:port target")
    return method.decode("ascii")


WATCHED_REQUEST_HEADERS: Final = frozenset(
    [b"expect", b"host", b"upgrade", b"transfer-encoding", b"content-length"]
)
# Fields that must not come as trailers (RFC 9110 §6.5.1): they frame or route the request.
FRAMING_HEADERS: Final = frozenset([b"host", b"transfer-encoding", b"content-length"])


def check_transfer_encoding(te: bytes, http_version: str) -> None:
    """RFC 9112 §6.1/§6.3: only `chunked`, once and last, and only in HTTP/1.1."""
    if http_version == "1.0":
        # An HTTP/1.0 message with Transfer-Encoding has faulty framing (§6.1).
        raise RejectRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
    # Empty list elements are ignored (RFC 9110 §5.6.1.2): ", chunked" is "chunked". (A
    # trailing one, "chunked, ", never gets here: llhttp refuses it, and framing it as
    # chunked would need a leniency that also lets a non-final chunked through.)
    codings = [c for c in (c.strip(b" \t").lower() for c in te.split(b",")) if c]
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        raise RejectRequest(400, "Invalid Transfer-Encoding")
    if len(codings) > 1:
        # gzip, identity...: we would hand the app undecoded bytes (§6.1: 501).
        raise RejectRequest(501, "Transfer coding not implemented")


# RFC 3986 §3.2.2 reg-name characters: unreserved / pct-encoded ("%") / sub-delims, minus
# "," (Host is a single value, RFC 9112 §3.2: a comma is several Host values joined by a
# proxy, RFC 9110 §5.3). IPv4 addresses and IDNA names (xn--...) are made of these too.
REG_NAME: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+;="
# Inside an IP-literal's brackets: an IPv6 address, maybe with a dotted IPv4 tail.
IPV6_CHARS: Final = b"0123456789abcdefABCDEF:."


# Host values found valid: a server sees the same few over and over, and a dict hit costs
# ~0.1k instructions where the translate() below costs ~1.7k (it builds its table per call).
_VALID_HOSTS: Final[dict[bytes, bool]] = {}


def check_host(value: bytes) -> None:
    """Host = uri-host [ ":" port ] (RFC 9112 §3.2; RFC 3986 §3.2.2, §3.2.3); a server MUST
    answer 400 to an invalid one. Runs on every request: a remembered value costs a dict
    lookup; a new `name` or `name:port` one translate() and, with a port, one isdigit()."""
    if value in _VALID_HOSTS:
        return
    _check_host(value)
    if len(_VALID_HOSTS) < 1024:  # bounded: Host values are the client's choice
        _VALID_HOSTS[value] = True


def _check_host(value: bytes) -> None:
    rest = value.translate(None, REG_NAME)
    if not rest:
        return
    if rest == b":":
        port = value[value.find(b":") + 1 :]
        if not port or port.isdigit():  # port = *DIGIT: "a:" is allowed
            return
    stripped = value.rstrip(b" \t")  # trailing OWS (llhttp strips only the leading)
    if stripped != value:
        _check_host(stripped)
        return
    if value[:1] == b"[":
        end = value.find(b"]")
        inner, port = value[1:end], value[end + 1 :]
        if (
            end > 0
            and b":" in inner
            and not inner.translate(None, IPV6_CHARS)
            and (not port or (port[:1] == b":" and (len(port) == 1 or port[1:].isdigit())))
        ):
            return
    raise RejectRequest(400, "Invalid Host header")


def skipped_body_head(headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes | None:
    """For a request whose Upgrade is not performed: a stand-in head that frames its body
    as it was framed (Content-Length or chunked), or None when it has no body. llhttp has
    validated the framing fields by now (one Content-Length, not beside Transfer-Encoding;
    a Transfer-Encoding ending in chunked: check_transfer_encoding)."""
    close = b"" if keep_alive else b"connection: close\r\n"
    for name, value in headers:
        if name == b"transfer-encoding":
            return b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n" + close + b"\r\n"
        if name == b"content-length" and int(value) > 0:
            return b"POST / HTTP/1.1\r\ncontent-length: %d\r\n%b\r\n" % (int(value), close)
    return None


def split_absolute_target(url: bytes) -> tuple[bytes, bytes, bytes]:
    """An absolute-form target (RFC 9112 §3.2.2) as (authority, raw_path, query)."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise RejectRequest(400, "Invalid request target")
    end = len(rest)
    for mark in b"/?#":
        at = rest.find(mark)
        if 0 <= at < end:
            end = at
    authority, target = rest[:end], rest[end:]
    if not authority or b"@" in authority:
        # RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error.
        raise RejectRequest(400, "Invalid request target")
    check_host(authority)  # it replaces the Host header (RFC 9112 §3.2.2)
    target = target.partition(b"#")[0]
    raw_path, _, query = target.partition(b"?")
    return authority, raw_path or b"/", query


def parser_reason(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return "Invalid HTTP method"
    return "Invalid HTTP request: " + text[:80].replace("\r", " ").replace("\n", " ")
