"""How many CPUs the test run may really use, for its worker count and torch's threads."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2's ``cpu.max`` ("200000 100000": 2 CPUs; "max 100000": no quota) as a CPU count."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def cgroup_cpu_quota() -> float | None:
    """A container's CPU quota, if it has one (v2, then v1)."""
    try:
        if CGROUP_V2.is_file():
            return parse_cpu_max(CGROUP_V2.read_text())
        quota, period = (int(p.read_text()) for p in CGROUP_V1)
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The affinity mask capped by any quota: in a container, psutil (pytest-xdist's `-n auto`) and torch
    count the host's cores, and a worker or thread per host core on 2 CPUs' worth of time thrashes."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.floor(quota))) if quota else cpus
