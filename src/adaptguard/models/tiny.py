"""The tiny pixel-space text-to-image model, built from config with random weights.

Sized for 2 CPU cores: attention only at the lowest resolution (8x8 for 32 px), where
it is cheap; convolutions elsewhere. See benchmarks/bench.py for its step time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from adaptguard.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.tokenizer import DEFAULT_WORDS, build_tokenizer


@dataclass
class TinyUNetSpec:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    down_block_types: list[str] = field(default_factory=lambda: ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8


@dataclass
class TinyTextSpec:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_length: int = 32
    vocab_size: int = 512


@dataclass
class TinySchedulerSpec:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True


def build_tiny_model(
    resolution: int = 32,
    unet: TinyUNetSpec | dict | None = None,
    text_encoder: TinyTextSpec | dict | None = None,
    scheduler: TinySchedulerSpec | dict | None = None,
    sampler: SamplerConfig | dict | None = None,
    seed: int = 0,
) -> DiffusionModel:
    """Random-init tiny model; the same arguments always give the same weights."""
    u = _as(TinyUNetSpec, unet, "model.unet")
    t = _as(TinyTextSpec, text_encoder, "model.text_encoder")
    s = _as(TinySchedulerSpec, scheduler, "model.scheduler")
    levels = len(u.block_out_channels)
    if not (len(u.down_block_types) == len(u.up_block_types) == levels):
        raise ConfigError(
            "model.unet: block_out_channels, down_block_types and up_block_types must have the same length"
        )
    if resolution % (2 ** (levels - 1)):
        raise ConfigError(f"model.resolution: {resolution} must be divisible by {2 ** (levels - 1)}")
    tokenizer = build_tokenizer(DEFAULT_WORDS, vocab_size=t.vocab_size, max_length=t.max_length)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_model = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=t.hidden_size,
                intermediate_size=t.intermediate_size,
                num_hidden_layers=t.num_hidden_layers,
                num_attention_heads=t.num_attention_heads,
                max_position_embeddings=t.max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet_model = UNet2DConditionModel(
            sample_size=resolution,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(u.block_out_channels),
            down_block_types=tuple(u.down_block_types),
            up_block_types=tuple(u.up_block_types),
            layers_per_block=u.layers_per_block,
            cross_attention_dim=t.hidden_size,
            attention_head_dim=u.attention_head_dim,
            norm_num_groups=u.norm_num_groups,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=s.num_train_timesteps,
        beta_schedule=s.beta_schedule,
        prediction_type=s.prediction_type,
        clip_sample=s.clip_sample,
    )
    return DiffusionModel(
        unet_model,
        text_model,
        tokenizer,
        noise_scheduler,
        resolution=resolution,
        sampler=_as(SamplerConfig, sampler, "model.sampler"),
    )


def _as(cls, value, key: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    try:
        return cls(**dict(value))
    except TypeError as err:
        raise ConfigError(f"{key}: {err}") from None
