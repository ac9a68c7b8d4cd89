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


def test_reload_filter_follows_uvicorns_patterns(tmp_path: Path) -> None:
    """--reload-include/--reload-exclude: uvicorn's defaults ('*.py' in; '.*', '.py[cod]',
    '.sw.*', '~*' out), a default named in the other list dropped, directories excluded, and
    watchfiles' noise (__pycache__, .venv...) out whatever the patterns say."""
    from watchfiles import Change

    from fastserve.reload import ReloadFilter, as_list

    skipped = tmp_path / "skipped"
    skipped.mkdir()

    def restarts(path: str, includes: list[str] = [], excludes: list[str] = []) -> bool:  # noqa: B006
        return ReloadFilter(includes, excludes)(Change.modified, str(tmp_path / path))

    assert restarts("app.py") and restarts("pkg/mod.py")
    assert not restarts("notes.txt") and not restarts("templates/a.html")
    assert not restarts(".hidden.py") and not restarts("~backup.py")
    assert not restarts("__pycache__/app.py") and not restarts(".venv/lib/site.py")
    assert restarts("notes.txt", includes=["*.txt"]) and restarts("app.py", includes=["*.txt"])
    assert restarts("templates/a.html", includes=["templates/*"])
    assert not restarts("app.py", excludes=["*.py"])  # the default include is dropped
    assert restarts("notes.txt", includes=["*.txt"], excludes=["*.py"])
    assert restarts(".hidden.py", includes=[".*"])  # the default exclude is dropped
    assert not restarts("test_app.py", excludes=["test_*.py"]) and restarts("app.py")
    assert not restarts("skipped/mod.py", excludes=[str(skipped)])
    assert restarts("other/mod.py", excludes=[str(skipped)])
    assert as_list("*.txt") == ["*.txt"]  # uvicorn's Config takes one pattern as a string


def test_reload_options_without_reload_warn_once() -> None:
    """As uvicorn: --reload-include and co. without --reload say they do nothing."""
    args = ["examples.hello:app", "--port", "0", "--reload-include", "*.txt", "--workers", "2"]
    with Fastserve(args) as server:
        server.wait_running(2)
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    assert server.count("WARNING.*--reload-include.*need --reload") == 1, server.log()


def reload_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
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
        *extra,
    ]


@pytest.mark.timeout(60)
def test_reload_include_and_exclude(tmp_path: Path) -> None:
    write_app(tmp_path / "reload_app.py", "v1")
    (tmp_path / "skipped").mkdir()
    extra = ["--reload-include", "*.txt", "--reload-exclude", "skip_*.py"]
    extra += ["--reload-exclude", str(tmp_path / "skipped"), "--reload-delay", "0.1"]
    with Fastserve(reload_args(tmp_path, *extra)) as server:
        port = server.wait_running()
        (tmp_path / "skip_me.py").write_text("x = 1\n")
        (tmp_path / "skipped" / "mod.py").write_text("x = 1\n")
        (tmp_path / "notes.txt").write_text("included")
        server.wait_for(r"Changes detected in notes\.txt; restarting")
        server.wait_running(2)
        write_app(tmp_path / "reload_app.py", "v2")  # '*.py' is still watched
        server.wait_for(r"Changes detected in reload_app\.py; restarting")
        server.wait_running(3)
        assert Client(port).get("/").split()[1] == "v2"
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    assert server.count("Changes detected") == 2, server.log()
    assert server.count("need --reload") == 0  # the server processes get none of them


@pytest.mark.timeout(60)
def test_reload_delay_gathers_changes_into_one_restart(tmp_path: Path) -> None:
    """Two files saved 0.3 s apart: one restart with --reload-delay 3 (watchfiles' own
    50 ms would make two)."""
    write_app(tmp_path / "reload_app.py", "v1")
    with Fastserve(reload_args(tmp_path, "--reload-delay", "3")) as server:
        server.wait_running()
        (tmp_path / "first.py").write_text("x = 1\n")
        time.sleep(0.3)  # the gap between two saves, well inside the delay: not a wait
        (tmp_path / "second.py").write_text("x = 2\n")
        server.wait_for(r"Changes detected in first\.py, second\.py; restarting")
        server.wait_running(2)
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    assert server.count("Changes detected") == 1, server.log()
