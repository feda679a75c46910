"""How many CPUs this process may really use. torch ignores a container's CPU quota, and pytest-xdist's
`-n auto` counts the host's physical cores: in a container limited to a few CPUs both start more threads or
workers than it can run, and they thrash. joblib (loky) counts the affinity mask and the cgroup quota where the
system has them, and plain ``os.cpu_count()`` elsewhere (macOS, Windows)."""

from __future__ import annotations

import logging

import joblib
import torch

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a container's quota (rounded up by loky)."""
    return max(1, joblib.cpu_count())


def cap_torch_threads(usable: int | None = None) -> int:
    """Lower torch's thread count to the usable CPUs (never raise it: a lower setting is someone's choice)."""
    usable, threads = usable or usable_cpus(), torch.get_num_threads()
    if threads > usable:
        torch.set_num_threads(usable)
        log.info("torch threads: %d -> %d (the CPUs this process may use)", threads, usable)
    return torch.get_num_threads()
