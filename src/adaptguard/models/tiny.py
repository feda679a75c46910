"""The tiny text-to-image models, built from config with random weights.

With a ``vae`` spec the model has Stable Diffusion's structure - an ``AutoencoderKL``
(images -> 4-channel latents), a ``UNet2DConditionModel`` denoising those latents, a CLIP
text encoder - so every defense and attack runs the SD code path (VAE encode/decode,
latents, checkpointing) at a size 2 CPU cores can train. Without one it is the older
pixel-space model. See benchmarks/bench.py for step times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from adaptguard.core.config import Validated, from_mapping, setting
from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.tokenizer import DEFAULT_WORDS, build_tokenizer


@dataclass
class TinyUNetSpec(Validated):
    config_key = "model.unet"

    block_out_channels: list[int] = setting(
        default_factory=lambda: [32, 64, 64], nonempty=True, doc="channels per resolution level"
    )
    down_block_types: list[str] = setting(
        default_factory=lambda: ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        doc="diffusers down-block types, one per level (cross-attention where they say so)",
    )
    up_block_types: list[str] = setting(
        default_factory=lambda: ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        doc="diffusers up-block types, deepest level first",
    )
    layers_per_block: int = setting(1, ge=1, doc="ResNet layers per block")
    attention_head_dim: int = setting(8, ge=1, doc="attention head size")
    norm_num_groups: int = setting(8, ge=1, doc="group-norm groups")


@dataclass
class TinyVAESpec(Validated):
    """An ``AutoencoderKL``; each level after the first halves the resolution (64 px, 3 levels -> 16x16)."""

    config_key = "model.vae"

    block_out_channels: list[int] = setting(
        default_factory=lambda: [32, 64, 64],
        nonempty=True,
        doc="channels per level; each level after the first halves the resolution",
    )
    layers_per_block: int = setting(1, ge=1, doc="ResNet layers per level")
    latent_channels: int = setting(4, ge=1, doc="latent channels")
    norm_num_groups: int = setting(8, ge=1, doc="group-norm groups")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def build(self, resolution: int) -> AutoencoderKL:
        levels = len(self.block_out_channels)
        return AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups, sample_size=resolution,
        )  # fmt: skip


@dataclass
class TinyTextSpec(Validated):
    config_key = "model.text_encoder"

    hidden_size: int = setting(64, ge=1, doc="width of the CLIP text encoder")
    intermediate_size: int = setting(128, ge=1, doc="width of its feed-forward layers")
    num_hidden_layers: int = setting(2, ge=1, doc="depth")
    num_attention_heads: int = setting(4, ge=1, doc="attention heads")
    max_length: int = setting(32, ge=4, doc="prompt tokens")
    vocab_size: int = setting(512, ge=259, doc="byte-level BPE vocabulary (>= 259: 256 bytes + 3 special tokens)")


@dataclass
class TinySchedulerSpec(Validated):
    config_key = "model.scheduler"

    num_train_timesteps: int = setting(1000, ge=2, doc="diffusion timesteps of the training noise schedule")
    beta_schedule: str = setting("squaredcos_cap_v2", doc="diffusers' beta schedule name")
    prediction_type: Literal["epsilon", "v_prediction"] = setting("epsilon", doc="what the UNet predicts")
    clip_sample: bool = setting(True, doc="clip x0 to [-1, 1] while sampling (pixels are bounded, latents are not)")
    rescale_betas_zero_snr: bool = setting(
        False,
        doc="zero terminal SNR (Lin et al. 2024): the last training timestep is pure noise, as sampling's first one "
        "is, so the prompt (not the initial noise) decides an image's layout and colours; needs v_prediction",
    )
    timestep_spacing: Literal["leading", "trailing", "linspace"] = setting(
        "leading", doc="where sampling's timesteps fall (diffusers' name); `trailing` starts at the last one"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ConfigError(
                "model.scheduler.rescale_betas_zero_snr: needs prediction_type: v_prediction (epsilon cannot be "
                "predicted from pure noise)"
            )


def build_tiny_model(
    resolution: int = 32,
    unet: TinyUNetSpec | dict | None = None,
    text_encoder: TinyTextSpec | dict | None = None,
    scheduler: TinySchedulerSpec | dict | None = None,
    sampler: SamplerConfig | dict | None = None,
    seed: int = 0,
    vae: TinyVAESpec | dict | None = None,
) -> DiffusionModel:
    """Random-init tiny model (latent when ``vae`` is given); the same arguments always give the same weights."""
    u = from_mapping(TinyUNetSpec, unet)
    v = None if vae is None else from_mapping(TinyVAESpec, vae)
    t = from_mapping(TinyTextSpec, text_encoder)
    s = from_mapping(TinySchedulerSpec, scheduler)
    levels = len(u.block_out_channels)
    if not (len(u.down_block_types) == len(u.up_block_types) == levels):
        raise ConfigError(
            "model.unet: block_out_channels, down_block_types and up_block_types must have the same length"
        )
    down = v.downsampling if v else 1
    if resolution % down or (resolution // down) % (2 ** (levels - 1)):
        raise ConfigError(
            f"model.resolution: {resolution} must be divisible by {down * 2 ** (levels - 1)} "
            "(the VAE's and the UNet's downsampling)"
        )
    channels = v.latent_channels if v else 3
    tokenizer = build_tokenizer(DEFAULT_WORDS, vocab_size=t.vocab_size, max_length=t.max_length)
    with torch.random.fork_rng(devices=[]):  # the init draws from its own seed, not the caller's stream
        torch.manual_seed(seed)
        text_model = _text_encoder(t, tokenizer)
        vae_model = v.build(resolution) if v else None
        unet_model = UNet2DConditionModel(
            sample_size=resolution // down, in_channels=channels, out_channels=channels,
            block_out_channels=tuple(u.block_out_channels),
            down_block_types=tuple(u.down_block_types), up_block_types=tuple(u.up_block_types),
            layers_per_block=u.layers_per_block, cross_attention_dim=t.hidden_size,
            attention_head_dim=u.attention_head_dim, norm_num_groups=u.norm_num_groups,
        )  # fmt: skip
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=s.num_train_timesteps,
        beta_schedule=s.beta_schedule,
        prediction_type=s.prediction_type,
        clip_sample=s.clip_sample,
        rescale_betas_zero_snr=s.rescale_betas_zero_snr,
        timestep_spacing=s.timestep_spacing,
    )
    return DiffusionModel(
        unet_model, text_model, tokenizer, noise_scheduler, vae=vae_model, resolution=resolution,
        sampler=from_mapping(SamplerConfig, sampler),
    )  # fmt: skip


def _text_encoder(t: TinyTextSpec, tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    return CLIPTextModel(
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
