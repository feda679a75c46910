"""Stable Diffusion 3's structure: a diffusion transformer trained by flow matching.

``SD3Model`` is the bundle every defense and attack works on (:class:`~adaptguard.models.bundle.DiffusionModel`)
with SD3's parts: an ``SD3Transformer2DModel`` in the denoiser slot (``model.unet``: the name the code
path has always used for "the network that denoises"), two CLIP text encoders with projection and a T5
encoder, a 16-channel VAE with a shift and a scale, and ``FlowMatchEulerDiscreteScheduler``. Its folders
are ``StableDiffusion3Pipeline`` folders, so diffusers (and its SD3 LoRA script) open them.

The prompt conditioning is one tensor, as for the UNet: SD3's token sequence (the two CLIP encoders'
penultimate hidden states side by side, zero-padded to the T5 width, then T5's tokens) followed by one row
that carries the pooled CLIP projections (zero-padded). Every code path that concatenates, expands or
caches prompt embeddings keeps working; :meth:`SD3Model.denoiser_inputs` splits the row off again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import AutoTokenizer, CLIPTextModelWithProjection, PreTrainedTokenizerBase, T5EncoderModel

from adaptguard.models.bundle import FOLDER_FORMATS, META_FILE, DiffusionModel, SamplerConfig, portable_folder

FAMILY = "sd3"


class SD3Model(DiffusionModel):
    """SD3 transformer + CLIP-L/G-style encoders + T5 (+ VAE), trained by flow matching."""

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text_encoders: Sequence[torch.nn.Module],
        tokenizers: Sequence[PreTrainedTokenizerBase],
        noise_scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        resolution: int,
        sampler: SamplerConfig | None = None,
        gradient_checkpointing: bool = False,
        t5_length: int | None = None,
    ) -> None:
        super().__init__(transformer, text_encoders[0], tokenizers[0], noise_scheduler, vae=vae,  # type: ignore[arg-type]
                         resolution=resolution, sampler=sampler, gradient_checkpointing=gradient_checkpointing)  # fmt: skip
        self.text_encoder_2, self.text_encoder_3 = text_encoders[1], text_encoders[2]
        self.tokenizer_2, self.tokenizer_3 = tokenizers[1], tokenizers[2]
        self.t5_length = t5_length or self.tokenizer_3.model_max_length  # diffusers' max_sequence_length

    # ----------------------------------------------------------------- text
    def _ids(self, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], length: int) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt").input_ids.to(self.device)  # fmt: skip

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, CLIP tokens + T5 tokens + 1, T5 width): StableDiffusion3Pipeline.encode_prompt's tensors, packed."""
        width = self.unet.config.joint_attention_dim
        states, pooled = [], []
        for encoder, tokenizer in ((self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)):
            out = encoder(self._ids(tokenizer, prompts, tokenizer.model_max_length), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(states, dim=-1)
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        t5 = self.text_encoder_3(self._ids(self.tokenizer_3, prompts, self.t5_length))[0].to(clip.dtype)
        pooled_row = torch.cat(pooled, dim=-1)
        pooled_row = F.pad(pooled_row, (0, width - pooled_row.shape[-1]))[:, None]
        return torch.cat([clip, t5, pooled_row], dim=-2)

    def denoiser_inputs(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The transformer's arguments: the packed conditioning split back into tokens and the pooled row."""
        pooled = embeddings[:, -1, : self.unet.config.pooled_projection_dim]
        timesteps = timesteps.expand(noisy.shape[0]) if timesteps.ndim == 0 else timesteps
        return (), {"hidden_states": noisy, "timestep": timesteps, "encoder_hidden_states": embeddings[:, :-1],
                    "pooled_projections": pooled}  # fmt: skip

    # ----------------------------------------------------------------- sampling
    def make_sampler(self, name: str | None = None):
        return FlowMatchEulerDiscreteScheduler.from_config(self.noise_scheduler.config)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """A ``StableDiffusion3Pipeline`` folder plus ``adaptguard.json``."""
        from diffusers import StableDiffusion3Pipeline

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        StableDiffusion3Pipeline(
            transformer=self.unet, scheduler=self.noise_scheduler, vae=self.vae,
            text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3,
        ).save_pretrained(path)  # fmt: skip
        portable_folder(path)
        meta = {"format": 1, "kind": "latent", "family": FAMILY, "resolution": self.resolution,
                "sampler": asdict(self.sampler), "t5_length": self.t5_length}  # fmt: skip
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load_sd3(
        cls, path: Path, meta: dict, resolution: int | None, sampler: SamplerConfig | None, kw: dict
    ) -> SD3Model:
        transformer = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer", **kw)
        encoders = [CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder", **kw),
                    CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw),
                    T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3", **kw)]  # fmt: skip
        tokenizers = [
            AutoTokenizer.from_pretrained(path, subfolder=s) for s in ("tokenizer", "tokenizer_2", "tokenizer_3")
        ]
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        if resolution is None:
            resolution = meta.get("resolution") or transformer.config.sample_size * 2 ** (
                len(vae.config.block_out_channels) - 1
            )
        if sampler is None:
            sampler = (
                SamplerConfig(**meta["sampler"])
                if "sampler" in meta
                else SamplerConfig(name="euler", steps=28, guidance_scale=7.0)
            )
        return cls(transformer, encoders, tokenizers, scheduler, vae, resolution, sampler,
                   t5_length=meta.get("t5_length") or 256)  # fmt: skip


def is_sd3_folder(path: Path) -> bool:
    return (path / "transformer").is_dir() and (path / "text_encoder_3").is_dir()


FOLDER_FORMATS.append((is_sd3_folder, SD3Model.load_sd3))
