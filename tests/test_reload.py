"""--reload: a changed .py file is served by a new server process on the same port."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fastserve.config import Config
from fastserve.reload import child_payload
from tests.apps.workers_procs import Client, Fastserve, process_state, write_app


@pytest.mark.timeout(60)
def test_touching_a_file_serves_the_new_code(tmp_path: Path) -> None:
    module = tmp_path / "reload_app.py"
    write_app(module, "v1")
    args = [
        "reload_app:app",
        "--reload",
        "--reload-dir",
        str(tmp_path),
        "--app-dir",
        str(tmp_path),
        "--port",
        "0",
        "--lifespan",
        "off",
        "--no-access-log",
    ]
    with Fastserve(args) as server:
        port = server.wait_running()
        first_pid, version = Client(port).get("/").split()
        assert version == "v1"
        (tmp_path / "notes.txt").write_text("not Python: no restart")
        write_app(module, "v2")
        server.wait_for("Changes detected in reload_app.py; restarting")
        server.wait_running(2)
        pid, version = Client(port).get("/").split()
        assert version == "v2" and pid != first_pid
        assert server.count("notes.txt") == 0
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        deadline = time.monotonic() + 5
        while process_state(int(pid)) != "gone" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_state(int(pid)) == "gone", "the server process outlived the reloader"


def test_child_payload_drops_what_the_parent_owns() -> None:
    config = Config(app="a:b", reload=True, workers="4", pid="/tmp/x.pid", uds="/tmp/s")
    payload = child_payload(config, [7])
    assert '"reload": false' in payload and '"workers": "1"' in payload
    assert '"pid": null' in payload and '"uds": null' in payload and '"_fds": [7]' in payload


def test_reload_needs_an_import_string() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError

    from fastserve.main import serve_config

    assert serve_config(Config(app=app, reload=True, port=0)) == 3


def test_reload_dir_must_exist(tmp_path: Path) -> None:
    from fastserve.main import serve_config

    missing = str(tmp_path / "missing")
    assert serve_config(Config(app="a:b", reload=True, port=0, reload_dirs=[missing])) == 3
