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
from adaptguard.data.distortions import make_image_transforms
from adaptguard.defenses.message_codec import train_codec

ATTACKS: dict[str, Any] = {
    "clean": None,
    "jpeg50": {"name": "jpeg", "quality": 50},
    "blur": {"name": "blur", "kernel_size": 3, "sigma": 4.0},
    "resize0.5": {"name": "resize", "scale": 0.5},
    "noise0.1": {"name": "noise", "std": 0.1},
}


def probe(overrides: list[str], images: int = 256) -> dict[str, Any]:
    out_dir = Path("outputs/codec_probe")
    cfg = compose(["model=tiny", "defense=sleepermark", "attack=none", "logger=none", *overrides], output_dir=out_dir)
    exp, ctx = build_experiment(cfg), make_context(cfg, out_dir)
    model = exp.model.load(ctx)
    start = time.perf_counter()
    codec = train_codec(exp.defense.codec, model, exp.data, ctx)
    seconds = time.perf_counter() - start
    owner = exp.data.dataloader(exp.defense.codec.split, 32).dataset
    x = torch.stack([owner[i]["image"] for i in range(min(images, len(owner)))])
    bits = torch.randint(0, 2, (len(x), exp.defense.codec.bits), generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        z = model.encode_images(x)
        marked, plain = model.decode_latents(z + codec.encoder(bits)), model.decode_latents(z)
    mse = torch.nn.functional.mse_loss(marked * 0.5 + 0.5, plain * 0.5 + 0.5)
    threshold = exp.defense.detection_threshold()
    result: dict[str, Any] = {
        "overrides": overrides,
        "stage1_s": round(seconds),
        "psnr_db": round(float(-10 * torch.log10(mse)), 2),
    }
    for name, spec in ATTACKS.items():
        seen = (
            marked
            if spec is None
            else make_image_transforms([spec])[0](marked, generator=torch.Generator().manual_seed(1))
        )
        right = codec.read_bits(model, seen) == bits
        result[name] = {"bit_accuracy": round(float(right.float().mean()), 3),
                        f"share_at_{threshold}_bits": round(float((right.sum(1) >= threshold).float().mean()), 3)}  # fmt: skip
    return result


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
