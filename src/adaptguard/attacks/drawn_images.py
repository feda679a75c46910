"""Images the model under attack draws for the attacker (DreamBooth's class images, a distillation's teacher
images): generated once, saved as 8-bit PNGs as a service would serve them, cached by the model's weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torchvision

from adaptguard.core.artifacts import weights_sha256
from adaptguard.core.context import RunContext
from adaptguard.data.subject import load_image_folder
from adaptguard.models.bundle import DiffusionModel

log = logging.getLogger(__name__)


def drawn_images(
    model: DiffusionModel, prompts: Sequence[str], ctx: RunContext, kind: str, offset: int, code: Sequence[Any]
) -> torch.Tensor:
    """One image per prompt, (N, 3, R, R) in [-1, 1], drawn with the run's generator at ``offset`` and cached
    under ``kind`` by the weights, the prompts, the sampler and the seed (``code``: the classes that ask)."""
    spec = {"weights": weights_sha256(model), "prompts": list(prompts), "sampler": asdict(model.sampler),
            "seed": ctx.seed}  # fmt: skip

    def build(work: Path) -> None:
        log.info("%s: the attacked model draws %d images", kind, len(prompts))
        images = model.sample(list(prompts), generator=ctx.generator(offset), progress=ctx.progress)
        for i, image in enumerate(images):
            torchvision.utils.save_image(image * 0.5 + 0.5, work / f"{i:05d}.png")

    folder = ctx.cache.get_or_build(kind, spec, build, code=code)
    return load_image_folder(folder, model.resolution, kind.replace("_", " "))
