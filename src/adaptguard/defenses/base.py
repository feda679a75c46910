"""The defense protocol: protect a model, verify ownership, constrain fine-tuning."""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from adaptguard.core.config import Validated, secret_fields, setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.redact import redact
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import ImageTransform
from adaptguard.metrics.stats import binomial_threshold, bit_match_verification, random_key_matches
from adaptguard.metrics.stats import decision_rule as stats_decision_rule
from adaptguard.models.bundle import DiffusionModel


@dataclass
class Forgery:
    """A key forged against a model that never carried the watermark, and what the search cost."""

    key: SecretKey  # secret: never logged; ``adaptguard forge`` verifies it and reports the verdict only
    method: str  # how it was found
    budget: dict[str, int] = field(default_factory=dict)  # keys tried / images generated


def forger_seed(ctx: RunContext, i: int) -> int:
    """The forger's i-th draw: a key seed no owner's run or random key uses (those derive from other offsets)."""
    return (ctx.seed * 1_000_003 + 0xF0F0F0 + i) % 2**62


def keys_bar(keys: Sequence[SecretKey], ctx: RunContext) -> Sequence[SecretKey]:
    return tqdm(keys, desc="keys", disable=not ctx.progress or len(keys) < 2, leave=False)


class Defense(Validated, ABC):
    """A protection method. Subclasses are dataclasses whose fields are the ``defense.*`` config keys."""

    config_key: ClassVar[str] = "defense"
    name: str = "defense"
    key_type: ClassVar[type[SecretKey] | None] = None
    # False: protect() returns the base weights unchanged (only a key is cached; quality equals the base's)
    modifies_weights: ClassVar[bool] = True
    # how ownership is checked: not at all, from the weights (white-box), or from generated images (black-box)
    verification: ClassVar[Literal["none", "weights", "images"]] = "none"
    # bump when a change to verification makes keys written before it read differently (owner key files)
    version: ClassVar[int] = 1
    # results pages (recorded in results.json's ``report``): the option keys its settings row shows (nested:
    # ``codec.steps``), and whether it is the unconstrained reference other defenses' attack FIDs are measured against
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr")
    report_reference: ClassVar[bool] = False

    @abstractmethod
    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        """Return a protected copy of ``model`` (``model`` itself is left unchanged) and its key."""

    def check_data(self, data: CaptionedImageDataModule) -> None:
        """Raise ConfigError before any work when ``data`` lacks what ``protect`` needs (e.g. a split)."""
        return None

    def verify(self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext) -> Verification | None:
        """Does ``model`` carry the watermark of ``key``? ``None`` for non-watermark defenses."""
        return None

    def verify_with(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext, transforms: Sequence[ImageTransform]
    ) -> tuple[Verification | None, dict[str, Verification]]:
        """``verify``, plus the verification after each image transform where the defense reads images."""
        return self.verify(model, key, ctx), {}

    def random_key(self, like: SecretKey, seed: int) -> SecretKey:
        """A key this defense could have drawn for another owner: ``like``'s public parts (where to look), fresh
        secret parts from ``seed``. Verified against never-watermarked models, it measures the false-positive
        rate of the decision (``adaptguard calibrate null_keys=...``). Watermark defenses implement it."""
        raise NotImplementedError(f"defense {self.name} draws no random keys (it has nothing to verify)")

    def verify_many(self, model: DiffusionModel, keys: Sequence[SecretKey], ctx: RunContext) -> list[Verification]:
        """``verify`` for each key (output watermarks sample once per sampling identity)."""
        return [self.verify(model, key, ctx) for key in keys_bar(keys, ctx)]  # type: ignore[misc]

    def forge_key(self, model: DiffusionModel, like: SecretKey, ctx: RunContext, budget: int) -> Forgery:
        """A key that makes ``model`` (which never carried this watermark) look watermarked, searched on the
        forger's own draws (``ctx``: the forger's seed, never the verifier's). The forger keeps ``like``'s public
        parts, as :meth:`random_key` does, and chooses the secret ones; here by random search: the best of
        ``budget`` random keys (smallest p-value, then highest mean score). Keys with free bits optimise them."""
        keys = [self.random_key(like, forger_seed(ctx, i)) for i in range(budget)]
        scored = zip(self.verify_many(model, keys, ctx), keys, strict=True)
        best = min(scored, key=lambda vk: (vk[0].p_value, -float(np.mean(vk[0].scores or [0.0]))))
        return Forgery(best[1], "random search: the best key on the forger's own draws", {"keys_tried": budget})

    def decision_rule(self, verified: Verification) -> dict[str, Any]:
        """How this defense's verification becomes DETECTED, without secrets: what the owner's key file and
        ``protect.json`` record and ``verify`` prints. The shared key-randomization test of
        :func:`adaptguard.metrics.stats.bit_match_verification` unless a defense decides another way."""
        return stats_decision_rule(verified)

    def constraint(self, key: SecretKey | None) -> FineTuneConstraint | None:
        """What every fine-tuning of the published model must honour (e.g. frozen tensors)."""
        return None

    def summary(self, protected: Protected) -> dict[str, Any]:
        """Headline facts about the protection for tables and sweeps (non-secret), e.g. the freeze ratio."""
        return {}

    def key_drawn_from_seed(self) -> bool:
        """True when a secret ``*_seed`` setting is unset, so the key is drawn from the run's seed (or, for an
        owner's ``protect``, fresh): such a protection must never be served to the other kind from the cache."""
        return any(getattr(self, n) is None for n in secret_fields(type(self)) if n.endswith("_seed"))

    def code_parts(self) -> tuple[Any, ...]:
        """The objects whose modules' source decides what ``protect`` builds (cache keys' code fingerprint)."""
        return (self,)

    def describe(self) -> dict[str, Any]:
        """The config that determines the protected model (used in cache keys; holds secrets)."""
        return {"name": self.name, **(asdict(self) if is_dataclass(self) else {})}

    def public_config(self) -> dict[str, Any]:
        """``describe()`` with secret fields redacted: what results and logs may show."""
        return redact(self.describe(), secret_fields(type(self)))

    # persistence of a protected model in the artifact cache
    def save_protected(self, protected: Protected, folder: Path) -> None:
        if self.modifies_weights:
            protected.model.save(folder / "model")
        if protected.key is not None:
            protected.key.save(folder)
        (folder / "info.json").write_text(json.dumps(protected.info or {}, indent=2))

    def load_protected(self, folder: Path, like: DiffusionModel) -> Protected:
        """``like`` is the base model the cached protection was built from."""
        if self.modifies_weights:
            model = DiffusionModel.load(folder / "model", sampler=like.sampler).to(like.device)
            model.gradient_checkpointing = like.gradient_checkpointing
        else:
            model = like
        key = self.key_type.load(folder) if self.key_type is not None else None
        info = json.loads((folder / "info.json").read_text())
        return Protected(model=model, key=key, info=info)


