"""Example defense: a few secret bits in the signs of a few secret UNet weights (white-box).

``protect`` draws the key from the run (``ctx.key_seed``), picks ``trials x bits`` weights and sets each
one's sign to a secret bit; ``verify`` reads the signs back and lets the library's shared test decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from adaptguard.core.config import setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense
from adaptguard.metrics.stats import bit_match_verification
from adaptguard.models.bundle import DiffusionModel


@dataclass(repr=False)
class SignKey(SecretKey):
    positions: torch.Tensor  # (trials, bits): indexes into the UNet's weights, flattened
    bits: torch.Tensor  # (trials, bits) in {0, 1}: 1 = positive


def weights(model: DiffusionModel) -> list[torch.nn.Parameter]:
    """The UNet's weight matrices and kernels (not biases or norms), in a fixed order."""
    return [p for p in model.unet.parameters() if p.dim() >= 2]


def draw_positions(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indexes in [0, n), in the order drawn (no n-sized permutation: SD has 860M weights)."""
    if k > n:
        raise ConfigError(f"defense.trials x defense.bits: {k} marked weights, but the UNet has only {n}")
    chosen: dict[int, None] = {}
    while len(chosen) < k:
        chosen.setdefault(int(torch.randint(n, (1,), generator=generator)), None)
    return torch.tensor(list(chosen))


@dataclass
class MyDefense(Defense):
    trials: int = setting(8, ge=1, doc="groups of marked weights, each tested on its own")
    bits: int = setting(16, ge=1, doc="marked weights (secret bits) per trial")
    margin: float = setting(1.0, ge=0, doc="a marked weight's magnitude: at least margin x the mean |weight|")
    key_seed: int | None = setting(None, secret=True, doc="null: from `seed` (`adaptguard protect`: a fresh one)")
    fpr: float = setting(1e-2, gt=0, lt=1, doc="per trial: sets the matching bits a trial needs")
    model_fpr: float = setting(1e-3, gt=0, lt=1, doc="false-positive rate of the detected / not-detected decision")
    name: str = setting("example", doc="label in results and logs")

    key_type: ClassVar[type[SecretKey]] = SignKey
    verification: ClassVar[Literal["none", "weights", "images"]] = "weights"

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        g = torch.Generator().manual_seed(ctx.key_seed(self.key_seed))
        marked = model.clone()  # ``model`` itself stays unchanged
        params = weights(marked)
        with torch.no_grad():
            flat = parameters_to_vector(params)
            positions = draw_positions(flat.numel(), self.trials * self.bits, g).view(self.trials, self.bits)
            bits = torch.randint(0, 2, positions.shape, generator=g, dtype=torch.uint8)
            at = positions.to(flat.device)
            magnitude = flat[at].abs().clamp_min(self.margin * float(flat.abs().mean()))
            flat[at] = torch.where(bits.to(flat.device).bool(), magnitude, -magnitude)
            vector_to_parameters(flat, params)
        return Protected(marked, SignKey(positions=positions, bits=bits), {"marked_weights": positions.numel()})

    def verify(self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext) -> Verification:
        assert isinstance(key, SignKey)
        with torch.no_grad():
            flat = parameters_to_vector(weights(model)).cpu()
        read = (flat[key.positions] > 0).to(torch.uint8)  # (trials, bits)
        groups = torch.arange(self.trials)  # trial t is scored against row t of the key's bits
        return bit_match_verification(read, key.bits, self.fpr, self.model_fpr, groups=groups)

    def random_key(self, like: SecretKey, seed: int) -> SignKey:
        """Another owner's bits on the same weights (``adaptguard calibrate null_keys=N`` counts their detections)."""
        assert isinstance(like, SignKey)
        g = torch.Generator().manual_seed(seed)
        return SignKey(positions=like.positions, bits=torch.randint(0, 2, like.bits.shape, generator=g).to(torch.uint8))

    def summary(self, protected: Protected) -> dict[str, Any]:
        return {"marked_weights": self.trials * self.bits}
