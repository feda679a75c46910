"""Cost accounting: stage wall time and peak memory, training step time, trainable size."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
import psutil
import torch


@dataclass
class StageCost:
    wall_s: float
    peak_rss_mb: float  # resident memory of the process during the stage
    peak_cuda_mb: float | None  # torch.cuda.max_memory_allocated during the stage


@dataclass
class CostTracker:
    """``with tracker.stage("attack"): ...`` records that stage's wall time and peak memory."""

    stages: dict[str, StageCost] = field(default_factory=dict)
    interval_s: float = 0.05

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        proc = psutil.Process()
        peak = [proc.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval_s):
                peak[0] = max(peak[0], proc.memory_info().rss)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - start
            stop.set()
            watcher.join()
            peak[0] = max(peak[0], proc.memory_info().rss)
            self.stages[name] = StageCost(
                wall_s=round(wall, 3),
                peak_rss_mb=round(peak[0] / 2**20, 1),
                peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: asdict(v) for k, v in self.stages.items()}


class StepTimer(L.Callback):
    """Mean wall time of a training step (optimizer step included), skipping warm-up steps."""

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def mean_step_s(self) -> float | None:
        t = self.times[self.skip :] or self.times
        return sum(t) / len(t) if t else None


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total}
