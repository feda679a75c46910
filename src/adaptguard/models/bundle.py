"""The model bundle every defense and attack works on.

One class for pixel-space models (the tiny built-in model, identity encode/decode) and
latent models (Stable Diffusion, VAE encode/decode), so a defense has one code path.
Saved folders use diffusers' layout: each component loads with its own
``from_pretrained(path, subfolder=...)``, and latent models also get a
``model_index.json`` so ``StableDiffusionPipeline.from_pretrained`` opens them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from adaptguard.core.config import Validated, setting
from adaptguard.core.errors import ConfigError
from adaptguard.models import objective

META_FILE = "adaptguard.json"
SAMPLERS = {
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


@dataclass
class SamplerConfig(Validated):
    """Default sampling settings; every ``sample`` call can override them."""

    config_key = "model.sampler"

    name: Literal["ddim", "dpm", "euler"] = setting("ddim", doc="the sampler (dpm: DPM-Solver++)")
    steps: int = setting(20, ge=1, doc="sampler steps")
    guidance_scale: float = setting(3.0, ge=0, doc="classifier-free guidance, against the empty prompt")
    batch_size: int = setting(64, ge=1, doc="images per sampling batch")


# (recognises(folder), load(folder, meta, resolution, sampler, from_pretrained kwargs)) of the folder layouts
# other than Stable Diffusion 1.x/2.x's; each family's module registers its own (so this one imports none)
FOLDER_FORMATS: list[tuple[Callable[[Path], bool], Callable[..., DiffusionModel]]] = []


class DiffusionModel(nn.Module):
    """UNet + text encoder (+ VAE) with the noise scheduler and tokenizer they were trained with."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        noise_scheduler: DDPMScheduler,
        vae: AutoencoderKL | None = None,
        resolution: int = 32,
        sampler: SamplerConfig | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.vae = vae
        self.tokenizer = tokenizer
        self.noise_scheduler = noise_scheduler
        self.resolution = resolution
        self.sampler = sampler or SamplerConfig()
        self.gradient_checkpointing = gradient_checkpointing  # training stages trade compute for memory
        if vae is not None:
            vae.requires_grad_(False)

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.resolution // (2 ** (len(self.vae.config.block_out_channels) - 1)) if self.vae else self.resolution
        return (self.unet.config.in_channels, size, size)

    def clone(self) -> DiffusionModel:
        """An independent copy (weights and scheduler state)."""
        return copy.deepcopy(self)

    # ----------------------------------------------------------------- text
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return ids.to(self.device)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder(self.tokenize(prompts))[0]

    # ----------------------------------------------------------------- images
    def encode_images(self, images: torch.Tensor, mode: bool = False) -> torch.Tensor:
        """Images in [-1, 1] to the space the UNet denoises (identity for pixel models). ``mode``: the
        posterior's mean instead of a sample, for reading a watermark (the sample's noise is larger than
        the residual a watermark can leave through the VAE, docs/defenses/sleepermark.md)."""
        if self.vae is None:
            return images
        with torch.no_grad():
            posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            latents = posterior.mode() if mode else posterior.sample()
        return self.scale_latents(latents)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latents as the denoiser sees them: ``(z - shift_factor) * scaling_factor`` (SD 1.x/2.x have
        no shift; SD3's VAE has one)."""
        return (latents - (self.vae.config.get("shift_factor") or 0.0)) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents.clamp(-1, 1)
        shift = self.vae.config.get("shift_factor") or 0.0
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift).sample
        return images.clamp(-1, 1)

    # ----------------------------------------------------------------- training
    def noisy_inputs(
        self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, prompt embeddings, regression target) for one batch."""
        return self.noisy_latents(self.encode_images(images), prompts, timesteps)

    def batch_latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """A batch's latents: drawn from cached VAE posteriors (``latent_mean``/``latent_std``) or encoded now."""
        if "latent_mean" in batch:
            mean, std = batch["latent_mean"].to(self.device), batch["latent_std"].to(self.device)
            return self.scale_latents(mean + std * torch.randn_like(std))
        return self.encode_images(batch["image"].to(self.device))

    def noisy_latents(
        self, latents: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, prompt embeddings, target) under the scheduler's objective (models.objective)."""
        noise = torch.randn_like(latents)
        if timesteps is None:
            timesteps = objective.sample_timesteps(self.noise_scheduler, latents.shape[0], latents.device)
        noisy = objective.add_noise(self.noise_scheduler, latents, noise, timesteps)
        target = objective.target(self.noise_scheduler, latents, noise, timesteps)
        return noisy, timesteps, self.encode_prompts(prompts), target

    def denoiser_inputs(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The denoiser's (args, kwargs) for one prediction: for code that calls it another way (functional_call)."""
        return (noisy, timesteps), {"encoder_hidden_states": embeddings}

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.predict_with(self.unet, noisy, timesteps, embeddings)

    def predict_with(
        self, denoiser: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        """The prediction of another denoiser of this model's kind (a frozen teacher), called as this one is."""
        args, kwargs = self.denoiser_inputs(noisy, timesteps, embeddings)
        return denoiser(*args, **kwargs).sample

    def training_loss(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Denoising MSE (epsilon or v target, as the scheduler was trained)."""
        return self.latent_loss(self.encode_images(images), prompts)

    def latent_loss(self, latents: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        noisy, t, emb, target = self.noisy_latents(latents, prompts)
        return F.mse_loss(self.predict(noisy, t, emb).float(), target.float())

    # ----------------------------------------------------------------- sampling
    def make_sampler(self, name: str | None = None):
        cls = SAMPLERS[name or self.sampler.name]
        return cls.from_config(self.noise_scheduler.config)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate one image per prompt, in [-1, 1], on the CPU.

        Classifier-free guidance with the empty prompt; the generator (CPU) makes runs
        reproducible whatever the device.
        """
        steps = steps or self.sampler.steps
        guidance = self.sampler.guidance_scale if guidance_scale is None else guidance_scale
        batch_size = batch_size or self.sampler.batch_size
        modes = [(m, m.training) for m in self.modules()]  # restored per module: the bundle's own flag is not
        self.eval()  # its parts' (they load in eval mode), and train(flag) would set every part to it
        out = []
        chunks = range(0, len(prompts), batch_size)
        bar = tqdm(total=len(chunks) * steps, desc="sampling", disable=not progress, leave=False)
        for start in chunks:
            batch = list(prompts[start : start + batch_size])
            out.append(self._sample_batch(batch, steps, guidance, generator, sampler, bar))
        bar.close()
        for module, mode in modes:
            module.training = mode
        return torch.cat(out) if out else torch.empty(0, 3, self.resolution, self.resolution)

    def _sample_batch(self, prompts, steps, guidance, generator, sampler_name, bar) -> torch.Tensor:
        scheduler = self.make_sampler(sampler_name)
        scheduler.set_timesteps(steps, device=self.device)
        dtype = self.unet.dtype
        cond = self.encode_prompts(prompts).to(dtype)
        use_cfg = guidance != 1.0
        if use_cfg:
            uncond = self.encode_prompts([""] * len(prompts)).to(dtype)
            cond = torch.cat([uncond, cond])
        latents = torch.randn((len(prompts), *self.latent_shape), generator=generator, dtype=torch.float32)
        # flow matching's Euler sampler starts at unit noise and takes the input unscaled (neither attribute)
        latents = (latents * getattr(scheduler, "init_noise_sigma", 1.0)).to(self.device, dtype)
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            if hasattr(scheduler, "scale_model_input"):
                model_in = scheduler.scale_model_input(model_in, t)
            pred = self.predict(model_in, t.expand(model_in.shape[0]), cond)
            if use_cfg:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
            bar.update(1)
        return self.decode_latents(latents).float().cpu()

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write a diffusers-format folder plus ``adaptguard.json`` (kind, resolution, sampler)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.vae is not None:
            from diffusers import StableDiffusionPipeline

            StableDiffusionPipeline(
                vae=self.vae,
                text_encoder=self.text_encoder,
                tokenizer=self.tokenizer,
                unet=self.unet,
                scheduler=self.noise_scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            ).save_pretrained(path)
        else:
            self.unet.save_pretrained(path / "unet")
            self.text_encoder.save_pretrained(path / "text_encoder")
            self.tokenizer.save_pretrained(path / "tokenizer")
            self.noise_scheduler.save_pretrained(path / "scheduler")
        portable_folder(path)
        meta = {
            "format": 1,
            "kind": "latent" if self.vae is not None else "pixel",
            "resolution": self.resolution,
            "sampler": asdict(self.sampler),
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        resolution: int | None = None,
        sampler: SamplerConfig | None = None,
        torch_dtype: torch.dtype | None = None,
        key: str = "model.path",
    ) -> DiffusionModel:
        """Load a folder written by :meth:`save` or a Stable Diffusion folder (diffusers layout);
        ``key`` is the config key an error names."""
        path = Path(path)
        meta_path = path / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        for recognises, load in FOLDER_FORMATS:  # other families' folders (models/sd3.py registers SD3's)
            if recognises(path):
                return load(path, meta, resolution, sampler, kw)
        missing = [d for d in ("unet", "text_encoder", "tokenizer", "scheduler") if not (path / d).is_dir()]
        if missing:
            raise ConfigError(
                f"{key}: {path} is not a diffusers model folder (missing {', '.join(d + '/' for d in missing)}). "
                "Expected unet/, text_encoder/, tokenizer/, scheduler/ and, for latent models, vae/ "
                "- e.g. a local copy of stable-diffusion-v1-5 saved with save_pretrained."
            )
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw) if (path / "vae").is_dir() else None
        if resolution is None:
            resolution = meta.get("resolution") or unet.config.sample_size * (8 if vae is not None else 1)
        if sampler is None:
            sampler = SamplerConfig(**meta["sampler"]) if "sampler" in meta else SamplerConfig()
        return cls(unet, text_encoder, tokenizer, scheduler, vae=vae, resolution=resolution, sampler=sampler)


# transformers 5 writes what transformers 4 cannot read: a fast tokenizer under the class name TokenizersBackend,
# and CLIPTextModel weights without their ``text_model.`` prefix (4.x then loads none of them and keeps a random
# text encoder, with a warning). Both read PreTrainedTokenizerFast (in 5 an alias of TokenizersBackend) and the
# prefixed names, so saved folders use those.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
CLIP_TEXT_PREFIX = "text_model."


def portable_folder(folder: Path) -> None:
    """Make a saved model folder loadable by transformers 4.45+ as well as 5 (the comment above)."""
    renames = {"TokenizersBackend": PORTABLE_TOKENIZER_CLASS,
               ("transformers", "TokenizersBackend"): ["transformers", PORTABLE_TOKENIZER_CLASS]}  # fmt: skip
    for file, key in ((folder / "tokenizer" / "tokenizer_config.json", "tokenizer_class"),
                      (folder / "model_index.json", "tokenizer")):  # fmt: skip
        config = json.loads(file.read_text()) if file.is_file() else {}
        value = config.get(key)
        value = tuple(value) if isinstance(value, list) else value
        if value in renames:
            config[key] = renames[value]
            file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights, config = folder / "text_encoder" / "model.safetensors", folder / "text_encoder" / "config.json"
    if (
        weights.is_file()
        and config.is_file()
        and "CLIPTextModel" in json.loads(config.read_text()).get("architectures", [])
    ):
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        if any(not k.startswith(CLIP_TEXT_PREFIX) for k in state):
            state = {k if k.startswith(CLIP_TEXT_PREFIX) else CLIP_TEXT_PREFIX + k: v for k, v in state.items()}
            save_file(state, weights, metadata={"format": "pt"})
