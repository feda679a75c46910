"""Which process of a data-parallel (DDP) run this is, and the few collectives the pipeline needs.

Under DDP every rank runs the whole pipeline from the start, in lockstep (``adaptguard.cli.ranks``
starts them): each training stage needs all of them. Files are written and locks taken by rank 0
only; the others follow its decisions (``share``) and wait for its writes (``barrier``). Outside DDP
(no initialised process group) every helper is the single-process no-op.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files, results and logs."""
    return rank() == 0


def barrier() -> None:
    if distributed():
        dist.barrier()


def share(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object), so that all ranks take the same branch."""
    if not distributed():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
