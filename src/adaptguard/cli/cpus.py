"""How many CPUs this process may really use. torch ignores a container's CPU quota, and pytest-xdist's
`-n auto` counts the host's physical cores: in a container limited to a few CPUs both start more threads or
workers than it can run, and they thrash."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

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
    """The affinity mask, capped by any CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.floor(quota))) if quota else cpus


def cap_torch_threads() -> int:
    """Lower torch's thread count to the usable CPUs (never raise it: a lower setting is someone's choice)."""
    usable, threads = usable_cpus(), torch.get_num_threads()
    if threads > usable:
        torch.set_num_threads(usable)
        log.info("torch threads: %d -> %d (the CPUs this process may use)", threads, usable)
    return torch.get_num_threads()