class OutputWatermark(Defense):
    """A watermark read from generated images only (black-box verification).

    Verification is split in two so the pipeline can sample once and then also verify
    the same images after image-level attacks (JPEG, blur, ...).
    """

    verification: ClassVar[Literal["none", "weights", "images"]] = "images"

    @abstractmethod
    def verification_images(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext
    ) -> dict[str, torch.Tensor]:
        """Named image sets (e.g. ``triggered``) in [-1, 1], generated by ``model``."""

    @abstractmethod
    def verify_images(
        self, images: dict[str, torch.Tensor], key: SecretKey | None, model: DiffusionModel
    ) -> Verification:
        """Verification from images only; ``model`` is used for its latent space, never its weights."""

    def sampling_identity(self, key: SecretKey) -> Any:
        """What of ``key`` decides the images :meth:`verification_images` draws (a hashable): keys that agree on
        it verify one sampling (SleeperMark's random messages share its trigger and prompts). None: every key
        samples its own images."""
        return None

    def verify(self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext) -> Verification:
        return self.verify_images(self.verification_images(model, key, ctx), key, model)

    def verify_many(self, model: DiffusionModel, keys: Sequence[SecretKey], ctx: RunContext) -> list[Verification]:
        images: dict[Any, dict[str, torch.Tensor]] = {}
        out = []
        for key in keys_bar(keys, ctx):
            ident = self.sampling_identity(key)
            if ident is None:
                out.append(self.verify(model, key, ctx))
                continue
            if ident not in images:
                images[ident] = self.verification_images(model, key, ctx)
            out.append(self.verify_images(images[ident], key, model))
        return out

    def verify_with(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext, transforms: Sequence[ImageTransform]
    ) -> tuple[Verification | None, dict[str, Verification]]:
        """Sample once; verify those images as they are and after each transform."""
        images = self.verification_images(model, key, ctx)
        attacked = {}
        for i, transform in enumerate(transforms):
            g = ctx.generator(offset=500 + i)
            distorted = {name: transform(batch, generator=g) for name, batch in images.items()}
            attacked[transform.label] = self.verify_images(distorted, key, model)
        return self.verify_images(images, key, model), attacked


