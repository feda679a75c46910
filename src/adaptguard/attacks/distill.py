"""Distillation: train a model of one's own on the protected model's outputs, never touching its weights.

The attacker prompts the published model with its own captions (no trigger known), keeps the images, and
trains a student on them: the never-protected base model (public: the owner fine-tuned it) or a denoiser
initialised afresh beside the base's text encoder and VAE. ``target=images`` is the black-box attack (the
student learns the images with the plain denoising loss, as from any data set); ``target=predictions``
the white-box one (the student matches the published denoiser's predictions on the same noisy latents).
Whether a watermark transfers through the outputs is the measurement. docs/attacks.md#adaptive-attacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adaptguard.attacks.drawn_images import drawn_images
from adaptguard.attacks.finetune import FullFineTune
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule, train_loader
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import finetune

TEACHER_IMAGE_SEED_OFFSET = 900
SCRATCH_SEED_OFFSET = 901


class TeacherImages(Dataset):
    """The published model's images under the captions that prompted them."""

    def __init__(self, images: torch.Tensor, captions: list[str]) -> None:
        self.images = images
        self.captions = captions

    def __len__(self) -> int:
        return len(self.captions)

    def caption(self, i: int) -> str:
        return self.captions[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "caption": self.captions[i], "domain": "teacher"}


class TeacherPredictions:
    """Student(noisy, caption) -> the published denoiser's prediction on the same inputs."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher = teacher.requires_grad_(False)

    def __call__(self, model: DiffusionModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        noisy, t, emb, _ = model.noisy_latents(model.batch_latents(batch), list(batch["caption"]))
        with torch.no_grad():
            self.teacher.to(model.device)
            target = model.predict_with(self.teacher, noisy, t, emb).float()
        loss = F.mse_loss(model.predict(noisy, t, emb).float(), target)
        return {"loss": loss}


@dataclass
class Distill(FullFineTune):
    student: Literal["base", "scratch"] = setting(
        "base",
        doc="what trains: `base` (the never-protected base model, public) or `scratch` (a freshly initialised "
        "denoiser with the base's text encoder and VAE)",
    )
    target: Literal["images", "predictions"] = setting(
        "images",
        doc="`images`: the denoising loss on the published model's samples (black-box); `predictions`: match "
        "its denoiser's predictions on the same noisy latents (white-box)",
    )
    num_images: int = setting(
        256, ge=1, doc="images the published model generates from the attacker's captions (cached)"
    )
    name: str = setting("distill", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("student", "target", "num_images", "steps", "lr")

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        if ctx.base_model is None:
            raise ConfigError("attack=distill: the student starts from the experiment's base model; run it in an "
                              "experiment (adaptguard run), not on a suspect model alone")  # fmt: skip
        if constraint is not None and self.student == "base":
            raise ConfigError("attack.student: base, but a freezing defense publishes its model instead of the base "
                              "(the attacker has no base to start from); use attack.student=scratch")  # fmt: skip
        captions = data.captions(self.split, self.num_images, seed=ctx.seed + TEACHER_IMAGE_SEED_OFFSET)
        images = self.teacher_images(model, captions, ctx)
        student = self.initial_student(ctx)
        L.seed_everything(ctx.seed, verbose=False)
        loader = train_loader(TeacherImages(images, captions), self.batch_size)
        teacher = TeacherPredictions(model.unet) if self.target == "predictions" else None
        tuned = finetune(student, loader, self.settings(), ctx, objective=teacher,
                         trainable="unet+text_encoder" if self.train_text_encoder else "unet")  # fmt: skip
        self._cost = {**tuned.cost, "student": self.student, "target": self.target, "teacher_images": len(images)}
        self.save_attacked(tuned.model, ctx)
        return tuned.model

    @property
    def output_name(self) -> str:
        return "distill"

    def initial_student(self, ctx: RunContext) -> DiffusionModel:
        student = ctx.base_model.clone()
        if self.student == "scratch":
            unet = student.unet
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed * 1_000_003 + SCRATCH_SEED_OFFSET)
                student.unet = type(unet).from_config(unet.config).to(unet.device, unet.dtype)
        return student

    def teacher_images(self, model: DiffusionModel, captions: list[str], ctx: RunContext) -> torch.Tensor:
        """Generated by the published model, cached by its weights, the captions and the sampler."""
        return drawn_images(model, captions, ctx, "teacher_images", TEACHER_IMAGE_SEED_OFFSET, code=(type(self),))
