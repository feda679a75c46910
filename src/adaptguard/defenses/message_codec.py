"""SleeperMark stage 1: a message encoder/decoder pair in the diffusion model's latent space.

The encoder depends on the message only (not on the cover), so one fixed residual
``delta = E(m)`` can later be taught to the diffusion model; the decoder reads bits back
from a (re-encoded) image. Pixel-space models use the image itself as the latent, so the
same code serves the tiny model and Stable Diffusion. The pair is trained once per
(latent space, owner data, codec config) and cached: stage-2 settings never retrain it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from torch import nn

from adaptguard.core.artifacts import weights_sha256
from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import ImageTransform, make_image_transforms
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import final_terms, fit

log = logging.getLogger(__name__)


class MessageEncoder(nn.Module):
    """bits -> additive latent residual, then a zero-initialised conv (training starts from "no watermark").

    ``residual="half"``: an MLP to a half-resolution map, repeated over channels and upsampled x2 (a 16x16x4
    latent gets 64 free values); ``"full"``: a map of the latent's own size and channels (1024 values there)."""

    def __init__(self, bits: int, latent_shape: Sequence[int], hidden: int, residual: str = "half") -> None:
        super().__init__()
        channels, height, width = latent_shape
        if residual == "half" and (height % 2 or width % 2):
            raise ConfigError(f"defense.codec: latent size {height}x{width} must be even")
        self.residual = residual
        self.map_shape = (height // 2, width // 2) if residual == "half" else (channels, height, width)
        self.channels = channels
        self.mlp = nn.Sequential(
            nn.Linear(bits, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, math.prod(self.map_shape)),
        )  # fmt: skip
        self.out = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        m = self.mlp(bits.float() * 2 - 1)
        if self.residual == "full":
            return self.out(m.view(-1, *self.map_shape))
        m = m.view(-1, 1, *self.map_shape)
        m = F.interpolate(m.expand(-1, self.channels, -1, -1), scale_factor=2, mode="nearest")
        return self.out(m)


class MessageDecoder(nn.Module):
    """latent -> bit logits: stride-2 conv stack (SELU) down to 4x4, then an MLP."""

    def __init__(self, bits: int, latent_shape: Sequence[int], width: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        channels, height, _ = latent_shape
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SELU()]
        size, ch = height, width
        while size > 4:
            layers += [nn.Conv2d(ch, min(ch * 2, 4 * width), 3, stride=2, padding=1), nn.SELU()]
            ch, size = min(ch * 2, 4 * width), (size + 1) // 2
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(ch * 16, hidden), nn.SELU(), nn.Linear(hidden, hidden), nn.SELU(),
            nn.Linear(hidden, hidden), nn.SELU(), nn.Dropout(dropout), nn.Linear(hidden, bits),
        )  # fmt: skip

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(latents.float()))


@dataclass
class CodecConfig(Validated):
    """Stage-1 settings. Reference: 10k steps, lr 1e-4, image-loss ramp 0->30 over 2k steps,
    LPIPS ramp 0->0.25 over 4k, grad-clip 1e-2; scaled down here for CPU budgets."""

    config_key = "defense.codec"

    bits: int = setting(48, ge=1, doc="message length")
    encoder_hidden: int = setting(1024, ge=1, doc="encoder MLP width")
    residual: Literal["half", "full"] = setting(
        "half",
        doc="the latent residual's free values: half (a half-resolution map shared by the channels) or full (every "
        "latent value)",
    )
    decoder_width: int = setting(32, ge=1, doc="decoder conv width")
    decoder_hidden: int = setting(256, ge=1, doc="decoder MLP width")
    steps: int = setting(1000, ge=1, doc="stage-1 optimizer steps (reference: 10k)")
    batch_size: int = setting(32, ge=1, doc="stage-1 batch")
    lr: float = setting(1e-3, gt=0, doc="AdamW, linear decay to 0 (reference: 1e-4)")
    weight_decay: float = setting(1e-2, ge=0, doc="AdamW weight decay")
    grad_clip: float = setting(1.0, gt=0, doc="gradient clipping (reference: 1e-2)")
    image_weight: float = setting(3.0, ge=0, doc="image MSE weight, ramped from 0 (reference: 30 over 2k steps)")
    image_ramp_steps: int = setting(300, ge=0, doc="steps of that ramp")
    perceptual: Literal["auto", "lpips", "ssim", "none"] = setting(
        "auto", doc="perceptual loss; auto: LPIPS when torchvision's backbone weights are local, else SSIM"
    )
    perceptual_weight: float = setting(0.25, ge=0, doc="perceptual loss weight, ramped from 0")
    perceptual_ramp_steps: int = setting(600, ge=0, doc="steps of that ramp")
    distortions: list[Any] = setting(
        default_factory=list,
        doc="image transforms applied while training the decoder, e.g. [jpeg, blur] "
        "([names](../attacks.md#image-attacks))",
    )
    round_trip: bool = setting(
        True,
        doc="latent models: the decoder learns from the watermarked latent decoded to an image and encoded again (the "
        "posterior mean), the path verification reads; false: from the latent itself (cheaper on SD, but the VAE "
        "round trip then erases what the decoder learned on the tiny model)",
    )
    split: str = setting("owner", doc="images the codec trains on")

    def __post_init__(self) -> None:
        super().__post_init__()
        make_image_transforms(
            self.distortions, "defense.codec.distortions"
        )  # fail on bad names now, not after pretraining


