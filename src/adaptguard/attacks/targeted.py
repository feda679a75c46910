"""An attacker who knows the defense: fine-tune only where the method puts its mark, at an aggressive rate.

The attacker never reads the owner's key. Where the watermark lives comes from the method's public
description (``analysis.locations``: SleeperMark's up-block attention, the backdoor's and IMMA's
cross-attention, AquaLoRA's attention and resnet convs) or, for AIAO, whose blocks are chosen per model,
from the attacker's own activity analysis: a short probe fine-tune on the attacker's data, then AIAO's
public rule (its watermark sits in the blocks fine-tuning moves least) applied to what moved. For a
freezing defense, the target is what its mask leaves trainable, which is what a full fine-tune under
the constraint trains already. docs/attacks.md#adaptive-attacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from adaptguard.analysis.activity import compare_unets
from adaptguard.analysis.blocks import block_parameters
from adaptguard.analysis.locations import (
    DIT_CONTEXT_ATTENTION,
    cross_attention_pattern,
    is_transformer,
    sleepermark_pattern,
)
from adaptguard.attacks.finetune import FullFineTune
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import OptimConfig, TrainSettings, finetune

# how the attacker locates each method's mark: "public" (the paper says where) or "analysis" (its own probe)
SOURCES = {"aiao": "analysis", "aiao_busy": "analysis", "sleepermark": "public", "backdoor": "public",
           "aqualora": "public", "imma": "public", "freezeasguard": "mask", "random_freeze": "mask"}  # fmt: skip
AQUALORA_MODULES = r"\.(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|conv1|conv2)\."


@dataclass
class TargetedFineTune(FullFineTune):
    method: str = setting(
        "auto",
        doc="the defense the attacker targets (its config name; the attack config sets it to the experiment's "
        "`defense.name`); `auto` in Python means the whole UNet",
    )
    lr: float = setting(1e-3, gt=0)  # aggressive: 10x attack=full's
    probe_steps: int = setting(30, ge=1, doc="AIAO: the attacker's probe fine-tune that measures block activity")
    lazy_fraction: float = setting(
        0.8, gt=0, le=1, doc="AIAO: the share of blocks, least moved by the probe, that the attack trains"
    )
    name: str = setting("targeted", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("method", "steps", "lr")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "stable_signature":
            raise ConfigError("attack.method: stable_signature lives in the VAE decoder, which no denoiser fine-tune "
                              "reaches; its targeted attack is attack=vae_swap (the decoder fine-tuned)")  # fmt: skip
        if self.method not in {*SOURCES, "auto", "none"}:
            raise ConfigError(f"attack.method: {self.method!r} is not a defense this attack knows; one of "
                              f"{sorted({*SOURCES, 'auto', 'none'})}")  # fmt: skip

    def targets(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> list[str] | None:
        """Parameter names of the denoiser to train (None: every trainable one)."""
        denoiser = model.unet
        if self.method in ("auto", "none") or SOURCES.get(self.method) == "mask":
            return None
        if SOURCES[self.method] == "analysis":
            return self.lazy_blocks(model, data, ctx)
        if self.method == "sleepermark":
            pattern = sleepermark_pattern("up_attention", denoiser)
        elif self.method == "backdoor":  # a trigger prompt -> the weights that read the prompt
            pattern = DIT_CONTEXT_ATTENTION if is_transformer(denoiser) else cross_attention_pattern(denoiser)
        elif self.method == "imma":
            pattern = cross_attention_pattern(denoiser)
        else:  # aqualora: the LoRA's target modules, merged
            pattern = AQUALORA_MODULES
        regex = re.compile(pattern)
        return [n for n, _ in denoiser.named_parameters() if regex.search(n)]

    def lazy_blocks(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> list[str]:
        """AIAO's blocks as the attacker finds them: probe-fine-tune a copy on the attacker's data, measure each
        block's relative weight change, keep the ``lazy_fraction`` least moved (AIAO watermarks lazy blocks)."""
        settings = TrainSettings(self.probe_steps, OptimConfig(lr=1e-4), log_prefix="attack_probe", lr_key="attack.lr")
        probe = finetune(model, data.dataloader(self.split, self.batch_size), settings, ctx)
        report = compare_unets(model.unet, probe.model.unet, model.latent_shape, busy_fraction=1 - self.lazy_fraction)
        names = [n for i in report.lazy for n in block_parameters(model.unet, report.blocks[i])]
        self._probe = {"probe_steps": self.probe_steps, "blocks": len(report.blocks), "lazy_blocks": len(report.lazy)}
        return names

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        self._probe: dict[str, Any] = {}
        self._targets = self.targets(model, data, ctx)
        if self._targets is not None and not self._targets:
            raise ConfigError(f"attack.method={self.method}: no denoiser weights match its location in this model")
        tuned = super().run(model, data, constraint, ctx)
        self._cost |= {"method": self.method, "located_by": SOURCES.get(self.method, "none"), **self._probe}
        return tuned

    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        """Train only the targeted tensors; never unfreeze one the defense's constraint froze."""
        if self._targets is None:
            return {"targeted_tensors": "all"}
        keep = set(self._targets)
        for name, p in model.unet.named_parameters():
            if name not in keep:
                p.requires_grad_(False)
        return {"targeted_tensors": len(keep)}
