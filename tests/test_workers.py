"""Worker and thread counts follow the CPUs this process may use, a container's CPU quota included (torch
ignores it; pytest-xdist's `-n auto` counts the host's cores)."""

import os

import pytest
import torch

from adaptguard.cli import cpus


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """The cgroup files, as a container would have them, in a temp dir (none exist until written)."""
    files = {
        "v2": tmp_path / "cpu.max",
        "quota": tmp_path / "cpu.cfs_quota_us",
        "period": tmp_path / "cpu.cfs_period_us",
    }
    monkeypatch.setattr(cpus, "CGROUP_V2", files["v2"])
    monkeypatch.setattr(cpus, "CGROUP_V1", (files["quota"], files["period"]))
    return files


def test_cgroup_cpu_max_reads_as_a_cpu_count():
    assert cpus.parse_cpu_max("200000 100000\n") == 2.0
    assert cpus.parse_cpu_max("150000 100000") == 1.5
    assert cpus.parse_cpu_max("max 100000") is None


def test_a_quota_caps_the_usable_cpus(cgroup):
    affinity = len(os.sched_getaffinity(0))
    assert cpus.usable_cpus() == affinity  # no cgroup files: the affinity mask
    cgroup["v2"].write_text("max 100000")
    assert cpus.usable_cpus() == affinity
    cgroup["v2"].write_text("50000 100000")  # half a CPU's time: one worker, one thread
    assert cpus.usable_cpus() == 1
    cgroup["v2"].unlink()
    cgroup["quota"].write_text("-1\n"), cgroup["period"].write_text("100000\n")  # cgroup v1 without a quota
    assert cpus.usable_cpus() == affinity
    cgroup["quota"].write_text("100000\n")
    assert cpus.usable_cpus() == 1


def test_commands_lower_torch_threads_to_the_quota_and_never_raise_them(cgroup):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        cgroup["v2"].write_text("200000 100000")
        assert cpus.cap_torch_threads() == min(2, len(os.sched_getaffinity(0))) == torch.get_num_threads()
        torch.set_num_threads(1)
        assert cpus.cap_torch_threads() == 1  # a lower setting stays
    finally:
        torch.set_num_threads(before)
