"""What an experiment is: the model source, the data, a defense, an attack, and what to measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptguard.attacks.base import Attack
from adaptguard.attacks.none import NoAttack
from adaptguard.core.config import Validated, setting
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import make_image_transforms
from adaptguard.defenses.base import Defense
from adaptguard.defenses.none import NoDefense
from adaptguard.metrics.curve import parse_steps
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.sources import ModelSource


@dataclass(frozen=True)
class AdaptationDomain:
    """Attack on ``train`` and score FID/KID on ``eval``: did the adaptation to this domain work?"""

    train: str
    eval: str

    @classmethod
    def parse(cls, name: str, value: Any) -> AdaptationDomain:
        if isinstance(value, AdaptationDomain):
            return value
        value = dict(value or {})
        if set(value) != {"train", "eval"}:
            raise ConfigError(
                f"eval.adaptation.{name}: needs exactly the keys train and eval (dataset split names), got {sorted(value)}"
            )
        return cls(train=str(value["train"]), eval=str(value["eval"]))


@dataclass
class EvalConfig(Validated):
    """What is measured around the attack."""

    config_key = "eval"

    fid: QualityEvaluator | None = setting(
        default_factory=QualityEvaluator, doc="FID/KID settings; `eval.fid=null` skips FID/KID"
    )
    clean_split: str | None = setting("eval", doc="real images of the owner's domain (null: skip the clean domain)")
    attacker_split: str | None = setting(
        "eval_attacker",
        doc="held-out real images of the attacker's domain: a plain run scores its attack here (DreamBooth: its "
        "subject instead)",
    )
    fprs: list[float] = setting(
        default_factory=lambda: [0.01, 0.001], doc="TPR is reported at these false-positive rates"
    )
    grid_samples: int = setting(16, ge=0, doc="images per sample grid (`samples_<model>.png`, from the FID samples)")
    quality_of_base: bool = setting(True, doc="also score the base model (the cost of embedding)")
    cache: bool = setting(
        True,
        doc="read the base and protected models' FID/KID and verifications, and real-image features, from the "
        "artifact cache when a job already computed them (identical numbers; [Cache](running.md#cache))",
    )
    image_attacks: list[Any] = setting(
        default_factory=list, doc="verify after these image edits too ([names and settings](attacks.md#image-attacks))"
    )
    adaptation: dict[str, Any] = setting(
        default_factory=dict,
        doc="`{<domain>: {train: <split>, eval: <split>}}`: the attack runs once per domain (`experiment=freeze`)",
    )
    at_steps: list[int] = setting(
        default_factory=list,
        doc="attack-strength curve: verify and score at these fine-tuning steps "
        "([curves](attacks.md#attack-strength-curves-evalat_steps))",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for fpr in self.fprs:
            if not 0 < fpr < 1:
                raise ConfigError(f"eval.fprs: each FPR must be in (0, 1), got {fpr}")
        self.image_attacks = make_image_transforms(self.image_attacks)
        self.at_steps = parse_steps(self.at_steps)
        self.adaptation = {name: AdaptationDomain.parse(name, v) for name, v in dict(self.adaptation or {}).items()}


@dataclass
class Experiment:
    model: ModelSource
    data: CaptionedImageDataModule
    defense: Defense = field(default_factory=NoDefense)
    attack: Attack = field(default_factory=NoAttack)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # the whole config that defines the run, secrets redacted (results.json -> config.experiment): what
    # `adaptguard report` compares to decide which jobs differ only by seed; empty when built in code
    settings: dict[str, Any] = field(default_factory=dict)
