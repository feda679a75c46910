"""One GPU per concurrent job of a local parallel sweep (``hydra/launcher=local``, joblib).

Every job process sees every GPU, and ``device=auto`` means ``cuda:0``: all jobs would share the first GPU.
Each job claims one instead: it starts from GPU ``job number mod GPUs`` and takes the first whose lock
(``<sweep dir>/.gpus/<index>.lock``) is free, waiting for its own if all are taken, and holds it until the job
ends. joblib reuses worker processes, so the job selects its GPU with ``device=cuda:<index>`` and
``trainer.devices=[<index>]`` rather than by narrowing ``CUDA_VISIBLE_DEVICES``, which a worker that has
used CUDA no longer reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import filelock
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES``'s list where it is set, else torch's count."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d.strip() for d in listed.split(",") if d.strip()]
        return ids[: ids.index("-1")] if "-1" in ids else ids  # CUDA ignores everything from an invalid id
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def wants_own_gpu(cfg: DictConfig, launcher_target: str) -> bool:
    """A job of a parallel local sweep, on a machine with several GPUs, that has not chosen its device."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    return ("joblib" in launcher_target and str(cfg.get("device", "auto")) == "auto"
            and str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
            and not strategy.startswith("ddp") and len(visible_gpus()) > 1)  # fmt: skip


@contextmanager
def own_gpu(cfg: DictConfig, job_num: int, sweep_dir: Path) -> Iterator[int]:
    """Claim a GPU for this job (module docstring) and point ``cfg`` at it; yields its index among the visible."""
    gpus = visible_gpus()
    folder = sweep_dir / ".gpus"
    folder.mkdir(parents=True, exist_ok=True)
    order = [(job_num + k) % len(gpus) for k in range(len(gpus))]
    with ExitStack() as stack:
        index = next((i for i in order if _try(stack, folder / f"{i}.lock")), None)
        if index is None:  # every GPU busy: wait for this job's own
            index = order[0]
            stack.enter_context(filelock.FileLock(folder / f"{index}.lock"))
        with open_dict(cfg):
            cfg.device = f"cuda:{index}"
            cfg.trainer.devices = [index]
        log.info("job %d: GPU %s (cuda:%d of %d visible)", job_num, gpus[index], index, len(gpus))
        yield index


def _try(stack: ExitStack, path: Path) -> bool:
    lock = filelock.FileLock(path, timeout=0)
    try:
        stack.enter_context(lock)
    except filelock.Timeout:
        return False
    return True
