"""Shared fixtures: a micro model and data small enough for 2 CPU cores in seconds."""

from __future__ import annotations

import logging
import os

import pytest

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from tests.helpers import make_ctx, make_micro_data, micro_source

for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(f"{_name}.utilities.rank_zero").setLevel(logging.WARNING)


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
