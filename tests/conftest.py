"""Shared fixtures: a micro model and data small enough for 2 CPU cores in seconds."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adaptguard.artifacts import ArtifactCache
from adaptguard.context import RunContext
from adaptguard.data.shapes import ShapesDataModule

REPO = Path(__file__).resolve().parents[1]

for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(f"{_name}.utilities.rank_zero").setLevel(logging.WARNING)


def model_source(name: str = "micro"):
    """A `model=<name>` config as a TinyModelSource (micro: 16 px, tiny: 32 px; both ship pretrained weights)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}"])
    return instantiate(cfg.model, _convert_="all")


def micro_source():
    return model_source("micro")


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


def make_micro_data():
    return ShapesDataModule(
        resolution=16,
        batch_size=16,
        splits={
            "owner": {"size": 256},
            "attacker": {"offset": 5000, "size": 256},
            "eval": {"offset": 9000, "size": 64},
        },
    )


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


def make_ctx(tmp_path):
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


def write_tiny_sd_folder(path):
    """A miniature Stable Diffusion folder, written the way real ones are (save_pretrained)."""
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tok_dir = path.parent / "tok"
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32, 32, 32), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
    )  # fmt: skip
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path)  # fmt: skip