class BitKeyWatermark(OutputWatermark):
    """An output watermark whose key holds free bits that images are matched against (a message, a target grid).
    A forger then needs no search over keys: the bits it reads from the model's own images, majority-voted per
    position, are the key that matches them best (the match count is a sum over bits)."""

    @abstractmethod
    def read_bits(self, images: dict[str, torch.Tensor], key: SecretKey, model: DiffusionModel) -> torch.Tensor:
        """(images, bits) uint8: what verification matches against the key's bits."""

    @abstractmethod
    def with_bits(self, key: SecretKey, bits: torch.Tensor) -> SecretKey:
        """``key`` with its free bits replaced."""

    def forge_key(self, model: DiffusionModel, like: SecretKey, ctx: RunContext, budget: int) -> Forgery:
        """``budget`` images of the forger's own (the verification prompts, its own noise), bits majority-voted."""
        key = self.random_key(like, forger_seed(ctx, 0))
        reads = []
        while sum(len(r) for r in reads) < budget:
            draw = replace(ctx, seed=forger_seed(ctx, len(reads) + 1))
            reads.append(self.read_bits(self.verification_images(model, key, draw), key, model))
        bits = torch.cat(reads)[:budget].float()
        majority = (bits.mean(0) >= 0.5).to(torch.uint8)
        return Forgery(self.with_bits(key, majority), "majority vote per bit on the forger's own images",
                       {"images": len(bits)})  # fmt: skip


@dataclass
class MessageWatermark(BitKeyWatermark):
    """A secret k-bit message read from generated images (SleeperMark, AquaLoRA, Stable Signature): the verification
    settings they share, the per-image threshold and the message draw. Subclasses define ``bits``."""

    key_seed: int | None = setting(
        None,
        secret=True,
        doc="null: drawn from `seed`, so a command gives the same message on any cache (`adaptguard protect`: a "
        "fresh secret one); an int fixes it",
    )
    fpr: float = setting(
        1e-6, gt=0, lt=1, doc="per-image false-positive rate -> the matching-bits threshold (48 bits: >= 41)"
    )
    model_fpr: float = setting(
        1e-3, gt=0, lt=1, doc="model-level false-positive rate of the detected / not-detected decision"
    )
    null_messages: int = setting(
        63, ge=1, doc="random messages every image is also scored against (the null for TPR @ FPR)"
    )
    sample_steps: int | None = setting(None, ge=1, doc="sampler steps for verification images (null: the model's)")
    guidance_scale: float | None = setting(
        None, ge=0, doc="classifier-free guidance for verification images (null: the model's)"
    )

    @property
    def bits(self) -> int:
        raise NotImplementedError

    def detection_threshold(self) -> int:
        """Matching bits an image needs: the binomial tail under H0 is <= fpr."""
        return binomial_threshold(self.bits, self.fpr)

    def sample(self, model: DiffusionModel, prompts: list[str], ctx: RunContext, offset: int) -> torch.Tensor:
        """Verification images of ``prompts`` with this watermark's sampler settings (seeded by ``offset``)."""
        return model.sample(prompts, steps=self.sample_steps, guidance_scale=self.guidance_scale,
                            generator=ctx.generator(offset), progress=ctx.progress)  # fmt: skip

    def decide(self, bits: torch.Tensor, message: torch.Tensor, null_seed: int, **extra: Any) -> Verification:
        """Bits read from the images against the key's message (and ``null_messages`` random ones): the
        per-image threshold and the model-level decision (``extra``: figures / details for the report)."""
        null = random_key_matches(bits, self.null_messages, seed=null_seed)
        return bit_match_verification(bits, message.to(torch.uint8), self.fpr, self.model_fpr,
                                      null_matches=null.tolist(), **extra)  # fmt: skip

    def with_bits(self, key: SecretKey, bits: torch.Tensor) -> SecretKey:
        return replace(key, message=bits)  # type: ignore[type-var]

    def make_message(self, seed: int | None = None) -> torch.Tensor:
        """``bits`` random bits from ``seed`` (else the ``key_seed`` setting; else fresh secret randomness)."""
        seed = seed if seed is not None else self.key_seed
        rng = np.random.default_rng(seed if seed is not None else secrets.randbits(128))
        return torch.from_numpy(rng.integers(0, 2, size=self.bits).astype(np.uint8))


def trigger_rows(batch: int, paired: bool) -> tuple[bool, int]:
    """How a trigger-embedding step lays out one batch: (paired, plain rows).

    Split (the default): rows [0, plain) run untriggered and the rest triggered, so the student does one
    plain fine-tuning step's work. Paired (or a one-image batch): the batch twice, untriggered then
    triggered, twice the work for the same images.
    """
    paired = paired or batch < 2
    return paired, batch if paired else batch - batch // 2
