"""Shared fixtures: a micro model and data small enough for 2 CPU cores in seconds."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from adaptguard.cli.cpus import usable_cpus
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from tests.helpers import make_ctx, make_micro_data, micro_source

for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(f"{_name}.utilities.rank_zero").setLevel(logging.WARNING)


def _share_cores_between_workers() -> None:
    """Under pytest-xdist (`make test` runs -n auto) each worker takes its share of the usable CPUs: tiny
    models gain little from torch's threads, so workers with one thread each beat one with all."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, usable_cpus() // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # and the subprocesses the tests start


_share_cores_between_workers()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per usable CPU (xdist's own count is psutil's, the host's cores in a container)."""
    return usable_cpus()


# The modules whose shared fixtures take minutes, longest first (pytest --durations in the CI log):
# `make test` hands out whole files in collection order (--dist loadfile --no-loadscope-reorder;
# xdist's default order is by test count), so these start at once instead of one of them
# running alone at the end while the other workers idle.
LONGEST_FIRST = (  # per-module totals of `pytest --durations=0` on 2 cores, 2026-12-07 (seconds, rounded)
    "test_e2e",  # 230
    "test_latent",  # 199
    "test_dit_runs",  # 170
    "test_owner",  # 164
    "test_report",  # 147
    "test_ddp",  # 130
    "test_sleepermark",  # 97
    "test_reliability",  # 96
    "test_code_cache",  # 90
    "test_reproducibility",  # 82
    "test_config",  # 72
    "test_backdoor",  # 52
    "test_quality",  # 38
    "test_aiao",  # 36
    "test_freezing",  # 33
    "test_scale",  # 31
    "test_curves",  # 31
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a module


@pytest.fixture
def micro_model():
    """Random-init micro model: for tests of mechanics, not of learned behaviour."""
    return micro_source().build()


@pytest.fixture(scope="session")
def micro_base(tmp_path_factory):
    """The pretrained micro model (shipped; pretrained into a temp cache if its config changed)."""
    ctx = RunContext(cache=ArtifactCache(tmp_path_factory.mktemp("cache")), progress=False, device="cpu")
    return micro_source().load(ctx)


@pytest.fixture
def micro_data():
    return make_micro_data()


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A private artifact cache and wandb dir for command-line runs (in this process or a subprocess)."""
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return dict(os.environ)
