"""The tiny diffusion transformers (``model=tiny_dit`` / ``micro_dit``), built from config with random weights.

They have Stable Diffusion 3's structure (:mod:`adaptguard.models.sd3`) at a size 2 CPU cores can train:
an ``SD3Transformer2DModel`` over 2x2 patches of a 16-channel latent, two CLIP text encoders with
projection and a T5 encoder (diffusers' SD3 pipeline and LoRA script load all three), a VAE with SD3's
latent channels and a shift, and ``FlowMatchEulerDiscreteScheduler`` with SD3's shift of the schedule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from adaptguard.core.config import Validated, from_mapping, setting
from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import SamplerConfig
from adaptguard.models.sd3 import SD3Model
from adaptguard.models.tiny import TinyTextSpec, TinyVAESpec
from adaptguard.models.tokenizer import DEFAULT_WORDS, build_t5_tokenizer, build_tokenizer


@dataclass
class TinyTransformerSpec(Validated):
    """An ``SD3Transformer2DModel``: joint attention over image patches and prompt tokens in every block."""

    config_key = "model.transformer"

    num_layers: int = setting(4, ge=1, doc="joint transformer blocks")
    num_attention_heads: int = setting(4, ge=1, doc="attention heads")
    attention_head_dim: int = setting(16, ge=1, doc="head size (the width is heads x head size)")
    patch_size: int = setting(2, ge=1, doc="latent pixels per patch side")
    caption_projection_dim: int | None = setting(None, doc="prompt tokens' width inside the blocks (null: the width)")
    qk_norm: str | None = setting(None, doc="`rms_norm` as in SD 3.5, or null as in SD3")


@dataclass
class TinyT5Spec(Validated):
    config_key = "model.t5"

    d_model: int = setting(64, ge=1, doc="T5's width: the width of SD3's prompt tokens (joint_attention_dim)")
    d_ff: int = setting(128, ge=1, doc="feed-forward width")
    num_layers: int = setting(2, ge=1, doc="depth")
    num_heads: int = setting(4, ge=1, doc="attention heads")
    max_length: int = setting(32, ge=4, doc="prompt tokens (diffusers' `max_sequence_length`)")


@dataclass
class FlowSchedulerSpec(Validated):
    config_key = "model.scheduler"

    num_train_timesteps: int = setting(1000, ge=2, doc="training timesteps (t = 1000 s, s the noise level)")
    shift: float = setting(3.0, gt=0, doc="SD3's shift of the noise levels towards noise (3.0 in SD3)")


def build_tiny_dit(
    resolution: int,
    transformer: TinyTransformerSpec | dict | None = None,
    text_encoder: TinyTextSpec | dict | None = None,
    t5: TinyT5Spec | dict | None = None,
    scheduler: FlowSchedulerSpec | dict | None = None,
    sampler: SamplerConfig | dict | None = None,
    seed: int = 0,
    vae: TinyVAESpec | dict | None = None,
) -> SD3Model:
    """Random-init tiny SD3-style model; the same arguments always give the same weights."""
    d = from_mapping(TinyTransformerSpec, transformer)
    t = from_mapping(TinyTextSpec, text_encoder)
    t5_spec = from_mapping(TinyT5Spec, t5)
    s = from_mapping(FlowSchedulerSpec, scheduler)
    v = from_mapping(TinyVAESpec, sd3_vae(vae))
    latent = resolution // v.downsampling
    if resolution % v.downsampling or latent % d.patch_size:
        raise ConfigError(f"model.resolution: {resolution} must be divisible by {v.downsampling * d.patch_size} "
                          "(the VAE's downsampling times the transformer's patch size)")  # fmt: skip
    if 2 * t.hidden_size > t5_spec.d_model:
        raise ConfigError(f"model.t5.d_model: {t5_spec.d_model} is narrower than the two CLIP encoders side by side "
                          f"(2 x model.text_encoder.hidden_size = {2 * t.hidden_size}); SD3 pads them to T5's width")  # fmt: skip
    tokenizer = build_tokenizer(DEFAULT_WORDS, vocab_size=t.vocab_size, max_length=t.max_length)
    t5_tokenizer = build_t5_tokenizer(DEFAULT_WORDS, max_length=t5_spec.max_length)
    width = d.num_attention_heads * d.attention_head_dim
    with torch.random.fork_rng(devices=[]):  # the init draws from its own seed, not the caller's stream
        torch.manual_seed(seed)
        clips = [_clip(t, tokenizer) for _ in range(2)]
        t5_model = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=t5_spec.d_model, d_ff=t5_spec.d_ff,
                                           d_kv=t5_spec.d_model // t5_spec.num_heads, num_layers=t5_spec.num_layers,
                                           num_heads=t5_spec.num_heads, pad_token_id=t5_tokenizer.pad_token_id,
                                           eos_token_id=t5_tokenizer.eos_token_id))  # fmt: skip
        vae_model = v.build(resolution)
        vae_model.register_to_config(shift_factor=0.0)  # SD3's VAE shifts its latents; measured in pretraining
        model = SD3Transformer2DModel(
            sample_size=latent, patch_size=d.patch_size, in_channels=v.latent_channels, out_channels=v.latent_channels,
            num_layers=d.num_layers, attention_head_dim=d.attention_head_dim, num_attention_heads=d.num_attention_heads,
            joint_attention_dim=t5_spec.d_model, caption_projection_dim=d.caption_projection_dim or width,
            pooled_projection_dim=2 * t.hidden_size, pos_embed_max_size=latent // d.patch_size, qk_norm=d.qk_norm,
        )  # fmt: skip
    noise_scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=s.num_train_timesteps, shift=s.shift)
    return SD3Model(model, [*clips, t5_model], [tokenizer, tokenizer, t5_tokenizer], noise_scheduler, vae_model,
                    resolution, from_mapping(SamplerConfig, sampler), t5_length=t5_spec.max_length)  # fmt: skip


def sd3_vae(vae: TinyVAESpec | dict | None) -> dict:
    """The VAE spec with SD3's 16 latent channels unless it says otherwise."""
    given = asdict(vae) if isinstance(vae, TinyVAESpec) else dict(vae or {})
    return {"latent_channels": 16, **given}


# SD3's CLIP encoders take 77 tokens, and diffusers' SD3 scripts pad to 77 whatever the tokenizer says; the
# pipeline and adaptguard use the tokenizer's `model_max_length` (`model.text_encoder.max_length`)
CLIP_POSITIONS = 77


def _clip(t: TinyTextSpec, tokenizer) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        max_position_embeddings=max(CLIP_POSITIONS, t.max_length), projection_dim=t.hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
