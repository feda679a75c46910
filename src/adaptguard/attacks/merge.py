"""Checkpoint merging as model-hub merge tools do it: a weighted sum with another checkpoint, or add-difference.

weighted_sum: ``(1 - alpha) A + alpha B``; add_difference: ``A + alpha (B - C)``, with A the published model,
B the other checkpoint and C the base B was fine-tuned from (what a merge tool's "add difference" takes to
graft a fine-tune's change onto another model). The denoiser and the text encoders merge; the VAE stays A's,
as merge tools keep the first model's by default. Tensors a FineTuneConstraint freezes stay as published,
as for the other weight edits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from adaptguard.attacks.base import SourcedAttack
from adaptguard.attacks.finetune import ALPHA_DOC, FineTuning, FullFineTune
from adaptguard.core.artifacts import RESUME_DIR, weights_sha256
from adaptguard.core.config import key_docs, setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.suspect import Suspect, architecture, architecture_mismatch, load_suspect

log = logging.getLogger(__name__)


@dataclass
class WeightMerge(SourcedAttack):
    mode: Literal["weighted_sum", "add_difference"] = setting(
        "weighted_sum", doc="weighted_sum: (1 - alpha) A + alpha B; add_difference: A + alpha (B - base)"
    )
    alpha: float = setting(0.5, ge=0, le=1, doc=ALPHA_DOC)
    other: str = setting(
        "finetune",
        doc="B: `finetune` (the never-protected base, fully fine-tuned on the attacker's split: an independent "
        "fine-tune), `base` (that base as is; weighted_sum only) or a diffusers pipeline folder of the same "
        "architecture",
    )
    # other=finetune: the independent fine-tune's settings (the fine-tuning attacks' keys and descriptions)
    steps: int = setting(100, ge=1, doc=key_docs(FineTuning)["steps"])
    batch_size: int = setting(32, ge=1, doc=key_docs(FineTuning)["batch_size"])
    lr: float = setting(1e-4, gt=0, doc=key_docs(FineTuning)["lr"])
    split: str = setting("attacker", doc=key_docs(FullFineTune)["split"])
    name: str = setting("merge", doc="label in results and logs")
    source_key: ClassVar[str] = "other"
    trained_source: ClassVar[str] = "finetune"
    report_options: ClassVar[tuple[str, ...]] = ("mode", "alpha", "other")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode == "add_difference" and self.other == "base":
            raise ConfigError("attack.other: add_difference with other=base adds nothing (B - base = 0); use "
                              "other=finetune or a folder")  # fmt: skip

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        base = ctx.base_model
        if base is None and (self.other in ("finetune", "base") or self.mode == "add_difference"):
            raise ConfigError(f"attack.other: {self.other} needs the experiment's base model; outside an experiment, "
                              "give a folder")  # fmt: skip
        cost: dict[str, Any] = {"mode": self.mode, "alpha": self.alpha, "other": self.other}
        if self.other == "finetune":
            other = self._independent_finetune(base, data, ctx)
        elif self.other == "base":
            other = base
        else:
            other = load_suspect(Suspect(self.other, key="attack", path_name="other"), sampler=model.sampler)
            if mismatch := architecture_mismatch(architecture(model), other):
                raise ConfigError(f"attack.other: {self.other} is not of this model's architecture: "
                                  f"{'; '.join(mismatch)}")  # fmt: skip
        merged = model.clone()
        with torch.no_grad():
            cost["merged_tensors"] = sum(
                self._merge(
                    getattr(merged, part), getattr(other, part), getattr(base, part, None), constraint, prefix
                )  # fmt: skip
                for part, prefix in self._parts(merged)
            )
        self._cost = cost
        return merged

    def _independent_finetune(self, base: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext
                              ) -> DiffusionModel:  # fmt: skip
        """The base fully fine-tuned on the attacker's split: built once per base, data, settings and seed, so a
        sweep over ``alpha`` or over watermarks merges with the same checkpoint."""
        tune = FullFineTune(steps=self.steps, batch_size=self.batch_size, lr=self.lr, split=self.split)
        spec = {"base": weights_sha256(base.unet), "tune": tune.describe(), "data": data.describe(), "seed": ctx.seed}

        def build(work: Path) -> None:
            tune.run(base, data, None, ctx.with_checkpoints(work / RESUME_DIR)).save(work / "model")

        folder, _ = ctx.cache.fetch("independent_finetune", spec, build, code=(FullFineTune, type(data)))
        log.info("attack=merge: the independent fine-tune is %s", folder / "model")
        return DiffusionModel.load(folder / "model", sampler=base.sampler).to(base.device)

    def _parts(self, model: DiffusionModel) -> list[tuple[str, str]]:
        """(attribute, constraint prefix) of the modules that merge: the denoiser and every text encoder."""
        parts = [("unet", "unet."), ("text_encoder", "text_encoder.")]
        parts += [(a, f"{a}.") for a in ("text_encoder_2", "text_encoder_3") if getattr(model, a, None) is not None]
        return parts

    def _merge(
        self, a: nn.Module, b: nn.Module, c: nn.Module | None, constraint: FineTuneConstraint | None, prefix: str
    ) -> int:
        b_state = b.state_dict()
        c_state = c.state_dict() if c is not None else None
        merged = 0
        for name, tensor in a.state_dict().items():
            if not tensor.is_floating_point() or (constraint and prefix + name in constraint.frozen):
                continue
            other = b_state[name].to(tensor)
            if self.mode == "weighted_sum":
                tensor.lerp_(other, self.alpha)
            else:
                tensor.add_(other - c_state[name].to(tensor), alpha=self.alpha)
            merged += 1
        return merged
