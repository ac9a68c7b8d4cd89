"""A single process that cannot listen after its lifespan startup ran: the real CLI in a
subprocess must print one error line (no traceback), run the app's lifespan shutdown and exit
with 3, as it does with --workers and as uvicorn does."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.cli_procs import run_cli
from tests.conftest import LOOPS

LIFESPAN_APP = "tests.apps.core_apps:lifespan_app"  # prints "lifespan shutdown ran" at shutdown


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other socket of this test is listening on, for as long as the test runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def assert_failed_cleanly(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "CancelledError" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "cannot bind" in errors[0] and message in errors[0], errors
    # The app's startup ran, so its shutdown handler did too.
    assert result.stdout.splitlines() == ["lifespan startup ran", "lifespan shutdown ran"]


@pytest.mark.parametrize("loop", LOOPS)
def test_port_in_use_runs_lifespan_shutdown_and_exits_3(taken_port: int, loop: str) -> None:
    # (run_cli has its own subprocess timeout, 20 s.)
    result = run_cli(LIFESPAN_APP, "--lifespan", "on", "--loop", loop, "--port", str(taken_port))
    assert_failed_cleanly(result, "address already in use")


@pytest.mark.parametrize("loop", LOOPS)
def test_uds_in_a_missing_directory_runs_lifespan_shutdown_and_exits_3(
    tmp_path: Path, loop: str
) -> None:
    path = tmp_path / "missing" / "fastserve.sock"
    result = run_cli(LIFESPAN_APP, "--lifespan", "on", "--loop", loop, "--uds", str(path))
    assert_failed_cleanly(result, "No such file or directory")
