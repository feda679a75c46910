"""`make test` sizes its workers and torch threads by the CPUs it may use, a container's quota included."""

import os

from tests.helpers import cpus


def test_cgroup_cpu_max_reads_as_a_cpu_count():
    assert cpus.parse_cpu_max("200000 100000\n") == 2.0
    assert cpus.parse_cpu_max("150000 100000") == 1.5
    assert cpus.parse_cpu_max("max 100000") is None


def test_a_quota_caps_the_usable_cpus(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"
    monkeypatch.setattr(cpus, "CGROUP_V2", v2)
    monkeypatch.setattr(cpus, "CGROUP_V1", (quota, period))
    assert cpus.usable_cpus() == affinity  # no cgroup files: the affinity mask
    v2.write_text("max 100000")
    assert cpus.usable_cpus() == affinity
    v2.write_text("50000 100000")  # half a CPU's time: one worker, one thread
    assert cpus.usable_cpus() == 1
    v2.unlink()
    quota.write_text("-1\n"), period.write_text("100000\n")  # cgroup v1 without a quota
    assert cpus.usable_cpus() == affinity
    quota.write_text("100000\n")
    assert cpus.usable_cpus() == 1
