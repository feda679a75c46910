"""AquaLoRA: a watermark LoRA, trained to shift the model's outputs by a latent message, merged into the UNet.

Our implementation of Feng et al., "AquaLoRA: Toward White-box Protection for Customized Stable Diffusion
Models via Watermark LoRA" (ICML 2024; spec and what we changed: docs/defenses/aqualora.md). Stage 1 is
a latent message codec (``message_codec``, the same cached stage SleeperMark uses). Stage 2, Prior
Preserving Fine-Tuning: a LoRA learns to denoise the *watermarked* latent z + delta exactly as the frozen
original denoises z, so every sample's clean latent moves by delta while the rest of the distribution
stays; the LoRA is then merged into the weights. No trigger: every generated image carries the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from adaptguard.core.config import from_mapping, setting
from adaptguard.core.context import RunContext
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import MessageWatermark
from adaptguard.defenses.message_codec import Codec, CodecConfig, codec_report, train_codec
from adaptguard.models import objective
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.lora import LoraSettings, add_lora, merge_lora
from adaptguard.training import OptimConfig, TrainSettings, drop_captions, finetune


@dataclass(repr=False)
class AquaLoRAKey(SecretKey):
    message: torch.Tensor  # (bits,) uint8, secret
    prompts: list[str]  # verification prompts (not secret)
    codec: dict[str, Any]  # the latent message encoder / decoder (the owner's reader)


class PriorPreserving:
    """PPFT on one batch: the student at noise(z + delta, n, t) must predict what the frozen teacher predicts at
    noise(z, n, t), moved so its one-step clean estimate gains delta (epsilon: the same noise; v and flow:
    plus the prediction of a clean delta with no noise, ``objective.target(delta, 0, t)``)."""

    def __init__(self, teacher: torch.nn.Module, delta: torch.Tensor, empty_prompt_p: float, seed: int) -> None:
        self.teacher = teacher.requires_grad_(False)
        self.delta = delta
        self.empty_prompt_p = empty_prompt_p
        self.generator = torch.Generator().manual_seed(seed + 31)

    def __call__(self, model: DiffusionModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        sched = model.noise_scheduler
        z = model.batch_latents(batch)
        prompts = drop_captions(list(batch["caption"]), self.empty_prompt_p, self.generator)
        emb = model.encode_prompts(prompts)
        t = objective.sample_timesteps(sched, len(z), z.device)
        noise = torch.randn_like(z)
        delta = self.delta.to(z.device, z.dtype).expand_as(z)
        with torch.no_grad():
            self.teacher.to(model.device)
            teacher = model.predict_with(self.teacher, objective.add_noise(sched, z, noise, t), t, emb).float()
            target = teacher + objective.target(sched, delta, torch.zeros_like(z), t).float()
        student = model.predict(objective.add_noise(sched, z + delta, noise, t), t, emb).float()
        loss = F.mse_loss(student, target)
        return {"loss": loss, "ppft": loss.detach()}


@dataclass
class AquaLoRADefense(MessageWatermark):
    codec: CodecConfig | dict[str, Any] = setting(
        default_factory=CodecConfig,
        doc="stage 1: the latent message encoder / decoder (SleeperMark's, cached and shared with it)",
    )
    # stage 2: prior-preserving fine-tuning of a watermark LoRA, then merged
    rank: int = setting(16, ge=1, doc="LoRA rank (reference: 320 on SD 1.5)")
    alpha: float | None = setting(None, gt=0, doc="LoRA alpha (null: the rank, scale 1)")
    target_modules: list[str] = setting(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"],
        nonempty=True,
        doc="module name suffixes that get adapters (reference: every LoRA-compatible linear and conv of the UNet)",
    )
    steps: int = setting(400, ge=1, doc="stage-2 optimizer steps (reference: 30 epochs of a 12-image batch)")
    batch_size: int = setting(16, ge=1, doc="stage-2 batch (reference: 12)")
    lr: float = setting(1e-3, gt=0, doc="stage-2 learning rate (AdamW; reference: 1e-4, cosine with restarts)")
    lr_scheduler: str = setting("cosine", doc="any `diffusers.optimization` schedule")
    empty_prompt_p: float = setting(
        0.1, ge=0, le=1, doc="share of captions replaced by the empty prompt (CFG's unconditional branch)"
    )
    split: str = setting("owner", doc="the images stage 2 trains on (reference: images the base model generated)")
    # verification (black-box)
    num_samples: int = setting(64, ge=1, doc="verification images: one per caption of `prompt_split`")
    prompt_split: str = setting("eval", doc="the split whose captions are the verification prompts")

    name: str = setting("aqualora", doc="label in results and logs")
    key_type: ClassVar[type[SecretKey]] = AquaLoRAKey
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr", "rank", "codec.steps", "num_samples")

    def __post_init__(self) -> None:
        self.codec = from_mapping(CodecConfig, self.codec)
        super().__post_init__()

    @property
    def bits(self) -> int:
        return self.codec.bits

    def random_key(self, like: SecretKey, seed: int) -> AquaLoRAKey:
        assert isinstance(like, AquaLoRAKey)
        return AquaLoRAKey(self.make_message(seed), list(like.prompts), like.codec)

    def sampling_identity(self, key: SecretKey) -> Any:
        assert isinstance(key, AquaLoRAKey)
        return tuple(key.prompts)

    def check_data(self, data: CaptionedImageDataModule) -> None:
        for split in (self.codec.split, self.split, self.prompt_split):
            data.spec(split)

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        codec = train_codec(self.codec, model, data, ctx)
        prompts = data.captions(self.prompt_split, self.num_samples, seed=ctx.seed + 3)
        key = AquaLoRAKey(self.make_message(ctx.key_seed(self.key_seed)), prompts, codec.state())
        with torch.no_grad():
            delta = codec.encoder.to(model.device)(key.message[None].to(model.device))
        lora = LoraSettings(self.rank, float(self.alpha or self.rank), 0.0, list(self.target_modules))
        settings = TrainSettings(self.steps, OptimConfig(lr=self.lr, lr_scheduler=self.lr_scheduler),
                                 log_prefix="protect", lr_key="defense.lr")  # fmt: skip
        tuned = finetune(
            model, data.dataloader(self.split, self.batch_size), settings, ctx,
            objective=PriorPreserving(model.unet, delta, self.empty_prompt_p, ctx.seed),
            prepare=lambda m: add_lora(m, lora, None, key="defense"),
        )  # fmt: skip
        merge_lora(tuned.model)  # published as plain weights: the LoRA is not separable any more
        info = {**codec_report(codec, delta), "steps": self.steps, "final_losses": tuned.losses,
                "lora_modules": tuned.cost.get("lora_modules"), "trainable_params": tuned.cost["trainable_params"],
                "detection_threshold": self.detection_threshold()}  # fmt: skip
        return Protected(tuned.model, key, info)

    def verification_images(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext
    ) -> dict[str, torch.Tensor]:
        assert isinstance(key, AquaLoRAKey)
        return {"generated": self.sample(model, list(key.prompts), ctx, offset=17)}

    def verify_images(
        self, images: dict[str, torch.Tensor], key: SecretKey | None, model: DiffusionModel
    ) -> Verification:
        assert isinstance(key, AquaLoRAKey)
        return self.decide(self.read_bits(images, key, model), key.message, 4244)

    def read_bits(self, images: dict[str, torch.Tensor], key: SecretKey, model: DiffusionModel) -> torch.Tensor:
        assert isinstance(key, AquaLoRAKey)
        return Codec.from_state(key.codec).read_bits(model, images["generated"])
