"""Stable Signature: the owner's bits drawn into every image by a fine-tuned VAE decoder.

Our implementation of Fernandez et al., "The Stable Signature" (ICCV 2023; spec and what we changed:
docs/defenses/stable_signature.md). Stage 1 (``hidden_extractor``) trains a HiDDeN extractor on the
owner's images. Stage 2 fine-tunes a copy of the latent decoder so that the extractor reads the owner's
message from D'(z) while D'(z) stays close to the original D(z). The denoiser is not touched, so any
fine-tune of it leaves the watermark as it was; replacing the VAE removes it. Verification is black-box:
generated images, extracted bits, a per-image binomial threshold and the model-level test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler

from adaptguard.core.config import from_mapping, setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import MessageWatermark
from adaptguard.defenses.hidden_extractor import Extractor, ExtractorConfig, HiddenDecoder, train_extractor
from adaptguard.defenses.message_codec import perceptual_loss
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import final_terms, fit


@dataclass(repr=False)
class StableSignatureKey(SecretKey):
    message: torch.Tensor  # (bits,) uint8, secret
    prompts: list[str]  # verification prompts (not secret: any prompt carries the mark)
    extractor: dict[str, Any]  # the whitened HiDDeN decoder (the owner's reader)


class DecoderWatermarkModule(L.LightningModule):
    """L = BCE(W(D'(z)), m) + lambda_i (MSE + perceptual_weight x perceptual)(D'(z), D(z)), z = E(x): the
    published decoder D' learns the message, the frozen original D is the image target."""

    def __init__(self, vae: Any, extractor: HiddenDecoder, message: torch.Tensor, defense: StableSignatureDefense,
                 perceptual: tuple[str, Any]) -> None:  # fmt: skip
        super().__init__()
        self.vae = vae
        self.original = [copy.deepcopy(vae).requires_grad_(False).eval()]  # a list: not trained, not saved
        self.extractor = [extractor.requires_grad_(False).eval()]
        self.register_buffer("message", message.float()[None], persistent=False)  # a secret: never in a checkpoint
        self.cfg = defense
        self.perceptual_name, self.perceptual = perceptual

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.vae.decoder.parameters(), *self.vae.post_quant_conv.parameters()]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        original, extractor = self.original[0].to(x.device), self.extractor[0].to(x.device)
        with torch.no_grad():
            z = self.vae.encode(x).latent_dist.mode()
            target = original.decode(z).sample
        marked = self.vae.decode(z).sample
        logits = extractor(marked)
        wm = F.binary_cross_entropy_with_logits(logits * self.cfg.temperature, self.message.expand_as(logits))
        mse = F.mse_loss(marked, target)
        image = mse
        terms = {"wm": wm.detach(), "mse": mse.detach()}
        if self.perceptual is not None and self.cfg.perceptual_weight:
            perc = self.perceptual(marked, target)
            image = image + self.cfg.perceptual_weight * perc
            terms[self.perceptual_name] = perc.detach()
        loss = wm + self.cfg.image_weight * image
        terms["bit_acc"] = ((logits > 0) == self.message.bool()).float().mean()
        self.log_dict({f"protect/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.trained_parameters(), lr=self.cfg.lr)
        sched = get_scheduler("cosine", opt, num_warmup_steps=self.cfg.warmup_steps, num_training_steps=self.cfg.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def decoder_psnr(original: DiffusionModel, marked: DiffusionModel, images: torch.Tensor) -> float:
    """PSNR (dB, images in [0, 1]) of the marked decoder's images against the original decoder's, on the same
    latents: the image cost of the watermark."""
    z = original.encode_images(images.to(original.device), mode=True)
    mse = F.mse_loss(marked.decode_latents(z) * 0.5 + 0.5, original.decode_latents(z) * 0.5 + 0.5)
    return float(-10 * torch.log10(mse + 1e-12))


@dataclass
class StableSignatureDefense(MessageWatermark):
    extractor: ExtractorConfig | dict[str, Any] = setting(
        default_factory=ExtractorConfig, doc="stage 1: the HiDDeN extractor, cached and message-independent"
    )
    # stage 2: the decoder fine-tune
    steps: int = setting(600, ge=1, doc="stage-2 optimizer steps (reference: 100 at batch 4 on 256-px images)")
    batch_size: int = setting(16, ge=1, doc="stage-2 batch (reference: 4)")
    lr: float = setting(5e-4, gt=0, doc="stage-2 learning rate (AdamW, cosine; reference: 5e-4)")
    warmup_steps: int = setting(20, ge=0, doc="linear warm-up steps (reference: 20)")
    image_weight: float = setting(
        1.0, ge=0, doc="lambda_i, the image loss's weight against the message's (reference: 0.2 on Watson-VGG)"
    )
    perceptual: str = setting(
        "auto",
        doc="perceptual part of the image loss (reference: Watson-VGG); auto: LPIPS when torchvision's backbone "
        "weights are local, else SSIM | lpips | ssim | none",
    )
    perceptual_weight: float = setting(1.0, ge=0, doc="its weight inside the image loss (beside the MSE)")
    temperature: float = setting(
        1.0, gt=0, doc="logits x this in the message BCE (reference: 10 on sqrt(k)-scaled outputs)"
    )
    split: str = setting("owner", doc="the owner's images the decoder is fine-tuned on (encoded by the VAE)")
    # verification (black-box)
    num_samples: int = setting(64, ge=1, doc="verification images: one per caption of `prompt_split`")
    prompt_split: str = setting("eval", doc="the split whose captions are the verification prompts")

    name: str = setting("stable_signature", doc="label in results and logs")
    key_type: ClassVar[type[SecretKey]] = StableSignatureKey
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr", "extractor.steps", "num_samples")

    def __post_init__(self) -> None:
        self.extractor = from_mapping(ExtractorConfig, self.extractor)
        super().__post_init__()

    @property
    def bits(self) -> int:
        return self.extractor.bits

    def random_key(self, like: SecretKey, seed: int) -> StableSignatureKey:
        """Another owner's message read by this extractor from the same prompts' images."""
        assert isinstance(like, StableSignatureKey)
        return StableSignatureKey(self.make_message(seed), list(like.prompts), like.extractor)

    def sampling_identity(self, key: SecretKey) -> Any:
        assert isinstance(key, StableSignatureKey)
        return tuple(key.prompts)

    def check_data(self, data: CaptionedImageDataModule) -> None:
        for split in (self.extractor.split, self.split, self.prompt_split):
            data.spec(split)  # one line naming dataset.splits and the splits it has

    # ------------------------------------------------------------------ protect
    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        if model.vae is None:
            raise ConfigError(f"defense=stable_signature: model {type(model).__name__} works in pixel space and has "
                              "no VAE decoder to watermark; use a latent model (model=tiny, micro, sd15, ...)")  # fmt: skip
        extractor = train_extractor(self.extractor, model.resolution, data, ctx)
        message = self.make_message(ctx.key_seed(self.key_seed))
        prompts = data.captions(self.prompt_split, self.num_samples, seed=ctx.seed + 3)
        key = StableSignatureKey(message, prompts, extractor.state())

        protected = model.clone()
        vae = protected.vae.float().requires_grad_(False).train()
        module = DecoderWatermarkModule(vae, Extractor.from_state(key.extractor).decoder, message, self,
                                        perceptual_loss(self.perceptual))  # fmt: skip
        for p in module.trained_parameters():
            p.requires_grad_(True)
        L.seed_everything(ctx.seed, verbose=False)
        trainer = fit(module, data.dataloader(self.split, self.batch_size), self.steps, ctx, label="protect decoder",
                      lr_key="defense.lr")  # fmt: skip
        protected.vae = module.vae.requires_grad_(False).eval().to(device=model.device, dtype=model.vae.dtype)
        owner = data.dataset(self.split)
        images = torch.stack([owner[i]["image"] for i in range(min(64, len(owner)))])
        info = {
            "decoder_psnr_db": decoder_psnr(model, protected, images),
            "extractor": {k: v for k, v in extractor.info.items() if k != "config"},
            "steps": self.steps,
            "final_losses": final_terms(trainer, "protect"),
            "trainable_params": sum(p.numel() for p in module.trained_parameters()),
            "detection_threshold": self.detection_threshold(),
        }
        return Protected(protected, key, info)

    # ------------------------------------------------------------------ verify
    def verification_images(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext
    ) -> dict[str, torch.Tensor]:
        assert isinstance(key, StableSignatureKey)
        return {"generated": self.sample(model, list(key.prompts), ctx, offset=13)}

    def verify_images(
        self, images: dict[str, torch.Tensor], key: SecretKey | None, model: DiffusionModel
    ) -> Verification:
        assert isinstance(key, StableSignatureKey)
        return self.decide(self.read_bits(images, key, model), key.message, 4243)

    def read_bits(self, images: dict[str, torch.Tensor], key: SecretKey, model: DiffusionModel) -> torch.Tensor:
        assert isinstance(key, StableSignatureKey)
        return Extractor.from_state(key.extractor).decoder.read_bits(images["generated"])
