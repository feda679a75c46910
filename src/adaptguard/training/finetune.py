"""The one fine-tuning recipe: copy the model, choose what trains, train, report.

Protection (backdoor, AIAO, SleeperMark), the simulated user of FreezeAsGuard, AIAO's probe
and every fine-tuning attack run through :func:`finetune`; they differ only in what trains,
the objective, a constraint, and a ``prepare`` hook (LoRA adapters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning.pytorch.callbacks import Callback
from torch import nn

from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training.loop import StepTimer, final_terms, fit, parameter_counts
from adaptguard.training.module import DenoisingModule, Objective, OptimConfig

Trainable = Literal["unet", "unet+text_encoder"] | Callable[[DiffusionModel], Iterable[nn.Parameter]]
Prepare = Callable[[DiffusionModel], dict[str, Any]]


@dataclass
class TrainSettings:
    """How one training stage runs."""

    steps: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_grad_norm: float | None = None  # None: no clipping
    gradient_accumulation_steps: int = 1
    precision: str | None = None  # a Lightning precision ("bf16-mixed"); None: the trainer config's
    log_prefix: str = "train"
    lr_key: str | None = None  # the config key of ``optim.lr``, named when training diverges

    def trainer_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"accumulate_grad_batches": self.gradient_accumulation_steps}
        if self.max_grad_norm is not None:
            kw["gradient_clip_val"] = self.max_grad_norm
        if self.precision is not None:
            kw["precision"] = self.precision
        return kw


@dataclass
class Finetuned:
    """The trained copy and what training it cost."""

    model: DiffusionModel
    losses: dict[str, float]  # the last logged value of each loss term
    cost: dict[str, Any]  # trainable / total / frozen parameters, step time, what ``prepare`` reported


def select_trainable(model: DiffusionModel, trainable: Trainable) -> list[nn.Parameter]:
    if callable(trainable):
        return list(trainable(model))
    modules = [model.unet] + ([model.text_encoder] if trainable == "unet+text_encoder" else [])
    return [p for m in modules for p in m.parameters()]


def finetune(
    model: DiffusionModel,
    loader: Any,
    settings: TrainSettings,
    ctx: RunContext,
    *,
    trainable: Trainable = "unet",
    objective: Objective | None = None,
    constraint: FineTuneConstraint | None = None,
    prepare: Prepare | None = None,
    callbacks: Sequence[Callback] = (),
) -> Finetuned:
    """Train a copy of ``model`` (``model`` itself is left unchanged) for ``settings.steps`` steps.

    ``trainable`` picks the weights that train; ``constraint`` then freezes its tensors; ``prepare``
    may change the copy before training (e.g. add adapters) and returns facts for the cost report.
    """
    tuned = model.clone()
    tuned.requires_grad_(False)
    for p in select_trainable(tuned, trainable):
        p.requires_grad_(True)
    cost: dict[str, Any] = {"frozen_params": constraint.apply(tuned) if constraint else 0}
    if prepare is not None:
        cost.update(prepare(tuned))
    cost.update(parameter_counts(tuned))
    checkpointing = _checkpointing(tuned, trainable, on=model.gradient_checkpointing)
    module = DenoisingModule(
        tuned, settings.optim, objective=objective, log_prefix=settings.log_prefix, max_steps=settings.steps
    )
    timer = StepTimer()
    trainer = fit(
        module, loader, settings.steps, ctx, label=settings.log_prefix, lr_key=settings.lr_key,
        callbacks=[timer, *callbacks],
        **settings.trainer_kwargs(),
    )  # fmt: skip
    if checkpointing:
        _checkpointing(tuned, trainable, on=False)  # evaluation and saving see a plain model
    if timer.mean_step_s is not None:  # per optimizer step
        cost["step_time_s"] = timer.mean_step_s * settings.gradient_accumulation_steps
    tuned.requires_grad_(False)
    return Finetuned(tuned, final_terms(trainer, settings.log_prefix), cost)


def _checkpointing(model: DiffusionModel, trainable: Trainable, on: bool) -> bool:
    """Switch gradient checkpointing of the modules that train; returns whether it is on."""
    text = trainable == "unet+text_encoder"
    if on:
        model.unet.enable_gradient_checkpointing()
        if text:
            model.text_encoder.gradient_checkpointing_enable()
    else:
        model.unet.disable_gradient_checkpointing()
        if text and model.text_encoder.is_gradient_checkpointing:  # transformers 4.x fails on a needless disable
            model.text_encoder.gradient_checkpointing_disable()
    return on
