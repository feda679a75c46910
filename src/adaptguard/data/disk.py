"""Shared machinery for datasets read from disk in their standard layouts.

A dataset lists :class:`Record` s (where an image is, its captions, attributes such as
class or official subset); splits filter records on those attributes and take a window
of a seeded shuffle, so owner / attacker / eval data are disjoint and reproducible.
Images are checked once per split (a reduced-size decode, so truncated files are caught);
unreadable ones are skipped with a warning and counted in results.json.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from tqdm.auto import tqdm

from adaptguard.core.config import Rule, check_value
from adaptguard.core.errors import ConfigError, DataError
from adaptguard.data.base import CaptionedImageDataModule, SplitSpec

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Record:
    """One image: a file path, or (lmdb folder, key); its captions; filterable attributes."""

    path: str
    captions: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict, hash=False)
    key: bytes | None = None  # lmdb key (then ``path`` is the database folder)
    box: tuple[float, float, float, float] | None = None  # crop (x, y, w, h) before resizing


class LmdbReader:
    """Reads lmdb values; environments must not cross a fork, so only DataLoader workers keep one
    open (per process); the main process opens and closes around each read."""

    _envs: dict[tuple[int, str], Any] = {}

    @classmethod
    def get(cls, folder: str, key: bytes) -> bytes:
        import lmdb
        from torch.utils.data import get_worker_info

        kw = {"readonly": True, "lock": False, "readahead": False, "meminit": False}
        if get_worker_info() is None:
            with lmdb.open(folder, **kw) as env, env.begin(write=False) as txn:
                value = txn.get(key)
        else:
            env = cls._envs.get((os.getpid(), folder))
            if env is None:
                env = cls._envs[(os.getpid(), folder)] = lmdb.open(folder, **kw)
            with env.begin(write=False) as txn:
                value = txn.get(key)
        if value is None:
            raise OSError(f"key {key!r} missing from {folder}")
        return value


def open_image(record: Record) -> Image.Image:
    if record.key is not None:
        image = Image.open(io.BytesIO(LmdbReader.get(record.path, record.key)))
    else:
        image = Image.open(record.path)
    if record.box is not None:
        x, y, w, h = record.box
        image = image.crop((int(x), int(y), int(x + w), int(y + h)))
    return image


SMALL_IMAGE_FACTOR = 4  # an image whose short side is under resolution / 4 is named in a warning


def check_image(record: Record, resolution: int) -> tuple[str | None, tuple[int, int]]:
    """(None, size) if the image decodes, else (the reason, (0, 0)). The size is the stored one (a JPEG draft
    decode may be smaller, never below ``resolution``), so images far below the model's resolution can be named."""
    try:
        with open_image(record) as image:
            size = image.size
            image.draft("RGB", (resolution, resolution))
            image.load()
        return None, size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}", (0, 0)


def image_transform(resolution: int, center_crop: bool, random_flip: bool) -> transforms.Compose:
    """As diffusers' training examples: resize the short side, crop, optional flip, to [-1, 1].
    Without flip or random crop it draws no random numbers, so loading images leaves the seed's stream alone."""
    steps = [
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution),
        *([transforms.RandomHorizontalFlip()] if random_flip else []),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ]
    return transforms.Compose(steps)


class RecordDataset(Dataset):
    """Records as ``{"image", "caption", "domain"}``; one item per (image, caption) with ``all_captions``."""

    def __init__(self, records: Sequence[Record], transform: Any, domain_attribute: str, all_captions: bool):
        self.records = list(records)
        self.transform = transform
        self.domain_attribute = domain_attribute
        self.items = [
            (i, c) for i, r in enumerate(self.records) for c in (range(len(r.captions)) if all_captions else [0])
        ]

    def __len__(self) -> int:
        return len(self.items)

    def caption(self, i: int) -> str:
        r, c = self.items[i]
        return self.records[r].captions[c]

    def __getitem__(self, i: int) -> dict[str, Any]:
        r, c = self.items[i]
        record = self.records[r]
        with open_image(record) as image:
            tensor = self.transform(image.convert("RGB"))
        return {
            "image": tensor,
            "caption": record.captions[c],
            "domain": record.attributes.get(self.domain_attribute, ""),
        }


