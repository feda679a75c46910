"""Swapping the VAE, as users do with Stable Diffusion's ft-MSE VAE: the natural attack on decoder watermarks.

The replacement keeps the latent space (the denoiser still works) and changes the decoder that draws the
images: ``finetuned`` fine-tunes the published VAE's decoder on the attacker's images with its encoder
frozen, as Stability's ft-MSE / ft-EMA VAEs were made; ``base`` takes the never-protected base model's VAE;
a folder gives any ``AutoencoderKL`` (a ``vae/`` folder, or a pipeline folder holding one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from diffusers import AutoencoderKL

from adaptguard.attacks.base import SourcedAttack
from adaptguard.attacks.finetune import FineTuning, FullFineTune
from adaptguard.core.config import key_docs, setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import read_autoencoder
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training.autoencoder import AutoencoderModule
from adaptguard.training.loop import fit


@dataclass
class VaeSwap(SourcedAttack):
    vae: str = setting(
        "finetuned",
        doc="the replacement: `finetuned` (the published decoder fine-tuned on the attacker's images, encoder "
        "frozen), `base` (the never-protected base's VAE) or an AutoencoderKL folder (or a pipeline folder with vae/)",
    )
    # vae=finetuned: the decoder's training (AdamW, cosine decay), with the fine-tuning attacks' keys
    steps: int = setting(200, ge=1, doc=key_docs(FineTuning)["steps"])
    batch_size: int = setting(16, ge=1, doc=key_docs(FineTuning)["batch_size"])
    lr: float = setting(1e-4, gt=0, doc=key_docs(FineTuning)["lr"])
    split: str = setting("attacker", doc=key_docs(FullFineTune)["split"])
    name: str = setting("vae_swap", doc="label in results and logs")
    source_key: ClassVar[str] = "vae"
    trained_source: ClassVar[str] = "finetuned"
    report_options: ClassVar[tuple[str, ...]] = ("vae", "steps", "lr")

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        if model.vae is None:
            raise ConfigError(f"attack=vae_swap: model {type(model).__name__} works in pixel space and has no VAE "
                              "to swap; use a latent model")  # fmt: skip
        swapped = model.clone()
        if self.vae == "finetuned":
            swapped.vae.requires_grad_(True).train()
            module = AutoencoderModule(swapped.vae, self.lr, 0.0, self.steps, decoder_only=True)
            fit(module, data.dataloader(self.split, self.batch_size), self.steps, ctx, label="attack vae",
                lr_key="attack.lr")  # fmt: skip
            swapped.vae = module.vae.to(model.device)
            trained = sum(p.numel() for p in module.trained_parameters())
            self._cost = {"vae": "finetuned", "trainable_params": trained}
        elif self.vae == "base":
            if ctx.base_model is None or ctx.base_model.vae is None:
                raise ConfigError("attack.vae: base needs the experiment's base model; outside an experiment, "
                                  "give a folder")  # fmt: skip
            swapped.vae = copy.deepcopy(ctx.base_model.vae)
            self._cost = {"vae": "base", "trainable_params": 0}
        else:
            swapped.vae = self._load(Path(self.vae).expanduser(), model).to(model.device)
            self._cost = {"vae": str(self.vae), "trainable_params": 0}
        swapped.vae.requires_grad_(False).eval()
        return swapped

    def _load(self, path: Path, model: DiffusionModel) -> AutoencoderKL:
        vae = read_autoencoder(path, "attack.vae")
        if vae.config.latent_channels != model.vae.config.latent_channels:
            raise ConfigError(f"attack.vae: {path} has {vae.config.latent_channels} latent channels, the model "
                              f"{model.vae.config.latent_channels}: its latent space is not this model's")  # fmt: skip
        return vae
