"""Stage 1 of pretraining a latent model: the VAE, then the latent scale and a latent cache.

As for Stable Diffusion, the autoencoder is trained first (reconstruction plus a small KL
term), frozen, and its latents are scaled to unit variance (``scaling_factor`` measured on
the data) before the UNet learns to denoise them. The UNet stage then reads cached
posteriors instead of running the encoder every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


class AutoencoderModule(L.LightningModule):
    """Reconstruction (MSE + L1) plus ``kl_weight`` x KL; no adversarial or perceptual term at this scale.

    ``crop``: train on random square crops (the VAE is convolutional; SD's was trained on 256-px
    crops and runs at 512), so a 64-px autoencoder trains at the cost of a 32-px one.
    """

    def __init__(self, vae: AutoencoderKL, lr: float, kl_weight: float, max_steps: int, warmup_steps: int = 0,
                 crop: int | None = None, decoder_only: bool = False):  # fmt: skip
        """``decoder_only``: the encoder (and so the latent space) stays fixed and only the decoder trains on
        reconstruction, as Stable Diffusion's ft-MSE / ft-EMA VAEs were made: a drop-in replacement VAE."""
        super().__init__()
        self.vae = vae
        self.lr = lr
        self.kl_weight = kl_weight
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.crop = crop
        self.decoder_only = decoder_only

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        if self.crop and self.crop < x.shape[-1]:
            i, j = torch.randint(0, x.shape[-1] - self.crop + 1, (2,)).tolist()
            x = x[..., i : i + self.crop, j : j + self.crop]
        with torch.no_grad() if self.decoder_only else nullcontext():
            posterior = self.vae.encode(x).latent_dist
            z = posterior.sample()
        recon = self.vae.decode(z).sample
        rec = F.mse_loss(recon, x) + F.l1_loss(recon, x)
        loss = rec if self.decoder_only else rec + self.kl_weight * posterior.kl().mean() / x[0].numel()
        self.log_dict({"vae/loss": loss.detach(), "vae/rec": rec.detach()}, prog_bar=True, batch_size=x.shape[0])
        return loss

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        parts = (self.vae.decoder, self.vae.post_quant_conv) if self.decoder_only else (self.vae,)
        return [p for part in parts if part is not None for p in part.parameters()]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.trained_parameters(), lr=self.lr, weight_decay=0.0)
        scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=self.warmup_steps,
                                  num_training_steps=self.max_steps)  # fmt: skip
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CachedLatents(Dataset):
    """A split's VAE posteriors (mean, std) and captions: the UNet stage samples latents from them."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, captions: list[str]) -> None:
        self.mean, self.std, self.captions = mean, std, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"latent_mean": self.mean[i], "latent_std": self.std[i], "caption": self.captions[i]}


@torch.no_grad()
def cache_latents(vae: AutoencoderKL, dataset: Dataset, batch_size: int = 64, progress: bool = True) -> CachedLatents:
    """Encode every item of ``dataset`` once (unscaled posteriors; the scale is applied when sampling)."""
    vae.eval()
    means, stds, captions = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="caching latents", disable=not progress, leave=False):
        dist = vae.encode(batch["image"].to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
        captions.extend(batch["caption"])
    return CachedLatents(torch.cat(means), torch.cat(stds), captions)


def latent_scale(latents: CachedLatents, generator: torch.Generator, n: int = 1024) -> float:
    """1 / std of sampled latents, the value SD's ``scaling_factor`` holds (0.18215 for SD 1.x)."""
    return float(1.0 / _latent_sample(latents, generator, n).std())


def latent_mean(latents: CachedLatents, generator: torch.Generator, n: int = 1024) -> float:
    """The mean of sampled latents, the value SD3's ``shift_factor`` holds (0.0609 for SD3)."""
    return float(_latent_sample(latents, generator, n).mean())


def _latent_sample(latents: CachedLatents, generator: torch.Generator, n: int) -> torch.Tensor:
    idx = torch.randperm(len(latents), generator=generator)[:n]
    mean, std = latents.mean[idx], latents.std[idx]
    return mean + std * torch.randn(mean.shape, generator=generator)
