"""Shared fixtures: a micro model and data small enough for 2 CPU cores in seconds."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from adaptguard.artifacts import ArtifactCache
from adaptguard.context import RunContext
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.models.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]

MICRO = dict(
    resolution=16,
    unet=dict(
        block_out_channels=[16, 32],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    text_encoder=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    sampler=dict(steps=8, guidance_scale=2.0),
)


@pytest.fixture
def micro_model():
    return build_tiny_model(**MICRO)


@pytest.fixture
def micro_data():
    return ShapesDataModule(
        resolution=16,
        batch_size=16,
        splits={"owner": {"size": 256}, "attacker": {"offset": 5000, "size": 256}, "eval": {"offset": 9000, "size": 64}},
    )


@pytest.fixture
def ctx(tmp_path):
    trainer = functools.partial(
        L.Trainer, accelerator="cpu", devices=1, enable_model_summary=False, log_every_n_steps=1
    )
    return RunContext(
        cache=ArtifactCache(tmp_path / "cache"), make_trainer=trainer, out_dir=tmp_path / "out", progress=False
    )


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the CLI in a subprocess with a private cache."""
    env = dict(os.environ)
    env["ADAPTGUARD_CACHE"] = str(tmp_path / "cache")
    env["WANDB_DIR"] = str(tmp_path)
    env["HYDRA_FULL_ERROR"] = "0"
    env.pop("WANDB_MODE", None)
    return env


def run_cli(args: list[str], env: dict, cwd: Path, timeout: int = 900):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "experiments.run", *args, f"hydra.run.dir={cwd}/run", f"hydra.sweep.dir={cwd}/sweep"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> dict[str, bool]:
    pb = dict(b.named_parameters())
    return {n: torch.equal(p, pb[n]) for n, p in a.named_parameters()}
