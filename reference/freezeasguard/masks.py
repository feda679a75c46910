"""Masks in the reference's format: one 0/1 per UNet parameter tensor, in ``unet.parameters()`` order, one a line.

    python masks.py random MODEL OUT --ratio 0.5 --seed 0   # the random-freezing baseline (and OUT's stats)
    python masks.py stats MODEL MASK [MASK ...]             # frozen share of tensors and of parameters

Each mask's stats also go to a JSON beside it (``mask.txt`` -> ``mask.json``).

The reference's README names a random-mask flag that none of its scripts parses; the baseline is written here
and applied through the reference's own ``--finetune_scheme=learned_mask --mask_dir=FILE``. It freezes exactly
round(ratio * #tensors) tensors, like adaptguard's ``random_freeze`` with ``ratio_by: tensors``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def unet_sizes(model: str) -> list[int]:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    return [p.numel() for p in unet.parameters()]


def random_mask(n: int, ratio: float, seed: int) -> np.ndarray:
    mask = np.zeros(n)
    mask[np.random.default_rng(seed).permutation(n)[: round(ratio * n)]] = 1
    return mask


def stats(sizes: list[int], mask: np.ndarray) -> dict[str, float]:
    if len(mask) != len(sizes):
        raise SystemExit(f"mask has {len(mask)} entries, the UNet {len(sizes)} tensors")
    frozen = mask.astype(np.int64) == 1
    total = sum(sizes)
    frozen_params = sum(s for s, f in zip(sizes, frozen, strict=True) if f)
    return {"frozen_tensors": int(frozen.sum()), "total_tensors": len(sizes), "ratio_by_tensors": float(frozen.mean()),
            "frozen_params": frozen_params, "total_params": total, "ratio_by_params": frozen_params / total}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("random")
    r.add_argument("model")
    r.add_argument("out", type=Path)
    r.add_argument("--ratio", type=float, default=0.5)
    r.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("stats")
    s.add_argument("model")
    s.add_argument("masks", type=Path, nargs="+")
    args = parser.parse_args()

    sizes = unet_sizes(args.model)
    if args.cmd == "random":
        np.savetxt(args.out, random_mask(len(sizes), args.ratio, args.seed), delimiter=",")  # the reference's format
    for path in [args.out] if args.cmd == "random" else args.masks:
        result = stats(sizes, np.loadtxt(path))
        path.with_suffix(".json").write_text(json.dumps(result, indent=2))
        print(json.dumps({"mask": str(path), **result}))


if __name__ == "__main__":
    main()
