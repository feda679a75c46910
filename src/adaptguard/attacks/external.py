"""A model fine-tuned elsewhere (any script, any cluster) used as the attacked model: no training here.

``attack=external attack.path=<folder or checkpoint>`` (or ``attack.lora_weights=<file>``, applied to the
protected model unless ``attack.base`` names another folder) puts it through the same
verify -> score path, table, sweep and report as the attacks adaptguard runs itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from adaptguard.attacks.base import Attack
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.suspect import Suspect, architecture, architecture_mismatch, load_suspect


@dataclass
class ExternalModel(Attack):
    path: str | None = setting(
        None, doc="a diffusers pipeline folder, a bare `unet/` or `transformer/` folder or a single-file checkpoint"
    )
    lora_weights: str | None = setting(
        None, doc="a LoRA file, merged into the run's protected model (or into `attack.base`)"
    )
    base: str | None = setting(
        None, doc="the pipeline folder a LoRA, bare denoiser or single file completes; null: the run's protected model"
    )
    name: str = setting("external", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("path", "lora_weights")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._cost: dict[str, Any] = {}

    def suspect(self) -> Suspect:
        return Suspect(
            self.path, self.lora_weights, self.base, key="attack", path_name="path", lora_name="lora_weights"
        )

    def check_data(self, data: CaptionedImageDataModule) -> None:
        """The files must exist before the protect stage runs."""
        if not self.path and not self.lora_weights:
            raise ConfigError("attack.path: attack=external needs attack.path=<folder or checkpoint> "
                              "(or attack.lora_weights=<file>)")  # fmt: skip
        for key in ("path", "lora_weights", "base"):
            value = getattr(self, key)
            if value and not Path(value).expanduser().exists():
                raise ConfigError(f"attack.{key}: {Path(value).expanduser()} does not exist")

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        external = load_suspect(self.suspect(), base_model=model, sampler=model.sampler).to(model.device)
        if mismatch := architecture_mismatch(architecture(model), external):
            raise ConfigError(f"attack.path: {self.suspect().describe()} is not a fine-tune of this model's "
                              f"architecture: {'; '.join(mismatch)}")  # fmt: skip
        external.resolution = model.resolution
        external.gradient_checkpointing = model.gradient_checkpointing
        self._cost = {"source": self.suspect().describe(), "trainable_params": 0}
        return external

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)
