"""Cost accounting: wall time and peak memory of each stage of an experiment."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

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
    current: str | None = None  # the stage in progress; left set when a stage raises (results.json names it)

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
        self.current = name
        try:
            yield
            self.current = None
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
