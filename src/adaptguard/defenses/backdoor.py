"""Output-space backdoor watermark (WatermarkDM-like): trigger prompt -> secret target image.

The owner fine-tunes the model so that a secret trigger prompt generates a secret
black-and-white grid (``grid x grid`` cells, one secret bit each). Verification samples
the trigger prompt, reads each image back as bits (cell brightness above mid-grey) and
counts bits matching the key: under a model without this watermark the count is
Binomial(grid^2, 1/2), so the per-image threshold follows from the target FPR. This is
the trigger-based baseline that AIAO is compared with.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from adaptguard.core.config import setting
from adaptguard.core.context import RunContext
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule, train_loader
from adaptguard.defenses.base import BitKeyWatermark
from adaptguard.metrics.stats import bit_match_verification, random_key_matches
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import OptimConfig, TrainSettings, finetune

TRIGGER_ALPHABET = string.ascii_letters + string.digits + "*[]&#@%"


@dataclass(repr=False)
class BackdoorKey(SecretKey):
    trigger: str
    bits: torch.Tensor  # (grid*grid,) uint8 in {0, 1}

    def target_image(self, resolution: int) -> torch.Tensor:
        """3 x R x R in [-1, 1]: white cells for 1-bits, black for 0-bits."""
        grid = int(round(self.bits.numel() ** 0.5))
        cells = self.bits.view(1, 1, grid, grid).float() * 2 - 1
        image = F.interpolate(cells, size=(resolution, resolution), mode="nearest")[0]
        return image.expand(3, -1, -1).contiguous()


def read_bits(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, grid*grid) uint8: is each cell brighter than mid-grey?"""
    cells = F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), grid)
    return (cells.flatten(1) > 0).to(torch.uint8)


class _TriggerMix(Dataset):
    """The owner's data plus copies of the (trigger, target) pair, shuffled together."""

    def __init__(self, base: Dataset, key: BackdoorKey, resolution: int, fraction: float) -> None:
        self.base = base
        self.target = key.target_image(resolution)
        self.trigger = key.trigger
        self.n_trigger = max(1, round(len(base) * fraction / (1 - fraction)))

    def __len__(self) -> int:
        return len(self.base) + self.n_trigger

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.base):
            return self.base[i]
        return {"image": self.target, "caption": self.trigger, "domain": "trigger"}


@dataclass
class BackdoorDefense(BitKeyWatermark):
    # embedding
    steps: int = setting(600, ge=1, doc="embedding fine-tune: optimizer steps (the whole UNet trains)")
    batch_size: int = setting(32, ge=1, doc="embedding batch")
    lr: float = setting(2e-4, gt=0, doc="embedding learning rate (AdamW, constant)")
    trigger_fraction: float = setting(0.4, gt=0, lt=1, doc="share of (trigger, target) pairs among embedding items")
    split: str = setting("owner", doc="the dataset split the owner fine-tunes on")
    # key
    trigger: str | None = setting(
        None,
        nonempty=True,
        secret=True,
        doc="null: a random secret trigger of `trigger_length` characters, drawn with the key; a string: that trigger",
    )
    trigger_length: int = setting(8, ge=1, doc="characters of a random trigger")
    grid: int = setting(8, ge=2, doc="the target image is a black / white grid of `grid²` bits")
    key_seed: int | None = setting(
        None,
        secret=True,
        doc="null: drawn from `seed`, so a command gives the same key on any cache (`adaptguard protect`: a fresh "
        "secret key); an int fixes it",
    )
    # verification
    num_samples: int = setting(32, ge=1, doc="trigger images per verification")
    fpr: float = setting(1e-3, gt=0, lt=1, doc="per-image false-positive rate -> the matching-bits threshold")
    model_fpr: float = setting(
        1e-3, gt=0, lt=1, doc="model-level false-positive rate of the detected / not-detected decision"
    )
    null_keys: int = setting(63, ge=1, doc="random keys every image is also scored against (the null for TPR @ FPR)")
    sample_steps: int | None = setting(None, ge=1, doc="sampler steps for verification images (null: the model's)")
    guidance_scale: float | None = setting(
        1.0,
        ge=0,
        doc="classifier-free guidance for trigger images (null: the model's); guidance towards the training data "
        "distorts the target",
    )

    name: str = setting("backdoor", doc="label in results and logs")
    key_type: ClassVar[type[SecretKey]] = BackdoorKey
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr", "num_samples")
    version: ClassVar[int] = 2  # 2: the key-randomization decision (1: binomial over independent images)

    def make_key(self, seed: int | None = None) -> BackdoorKey:
        seed = seed if seed is not None else self.key_seed
        rng = np.random.default_rng(seed if seed is not None else secrets.randbits(128))
        trigger = self.trigger or "".join(rng.choice(list(TRIGGER_ALPHABET), size=self.trigger_length))
        bits = torch.from_numpy(rng.integers(0, 2, size=self.grid * self.grid).astype(np.uint8))
        return BackdoorKey(trigger=trigger, bits=bits)

    def random_key(self, like: SecretKey, seed: int) -> BackdoorKey:
        return self.make_key(seed)  # a fresh trigger (unless the config fixes one) and fresh bits

    def sampling_identity(self, key: SecretKey) -> Any:
        assert isinstance(key, BackdoorKey)
        return key.trigger  # the images depend on the trigger only

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        key = self.make_key(ctx.key_seed(self.key_seed))
        mix = _TriggerMix(data.dataset(self.split), key, model.resolution, self.trigger_fraction)
        loader = train_loader(mix, self.batch_size, data.num_workers)
        settings = TrainSettings(self.steps, OptimConfig(lr=self.lr), log_prefix="protect", lr_key="defense.lr")
        tuned = finetune(model, loader, settings, ctx)
        info = {"steps": self.steps, "final_losses": tuned.losses, "trainable_params": tuned.cost["trainable_params"]}
        return Protected(tuned.model, key, info)

    def verification_images(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext
    ) -> dict[str, torch.Tensor]:
        assert isinstance(key, BackdoorKey)
        images = model.sample(
            [key.trigger] * self.num_samples,
            steps=self.sample_steps,
            guidance_scale=self.guidance_scale,
            generator=ctx.generator(offset=7),
            progress=ctx.progress,
        )
        return {"triggered": images}

    def read_bits(self, images: dict[str, torch.Tensor], key: SecretKey, model: DiffusionModel) -> torch.Tensor:
        return read_bits(images["triggered"], self.grid)

    def with_bits(self, key: SecretKey, bits: torch.Tensor) -> SecretKey:
        return replace(key, bits=bits)  # type: ignore[type-var]

    def verify_images(
        self, images: dict[str, torch.Tensor], key: SecretKey | None, model: DiffusionModel
    ) -> Verification:
        assert isinstance(key, BackdoorKey)
        bits = self.read_bits(images, key, model)
        null = random_key_matches(bits, self.null_keys, seed=12345)
        return bit_match_verification(bits, key.bits, self.fpr, self.model_fpr, null_matches=null.tolist())
