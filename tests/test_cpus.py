"""`--workers auto`: 2 x usable CPUs + 1, from a faked affinity count and cgroup tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastserve import cpus
from fastserve.config import Config
from fastserve.cpus import (
    auto_workers,
    cgroup_quota,
    parse_cfs,
    parse_cpu_max,
    usable_cpus,
    workers_for,
)
from fastserve.main import worker_count

V2 = "0::/kubepods/pod1/ctr\n"
V1 = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000", 0.5),
        ("", None),
        ("garbage 1", None),
        ("0 100000", None),
    ],
)
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_parse_cfs() -> None:
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("400000", "100000") == 4.0
    assert parse_cfs("x", "100000") is None
    assert parse_cfs("100000", "0") is None


def test_usable_cpus_rounds_quota_up_and_caps_by_affinity() -> None:
    assert usable_cpus(64, 2.0) == 2
    assert usable_cpus(64, 1.5) == 2
    assert usable_cpus(64, 0.25) == 1
    assert usable_cpus(4, 16.0) == 4
    assert usable_cpus(8, None) == 8
    assert usable_cpus(0, None) == 1
    assert workers_for(2) == 5


def test_container_with_two_cpus_on_64_core_host_gets_five_workers(tmp_path: Path) -> None:
    """The issue's example: `docker run --cpus 2` on a 64-core host."""
    write(tmp_path, "cpu.max", "200000 100000\n")  # namespaced: our cgroup is the mount root
    assert auto_workers(affinity=64, proc_cgroup="0::/\n", root=tmp_path) == 5


def test_v2_nested_cgroup_and_ancestor_limit(tmp_path: Path) -> None:
    write(tmp_path, "kubepods/cpu.max", "300000 100000\n")
    write(tmp_path, "kubepods/pod1/cpu.max", "max 100000\n")
    write(tmp_path, "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    assert cgroup_quota(V2, tmp_path) == 3.0
    write(tmp_path, "kubepods/pod1/ctr/cpu.max", "100000 100000\n")
    assert cgroup_quota(V2, tmp_path) == 1.0
    assert auto_workers(affinity=64, proc_cgroup=V2, root=tmp_path) == 3


def test_v2_unlimited_uses_affinity(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_quota("0::/\n", tmp_path) is None
    assert auto_workers(affinity=3, proc_cgroup="0::/\n", root=tmp_path) == 7


def test_v1_cfs_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n")
    write(tmp_path, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(V1, tmp_path) == 2.5
    assert auto_workers(affinity=64, proc_cgroup=V1, root=tmp_path) == 7


def test_v1_namespaced_mount_root(tmp_path: Path) -> None:
    """Inside the container the /docker/abc path is not visible: the mount root is ours."""
    write(tmp_path, "cpu/cpu.cfs_quota_us", "100000\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_quota("3:cpu:/docker/abc\n", tmp_path) == 1.0


def test_no_cgroup_files(tmp_path: Path) -> None:
    assert cgroup_quota(V2, tmp_path) is None
    assert cgroup_quota("", tmp_path) is None
    assert auto_workers(affinity=2, proc_cgroup="", root=tmp_path) == 5


def test_real_machine_is_consistent() -> None:
    """On this machine: never more than the affinity allows."""
    affinity = len(os.sched_getaffinity(0))
    assert 3 <= auto_workers() <= workers_for(affinity)


def test_worker_count_auto_and_web_concurrency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The machine's inputs, faked where the process reads them (not the function under test):
    # 6 CPUs in the affinity mask and no cgroup at all -> 2 x 6 + 1 workers.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    (tmp_path / "cgroup").write_text("")
    monkeypatch.setattr(cpus, "PROC_SELF_CGROUP", str(tmp_path / "cgroup"))
    assert worker_count(Config(app="x:y", workers="auto")) == 13
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert worker_count(Config(app="x:y")) == 4
    assert worker_count(Config(app="x:y", workers="2")) == 2
