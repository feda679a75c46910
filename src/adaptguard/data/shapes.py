"""The built-in ``shapes`` dataset: captioned procedural images, no download.

Item ``i`` of the stream is drawn from an RNG seeded by ``(seed, i)``, so any split is
reproducible and cheap to filter (attributes are sampled without drawing). Each image
has a kind, colour, background, size and position; its caption names all five, and any
of them can serve as the domain label or a split filter.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from adaptguard.core.config import Rule, check_value
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule, LabelledImages, SplitSpec, subsample

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "navy": (20, 30, 90),
    "beige": (230, 215, 180),
}
KINDS = ("circle", "square", "triangle", "cross", "star")
SIZES = {"small": 0.32, "medium": 0.46, "large": 0.6}
POSITIONS = {
    "in the center": (0.5, 0.5),
    "at the top left": (0.3, 0.3),
    "at the top right": (0.7, 0.3),
    "at the bottom left": (0.3, 0.7),
    "at the bottom right": (0.7, 0.7),
}
ATTRIBUTES = ("kind", "colour", "background", "size", "position")
CAPTION = re.compile(
    "a (?P<size>{}) (?P<colour>{}) (?P<kind>{}) (?P<position>{}) on a (?P<background>{}) background".format(
        *("|".join(map(re.escape, values)) for values in (SIZES, PALETTE, KINDS, POSITIONS, PALETTE))
    )
)
MIN_CONTRAST = 60.0  # luma difference between shape and background
MAX_SCAN = 2_000_000


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


@functools.lru_cache(maxsize=64)
def _readable(colours: tuple[str, ...], backgrounds: tuple[str, ...]) -> dict[str, list[str]]:
    """The colours readable on each background (looked up for every item of the stream, so computed once;
    kept off the world itself, whose attributes are its description and so part of every cache key)."""
    return {b: [c for c in colours if abs(_luma(PALETTE[c]) - _luma(PALETTE[b])) >= MIN_CONTRAST] for b in backgrounds}


@dataclass
class ShapesWorld:
    """The attribute vocabulary and the renderer; ``seed`` fixes which shape item ``i`` of the stream is."""

    seed: int = 0
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    colours: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow", "purple", "white"])
    backgrounds: list[str] = field(default_factory=lambda: ["black", "white", "gray", "navy"])
    sizes: list[str] = field(default_factory=lambda: list(SIZES))
    positions: list[str] = field(default_factory=lambda: list(POSITIONS))

    def __post_init__(self) -> None:
        known = {"kinds": KINDS, "colours": PALETTE, "backgrounds": PALETTE, "sizes": SIZES, "positions": POSITIONS}
        for key, allowed in known.items():
            values = getattr(self, key)
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ConfigError(f"dataset.world.{key}: unknown or empty {bad}; choose from {sorted(allowed)}")
        if not any(_readable(tuple(self.colours), tuple(self.backgrounds)).values()):
            raise ConfigError("dataset.world: no colour/background pair has enough contrast")

    def values(self, attribute: str) -> list[str]:
        return {
            "kind": self.kinds,
            "colour": self.colours,
            "background": self.backgrounds,
            "size": self.sizes,
            "position": self.positions,
        }[attribute]

    def attributes(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        readable = _readable(tuple(self.colours), tuple(self.backgrounds))
        bg = self.backgrounds[rng.integers(len(self.backgrounds))]
        colours = readable[bg]
        while not colours:  # this background has no readable colour: draw another
            bg = self.backgrounds[rng.integers(len(self.backgrounds))]
            colours = readable[bg]
        return {
            "kind": self.kinds[rng.integers(len(self.kinds))],
            "colour": colours[rng.integers(len(colours))],
            "background": bg,
            "size": self.sizes[rng.integers(len(self.sizes))],
            "position": self.positions[rng.integers(len(self.positions))],
            "jitter": rng.uniform(-1, 1, size=3).tolist(),
        }

    @staticmethod
    def caption(a: dict[str, Any]) -> str:
        return f"a {a['size']} {a['colour']} {a['kind']} {a['position']} on a {a['background']} background"

    @staticmethod
    def read_caption(caption: str) -> dict[str, str] | None:
        """The inverse of :meth:`caption`: its five attributes, or None for a caption of another form."""
        m = CAPTION.fullmatch(caption.strip())
        return {k: m.group(k) for k in ATTRIBUTES} if m else None

    @staticmethod
    def render(a: dict[str, Any], resolution: int, supersample: int = 4) -> np.ndarray:
        """HxWx3 uint8; drawn large and downsampled for anti-aliased edges."""
        s = resolution * supersample
        img = Image.new("RGB", (s, s), PALETTE[a["background"]])
        draw = ImageDraw.Draw(img)
        jx, jy, js = a["jitter"]
        cx, cy = POSITIONS[a["position"]]
        cx, cy = (cx + 0.05 * jx) * s, (cy + 0.05 * jy) * s
        r = SIZES[a["size"]] * (1 + 0.1 * js) * s / 2
        fill = PALETTE[a["colour"]]
        kind = a["kind"]
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif kind == "square":
            q = r * 0.85
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
        elif kind == "triangle":
            draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill)
        elif kind == "cross":
            w = r * 0.35
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        elif kind == "star":
            pts = []
            for k in range(10):
                ang = -np.pi / 2 + k * np.pi / 5
                rad = r if k % 2 == 0 else r * 0.45
                pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
            draw.polygon(pts, fill=fill)
        img = img.resize((resolution, resolution), Image.Resampling.BOX)
        return np.array(img, dtype=np.uint8)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    return torch.from_numpy(array).permute(2, 0, 1).float().div(127.5).sub(1.0)


# (world, filter) -> (the matching items found so far, the next item to look at); one process's splits,
# sweep jobs and evaluations filter the same stream again and again
_SCANS: dict[tuple[Any, ...], tuple[list[int], int]] = {}
# world -> item -> its attributes: every run of a process builds its splits' datasets again (read-only dicts)
_ATTRIBUTES: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}


def _world_key(world: ShapesWorld) -> tuple[Any, ...]:
    return (world.seed, *map(tuple, (world.kinds, world.colours, world.backgrounds, world.sizes, world.positions)))


def item_attributes(world: ShapesWorld, indices: list[int]) -> list[dict[str, Any]]:
    """``world.attributes`` of each index, drawn once per process."""
    known = _ATTRIBUTES.setdefault(_world_key(world), {})
    for i in indices:
        if i not in known:
            known[i] = world.attributes(i)
    return [known[i] for i in indices]


def matching_items(world: ShapesWorld, spec: SplitSpec, want: int) -> list[int]:
    """The first ``want`` items of ``world``'s stream that ``spec.where`` keeps (fewer: the scan's limit)."""
    key = (*_world_key(world), tuple(sorted((k, tuple(v)) for k, v in spec.where.items())))
    found, index = _SCANS.get(key, ([], 0))
    while len(found) < want and index < MAX_SCAN:
        if spec.matches(world.attributes(index)):
            found.append(index)
        index += 1
    _SCANS[key] = (found, index)
    return found[:want]


class ShapesDataset(Dataset):
    def __init__(self, world: ShapesWorld, indices: list[int], resolution: int, domain_attribute: str) -> None:
        self.world = world
        self.indices = indices
        self.resolution = resolution
        self.domain_attribute = domain_attribute
        self._attrs = item_attributes(world, indices)

    def __len__(self) -> int:
        return len(self.indices)

    def attributes(self, i: int) -> dict[str, Any]:
        return self._attrs[i]

    def caption(self, i: int) -> str:
        return self.world.caption(self._attrs[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        a = self._attrs[i]
        return {
            "image": to_tensor(self.world.render(a, self.resolution)),
            "caption": self.world.caption(a),
            "domain": a[self.domain_attribute],
        }


class _Labelled(Dataset):
    """Shapes items as (image in [0, 1], attribute-index tensor) pairs."""

    def __init__(self, ds: ShapesDataset, labels: dict[str, list[str]]) -> None:
        self.ds, self.labels = ds, labels

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.ds.attributes(i)
        y = torch.tensor([values.index(a[k]) for k, values in self.labels.items()])
        return self.ds[i]["image"] * 0.5 + 0.5, y


class ShapesDataModule(CaptionedImageDataModule):
    """Procedural captioned shapes; splits filter on kind / colour / background / size / position."""

    name = "shapes"
    KEY_DOCS: ClassVar[dict[str, str]] = {
        "resolution": "image size items are produced at",
        "world": "the attribute vocabulary (kinds, colours, backgrounds, sizes, positions) and `seed`, which shape "
        "item i is (fixed: every run sees the same world)",
        "domain_attribute": "the attribute reported as an item's domain",
        "default_split_size": "size of a split that sets none",
        "instance_prompt": "`attack=dreambooth`'s instance prompt for the `instance` split",
        "class_prompt": "`attack=dreambooth`'s class prompt",
    }

    def __init__(
        self,
        resolution: int = 32,
        world: dict[str, Any] | ShapesWorld | None = None,
        domain_attribute: str = "kind",
        default_split_size: int = 2048,
        instance_prompt: str = "a photo of sks star",
        class_prompt: str = "a photo of star",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.instance_prompt = check_value("dataset.instance_prompt", instance_prompt, str, Rule(nonempty=True))
        self.class_prompt = check_value("dataset.class_prompt", class_prompt, str, Rule(nonempty=True))
        if domain_attribute not in ATTRIBUTES:
            raise ConfigError(f"dataset.domain_attribute: {domain_attribute!r} is not one of {ATTRIBUTES}")
        self.resolution = check_value("dataset.resolution", resolution, int, Rule(ge=4))
        self.world = world if isinstance(world, ShapesWorld) else ShapesWorld(**dict(world or {}))
        self.domain_attribute = domain_attribute
        self.default_split_size = check_value("dataset.default_split_size", default_split_size, int, Rule(ge=1))
        for name, spec in self.splits.items():
            for attr, allowed in spec.where.items():
                if attr not in ATTRIBUTES:
                    raise ConfigError(f"dataset.splits.{name}.where: unknown attribute {attr!r}; use {ATTRIBUTES}")
                bad = [v for v in allowed if v not in self.world.values(attr)]
                if bad:
                    raise ConfigError(
                        f"dataset.splits.{name}.where.{attr}: {bad} not in this world's {attr} values "
                        f"{self.world.values(attr)}"
                    )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "resolution": self.resolution,
            "world": vars(self.world),
            "domain_attribute": self.domain_attribute,
            "default_split_size": self.default_split_size,
        }

    def feature_extractor_spec(self) -> dict[str, Any]:
        return {"kind": "shapes", "resolution": self.resolution, "world": vars(self.world)}

    def feature_training_data(self) -> LabelledImages:
        """Fresh images far down the stream (the extractor never sees what models train on), labelled
        with every attribute."""
        labels = {k: self.world.values(k) for k in ATTRIBUTES}
        stream = ShapesDataModule(resolution=self.resolution, world=self.world,
                                  splits={"train": {"offset": 500_000, "size": 8192},
                                          "test": {"offset": 600_000, "size": 1024}})  # fmt: skip
        return LabelledImages(
            labels, _Labelled(stream.dataset("train"), labels), _Labelled(stream.dataset("test"), labels)
        )

    def subject_prompts(self) -> tuple[str, str]:
        return self.instance_prompt, self.class_prompt

    def prompt_attributes(self, caption: str) -> dict[str, str] | None:
        return self.world.read_caption(caption)

    def fidelity_groups(self) -> dict[str, tuple[str, ...]]:
        return {"kind+colour": ("kind", "colour")}  # what the prompt is about; the base model's target

    def build_split(self, name: str, spec: SplitSpec) -> ShapesDataset:
        if spec.is_share:
            raise ConfigError(f"dataset.splits.{name}: shapes are generated without end, so offset and size are "
                              f"counts, not shares; got offset={spec.offset}, size={spec.size}")  # fmt: skip
        size = spec.size if spec.size is not None else self.default_split_size
        want = spec.offset + size
        if spec.where:
            found = matching_items(self.world, spec, want)
            if len(found) < want:
                raise ConfigError(f"dataset.splits.{name}: filter {spec.where} matches too few shapes")
        else:
            found = list(range(want))
        chosen = subsample(found, SplitSpec(spec.where, spec.offset, size))
        return ShapesDataset(self.world, chosen, self.resolution, self.domain_attribute)
