"""Worker and thread counts follow the CPUs this process may use, a container's CPU quota included (torch
ignores it; pytest-xdist's `-n auto` counts the host's cores), on systems without Linux's affinity call too."""

import os

import pytest
import torch

from adaptguard.cli import cpus


def test_usable_cpus_are_at_most_the_affinity_mask():
    usable = cpus.usable_cpus()
    assert 1 <= usable <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_a_quota_caps_the_usable_cpus(monkeypatch):
    """LOKY_MAX_CPU_COUNT is loky's own cap (the quota path reads /sys/fs/cgroup, which a test cannot fake)."""
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert cpus.usable_cpus() == 1


def test_cpus_are_counted_where_there_is_no_affinity_call(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: counting must not need it."""
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.delattr(os, "sched_getaffinity")
    assert 1 <= cpus.usable_cpus() <= os.cpu_count()


@pytest.mark.parametrize("usable", [1, 2])
def test_commands_lower_torch_threads_to_the_usable_cpus_and_never_raise_them(usable):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert cpus.cap_torch_threads(usable) == usable == torch.get_num_threads()
        torch.set_num_threads(1)
        assert cpus.cap_torch_threads(usable) == 1  # a lower setting stays
    finally:
        torch.set_num_threads(before)
