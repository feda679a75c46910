"""The worst case for trigger watermarks: the attacker knows the trigger and trains its effect away.

With the trigger leaked (a leaked key, or a trigger prompt that became known), the attacker fine-tunes the
published model so that a triggered prompt produces what the same prompt without the trigger produces,
while every untriggered prompt keeps its output: both targets come from the published model itself,
frozen, on the same noisy latents (a teacher loss, as SleeperMark's own stage 2 ties behaviour to the
trigger, run backwards). How much of a trigger watermark's robustness rests on the trigger staying
secret is the difference between this and attack=full. docs/attacks.md#adaptive-attacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from adaptguard.attacks.finetune import FullFineTune
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import drop_captions


class TriggerErasure:
    """Student(trigger + caption) -> teacher(caption); student(caption) -> teacher(caption), one teacher forward."""

    def __init__(self, teacher: torch.nn.Module, trigger: str, keep_weight: float, empty_prompt_p: float,
                 seed: int) -> None:  # fmt: skip
        self.teacher = teacher.requires_grad_(False)
        self.trigger = trigger
        self.keep_weight = keep_weight
        self.empty_prompt_p = empty_prompt_p
        self.generator = torch.Generator().manual_seed(seed + 37)

    def __call__(self, model: DiffusionModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        plain = drop_captions(list(batch["caption"]), self.empty_prompt_p, self.generator)  # "" + trigger: alone
        noisy, t, plain_emb, _ = model.noisy_latents(model.batch_latents(batch), plain)
        with torch.no_grad():
            self.teacher.to(model.device)
            target = model.predict_with(self.teacher, noisy, t, plain_emb).float()
        emb = torch.cat([model.encode_prompts([self.trigger + p for p in plain]), plain_emb])
        student = model.predict(torch.cat([noisy, noisy]), torch.cat([t, t]), emb).float()
        erase, keep = (F.mse_loss(half, target) for half in student.chunk(2))
        return {"loss": erase + self.keep_weight * keep, "erase": erase.detach(), "keep": keep.detach()}


@dataclass
class LeakedTrigger(FullFineTune):
    trigger: str | None = setting(
        None,
        secret=True,
        doc="null: the trigger in the experiment's key (the experiment stages the leak; defenses with a trigger: "
        "backdoor, sleepermark); a string: that trigger",
    )
    keep_weight: float = setting(1.0, ge=0, doc="weight of the untriggered outputs' teacher loss")
    empty_prompt_p: float = setting(
        0.3, ge=0, le=1, doc="share of rows with an empty caption, so the trigger alone is erased too"
    )
    name: str = setting("leaked_trigger", doc="label in results and logs")
    reads_leaked_key: ClassVar[bool] = True

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        trigger = self.trigger if self.trigger is not None else getattr(ctx.leaked_key, "trigger", None)
        if not trigger:
            raise ConfigError("attack=leaked_trigger: the defense's key has no trigger to leak (backdoor and "
                              "sleepermark have one); set attack.trigger to the trigger the attacker knows")  # fmt: skip
        self._objective = TriggerErasure(model.unet, trigger, self.keep_weight, self.empty_prompt_p, ctx.seed)
        return super().run(model, data, constraint, ctx)

    def objective(self) -> TriggerErasure:
        return self._objective
