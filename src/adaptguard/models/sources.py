"""Where the base model comes from: the tiny model (pretrained by us, cached) or a local folder."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptguard.context import RunContext
from adaptguard.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.tiny import TinySchedulerSpec, TinyTextSpec, TinyUNetSpec, build_tiny_model

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """How the tiny base model learns the built-in shapes world."""

    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_scheduler: str = "cosine"
    caption_dropout: float = 0.1
    dataset_size: int = 16384
    checkpoint_every: int = 250
    ema_decay: float | None = 0.999


@dataclass
class TinyModelSource:
    """``model=tiny``: built from config and pretrained on ``shapes`` by our own code.

    The pretrained weights are cached by the hash of this config (``ADAPTGUARD_CACHE``);
    the package ships the weights for the default config (``make pretrain`` remakes them),
    so the default needs no pretraining. Any other config pretrains on first use, with a
    progress bar, resuming from its last checkpoint if interrupted.
    """

    resolution: int = 32
    unet: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    init_seed: int = 0

    name: str = "tiny"

    def describe(self) -> dict[str, Any]:
        """What determines the pretrained weights (the sampler does not)."""
        d = asdict(self)
        d.pop("sampler")
        # defaults filled in, so a config that spells them out hashes like one that omits them
        d["unet"] = asdict(TinyUNetSpec(**self.unet))
        d["text_encoder"] = asdict(TinyTextSpec(**self.text_encoder))
        d["scheduler"] = asdict(TinySchedulerSpec(**self.scheduler))
        d["pretrain"] = asdict(PretrainConfig(**self.pretrain))
        d["pretrain"].pop("checkpoint_every")  # affects resumability, not the weights
        return d

    def build(self) -> DiffusionModel:
        return build_tiny_model(
            self.resolution, self.unet, self.text_encoder, self.scheduler, self.sampler, self.init_seed
        )

    def load(self, ctx: RunContext) -> DiffusionModel:
        from adaptguard.training.pretrain import pretrain_tiny

        folder = ctx.cache.get_or_build("base", self.describe(), lambda work: pretrain_tiny(self, work, ctx))
        model = DiffusionModel.load(folder / "model", sampler=SamplerConfig(**self.sampler))
        return model.to(ctx.torch_device())


@dataclass
class PretrainedSource:
    """``model=sd15`` / ``sd21``: a local Stable Diffusion folder in diffusers' layout."""

    path: str | None = None
    resolution: int = 512
    sampler: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"  # weights dtype at load; mixed precision is the trainer's job
    gradient_checkpointing: bool = False
    name: str = "pretrained"

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("sampler")
        d["path"] = str(Path(self.path).expanduser().resolve()) if self.path else None
        return d

    def load(self, ctx: RunContext) -> DiffusionModel:
        if not self.path:
            raise ConfigError(
                f"model.path: model={self.name} needs a local Stable Diffusion folder; run with "
                f"model.path=/path/to/{self.name} (diffusers layout: unet/ text_encoder/ tokenizer/ vae/ scheduler/). "
                "Nothing is downloaded."
            )
        path = Path(self.path).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model.path: {path} does not exist or is not a folder")
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"model.dtype: {self.dtype!r} is not a torch dtype (float32, float16, bfloat16)")
        model = DiffusionModel.load(
            path, resolution=self.resolution, sampler=SamplerConfig(**self.sampler), torch_dtype=dtype
        )
        if self.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        return model.to(ctx.torch_device())
