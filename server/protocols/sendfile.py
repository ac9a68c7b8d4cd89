"""The bytes of a file as a response body: ASGI's `http.response.pathsend` extension.

An app (Starlette's FileResponse when the scope offers the extension) sends the path of a
file instead of its bytes. The cycle (cycle.py `send_path`) opens it and frames the response;
this module moves the content:

- `zero_copy`: on a plain TCP connection the kernel copies the file into the socket
  (`os.sendfile`); the bytes never enter the process. The transport keeps the socket; we
  write on it only while the transport's own buffer is empty (bytes leave in order) and wait
  for it to be writable through a duplicate of its descriptor (event loops refuse a second
  watcher on a transport's own descriptor).
- `copy`: anywhere else (TLS, HTTP/2, a loop or platform without sendfile) the file is read
  in pieces and sent as body pieces through the channel, which flow-controls them like any
  body: at most a piece beyond the channel's limit is held.

A file read blocks the event loop for the time of one piece (page cache: microseconds; a cold
disk: a seek per piece), as the read()s of a streaming response in an app would.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Final

from ..types import ClientDisconnected

if TYPE_CHECKING:
    from .cycle import Channel, RequestCycle

# Bytes per os.sendfile() call: the loop gets control back between calls, so one large file
# cannot hold the others up for more than the time of one call.
ZERO_COPY_PIECE: Final = 1024 * 1024
# Bytes per read() where the file goes through the process: TLS records are at most 16 KiB,
# an HTTP/2 window is often 64 KiB; bigger pieces only wait longer for window.
COPY_PIECE: Final = 256 * 1024

CAN_ZERO_COPY: Final = hasattr(os, "sendfile")


async def copy(cycle: RequestCycle, conn: Channel, fd: int, offset: int, count: int) -> None:
    """`count` bytes of `fd` from `offset`, read and sent through `conn` (not the last piece:
    the caller ends the response)."""
    while count > 0:
        piece = os.pread(fd, min(count, COPY_PIECE), offset)
        if not piece:
            raise RuntimeError("the file got shorter while it was sent")
        offset += len(piece)
        count -= len(piece)
        cycle.bytes_sent += len(piece)
        conn.send_body(cycle, piece, False)
        if conn.must_wait():
            await conn.wait_writable()


async def zero_copy(
    cycle: RequestCycle,
    transport: asyncio.WriteTransport,
    sock: int,
    fd: int,
    offset: int,
    count: int,
) -> None:
    """`count` bytes of `fd` from `offset` into the socket `sock` that `transport` writes to,
    with os.sendfile(). Raises ClientDisconnected when the peer is gone."""
    loop = asyncio.get_running_loop()
    watch = os.dup(sock)
    try:
        while count > 0:
            if transport.is_closing():
                raise ClientDisconnected("client disconnected")
            if transport.get_write_buffer_size():
                # The head (or a previous response) is still queued in the transport: it
                # goes first; the transport flushes it when the socket is writable.
                await writable(loop, watch)
                await asyncio.sleep(0)  # (let the transport's own writer run first)
                continue
            try:
                sent = os.sendfile(sock, fd, offset, min(count, ZERO_COPY_PIECE))
            except BlockingIOError:
                await writable(loop, watch)
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ClientDisconnected("client disconnected") from exc
            if sent == 0:
                raise RuntimeError("the file got shorter while it was sent")
            offset += sent
            count -= sent
            cycle.bytes_sent += sent
            await asyncio.sleep(0)  # the other connections' turn
    finally:
        os.close(watch)


async def writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until the socket behind `fd` can take more bytes (or has failed: the next send says
    which)."""
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


def wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
