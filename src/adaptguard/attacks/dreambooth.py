"""DreamBooth (Ruiz et al. 2023), as diffusers' ``train_dreambooth.py`` runs it.

A few instance images of one subject are bound to an identifier prompt ("a photo of sks
dog"); prior preservation adds the denoising loss on class images ("a photo of dog")
that the model under attack generated itself before training, so the class keeps its
look. Full fine-tuning by default, LoRA with ``lora=true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from adaptguard.artifacts import weights_sha256
from adaptguard.attacks.base import EvalDomain
from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.attacks.finetune import FullFineTune, LoraFineTune
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.subject import PriorPairs, PromptedImages, SubjectDataModule, load_image_folder
from adaptguard.errors import ConfigError, require
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training.module import Objective

log = logging.getLogger(__name__)
CLASS_IMAGE_SEED_OFFSET = 800


@dataclass
class DreamBooth(LoraFineTune):
    """Learn a subject from ``instance_dir`` (or the dataset split ``instance_split``)."""

    instance_dir: str | None = None  # folder of subject images; None: the dataset's instance_split
    instance_split: str = "instance"
    instance_prompt: str | None = None  # None: the dataset's subject prompts (``subject_prompts``)
    class_prompt: str | None = None
    with_prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    lora: bool = False  # train LoRA adapters instead of the whole UNet
    steps: int = 400
    batch_size: int = 1
    lr: float = 5e-6
    max_grad_norm: float | None = 1.0
    save: str | None = None

    name: str = "dreambooth"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.instance_prompt is not None:
            require(bool(self.instance_prompt.strip()), "attack.instance_prompt", "must not be empty")
        if self.with_prior_preservation:
            if self.class_prompt is not None:
                require(bool(self.class_prompt.strip()), "attack.class_prompt", "must not be empty")
            require(self.num_class_images >= 1, "attack.num_class_images", f"must be >= 1, got {self.num_class_images}")
            require(
                self.prior_loss_weight >= 0, "attack.prior_loss_weight", f"must be >= 0, got {self.prior_loss_weight}"
            )
        self._instances: torch.Tensor | None = None
        self._cost_data: dict[str, Any] = {}

    def save_modes(self) -> tuple[str, ...]:
        return super().save_modes() if self.lora else FullFineTune.save_modes(self)

    # -- data
    def resolve_prompts(self, data: CaptionedImageDataModule) -> tuple[str, str]:
        """Unset prompts follow the dataset that serves the subject, so ``dataset=dreambooth
        dataset.subject=backpack attack=dreambooth`` trains on "a photo of sks backpack"."""
        if self.instance_prompt is None or self.class_prompt is None:
            if self.instance_dir is not None:
                raise ConfigError(
                    "attack.instance_prompt, attack.class_prompt: set both with attack.instance_dir "
                    "(e.g. 'a photo of sks dog', 'a photo of dog'); the dataset's prompts describe its own subject"
                )
            prompts = data.subject_prompts()
            if prompts is None:
                raise ConfigError(
                    f"attack.instance_prompt: not set, and dataset={data.name} names no subject; "
                    "set attack.instance_prompt and attack.class_prompt"
                )
            self.instance_prompt = self.instance_prompt or prompts[0]
            self.class_prompt = self.class_prompt or prompts[1]
        return self.instance_prompt, self.class_prompt

    def instance_images(self, data: CaptionedImageDataModule, resolution: int) -> torch.Tensor:
        if self._instances is None or self._instances.shape[-1] != resolution:
            if self.instance_dir is not None:
                self._instances = load_image_folder(self.instance_dir, resolution, "attack.instance_dir")
            else:
                ds = data.dataset(self.instance_split)
                self._instances = torch.stack([ds[i]["image"] for i in range(len(ds))])
        return self._instances

    def check_data(self, data: CaptionedImageDataModule) -> None:
        if self.instance_dir is not None:
            self._instances = None
            load_image_folder(self.instance_dir, 8, "attack.instance_dir")  # exists, holds readable images
        else:
            data.spec(self.instance_split)
        self.resolve_prompts(data)

    def class_images(self, model: DiffusionModel, ctx: RunContext) -> torch.Tensor:
        """Generated by the model under attack, cached by its weights, the prompt and the count."""
        require(self.class_prompt is not None, "attack.class_prompt", "not resolved; call resolve_prompts(data) first")
        spec = {
            "weights": weights_sha256(model),
            "prompt": self.class_prompt,
            "n": self.num_class_images,
            "sampler": asdict(model.sampler),
            "seed": ctx.seed,
        }

        def build(work: Path) -> None:
            log.info("DreamBooth: generating %d class images for %r", self.num_class_images, self.class_prompt)
            images = model.sample(
                [self.class_prompt] * self.num_class_images,
                generator=ctx.generator(CLASS_IMAGE_SEED_OFFSET),
                progress=ctx.progress,
            )
            for i, image in enumerate(images):
                torchvision.utils.save_image(image * 0.5 + 0.5, work / f"{i:05d}.png")

        folder = ctx.cache.get_or_build("class_images", spec, build)
        return load_image_folder(folder, model.resolution, "class images")

    def train_dataloader(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> DataLoader:
        instance_prompt, class_prompt = self.resolve_prompts(data)
        instance = PromptedImages(self.instance_images(data, model.resolution), instance_prompt)
        ds: Any = instance
        if self.with_prior_preservation:
            ds = PriorPairs(instance, PromptedImages(self.class_images(model, ctx), class_prompt))
        self._cost_data = {"instance_images": len(instance.images)}
        return DataLoader(ds, batch_size=min(self.batch_size, len(ds)), shuffle=True, num_workers=0)

    def objective(self) -> Objective | None:
        if not self.with_prior_preservation:
            return None
        return _PriorPreservation(self.prior_loss_weight)

    def eval_domain(self, data: CaptionedImageDataModule, resolution: int) -> EvalDomain:
        """FID/KID of instance-prompt samples against the instance images: did it learn the subject?"""
        instance_prompt, _ = self.resolve_prompts(data)
        subject = SubjectDataModule(self.instance_images(data, resolution), instance_prompt, data)
        return EvalDomain("subject", subject, SubjectDataModule.SPLIT)

    # -- full or LoRA
    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        info = dict(self._cost_data)
        if self.lora:
            info.update(super().prepare(model, constraint))
        return info

    def save_model(self, model: DiffusionModel, path: Path) -> Path:
        return super().save_model(model, path) if self.lora else FullFineTune.save_model(self, model, path)

    def finish(self, model: DiffusionModel) -> None:
        if self.lora:
            super().finish(model)

    def snapshot(self, model: DiffusionModel) -> DiffusionModel:
        return super().snapshot(model) if self.lora else model


@dataclass
class _PriorPreservation:
    """Instance loss + weight x class loss, on one batch holding both (as diffusers does)."""

    weight: float

    def __call__(self, model: DiffusionModel, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        images = torch.cat([batch["image"], batch["class_image"]])
        noisy, t, emb, target = model.noisy_inputs(images, list(batch["caption"]) + list(batch["class_caption"]))
        pred_instance, pred_class = model.predict(noisy, t, emb).float().chunk(2)
        target_instance, target_class = target.float().chunk(2)
        instance = F.mse_loss(pred_instance, target_instance)
        prior = F.mse_loss(pred_class, target_class)
        return {"loss": instance + self.weight * prior, "instance": instance, "prior": prior}