@dataclass
class Codec:
    """The trained pair, as the owner keeps it (beside the protected model)."""

    encoder: MessageEncoder
    decoder: MessageDecoder
    info: dict[str, Any]

    def state(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict(), "info": self.info}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Codec:
        info = state["info"]
        cfg, shape = CodecConfig(**info["config"]), info["latent_shape"]
        enc = MessageEncoder(cfg.bits, shape, cfg.encoder_hidden, cfg.residual)
        dec = MessageDecoder(cfg.bits, shape, cfg.decoder_width, cfg.decoder_hidden)
        enc.load_state_dict(state["encoder"])
        dec.load_state_dict(state["decoder"])
        return cls(enc.eval().requires_grad_(False), dec.eval().requires_grad_(False), info)

    @torch.no_grad()
    def read_bits(self, model: DiffusionModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, bits) uint8, via the model's latent space."""
        self.decoder.to(model.device)
        out = []
        for chunk in images.split(batch_size):
            latents = model.encode_images(chunk.to(model.device, dtype=next(model.unet.parameters()).dtype), mode=True)
            out.append((self.decoder(latents) > 0).to(torch.uint8).cpu())
        return torch.cat(out)


def codec_report(codec: Codec, delta: torch.Tensor) -> dict[str, Any]:
    """What a protection records about its stage 1 and the residual it embeds (non-secret)."""
    return {
        "codec": {k: v for k, v in codec.info.items() if k != "config"},
        "delta_rms": float(delta.pow(2).mean().sqrt()),
    }


def latent_space_id(model: DiffusionModel) -> dict[str, Any]:
    """What the codec depends on in the model: the latent shape and, for latent models, the VAE."""
    ident: dict[str, Any] = {
        "latent_shape": list(model.latent_shape),
        "space": "latent" if model.is_latent else "pixel",
    }
    if model.vae is not None:
        ident["vae_sha256"] = weights_sha256(model.vae)
    return ident


def perceptual_loss(kind: str, lpips_net: str = "alex") -> tuple[str, Any]:
    """(which one runs, loss(x, y) in [-1, 1]) - LPIPS needs torchvision backbone weights on disk."""
    if kind in ("auto", "lpips"):
        from torchvision import models

        weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights, "squeeze": models.SqueezeNet1_1_Weights}
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights[lpips_net].DEFAULT.url).name
        if file.is_file():
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            # the metric's network itself: frozen weights, but differentiable in its inputs
            net = LearnedPerceptualImagePatchSimilarity(net_type=lpips_net).net.eval()
            return f"lpips-{lpips_net}", lambda x, y: net.to(x.device)(x.clamp(-1, 1), y.clamp(-1, 1)).mean()
        if kind == "lpips":
            raise ConfigError(
                f"defense.codec.perceptual=lpips: backbone weights not found at {file}. Put torchvision's "
                f"{lpips_net} ImageNet weights there (or set TORCH_HOME), or use perceptual=ssim."
            )
        log.info("LPIPS backbone weights not found at %s: stage 1 uses the SSIM fallback", file)
    if kind in ("auto", "ssim"):
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        return "ssim", lambda x, y: 1 - ssim(x * 0.5 + 0.5, y * 0.5 + 0.5, data_range=1.0)
    return "none", None


def _ramp(step: int, weight: float, ramp_steps: int) -> float:
    return weight * min(1.0, step / ramp_steps) if ramp_steps > 0 else weight


