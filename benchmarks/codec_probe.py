"""SleeperMark stage 1 alone, read the way verification reads it (docs/fidelity.md): train (or load from
the cache) the message codec for a config, embed fresh random messages in 256 owner images, decode them
to images, apply each image attack, encode again and decode the bits.

    python -m benchmarks.codec_probe seed=0 defense.codec.steps=2000 --out fidelity.jsonl

Prints one JSON line per run: bit accuracy and the share of images at or above the per-image threshold
(41 of 48 bits at FPR 1e-6), clean and after each attack, the PSNR of the residual and stage 1's time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from adaptguard.cli.build import build_experiment, make_context
from adaptguard.cli.config import compose
from adaptguard.defenses.message_codec import evaluate_codec, train_codec


def probe(overrides: list[str], images: int = 256) -> dict[str, Any]:
    """The image attacks are compare_watermarks's ``eval.image_attacks`` (override them like any key)."""
    out_dir = Path("outputs/codec_probe")
    base = ["experiment=compare_watermarks", "model=tiny", "defense=sleepermark", "attack=none", "logger=none"]
    cfg = compose([*base, *overrides], output_dir=out_dir)
    exp, ctx = build_experiment(cfg), make_context(cfg, out_dir)
    model = exp.model.load(ctx)
    start = time.perf_counter()
    codec = train_codec(exp.defense.codec, model, exp.data, ctx)
    seconds = time.perf_counter() - start
    owner = exp.data.dataloader(exp.defense.codec.split, 32).dataset
    x = torch.stack([owner[i]["image"] for i in range(min(images, len(owner)))])
    scores = evaluate_codec(codec, model, x, seed=123, transforms=exp.eval.image_attacks,
                            threshold=exp.defense.detection_threshold())  # fmt: skip
    return {"overrides": overrides, "stage1_s": round(seconds), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. seed=0 defense.codec.steps=2000")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file too")
    args = parser.parse_args()
    line = json.dumps(probe([*args.overrides, "progress=false"]))
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
