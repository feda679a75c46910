"""A DreamBooth subject: a few instance images under one identifier prompt.

Instance images come from a folder (DreamBooth's layout: one folder of photos per
subject) or from a dataset split; either way they are resized and center-cropped as in
diffusers' DreamBooth example. :class:`SubjectDataModule` serves them as a split, so
FID/KID of "a photo of sks <class>" samples is scored against the subject itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule, LabelledImages, SplitSpec
from adaptguard.data.disk import IMAGE_SUFFIXES, image_transform


def load_image_folder(path: str | Path, resolution: int, key: str) -> torch.Tensor:
    """Every image in ``path`` (sorted by name) as an (N, 3, R, R) tensor in [-1, 1]."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder; expected a folder of subject images (*.jpg, *.png)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{key}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); DreamBooth needs 3-5+")
    prep = image_transform(resolution, center_crop=True, random_flip=False)
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(prep(im.convert("RGB")))
    return torch.stack(images)


class PromptedImages(Dataset):
    """Fixed images under one prompt, cycled to ``length`` items."""

    def __init__(self, images: torch.Tensor, prompt: str, length: int | None = None) -> None:
        self.images = images
        self.prompt = prompt
        self.length = length or len(images)

    def __len__(self) -> int:
        return self.length

    def caption(self, i: int) -> str:
        return self.prompt

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i % len(self.images)], "caption": self.prompt, "domain": "subject"}


class PriorPairs(Dataset):
    """Instance item i with class item i (both cycled): the batches of prior-preservation training."""

    def __init__(self, instance: PromptedImages, prior: PromptedImages) -> None:
        self.instance = instance
        self.prior = prior

    def __len__(self) -> int:
        return max(len(self.instance.images), len(self.prior.images))

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.instance[i % len(self.instance.images)]
        return {
            **item,
            "class_image": self.prior.images[i % len(self.prior.images)],
            "class_caption": self.prior.prompt,
        }


class SubjectDataModule(CaptionedImageDataModule):
    """The subject as split ``subject``: instance images repeated to at least ``min_items``, so an
    evaluator drawing ``num_samples`` real images generates as many subject samples."""

    name = "dreambooth_subject"
    SPLIT = "subject"

    def __init__(self, images: torch.Tensor, prompt: str, parent: CaptionedImageDataModule, min_items: int = 512):
        super().__init__(splits={self.SPLIT: {}}, num_workers=0)
        self.images = images
        self.prompt = prompt
        self.parent = parent
        self.length = len(images) * math.ceil(min_items / len(images))

    def build_split(self, name: str, spec: SplitSpec) -> Dataset:
        return PromptedImages(self.images, self.prompt, self.length)

    def feature_extractor_spec(self) -> Mapping[str, Any] | None:
        return self.parent.feature_extractor_spec()  # same image domain as the attacked model's data

    def feature_training_data(self) -> LabelledImages | None:
        return self.parent.feature_training_data()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "prompt": self.prompt, "images": len(self.images)}
