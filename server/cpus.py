"""How many CPUs this process may really use, for `--workers auto`.

`os.cpu_count()` is the host's count: a container limited to 2 CPUs on a 64-core host would
start 129 workers that fight over 2 CPUs' worth of time slices. The usable count is the
smallest of
- the CPU affinity mask (`taskset`, cpusets, Kubernetes static CPU manager), and
- the cgroup CPU bandwidth quota (`docker run --cpus`, Kubernetes `resources.limits.cpu`):
  cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD"), cgroup v1 `cpu.cfs_quota_us` /
  `cpu.cfs_period_us` (quota -1 = unlimited). A quota set on any ancestor cgroup limits us too,
  so every level from our own cgroup up to the mount root is read and the smallest wins.

A fractional quota is rounded up (1.5 CPUs can keep two workers partly busy) and is never
below one CPU. The parsing is pure and takes file contents or a fake root, so it is
unit-tested without a real cgroup.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"


def workers_for(cpus: int) -> int:
    """gunicorn's rule of thumb: 2 workers per CPU (one computes while one waits) plus one."""
    return 2 * cpus + 1


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max`: "200000 100000" = 2 CPUs; "max 100000" = unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; a quota of -1 means unlimited."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(affinity: int, quota: float | None) -> int:
    """The affinity count, capped by the quota (rounded up, at least 1)."""
    cpus = max(1, affinity)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def cgroup_quota(proc_cgroup: str, root: str | Path = CGROUP_ROOT) -> float | None:
    """The smallest CPU quota on our cgroup path (`/proc/self/cgroup` text) under `root`."""
    root = Path(root)
    limits: list[float] = []
    for hierarchy, controllers, path in _cgroup_lines(proc_cgroup):
        if hierarchy == "0" and not controllers:  # cgroup v2, unified
            for directory in _levels(root, path):
                limit = parse_cpu_max(_read(directory / "cpu.max") or "max")
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):  # cgroup v1, the cpu controller's hierarchy
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                for directory in _levels(mount, path):
                    quota = _read(directory / "cpu.cfs_quota_us")
                    period = _read(directory / "cpu.cfs_period_us")
                    if quota is not None and period is not None:
                        limit = parse_cfs(quota, period)
                        if limit is not None:
                            limits.append(limit)
    return min(limits) if limits else None


def auto_workers(
    affinity: int | None = None,
    proc_cgroup: str | None = None,
    root: str | Path = CGROUP_ROOT,
) -> int:
    """`--workers auto`: 2 x usable CPUs + 1. Arguments default to this process's real values."""
    if affinity is None:
        affinity = _affinity()
    if proc_cgroup is None:
        proc_cgroup = _read(Path(PROC_SELF_CGROUP)) or ""
    return workers_for(usable_cpus(affinity, cgroup_quota(proc_cgroup, root)))


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_lines(text: str) -> Iterator[tuple[str, str, str]]:
    """`hierarchy-id:controllers:path` lines of /proc/self/cgroup (see cgroups(7))."""
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            yield parts[0], parts[1], parts[2]


def _levels(mount: Path, path: str) -> Iterator[Path]:
    """`mount/a/b`, `mount/a`, `mount`: our cgroup and each ancestor that is visible.

    Inside a container the cgroup namespace usually makes our own cgroup the mount root, so
    the path from /proc/self/cgroup may not exist below the mount; the root is still read.
    """
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    seen: set[Path] = set()
    for depth in range(len(parts), -1, -1):
        directory = mount.joinpath(*parts[:depth])
        if directory not in seen and directory.is_dir():
            seen.add(directory)
            yield directory


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
