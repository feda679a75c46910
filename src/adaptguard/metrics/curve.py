"""Attack-strength curves: evaluate the model under attack at chosen fine-tuning steps.

A Lightning callback pauses training at each step in ``at_steps`` and hands the model,
as the attacker would publish it at that point, to an evaluation function. Random
states (torch, CUDA, numpy, python) are restored afterwards, so a run with probes
trains exactly as one without: the last point equals the after-attack numbers.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel

Evaluate = Callable[[int, DiffusionModel], dict[str, Any]]


def parse_steps(at_steps: Sequence[Any] | None) -> list[int]:
    steps = []
    for s in at_steps or []:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(
                f"eval.at_steps: needs non-negative integer steps, got {s!r} (e.g. eval.at_steps=[0,50,100])"
            )
        steps.append(s)
    return sorted(set(steps))


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Whatever the body draws, the training loop's random streams continue as if it had not run."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class StepProbe(L.Callback):
    """Calls ``evaluate(step, snapshot(model))`` at each optimizer step in ``at_steps`` (0: before training)."""

    def __init__(
        self,
        at_steps: Sequence[int],
        evaluate: Evaluate,
        snapshot: Callable[[DiffusionModel], DiffusionModel] = lambda m: m,
    ) -> None:
        self.at_steps = sorted(set(at_steps))
        self.evaluate = evaluate
        self.snapshot = snapshot
        self.points: list[dict[str, Any]] = []
        self._done: set[int] = set()

    def _probe(self, step: int, pl_module: L.LightningModule) -> None:
        if step not in self.at_steps or step in self._done:
            return
        self._done.add(step)
        model: DiffusionModel = pl_module.model
        was_training = model.training
        model.eval()
        try:
            with isolated_rng(), torch.no_grad():
                self.points.append({"step": step, **self.evaluate(step, self.snapshot(model))})
        finally:
            model.train(was_training)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probe(0, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._probe(trainer.global_step, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Points measured before a checkpoint survive a resume (pickled into a tensor: checkpoints load weights-only)."""
        blob = pickle.dumps((self.points, sorted(self._done)))
        return {"points": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points, done = pickle.loads(state["points"].numpy().tobytes())  # noqa: S301 - our own checkpoint
        self._done = set(done)

    def missing(self) -> list[int]:
        return [s for s in self.at_steps if s not in self._done]
