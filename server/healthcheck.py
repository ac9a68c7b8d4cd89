"""`python -m fastserve.healthcheck`: the container image's HEALTHCHECK.

It asks the server the way a client would, at the address, port and scheme the server itself
wrote to its `--listen-file` ($FASTSERVE_LISTEN_FILE, set in the image), so the check follows
`--port 9000` on the command line, `UVICORN_PORT`, TLS and `--uds` alike. Any HTTP answer
below 500 on $HEALTHCHECK_PATH (default `/`) is healthy: exit code 0; anything else (no file,
no answer within 4 s, a 5xx) is exit code 1, with one line on stderr saying why, which
`docker inspect` / `podman healthcheck run` show. It uses the standard library only (Python
imports the package's `__init__` first: 0.25 s of CPU per check, every 30 s).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys

TIMEOUT = 4.0  # below the image's HEALTHCHECK --timeout=5s, so a hang is reported as one
# The address a health check reaches a wildcard listener on.
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def connection(url: str) -> http.client.HTTPConnection:
    """A connection to one line of the listen file: http://h:p, https://h:p or unix:path."""
    if url.startswith("unix:"):
        return UnixConnection(url.removeprefix("unix:"))
    scheme, _, where = url.partition("://")
    host, _, port = where.rpartition(":")
    host = host.strip("[]")
    host = LOOPBACK.get(host, host)
    if scheme == "https":
        # Only liveness is checked: the certificate is the operator's business, and it names
        # the service, not 127.0.0.1.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, int(port), timeout=TIMEOUT, context=context)
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def check(listen_file: str, path: str) -> str | None:
    """None when healthy, else why not."""
    try:
        with open(listen_file, encoding="utf-8") as fh:
            urls = fh.read().split()
    except OSError as exc:
        return f"cannot read {listen_file} (is the server running?): {exc.strerror}"
    if not urls:
        return f"{listen_file} is empty"
    conn = connection(urls[0])
    try:
        conn.request("GET", path, headers={"User-Agent": "fastserve-healthcheck"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"{urls[0]}{path}: {exc}"
    finally:
        conn.close()
    return f"{urls[0]}{path}: HTTP {status}" if status >= 500 else None


def main() -> int:
    listen_file = os.environ.get("FASTSERVE_LISTEN_FILE") or "/tmp/fastserve.listen"
    problem = check(listen_file, os.environ.get("HEALTHCHECK_PATH") or "/")
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