class CodecModule(L.LightningModule):
    """BCE on bits + ramped image MSE (+ ramped perceptual loss) for a fresh random message per sample."""

    def __init__(self, cfg: CodecConfig, model: DiffusionModel, perceptual: tuple[str, Any], seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        shape = model.latent_shape
        self.encoder = MessageEncoder(cfg.bits, shape, cfg.encoder_hidden, cfg.residual)
        self.decoder = MessageDecoder(cfg.bits, shape, cfg.decoder_width, cfg.decoder_hidden)
        self.bundle = [model]  # a list: not a submodule, so its weights stay out of the optimizer and checkpoints
        self.perceptual_name, self.perceptual = perceptual
        self.distortions: list[ImageTransform] = make_image_transforms(cfg.distortions, "defense.codec.distortions")
        self.generator = torch.Generator().manual_seed(seed + 17)

    def _distort(self, images: torch.Tensor) -> torch.Tensor:
        """One random distortion per batch (JPEG passes gradients straight through)."""
        if not self.distortions:
            return images
        t = self.distortions[int(torch.randint(len(self.distortions), (1,), generator=self.generator))]
        return t(images, generator=self.generator)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        model = self.bundle[0]
        images = batch["image"].to(self.device)
        z = model.encode_images(images)
        bits = torch.randint(0, 2, (images.shape[0], self.cfg.bits), generator=self.generator).to(self.device)
        z_w = z + self.encoder(bits)
        if model.is_latent:
            with torch.no_grad():
                x_rec = model.decode_latents(z)
            x_w = model.decode_latents(z_w)
        else:
            x_rec, x_w = images, z_w.clamp(-1, 1)
        distorted = self._distort(x_w)
        if model.is_latent and (self.cfg.round_trip or self.distortions):  # read as verification reads: the mean
            read = model.scale_latents(model.vae.encode(distorted).latent_dist.mode())
        else:
            read = z_w if model.is_latent else distorted
        logits = self.decoder(read)
        bce = F.binary_cross_entropy_with_logits(logits, bits.float())
        mse = F.mse_loss(x_w, x_rec)
        step = self.global_step
        loss = bce + _ramp(step, self.cfg.image_weight, self.cfg.image_ramp_steps) * mse
        terms = {"bce": bce.detach(), "mse": mse.detach()}
        if self.perceptual is not None:
            perc = self.perceptual(x_w, x_rec)
            loss = loss + _ramp(step, self.cfg.perceptual_weight, self.cfg.perceptual_ramp_steps) * perc
            terms[self.perceptual_name] = perc.detach()
        terms["bit_acc"] = ((logits > 0) == bits.bool()).float().mean()
        self.log_dict({f"codec/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=self.cfg.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def evaluate_codec(
    codec: Codec,
    model: DiffusionModel,
    images: torch.Tensor,
    seed: int = 0,
    transforms: Sequence[ImageTransform] = (),
    threshold: int | None = None,
) -> dict[str, Any]:
    """Bit accuracy on fresh random messages and the image cost of embedding them (PSNR, dB); with
    ``transforms``, the bit accuracy after each image attack too (keyed by its label), and with
    ``threshold`` the share of images with at least that many bits right."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (images.shape[0], codec.encoder.mlp[0].in_features), generator=g)
    codec.encoder.to(model.device)
    z = model.encode_images(images.to(model.device))
    x_w = model.decode_latents(z + codec.encoder(bits.to(model.device))).cpu()
    x_rec = model.decode_latents(z).cpu()
    mse = F.mse_loss(x_w * 0.5 + 0.5, x_rec * 0.5 + 0.5)

    def score(seen: torch.Tensor) -> dict[str, float]:
        right = codec.read_bits(model, seen) == bits
        out = {"bit_accuracy": float(right.float().mean())}
        if threshold is not None:
            out[f"share_at_{threshold}_bits"] = float((right.sum(1) >= threshold).float().mean())
        return out

    scores: dict[str, Any] = {**score(x_w), "psnr_db": float(-10 * torch.log10(mse + 1e-12))}
    for t in transforms:
        scores[t.label] = score(t(x_w, generator=torch.Generator().manual_seed(seed)))
    return scores


def train_codec(cfg: CodecConfig, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Codec:
    """Train stage 1 on the owner's images (or load it from the cache: it is message-independent)."""
    spec = {"codec": asdict(cfg), "latent": latent_space_id(model), "data": data.describe(), "seed": ctx.seed}

    def build(work: Path) -> None:
        perceptual = perceptual_loss(cfg.perceptual)
        L.seed_everything(ctx.seed, verbose=False)  # the codec's initial weights: the run's seed, not earlier draws
        module = CodecModule(cfg, model, perceptual, ctx.seed)
        loader = data.dataloader(cfg.split, cfg.batch_size)
        model.requires_grad_(False)
        trainer = fit(
            module, loader, cfg.steps, ctx, label="codec", lr_key="defense.codec.lr", gradient_clip_val=cfg.grad_clip
        )
        final = final_terms(trainer, "codec")
        info = {"config": asdict(cfg), "latent_shape": list(model.latent_shape), "perceptual": perceptual[0]}
        codec = Codec(module.encoder.cpu().eval(), module.decoder.cpu().eval(), info)
        owner = torch.stack([loader.dataset[i]["image"] for i in range(min(256, len(loader.dataset)))])
        info.update(final_losses=final, owner_images=evaluate_codec(codec, model, owner, seed=ctx.seed + 1))
        torch.save(codec.state(), work / "codec.pt")

    folder = ctx.cache.get_or_build("codec", spec, build, private=True, code=(train_codec, data))
    return Codec.from_state(torch.load(folder / "codec.pt", weights_only=True))
