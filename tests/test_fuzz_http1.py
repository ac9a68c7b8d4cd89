"""Mutation fuzzing of HTTP/1.1 (issue 11): seeded, bounded, replayable, on both loops.

A case is one connection: 1-4 requests drawn from `SEEDS`, each sent as is, randomly mutated
(`MUTATIONS`) or given one targeted edit whose answer is known (`VERDICTS`: an invalid Host
must get 400, `gzip, chunked` 501...), pipelined, written at once or split at random points.
The client then reads until the server closes (a valid `Connection: close` request ends the
pipeline, so a healthy server closes at once) or leaves right after writing. Checked for
every case:

(a) what comes back parses as complete HTTP/1.1 responses (h11 is the parser), and each
    request before the first randomly mutated one gets its own answer, in order, the one it
    must get; a pipeline of such requests gets no answer it did not ask for (smuggling);
(b) no answer is a 500: bad input is the client's fault (4xx, 501, 505) or a plain close;
(c) the server closes by itself within `READ_DEADLINE` (its own timeouts are 1 s): a read
    that times out is reported as a timeout, never taken for a close;
(d) once the client has gone, the server drops the connection within `RELEASE_DEADLINE`.
At the end: nothing logged at ERROR or with a traceback ("fastserve.error" and "asyncio",
unretrieved task exceptions included), every connection and file descriptor released, and a
fresh request still served.

Case `i` depends only on the seed, `i` and the variant (`VARIANTS`), so `FASTSERVE_FUZZ_ONLY=i`
replays it; a failure prints the seed, the index and every write byte for byte. Longer
campaigns: docs/fuzzing.md.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest

from fastserve import Server
from tests.apps.core_apps import Receive, Scope, Send, count_body
from tests.conftest import RunningServer
from tests.helpers import Serve, assert_serving, error_log

SEED = os.environ.get("FASTSERVE_FUZZ_SEED", "11")
# Connections per loop ("full_close"; the other variants run a quarter of that). Each carries
# 1-4 requests plus the closing one: 3 000 connections are ~10 000 requests, ~2 900 of them
# mutated and ~750 with a targeted edit; ~4 s a loop on 2 cores when nothing fails.
COUNT = int(os.environ.get("FASTSERVE_FUZZ_COUNT", "3000"))
ONLY = [int(i) for i in os.environ.get("FASTSERVE_FUZZ_ONLY", "").split(",") if i.strip()]
WORKERS = 16  # connections in flight: most of a case's time is spent waiting on the server
# Then no new case starts: a broken build fails in seconds, not minutes.
MAX_FAILURES = int(os.environ.get("FASTSERVE_FUZZ_MAX_FAILURES", "12"))
# The server's timeouts are short (below) so every connection ends by itself within a second
# or two; the client's deadlines are well above them: missing one is a bug, not a slow run.
SERVER_OPTIONS = {
    "timeout_keep_alive": 0.5,
    "timeout_request_header": 1.0,
    "timeout_request_body": 1.0,
    # A connection stuck for good (a bug this test reports) must not hang the server's stop.
    "timeout_graceful_shutdown": 2.0,
}
READ_DEADLINE = 5.0  # from the last write to the server's close
RELEASE_DEADLINE = 5.0  # from the client's close to the server dropping the connection

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "http1-requests"

# -- seeds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """A request and what the server must answer to it: `statuses`, and for a 200 the apps'
    echo of `target` (method and raw path) and `size` (the body's length). `known` is False
    for corpus files (no expectation); `verdict` names a targeted edit (see VERDICTS)."""

    data: bytes
    target: bytes = b""
    size: int | None = 0
    statuses: tuple[int, ...] = (200,)
    known: bool = True
    verdict: str = ""


def _seed(
    head: str,
    body: bytes = b"",
    target: str = "",
    size: int | None = None,
    statuses: tuple[int, ...] = (200,),
) -> Seed:
    """`head` with LF line ends; `size` is the decoded body's (when chunked)."""
    data = head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body
    if not target:
        method, path = head.split(" ", 2)[:2]
        target = f"{method} {path.partition('?')[0]}"
    return Seed(data, target.encode("latin-1"), len(body) if size is None else size, statuses)


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
CHUNKED = (
    b'5;name=value\r\nhello\r\n6;q="a b"\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Sum: 21\r\n\r\n'
)
SEEDS: list[Seed] = [
    _seed("GET / HTTP/1.1\nHost: t\n"),
    _seed("HEAD /index.html HTTP/1.1\nHost: t\nAccept: */*\n"),
    _seed(
        "POST /upload HTTP/1.1\nHost: t\nContent-Type: text/plain\nContent-Length: 11\n",
        b"hello world",
    ),
    _seed(
        "POST /chunked HTTP/1.1\nHost: t\nTransfer-Encoding: chunked\nTrailer: X-Sum\n",
        CHUNKED,
        size=21,
    ),
    _seed("PUT /expect HTTP/1.1\nHost: t\nExpect: 100-continue\nContent-Length: 4\n", b"body"),
    _seed("GET http://t/absolute?x=1 HTTP/1.1\nHost: t\n", target="GET /absolute"),
    _seed("OPTIONS * HTTP/1.1\nHost: t\n"),
    _seed("GET /old?v=1.0 HTTP/1.0\nConnection: keep-alive\n"),
    _seed("POST /old HTTP/1.0\nConnection: keep-alive\nContent-Length: 3\n", b"abc"),
    _seed(
        "POST /h2c HTTP/1.1\nHost: t\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\n"
        f"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\nContent-Length: {len(SMUGGLED)}\n",
        SMUGGLED,
    ),
    _seed(
        "POST /foo HTTP/1.1\nHost: t\nConnection: upgrade\nUpgrade: foo\nContent-Length: 5\n",
        b"hello",
    ),
    _seed(
        "GET /ws HTTP/1.1\nHost: t\nUpgrade: websocket\nConnection: Upgrade\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n",
        # Both apps close the WebSocket before accepting it: 403. Behind a request still
        # being answered, the upgrade is refused with 400 (websocket.py: clients never do it).
        statuses=(403, 400),
    ),
    _seed("GET /bye HTTP/1.1\nHost: t\nConnection: close\n"),
    # No tunnel: the app answers and the connection closes (http1.py, other_target).
    _seed("CONNECT t:443 HTTP/1.1\nHost: t:443\n", target="CONNECT t:443"),
    _seed("GET /a%20b/%C3%A9/x%2Fy?q=%2F&r=a+b HTTP/1.1\nHost: t\n"),
    _seed(
        "GET /search?q=fuzz&page=2&empty=&flag HTTP/1.1\nHost: t:8000\nUser-Agent: fuzz/1.0\n"
        "Accept-Encoding: gzip, deflate\nCookie: a=1; b=2\nX-Empty:\n"
    ),
    _seed("DELETE /item/7 HTTP/1.1\nHost: t\nContent-Length: 0\n"),
    _seed(
        "PATCH /item/7 HTTP/1.1\nHost: t\nTransfer-Encoding: chunked\n",
        b"1F\r\n" + b"x" * 31 + b"\r\n0\r\n\r\n",
        size=31,
    ),
]
# Ends every pipeline the client reads to the end: a healthy server answers it and closes.
LAST = _seed("GET /last HTTP/1.1\nHost: t\nConnection: close\n")


def corpus_seeds() -> list[Seed]:
    """The shared corpus's valid requests, as mutation material only (no expectations: some
    hold two requests, some are refused on purpose, see test_corpus.py). PROXY ones are left
    out: this server does not expect the PROXY header."""
    if not CORPUS.is_dir():
        return []
    from tests.test_corpus import decode

    paths = sorted((CORPUS / "valid").glob("*.http"))
    return [Seed(decode(p.read_text("latin-1")), known=False) for p in paths if "pp_" not in p.name]


CORPUS_SEEDS = corpus_seeds()

# -- mutations --------------------------------------------------------------------------------

SPECIAL = b' \t\r\n\0\x0b\x7f\xff:;,/%#?@"\\()<>'
TOKENS = [b" ", b"\t", b"\0", b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b":", b"%", b"%zz",
          b"#", b"\r\n\r\n", b"0\r\n\r\n", b"\xff", b"\x7f", b"HTTP/1.1", b"Host: t\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n",
          b"Connection: close\r\n"]  # fmt: skip
LENGTHS = [b"0", b"1", b"-1", b"+5", b" 5", b"5 5", b"5,5", b"0x5", b"", b"99999999999999999999",
           b"18446744073709551616", b"4294967296", b"1e3"]  # fmt: skip
CHUNK_SIZES = [b"zz", b"0x10", b"-1", b" 5", b"5 ", b"fffffffffffffffff", b"1" * 40, b"", b"5;",
               b"5\x00", b"0"]  # fmt: skip
HEADER_VALUES = {
    b"host": [b"", b"a b", b"[::1", b"x:99999", b"a/b", b"@", b"x\x01y", b"t, u", b"t#"],
    b"transfer-encoding": [b",chunked", b"chunked, chunked", b"gzip, chunked", b"chunked, gzip",
                           b"identity", b" chunked", b"chunked\x0b", b"CHUNKED", b"chunk"],
    b"content-length": LENGTHS,
    b"connection": [b"close", b"keep-alive", b"upgrade", b"close, upgrade", b""],
    b"upgrade": [b"websocket", b"h2c", b"foo", b"", b"WebSocket, foo"],
    b"expect": [b"100-continue", b"100-Continue", b"200-ok", b""],
}  # fmt: skip
VERSIONS = [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"", b"HTTP/1",
            b"HTTP/11", b"HTTP/1.1\x00"]  # fmt: skip
METHODS = [b"GE T", b"get", b"CONNECT", b"PRI", b"XYZ", b"", b"GET GET", b"TRACE", b"P\x00ST"]
TARGETS = [b"/#frag", b"/a b", b"/%zz", b"/\x7f", b"/" + b"a" * 9000, b"//x", b"/../../etc",
           b"http://", b"*", b"t:80", b"http://u@t/", b"/\xc3\xa9", b"", b"/?#"]  # fmt: skip


def _split_head(data: bytes) -> tuple[list[bytes], bytes] | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    return data[:end].split(b"\r\n"), data[end + 4 :]


def _join_head(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _header_value(data: bytes, name: bytes, value: bytes) -> bytes | None:
    """`data` with the (first) `name` field set to `value`, added if absent."""
    parts = _split_head(data)
    if parts is None:
        return None
    lines, body = parts
    for k, line in enumerate(lines[1:], 1):
        if line.lower().startswith(name + b":"):
            lines[k] = line[: len(name) + 1] + b" " + value
            return _join_head(lines, body)
    return _join_head([*lines, name.title() + b": " + value], body)


def flip(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def special_byte(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.choice(SPECIAL)]) + data[i + 1 :]


def insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice(TOKENS) + data[i:]


def delete(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def duplicate(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    piece = data[i : i + rng.randint(1, 40)]
    j = rng.randrange(len(data) + 1)
    return data[:j] + piece * rng.randint(1, 3) + data[j:]


def line_endings(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return data.replace(b"\r\n", b"\n")
    spots = [m.start() for m in re.finditer(b"\r\n", data)] or [0]
    i = rng.choice(spots)
    new = [b"\n", b"\r", b"\n\r", b"\r\r\n"][kind]
    return data[:i] + new + data[i + 2 :]


def splice(rng: random.Random, data: bytes) -> bytes:
    other = rng.choice(SEEDS).data
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def header_value(rng: random.Random, data: bytes) -> bytes:
    """A framing or routing field gets a suspicious value (added if the request has none)."""
    name = rng.choice(list(HEADER_VALUES))
    return _header_value(data, name, rng.choice(HEADER_VALUES[name])) or flip(rng, data)


def duplicate_header(rng: random.Random, data: bytes) -> bytes:
    parts = _split_head(data)
    if parts is None or len(parts[0]) < 2:
        return duplicate(rng, data)
    lines, body = parts
    k = rng.randrange(1, len(lines))
    lines.insert(rng.randint(1, len(lines)), lines[k])
    return _join_head(lines, body)


def whitespace(rng: random.Random, data: bytes) -> bytes:
    """Blanks and controls where the grammar has none: before the colon, in a name, as
    obs-fold (a line starting with a blank), inside the request line."""
    parts = _split_head(data)
    if parts is None:
        return insert(rng, data)
    lines, body = parts
    k = rng.randrange(len(lines))
    line = lines[k]
    blank = rng.choice([b" ", b"\t", b"\0", b"\x0b", b"\x0c", b"\r"])
    colon = line.find(b":")
    kind = rng.randrange(3)
    if kind == 0 and k > 0 and colon > 0:
        line = line[:colon] + blank + line[colon:]
    elif kind == 1:
        lines.insert(k + 1, rng.choice([b" ", b"\t"]) + b"folded" + blank + b"value")
    else:
        i = rng.randrange(len(line) + 1)
        line = line[:i] + blank + line[i:]
    lines[k] = line
    return _join_head(lines, body)


def request_line(rng: random.Random, data: bytes) -> bytes:
    end = data.find(b"\r\n")
    end = end if end >= 0 else len(data)
    words = data[:end].split(b" ")
    if len(words) != 3:
        return flip(rng, data)
    which = rng.randrange(3)
    words[which] = rng.choice([METHODS, TARGETS, VERSIONS][which])
    if which == 1 and rng.random() < 0.5:
        words[1] = b"/p" + words[1]  # the bad part after a good start
    return b" ".join(words) + data[end:]


def content_length(rng: random.Random, data: bytes) -> bytes:
    found = re.search(rb"(?i)content-length:[ \t]*([0-9]*)", data)
    if found is None:
        return header_value(rng, data)
    size = int(found.group(1) or 0)
    value = rng.choice([b"%d" % (size + 1), b"%d" % max(size - 1, 0), b"%d" % (size * 1000)])
    if rng.random() < 0.5:
        value = rng.choice(LENGTHS)
    return data[: found.start(1)] + value + data[found.end(1) :]


def chunk_size(rng: random.Random, data: bytes) -> bytes:
    parts = _split_head(data)
    if parts is None or b"chunked" not in data[: data.find(b"\r\n\r\n")].lower():
        return header_value(rng, data)
    head_end = data.find(b"\r\n\r\n") + 4
    sizes = list(re.finditer(rb"(?:^|\r\n)([0-9a-fA-F]+)(?=[;\r])", data[head_end:]))
    if not sizes:
        return truncate(rng, data)
    found = rng.choice(sizes)
    size = int(found.group(1), 16)
    value = rng.choice([b"%x" % (size + 1), b"%x" % max(size - 1, 0), *CHUNK_SIZES])
    start, end = head_end + found.start(1), head_end + found.end(1)
    return data[:start] + value + data[end:]


Mutation = Callable[[random.Random, bytes], bytes]
MUTATIONS: list[tuple[Mutation, int]] = [
    (flip, 3), (special_byte, 3), (insert, 3), (delete, 2), (duplicate, 2), (line_endings, 2),
    (splice, 2), (truncate, 1), (header_value, 4), (duplicate_header, 2), (whitespace, 3),
    (request_line, 3), (content_length, 3), (chunk_size, 3),
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    ops, weights = zip(*MUTATIONS, strict=True)
    for op in rng.choices(ops, weights, k=rng.choice([1, 1, 1, 2, 3])):
        data = op(rng, data) if data else rng.choice(TOKENS)
    return data


# -- targeted edits with a known verdict ------------------------------------------------------
# Random mutations can only be held to "no 500, no hang"; these single edits must get exactly
# the answer the RFC (or docs/corpus-verdicts.md, for our documented choices) gives them.

BAD_HOSTS = [b"a b", b"t#", b"[::1", b"x\x01y", b"a/b", b"u@t", b"t\\u", b"t:8o"]


def _target(data: bytes, new: Callable[[bytes], bytes]) -> bytes:
    """`data` with its request target replaced by `new(target)`."""
    end = data.index(b"\r\n")
    method, target, version = data[:end].split(b" ")
    return b" ".join([method, new(target), version]) + data[end:]


def _version(data: bytes, version: bytes | None) -> bytes:
    end = data.index(b"\r\n")
    words = data[:end].split(b" ")[:2]
    return b" ".join(words + ([version] if version is not None else [])) + data[end:]


def _chunked(data: bytes, new: bytes) -> bytes | None:
    """`data`'s `Transfer-Encoding: chunked` value replaced (None: not chunked)."""
    old = b"Transfer-Encoding: chunked"
    return data.replace(old, new, 1) if old in data else None


def bad_host(rng: random.Random, data: bytes) -> bytes | None:
    return _header_value(data, b"host", rng.choice(BAD_HOSTS))


def fragment(rng: random.Random, data: bytes) -> bytes | None:
    return _target(data, lambda target: target + b"#frag")


def no_version(rng: random.Random, data: bytes) -> bytes | None:
    return _version(data, None)


def http2(rng: random.Random, data: bytes) -> bytes | None:
    return _version(data, b"HTTP/2.0")


def space_before_colon(rng: random.Random, data: bytes) -> bytes | None:
    return data.replace(b"\r\nHost:", b"\r\nHost :", 1) if b"\r\nHost:" in data else None


def obs_fold(rng: random.Random, data: bytes) -> bytes | None:
    return _header_value(data, b"x-folded", b"a\r\n b")


def no_host(rng: random.Random, data: bytes) -> bytes | None:
    if not data.startswith(b"HTTP/1.1\r\n", data.index(b"\r\n") - 8):
        return None  # HTTP/1.0 needs none
    return re.sub(rb"\r\nHost: [^\r]*", b"", data, count=1)


def two_hosts(rng: random.Random, data: bytes) -> bytes | None:
    if b"\r\nHost: " not in data:
        return None
    return _header_value(data, b"x-before", b"1\r\nHost: t2")


def length_and_chunked(rng: random.Random, data: bytes) -> bytes | None:
    return _chunked(data, b"Transfer-Encoding: chunked\r\nContent-Length: 3")


def two_lengths(rng: random.Random, data: bytes) -> bytes | None:
    found = re.search(rb"Content-Length: ([0-9]+)", data)
    if found is None:
        return None
    both = b"%s\r\nContent-Length: %d" % (found.group(0), int(found.group(1)) + 1)
    return data.replace(found.group(0), both, 1)


def chunk_not_hex(rng: random.Random, data: bytes) -> bytes | None:
    if b"Transfer-Encoding: chunked" not in data:
        return None
    return re.sub(rb"\r\n\r\n[0-9a-fA-F]+", b"\r\n\r\nzz", data, count=1)


def chunked_in_http10(rng: random.Random, data: bytes) -> bytes | None:
    return _version(data, b"HTTP/1.0") if b"Transfer-Encoding: chunked" in data else None


def chunked_not_last(rng: random.Random, data: bytes) -> bytes | None:
    return _chunked(data, b"Transfer-Encoding: chunked, gzip")


def gzip_chunked(rng: random.Random, data: bytes) -> bytes | None:
    return _chunked(data, b"Transfer-Encoding: gzip, chunked")


def empty_list_element(rng: random.Random, data: bytes) -> bytes | None:
    # RFC 9110 §5.6.1: a recipient MUST accept (and ignore) empty list elements.
    return _chunked(
        data, rng.choice([b"Transfer-Encoding: ,chunked", b"Transfer-Encoding: , chunked"])
    )


def long_target(rng: random.Random, data: bytes) -> bytes | None:
    return _target(data, lambda target: b"/" + b"a" * 8200)  # --limit-request-line: 8190


def long_field(rng: random.Random, data: bytes) -> bytes | None:
    return _header_value(data, b"x-big", b"b" * 8200)  # --limit-request-field-size: 8190


def many_fields(rng: random.Random, data: bytes) -> bytes | None:
    fields = b"\r\n".join(b"X-%d: %d" % (n, n) for n in range(1, 101))
    return _header_value(data, b"x-0", b"0\r\n" + fields)  # --limit-request-fields: 100


# An edit and the statuses it must get (None: the same answer as the unedited request).
VERDICTS: list[tuple[Callable[[random.Random, bytes], bytes | None], tuple[int, ...] | None]] = [
    (bad_host, (400,)),  # RFC 9110 §7.2 / RFC 3986 §3.2.2
    (fragment, (400,)),  # RFC 9112 §3.2: no request-target form has a fragment
    (no_version, (400,)),  # not an HTTP/1.x request line (an HTTP/0.9 one)
    (http2, (505,)),  # docs/corpus-verdicts.md (invalid/version_02)
    (space_before_colon, (400,)),  # RFC 9112 §5.1: MUST reject with 400
    (obs_fold, (400,)),  # RFC 9112 §5.2: reject or unfold; we reject
    (no_host, (400,)),  # RFC 9112 §3.2: MUST respond with 400
    (two_hosts, (400,)),  # RFC 9112 §3.2: MUST respond with 400
    (length_and_chunked, (400,)),  # docs/corpus-verdicts.md (valid/009)
    (two_lengths, (400,)),  # RFC 9112 §6.3: unrecoverable error
    (chunk_not_hex, (400,)),  # RFC 9112 §7.1
    (chunked_in_http10, (400,)),  # RFC 9112 §6.1, docs/corpus-verdicts.md
    (chunked_not_last, (400,)),  # RFC 9112 §6.3: MUST respond with 400
    (gzip_chunked, (501,)),  # RFC 9112 §6.1, docs/corpus-verdicts.md
    (empty_list_element, None),
    (long_target, (414,)),
    (long_field, (431,)),
    (many_fields, (431,)),
]


def targeted(rng: random.Random, seed: Seed) -> Seed | None:
    """`seed` with one of VERDICTS' edits, as a Seed that says what it must get (None when
    the edit does not apply to this seed)."""
    edit, statuses = rng.choice(VERDICTS)
    data = edit(rng, seed.data)
    if data is None or data == seed.data:
        return None
    if statuses is None:
        return Seed(data, seed.target, seed.size, seed.statuses, verdict=edit.__name__)
    return Seed(data, seed.target, None, statuses, verdict=f"{edit.__name__}: {statuses[0]}")


# -- cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    app: str  # "read" (reads the body first) or "skip" (answers without reading it)
    # Each request's bytes, and what they must get (None: a random mutation, anything goes).
    requests: list[tuple[Seed | None, bytes]]
    writes: list[bytes]  # the pipeline as written, one sendall each
    leave: bool  # close right after writing instead of reading the answers
    variant: str  # a key of VARIANTS

    def known_prefix(self) -> list[Seed]:
        """The requests whose answer is known, up to the first randomly mutated one."""
        prefix = []
        for seed, _ in self.requests:
            if seed is None or not seed.known:
                break
            prefix.append(seed)
        return prefix

    @property
    def all_known(self) -> bool:
        return len(self.known_prefix()) == len(self.requests)


# name: (share of COUNT, what differs). "half_closed" replays the "full_close" cases (same
# indices, same bytes) with a client that half-closes: a server mishandling the half-close
# fails under its own test id. "corpus" draws from the shared corpus too (its own cases, so
# that the others are the same bytes whether or not the corpus is there).
VARIANTS = {
    "full_close": (1.0, "the client reads until the server closes, then closes"),
    "half_closed": (0.25, "the client half-closes (SHUT_WR) after writing, then reads"),
    "corpus": (0.25, "as full_close, seeds from ../shared/corpus/http1-requests/valid too"),
}


def make_case(seed: str, index: int, variant: str = "full_close") -> Case:
    corpus = variant == "corpus"
    rng = random.Random(f"{seed}:corpus:{index}" if corpus else f"{seed}:{index}")
    pool = SEEDS + CORPUS_SEEDS if corpus else SEEDS
    requests: list[tuple[Seed | None, bytes]] = []
    for _ in range(rng.randint(1, 4)):
        base = rng.choice(pool)
        roll = rng.random()
        if roll < 0.4:
            requests.append((None, mutate(rng, base.data)))
        elif roll < 0.55 and base.known and (edited := targeted(rng, base)) is not None:
            requests.append((edited, edited.data))
        else:
            requests.append((base, base.data))
    leave = rng.random() < 0.15
    if not leave:
        requests.append((LAST, LAST.data))
    payload = b"".join(data for _, data in requests)
    writes = [payload]
    if rng.random() < 0.4 and len(payload) > 1:
        cuts = sorted(rng.sample(range(1, len(payload)), min(rng.randint(1, 4), len(payload) - 1)))
        writes = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    return Case(index, rng.choice(["read", "skip"]), requests, writes, leave, variant)


# -- the apps ---------------------------------------------------------------------------------


async def read_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers "METHOD /path SIZE" (odd sizes as two body messages:
    chunked for HTTP/1.1, close-delimited for 1.0)."""
    if scope["type"] == "websocket":
        await deny_websocket(receive, send)
    elif scope["type"] == "http":
        size = await count_body(receive)
        if size is not None:
            await answer(scope, send, b"%d" % size, split=size % 2 == 1)


async def skip_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers "METHOD /path -" at once, never reading the body."""
    if scope["type"] == "websocket":
        await deny_websocket(receive, send)
    elif scope["type"] == "http":
        await answer(scope, send, b"-", split=False)


async def deny_websocket(receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})  # before accept: the server answers 403


async def answer(scope: Scope, send: Send, tail: bytes, split: bool) -> None:
    body = scope["method"].encode("latin-1") + b" " + scope["raw_path"] + b" " + tail
    # Marks the answers to HEAD (their head announces a body that is not sent) for the parser.
    headers = [(b"x-head", b"1")] if scope["method"] == "HEAD" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if split:
        await send({"type": "http.response.body", "body": body[:1], "more_body": True})
        body = body[1:]
    await send({"type": "http.response.body", "body": body})


APPS = {"read": read_app, "skip": skip_app}

# -- the client side --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def closes(self) -> bool:
        return any(n == b"connection" and b"close" in v.lower() for n, v in self.headers)


def parse_replies(raw: bytes) -> tuple[list[Reply], str | None]:
    """Every response in `raw` (the server has closed after it), parsed by h11; and what is
    wrong with the bytes, if anything is (a truncated or malformed response, trailing bytes)."""
    replies: list[Reply] = []
    rest = raw
    while rest and not _interim_only(rest):
        conn = h11.Connection(h11.CLIENT)
        method = "HEAD" if _answers_head(rest) else "GET"
        conn.send(h11.Request(method=method, target="/", headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(rest)
        conn.receive_data(b"")  # what is in `rest` is all there is
        try:
            reply = _next_reply(conn)
        except h11.RemoteProtocolError as exc:
            return replies, f"answer #{len(replies) + 1} does not parse: {exc}"
        replies.append(reply)
        rest = conn.trailing_data[0]
        if rest and reply.closes:
            return replies, f"bytes after a `connection: close` answer: {rest[:200]!r}"
    return replies, None


def _interim_only(data: bytes) -> bool:
    """Only interim (1xx) responses: a request whose body never came after 100 Continue
    (the client half-closed) may end with a plain close."""
    pos = 0
    while data.startswith(b"HTTP/1.1 1", pos) and (end := data.find(b"\r\n\r\n", pos)) > 0:
        pos = end + 4
    return pos == len(data)


def _answers_head(data: bytes) -> bool:
    """Whether the first final response in `data` is marked as an answer to HEAD."""
    pos = 0
    while data.startswith(b"HTTP/1.1 1", pos) and (end := data.find(b"\r\n\r\n", pos)) > 0:
        pos = end + 4  # an interim response (100 Continue)
    head = data[pos : data.find(b"\r\n\r\n", pos) + 2]
    return b"\r\nx-head: 1\r\n" in head


def _next_reply(conn: h11.Connection) -> Reply:
    head: h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return Reply(head.status_code, list(head.headers), bytes(body))
        elif not isinstance(event, h11.InformationalResponse):
            raise h11.RemoteProtocolError(f"unexpected {event!r}")


@dataclass
class Outcome:
    case: Case
    port: int = 0
    raw: bytes = b""
    ended: str = ""  # "close", "reset", "timeout" or "left" (the client left first)
    problems: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


def run_case(case: Case, servers: dict[str, RunningServer]) -> Outcome:
    outcome = Outcome(case, started=time.time())
    srv = servers[case.app]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=READ_DEADLINE) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        outcome.port = sock.getsockname()[1]
        write_all(sock, case.writes)
        if case.variant == "half_closed" and not case.leave:
            shut_write(sock)
        if case.leave:
            outcome.ended = "left"
        else:
            outcome.raw, outcome.ended = read_until_closed(sock)
    if outcome.ended == "timeout":
        outcome.problems.append(f"the server neither closed nor answered in {READ_DEADLINE} s")
    elif not case.leave:
        outcome.problems += check_replies(case, outcome.raw, outcome.ended)
    if not released(srv.server, outcome.port):
        outcome.problems.append(
            f"the server still holds the connection {RELEASE_DEADLINE} s after the client left"
        )
    outcome.finished = time.time()
    return outcome


def write_all(sock: socket.socket, writes: list[bytes]) -> None:
    for k, part in enumerate(writes):
        if k:
            # Not a wait for a condition: a gap so the pieces arrive as separate reads.
            time.sleep(0.001)
        try:
            sock.sendall(part)
        except OSError:  # the server refused and closed: what it answered is still readable
            return


def shut_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the server has closed already
        pass


def read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server sends until it closes: ("close" or "reset"), or "timeout" once
    READ_DEADLINE passes without a close."""
    deadline = time.monotonic() + READ_DEADLINE
    received = bytearray()
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(received), "reset"
        if not data:
            return bytes(received), "close"
        received += data
    return bytes(received), "timeout"


def check_replies(case: Case, raw: bytes, ended: str) -> list[str]:
    replies, error = parse_replies(raw)
    problems = [error] if error else []
    problems += [f"answer #{k + 1} is a 500" for k, r in enumerate(replies) if r.status == 500]
    prefix = case.known_prefix()
    for k, seed in enumerate(prefix):
        what = f"request #{k + 1} ({label(seed)})"
        if k >= len(replies):
            lost = "a reset lost the answer" if ended == "reset" else "no answer"
            problems.append(f"{what}: {lost}")
            return problems
        want = expected_body(seed, case.app)
        got = replies[k]
        if got.status not in seed.statuses or (want is not None and got.body != want):
            expected = "/".join(map(str, seed.statuses)) + (f" {want!r}" if want else "")
            problems.append(f"{what}: got {got.status} {got.body[:80]!r}, want {expected}")
            return problems
        if got.status >= 400 and not got.closes:
            problems.append(f"{what}: refused with {got.status} without closing")
        if got.closes:
            prefix = prefix[: k + 1]
            break
    if case.all_known and len(replies) > len(prefix):
        problems.append(f"{len(replies) - len(prefix)} answer(s) more than requests (smuggling?)")
    return problems


def expected_body(seed: Seed, app: str) -> bytes | None:
    if seed.statuses != (200,):
        return None
    if seed.target.startswith(b"HEAD "):
        return b""
    tail = b"%d" % (seed.size or 0) if app == "read" else b"-"
    return seed.target + b" " + tail


def connections(server: Server) -> tuple[Any, ...]:
    """The server's open connections, read from the test's thread."""
    assert server.state is not None
    while True:
        try:
            return tuple(server.state.connections)
        except RuntimeError:  # the server's thread changed the set meanwhile
            continue


def holds_nothing(server: Server) -> bool:
    return not connections(server)


def open_ports(server: Server) -> set[int]:
    """The client ports of the server's open HTTP and WebSocket connections (the lingering
    ones after an error answer carry none: the end-of-run check covers them)."""
    ports = set()
    for conn in connections(server):
        client = getattr(conn, "client", None)
        if client is None:
            client = getattr(conn, "http_scope", {}).get("client")
        if client:
            ports.add(client[1])
    return ports


def released(server: Server, port: int) -> bool:
    return wait_for(lambda: port not in open_ports(server), RELEASE_DEADLINE)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- reporting --------------------------------------------------------------------------------


def describe(outcome: Outcome, loop: str) -> str:
    case = outcome.case
    lines = [
        f"seed={SEED!r} case={case.index} loop={loop} app={case.app} client={client_kind(case)}",
        *(f"  PROBLEM: {p}" for p in outcome.problems),
        "  requests: "
        + ", ".join(f"#{k + 1} {label(seed)}" for k, (seed, _) in enumerate(case.requests)),
        f"  writes ({len(case.writes)}, TCP_NODELAY):",
        *(f"    {w!r}" for w in case.writes),
    ]
    if not case.leave:
        lines.append(f"  received ({outcome.ended}): {outcome.raw[:1500]!r}")
    lines.append(
        f"  replay: FASTSERVE_FUZZ_SEED={SEED} FASTSERVE_FUZZ_ONLY={case.index} "
        f".venv/bin/pytest tests/test_fuzz_http1.py -k '{loop} and {case.variant}'"
    )
    return "\n".join(lines)


def label(seed: Seed | None) -> str:
    if seed is None:
        return "mutated"
    return seed.verdict or ("valid" if seed.known else "corpus")


def client_kind(case: Case) -> str:
    if case.leave:
        return "closes right after writing"
    return VARIANTS[case.variant][1].removeprefix("the client ")


def bad_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [
        r
        for r in records
        if r.levelno >= logging.ERROR or r.exc_info or "Traceback" in r.getMessage()
    ]


def describe_record(record: logging.LogRecord, outcomes: list[Outcome]) -> str:
    """A log line and the case it is about: the one whose port the traceback's frames hold
    (a protocol's `client`), else every case on the wire when the line was written."""
    port = record_port(record)
    suspects = [o.case.index for o in outcomes if o.port == port]
    if not suspects:
        suspects = [o.case.index for o in outcomes if o.started <= record.created <= o.finished]
    text = logging.Formatter().format(record)
    return f"logged {record.levelname}: {text[:3000]}\n  cases: {suspects}"


def record_port(record: logging.LogRecord) -> int | None:
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        client = getattr(tb.tb_frame.f_locals.get("self"), "client", None)
        if isinstance(client, tuple):
            return int(client[1])
        tb = tb.tb_next
    return None


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.timeout(90 + COUNT // 50)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mutated_pipelines(serve: Serve, loop_name: str, variant: str) -> None:
    if variant == "corpus" and not CORPUS_SEEDS:
        pytest.skip(f"no corpus at {CORPUS}")
    cases = [make_case(SEED, i, variant) for i in ONLY or range(int(COUNT * VARIANTS[variant][0]))]
    # The log handlers outlive the servers (entered after they started: configure_logging
    # resets handlers), so what is logged while they stop is checked too.
    with ExitStack() as logs:
        with ExitStack() as stack:
            servers = {
                name: stack.enter_context(serve(app, **SERVER_OPTIONS))
                for name, app in APPS.items()
            }
            records = logs.enter_context(error_log()), logs.enter_context(error_log(name="asyncio"))
            fds = open_fds()
            outcomes = run_all(cases, servers)
            failed = [o for o in outcomes if o.problems]
            report = [describe(o, loop_name) for o in failed]
            report += leftovers(servers, fds)
            report += still_serving(servers)
        # A request task that ended with an exception nobody retrieved is logged ("Task
        # exception was never retrieved") only when it is collected: collect it now.
        gc.collect()
        report += [describe_record(r, outcomes) for r in bad_records(records[0] + records[1])]
    header = f"{len(failed)} of {len(outcomes)} cases failed (seed {SEED!r}, {loop_name})"
    assert not report, header + "\n\n" + "\n\n".join(report)


def leftovers(servers: dict[str, RunningServer], fds: int) -> list[str]:
    """Connections or file descriptors still open once every client has gone."""
    found = []
    for name, srv in servers.items():
        if not wait_for(partial(holds_nothing, srv.server), RELEASE_DEADLINE):
            held = len(connections(srv.server))
            found.append(f"the {name} app's server still holds {held} connection(s) at the end")
    if not wait_for(lambda: open_fds() <= fds, RELEASE_DEADLINE):
        found.append(f"{open_fds() - fds} file descriptors more than before the run")
    return found


def still_serving(servers: dict[str, RunningServer]) -> list[str]:
    found = []
    for name, srv in servers.items():
        try:
            assert_serving(srv)
        except (AssertionError, OSError, h11.RemoteProtocolError) as exc:
            found.append(f"the {name} app's server no longer serves a new request: {exc!r}")
    return found


def run_all(cases: list[Case], servers: dict[str, RunningServer]) -> list[Outcome]:
    """Run the cases WORKERS at a time; stop starting new ones after MAX_FAILURES."""
    failures = 0
    lock = threading.Lock()

    def one(case: Case) -> Outcome | None:
        nonlocal failures
        if failures >= MAX_FAILURES:
            return None
        outcome = run_case(case, servers)
        if outcome.problems:
            with lock:
                failures += 1
        return outcome

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return [o for o in pool.map(one, cases) if o is not None]


def test_cases_are_reproducible() -> None:
    """A case depends only on (seed, index, variant), and not on whether the corpus is there:
    the failure message's replay command works on any checkout."""
    assert make_case(SEED, 5) == make_case(SEED, 5)
    cases = [make_case("x", i) for i in range(200)]
    assert [c.writes for c in cases] == [make_case("x", i).writes for i in range(200)]
    assert all(seed is None or seed.known for case in cases for seed, _ in case.requests)
    assert [c.writes for c in cases] == [
        make_case("x", i, "half_closed").writes for i in range(200)
    ]
