"""Replay the shared HTTP/1.1 request corpus (gunicorn's test requests) against fastserve.

Every `valid/` request must get only 2xx answers, every `invalid/` one a 4xx or a closed
connection, except where our verdict differs on purpose: those are listed in `DIFFERENCES`
with the exact verdict we give and why (RFC 9112 / RFC 9110), and docs/corpus-verdicts.md
explains them. A listed case whose verdict changes fails too, so the list stays true.

The corpus is data shared between projects (`../shared/corpus/http1-requests`, see its
README for the file encoding); the test is skipped when it is absent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.apps.core_apps import count_body
from tests.conftest import RunningServer, run_server
from tests.helpers import until_closed

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus" / "http1-requests"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

MISSING_HOST = "RFC 9112 §3.2: an HTTP/1.1 request without Host MUST get 400"
# Our verdict for each file that differs from the corpus, and why. A verdict is the status
# of each response in order, or "close" when the connection closed without one.
DIFFERENCES: dict[str, tuple[str, str]] = {
    # -- valid in the corpus, refused by us -----------------------------------------------------
    **{
        f"valid/{name}.http": ("400", MISSING_HOST)
        for name in [
            "004",
            "005",
            "006",
            "007",
            "010",
            "011",
            "012",
            "013",
            "014",
            "018",
            "021",
            "023",
            "025",
            "025_line",
            "029",
            "030",
            "100",
        ]
    },
    "valid/pp_02.http": ("400", MISSING_HOST),
    "valid/022.http": ("200,400", MISSING_HOST + " (the second, pipelined request)"),
    "valid/009.http": (
        "400",
        "RFC 9112 §6.3: Content-Length with Transfer-Encoding may be rejected; we do (smuggling)",
    ),
    "valid/024.http": ("431", "a 16 KiB header field: over --limit-request-field-size (8190)"),
    "valid/026.http": ("431", "an 8 KiB header field: over --limit-request-field-size (8190)"),
    "valid/027.http": ("400", "RFC 9112 §3.2/RFC 3986: raw non-ASCII bytes in the target"),
    "valid/028.http": ("400", "RFC 9112 §5.1: whitespace before the colon MUST get 400"),
    "valid/031.http": ("400", "llhttp only parses registered methods; `-BLARGH` is not one"),
    "valid/031compat.http": ("400", "llhttp only parses registered methods"),
    "valid/031compat2.http": ("400", "llhttp only parses registered methods"),
    "valid/099.http": ("408", "the file is truncated: Content-Length 17914, 8.7 KB of body"),
    "valid/compat_obs_fold.http": ("400", "RFC 9112 §5.2: obs-fold is rejected (or unfolded)"),
    "valid/compat_obs_fold_huge.http": ("400", "RFC 9112 §5.2: obs-fold is rejected"),
    "valid/rfc9112_smuggle_gzip_chunked_01.http": (
        "501",
        "RFC 9112 §6.1: a transfer coding we do not decode (gzip) gets 501",
    ),
    "valid/rfc9112_smuggle_te_identity_chunked_01.http": (
        "501",
        "RFC 9112 §6.1: `identity` is no transfer coding any more (RFC 7230 removed it): 501",
    ),
    "valid/rfc9112_target_absolute_userinfo_01.http": (
        "400",
        "RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error",
    ),
    # -- invalid in the corpus, answered by us ---------------------------------------------------
    "invalid/006.http": ("200", "a 4 KiB target: under our --limit-request-line (8190)"),
    "invalid/008.http": ("200", "fields of 8187 bytes: under our --limit-request-field-size"),
    "invalid/011.http": ("200", "RFC 3986 §3.2.2: `0.0.0.0=5000` is a valid reg-name host"),
    "invalid/012.http": ("200", "RFC 3986 §3.2.2: `0.0.0.0=5000` is a valid reg-name host"),
    "invalid/040.http": ("200", "RFC 9110 §5.1: `_` is a token character; names are opaque"),
    "invalid/041.http": ("200", "RFC 9110 §5.3: a repeated field is the app's to judge"),
    "invalid/limit_header_default_01.http": (
        "200",
        "name + value is 8188 bytes, under --limit-request-field-size (8190)",
    ),
    "invalid/version_02.http": ("505", "RFC 9110 §15.6.6: HTTP/2.0 in an HTTP/1 line gets 505"),
}


def decode(text: str) -> bytes:
    """The corpus encoding: real newlines dropped; \\r \\n \\t \\0 \\xHH are escapes."""
    text = text.replace("\n", "")
    out = bytearray()
    escapes = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0"}
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            kind = text[i + 1]
            if kind in escapes:
                out += escapes[kind]
                i += 2
                continue
            if kind == "x":
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
        out += text[i].encode("latin-1")
        i += 1
    return bytes(out)


def cases() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(
        f"{kind}/{path.name}"
        for kind in ("valid", "invalid")
        for path in (CORPUS / kind).glob("*.http")
    )


async def body_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    size = await count_body(receive)
    if size is None:
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % size})


# Short timeouts: requests are sent without a half-close, so the connection ends when the
# server closes it (keep-alive or head/body timeout), not when the client stops.
SHORT = {"timeout_keep_alive": 0.5, "timeout_request_header": 1.0, "timeout_request_body": 1.0}


def verdict(srv: RunningServer, data: bytes) -> str:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = until_closed(sock, timeout=10)
    return ",".join(statuses(raw)) or "close"


def statuses(raw: bytes) -> list[str]:
    """The status of each response in `raw` (our answers here all have a Content-Length)."""
    found = []
    pos = 0
    while raw.startswith(b"HTTP/1.1 ", pos) and (end := raw.find(b"\r\n\r\n", pos)) > 0:
        head = raw[pos:end]
        found.append(head[9:12].decode())
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            assert name.lower() != b"transfer-encoding", head
            if name.lower() == b"content-length":
                length = int(value)
        pos = end + 4 + length
    assert pos >= len(raw), f"unparsed bytes after the responses: {raw[pos:][:80]!r}"
    return found


@pytest.fixture(scope="module")
def verdicts() -> Iterator[dict[str, str]]:
    """Every file's verdict, from two servers (the PROXY files go to the one expecting a
    PROXY header), sent concurrently so the timeouts overlap."""
    datas = {case: decode((CORPUS / case).read_text("latin-1")) for case in cases()}
    with (
        run_server(body_app, **SHORT) as plain,
        run_server(body_app, proxy_protocol=True, **SHORT) as proxied,
    ):

        def one(case: str) -> tuple[str, str]:
            data = datas[case]
            srv = proxied if data.startswith((b"PROXY", V2_SIGNATURE)) else plain
            return case, verdict(srv, data)

        with ThreadPoolExecutor(max_workers=32) as pool:
            yield dict(pool.map(one, datas))


def test_the_differences_list_names_real_files() -> None:
    assert set(DIFFERENCES) <= set(cases())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", cases())
def test_corpus_request(verdicts: dict[str, str], case: str) -> None:
    got = verdicts[case]
    if case in DIFFERENCES:
        expected, why = DIFFERENCES[case]
        assert got == expected, f"{case}: listed as {expected} ({why}), got {got}"
    elif case.startswith("valid/"):
        statuses = got.split(",")
        assert got != "close" and all(s.startswith("2") for s in statuses), f"{case}: {got}"
    else:
        first = got.split(",")[0]
        assert got == "close" or first.startswith("4"), f"{case}: {got}"
