"""Stable Signature's message extractor: a HiDDeN encoder / decoder pair trained on the owner's images.

Stable Signature (Fernandez et al., ICCV 2023) first trains HiDDeN (Zhu et al., 2018) to hide bits in
images, keeps only its decoder (the extractor) and whitens its outputs on unmarked images, so the bits it
reads from any image that does not carry a message are balanced. Stage 2 (``stable_signature``) then
teaches the VAE decoder to draw images the extractor reads as the owner's message. The extractor is
message-independent and cached per owner data, resolution and seed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from torch import nn

from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import ImageTransform, make_image_transforms
from adaptguard.training import final_terms, fit

log = logging.getLogger(__name__)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """HiDDeN's building block: 3x3 conv, batch norm, GELU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, eps=1e-3), nn.GELU())


MAP = 8  # the side of the encoder's message map (upsampled to the image)


class HiddenEncoder(nn.Module):
    """(image, bits) -> a residual in [-1, 1]: image features, concatenated with a map of the bits and the
    image itself, mapped back to 3 channels (HiDDeN's encoder, tanh output). HiDDeN repeats each bit as a
    constant plane; on flat images that cannot draw a pattern, so a linear layer maps the bits to a
    ``MAP x MAP`` map first (as MBRS's message processor does)."""

    def __init__(self, bits: int, depth: int, channels: int) -> None:
        super().__init__()
        self.message = nn.Linear(bits, channels * MAP * MAP)
        self.features = nn.Sequential(_block(3, channels), *[_block(channels, channels) for _ in range(depth - 1)])
        self.mix = _block(2 * channels + 3, channels)
        self.out = nn.Conv2d(channels, 3, 1)

    def forward(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        m = self.message(bits.float() * 2 - 1).view(len(bits), -1, MAP, MAP)
        m = F.interpolate(m, size=images.shape[-2:], mode="nearest")
        return torch.tanh(self.out(self.mix(torch.cat([m, self.features(images), images], 1))))


class HiddenDecoder(nn.Module):
    """image -> bit logits: conv blocks to ``bits`` channels, average pooling to ``pool x pool`` (HiDDeN: 1,
    a global pool), a linear layer, and the whitening (identity until :func:`whiten` fits it)."""

    def __init__(self, bits: int, depth: int, channels: int, pool: int = 1) -> None:
        super().__init__()
        blocks = [_block(3, channels), *[_block(channels, channels) for _ in range(depth - 1)], _block(channels, bits)]
        self.layers = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.linear = nn.Linear(bits * pool * pool, bits)
        self.whitening = nn.Linear(bits, bits)
        nn.init.eye_(self.whitening.weight)
        nn.init.zeros_(self.whitening.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.whitening(self.linear(self.layers(images.float())))

    @torch.no_grad()
    def read_bits(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, bits) uint8."""
        device = next(self.parameters()).device
        return torch.cat([(self(c.to(device)) > 0).to(torch.uint8).cpu() for c in images.split(batch_size)])


@torch.no_grad()
def whiten(decoder: HiddenDecoder, images: torch.Tensor, eps: float = 1e-3) -> dict[str, float]:
    """Fit the decoder's last linear map so its outputs on ``images`` (unmarked) have zero mean and identity
    covariance, as the reference does before stage 2. The reference whitens in the PCA basis; we use ZCA
    (the same up to a rotation, which stage 2 does not care about) so output i still reads HiDDeN's bit i.
    ``eps`` (relative to the mean eigenvalue) keeps it finite with fewer images than bits. Returns the mean
    bit bias |P(bit = 1) - 1/2| on those images before and after."""
    decoder.eval()
    nn.init.eye_(decoder.whitening.weight)
    nn.init.zeros_(decoder.whitening.bias)
    ys = torch.cat([decoder(c) for c in images.split(64)]).double()
    before = float((ys > 0).double().mean(0).sub(0.5).abs().mean())
    mean = ys.mean(0, keepdim=True)
    centred = ys - mean
    cov = centred.T @ centred / max(1, len(ys) - 1)
    e, v = torch.linalg.eigh(cov)
    e = e.clamp_min(0) + eps * float(e.clamp_min(0).mean()) + 1e-12
    weight = v @ torch.diag(e.rsqrt()) @ v.T
    decoder.whitening.weight.copy_(weight.float())
    decoder.whitening.bias.copy_((-(mean @ weight.T)).squeeze(0).float())
    after = float((decoder(images[:256]) > 0).double().mean(0).sub(0.5).abs().mean())
    return {"bit_bias_before": before, "bit_bias_after": after}


@dataclass
class ExtractorConfig(Validated):
    """HiDDeN settings. Reference (the authors' hidden/ code, 48 bits): depth 8, 64 channels, 128-px images,
    batch 16, Adam 400 epochs on COCO, random crop / resize / blur / JPEG / rotation / colour jitter
    between encoder and decoder; scaled down here for CPU budgets."""

    config_key = "defense.extractor"

    bits: int = setting(48, ge=1, doc="message length (reference: 48)")
    depth: int = setting(3, ge=1, doc="conv blocks of the encoder and the decoder (reference: 8)")
    channels: int = setting(32, ge=1, doc="their width (reference: 64)")
    pool: int = setting(
        4, ge=1, doc="the decoder averages its features to pool x pool before its linear layer (reference: 1)"
    )
    strength: float = setting(
        0.2,
        gt=0,
        doc="scale of the encoder's residual in [-1, 1] pixels: how faint a message the decoder learns to read",
    )
    steps: int = setting(600, ge=1, doc="optimizer steps")
    batch_size: int = setting(32, ge=1, doc="batch")
    lr: float = setting(3e-3, gt=0, doc="AdamW, cosine decay")
    image_weight: float = setting(0.0, ge=0, doc="image MSE weight of the encoder (reference: 0)")
    distortions: list[Any] = setting(
        default_factory=list,
        doc="image transforms between encoder and decoder, one per batch, e.g. [jpeg, blur] "
        "([names](../attacks.md#image-attacks); reference: crop, resize, blur, JPEG, rotation, colour jitter)",
    )
    whiten: bool = setting(
        True, doc="whiten the decoder's outputs on the owner's unmarked images (reference: PCA; ours: ZCA, same bits)"
    )
    split: str = setting("owner", doc="images it trains and whitens on")

    def __post_init__(self) -> None:
        super().__post_init__()
        make_image_transforms(self.distortions, "defense.extractor.distortions")  # fail on bad names now


class HiddenModule(L.LightningModule):
    """BCE on a fresh random message per image (+ ``image_weight`` x MSE to the cover image)."""

    def __init__(self, cfg: ExtractorConfig, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = HiddenEncoder(cfg.bits, cfg.depth, cfg.channels)
        self.decoder = HiddenDecoder(cfg.bits, cfg.depth, cfg.channels, cfg.pool)
        self.distortions: list[ImageTransform] = make_image_transforms(cfg.distortions, "defense.extractor.distortions")
        self.generator = torch.Generator().manual_seed(seed + 41)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        bits = torch.randint(0, 2, (images.shape[0], self.cfg.bits), generator=self.generator).to(images.device)
        marked = (images + self.cfg.strength * self.encoder(images, bits)).clamp(-1, 1)
        if self.distortions:
            pick = int(torch.randint(len(self.distortions), (1,), generator=self.generator))
            marked = self.distortions[pick](marked, generator=self.generator)
        logits = self.decoder(marked)
        bce = F.binary_cross_entropy_with_logits(logits, bits.float())
        loss = bce + self.cfg.image_weight * F.mse_loss(marked, images) if self.cfg.image_weight else bce
        acc = ((logits > 0) == bits.bool()).float().mean()
        self.log_dict({"extractor/bce": bce.detach(), "extractor/bit_acc": acc}, prog_bar=True,
                      batch_size=images.shape[0])  # fmt: skip
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW([*self.encoder.parameters(), *self.decoder.parameters()], lr=self.cfg.lr)
        sched = get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=self.cfg.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class Extractor:
    """The trained, whitened decoder as the owner keeps it (in the key)."""

    decoder: HiddenDecoder
    info: dict[str, Any]

    def state(self) -> dict[str, Any]:
        return {"decoder": self.decoder.state_dict(), "info": self.info}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Extractor:
        cfg = ExtractorConfig(**state["info"]["config"])
        decoder = HiddenDecoder(cfg.bits, cfg.depth, cfg.channels, cfg.pool)
        decoder.load_state_dict(state["decoder"])
        return cls(decoder.eval().requires_grad_(False), state["info"])


def train_extractor(
    cfg: ExtractorConfig, resolution: int, data: CaptionedImageDataModule, ctx: RunContext
) -> Extractor:
    """Train HiDDeN on the owner's images and whiten its decoder (or load both from the cache)."""
    spec = {"extractor": asdict(cfg), "resolution": resolution, "data": data.describe(), "seed": ctx.seed}

    def build(work: Path) -> None:
        L.seed_everything(ctx.seed, verbose=False)
        module = HiddenModule(cfg, ctx.seed)
        loader = data.dataloader(cfg.split, cfg.batch_size)
        trainer = fit(module, loader, cfg.steps, ctx, label="extractor", lr_key="defense.extractor.lr")
        decoder = module.decoder.cpu().eval()
        owner = torch.stack([loader.dataset[i]["image"] for i in range(min(1024, len(loader.dataset)))])
        info: dict[str, Any] = {"config": asdict(cfg), "final_losses": final_terms(trainer, "extractor")}
        encoder = module.encoder.cpu().eval()
        info["marked_bit_accuracy_unwhitened"] = _marked_accuracy(encoder, decoder, owner, cfg, ctx.seed)
        if cfg.whiten:
            info["whitening"] = whiten(decoder, owner)
        info["marked_bit_accuracy"] = _marked_accuracy(encoder, decoder, owner, cfg, ctx.seed)
        torch.save(Extractor(decoder, info).state(), work / "extractor.pt")

    folder = ctx.cache.get_or_build("extractor", spec, build, private=True, code=(train_extractor, data))
    return Extractor.from_state(torch.load(folder / "extractor.pt", weights_only=True))


@torch.no_grad()
def _marked_accuracy(
    encoder: HiddenEncoder, decoder: HiddenDecoder, images: torch.Tensor, cfg: ExtractorConfig, seed: int
) -> float:
    """Bit accuracy of the (whitened) decoder on images HiDDeN's own encoder marked: what stage 2 can aim at."""
    bits = torch.randint(0, 2, (len(images), cfg.bits), generator=torch.Generator().manual_seed(seed + 43))
    marked = (images + cfg.strength * encoder(images, bits)).clamp(-1, 1)
    return float((decoder.read_bits(marked) == bits).float().mean())