class DiskDataModule(CaptionedImageDataModule):
    """Base for on-disk datasets: subclasses list records (``load_records``) and describe their layout."""

    LAYOUT = ""  # the expected on-disk layout, shown when it is not found
    KEY_DOCS: ClassVar[dict[str, str]] = {
        "root": "where the dataset is (required)",
        "resolution": "image size items are produced at",
        "center_crop": "centre crop (false: random crop)",
        "random_flip": "random horizontal flips",
        "max_images": "keep a seeded random subset of this many images before splitting",
        "domain_attribute": "the attribute reported as an item's domain",
        "all_captions": "one item per (image, caption) instead of the first caption (for datasets with several "
        "captions per image: coco, cub200)",
        "split_seed": "the shuffle split windows are taken from (fixed: every run sees the same images; `${seed}` "
        "resamples them per run seed)",
    }

    def __init__(
        self,
        root: str | None = None,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        max_images: int | None = None,
        domain_attribute: str = "class",
        all_captions: bool = False,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser() if root else None
        self.resolution = check_value("dataset.resolution", resolution, int, Rule(ge=4))
        self.split_seed = check_value("dataset.split_seed", split_seed, int)
        max_images = check_value("dataset.max_images", max_images, int | None, Rule(ge=1))
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.max_images = max_images
        self.domain_attribute = domain_attribute
        self.all_captions = all_captions
        self._records: list[Record] | None = None
        self.skipped: dict[str, str] = {}  # path (or path:key) -> why it was skipped
        self.small: dict[str, list[str]] = {}  # split -> images far below the resolution (upscaled)

    # -- to implement
    def load_records(self, root: Path) -> list[Record]:
        raise NotImplementedError

    # -- shared
    def missing(self, what: str) -> DataError:
        return DataError(f"dataset.root: {what}.\nExpected layout for dataset={self.name}:\n{self.LAYOUT.rstrip()}")

    def records(self) -> list[Record]:
        if self._records is None:
            if self.root is None:
                raise self.missing("not set; pass dataset.root=/path/to/the/dataset")
            if not self.root.is_dir():
                raise self.missing(f"{self.root} does not exist")
            records = self.load_records(self.root)
            if not records:
                raise self.missing(f"no images found under {self.root}")
            order = np.random.default_rng(self.split_seed).permutation(len(records))  # deterministic subsampling
            if self.max_images is not None:
                order = order[: self.max_images]
            self._records = [records[i] for i in order]
        return self._records

    def check(self) -> None:
        """The data is there and every configured split's window selects images (checked before any work)."""
        for name, spec in self.splits.items():
            if reason := spec.empty_reason(name, len(self._matching(name, spec))):
                raise ConfigError(reason)

    def _matching(self, name: str, spec: SplitSpec) -> list[Record]:
        for attr in spec.where:
            known = {a for r in self.records()[:1000] for a in r.attributes}
            if attr not in known:
                raise DataError(
                    f"dataset.splits.{name}.where: unknown attribute {attr!r}; {self.name} has {sorted(known)}"
                )
        return [r for r in self.records() if spec.matches(r.attributes)]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "root": str(self.root),
            "resolution": self.resolution,
            "center_crop": self.center_crop,
            "random_flip": self.random_flip,
            "max_images": self.max_images,
            "all_captions": self.all_captions,
            "split_seed": self.split_seed,
        }

    def build_split(self, name: str, spec: SplitSpec) -> Dataset:
        matching = self._matching(name, spec)
        if reason := spec.empty_reason(name, len(matching)):
            raise ConfigError(reason)
        start, end = spec.window(len(matching))
        chosen = self._readable(matching[start:end], name)
        if not chosen:
            example = next(iter(self.skipped.items()), ("?", "?"))
            raise DataError(f"dataset.root: all {end - start} images of split {name!r} are unreadable "
                            f"(e.g. {example[0]}: {example[1]}); check the files under {self.root}")  # fmt: skip
        tf = image_transform(self.resolution, self.center_crop, self.random_flip)
        return RecordDataset(chosen, tf, self.domain_attribute, self.all_captions)

    def _readable(self, records: list[Record], split: str) -> list[Record]:
        good, small = [], []
        for r in tqdm(records, desc=f"checking {split} images", leave=False, disable=len(records) < 2000):
            reason, size = check_image(r, self.resolution)
            if reason is None:
                good.append(r)
                if min(size) * SMALL_IMAGE_FACTOR < self.resolution:
                    small.append(f"{r.path} ({size[0]}x{size[1]})")
                continue
            where = r.path if r.key is None else f"{r.path}:{r.key.decode(errors='replace')}"
            if where not in self.skipped:
                log.warning("dataset %s: skipping unreadable image %s (%s)", self.name, where, reason)
            self.skipped[where] = reason
        if small:
            log.warning("dataset %s: %d images of split %s are far below the model's resolution %d and will be "
                        "upscaled, e.g. %s", self.name, len(small), split, self.resolution, small[0])  # fmt: skip
            self.small[split] = small
        return good

    def data_report(self) -> dict[str, Any]:
        small = {split: len(paths) for split, paths in self.small.items()}
        return {**super().data_report(), "skipped_images": len(self.skipped),
                "skipped_examples": sorted(self.skipped)[:10], "small_images": small}  # fmt: skip


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def readable_name(label: str) -> str:
    """``001.Black_footed_Albatross`` -> ``black footed albatross``."""
    return label.split(".", 1)[-1].replace("_", " ").strip().lower()
