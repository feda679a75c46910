"""SleeperMark stage 1 alone, read the way verification reads it (docs/fidelity.md): train (or load from
the cache) the message codec for a config, embed fresh random messages in 256 owner images, decode them
to images, apply each image attack, encode again and decode the bits.

    python -m benchmarks.codec_probe seed=0 defense.codec.steps=2000 --out fidelity.jsonl
    python -m benchmarks.codec_probe seed=0 --vae kl_weight=1e-6    # through another VAE, trained first

Prints one JSON line per run: bit accuracy and the share of images at or above the per-image threshold
(41 of 48 bits at FPR 1e-6), clean and after each attack, the PSNR of the residual and stage 1's time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import AutoencoderKL

from adaptguard.cli.build import build_experiment, make_context
from adaptguard.cli.config import compose
from adaptguard.core.artifacts import spec_hash
from adaptguard.core.config import from_mapping
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses.message_codec import evaluate_codec, train_codec
from adaptguard.training.autoencoder import cache_latents, latent_scale
from adaptguard.training.pretraining import PRETRAIN_SPLIT, PretrainConfig, train_vae


def probe(overrides: list[str], images: int = 256, vae: dict[str, Any] | None = None) -> dict[str, Any]:
    """The image attacks are compare_watermarks's ``eval.image_attacks`` (override them like any key)."""
    out_dir = Path("outputs/codec_probe")
    base = ["experiment=compare_watermarks", "model=tiny", "defense=sleepermark", "attack=none", "logger=none"]
    cfg = compose([*base, *overrides], output_dir=out_dir)
    exp, ctx = build_experiment(cfg), make_context(cfg, out_dir)
    model = exp.model.load(ctx)
    vae_info: dict[str, Any] = {}
    if vae:
        model.vae, vae_info = other_vae(exp.model, vae, ctx, out_dir)
    owner_images = torch.stack([exp.data.dataset("eval")[i]["image"] for i in range(128)])
    vae_info.update(vae_figures(model, owner_images))
    start = time.perf_counter()
    codec = train_codec(exp.defense.codec, model, exp.data, ctx)
    seconds = time.perf_counter() - start
    owner = exp.data.dataloader(exp.defense.codec.split, 32).dataset
    x = torch.stack([owner[i]["image"] for i in range(min(images, len(owner)))])
    scores = evaluate_codec(codec, model, x, seed=123, transforms=exp.eval.image_attacks,
                            threshold=exp.defense.detection_threshold())  # fmt: skip
    return {"overrides": overrides, **({"vae": vae} if vae else {}), **vae_info, "stage1_s": round(seconds), **scores}


def other_vae(source: Any, settings: dict[str, Any], ctx: Any, out_dir: Path) -> tuple[Any, dict[str, Any]]:
    """A VAE trained like the base's (``model.pretrain``'s VAE stage) with ``settings`` changed: pretraining keys
    (``kl_weight``, ``vae_steps``, ``vae_crop``, ``vae_lr``) or ``model.vae`` ones (``block_out_channels``, ...),
    kept under ``out_dir`` by its settings."""
    arch = {**source.vae, **{k: v for k, v in settings.items() if k in source.vae}}
    cfg = from_mapping(PretrainConfig, {**source.pretrain, **{k: v for k, v in settings.items() if k not in arch}})
    folder = out_dir / ("vae-" + spec_hash({"vae": arch, "pretrain": asdict(cfg)}))
    if not (folder / "config.json").is_file():
        vae = dataclasses.replace(source, vae=arch).build().vae
        data = ShapesDataModule(resolution=source.resolution, splits={PRETRAIN_SPLIT: {"size": cfg.dataset_size}})
        start = time.perf_counter()
        train_vae(vae, data, cfg, ctx, folder.with_name(folder.name + ".fit"))
        latents = cache_latents(vae, data.dataset(PRETRAIN_SPLIT), progress=False)
        vae.register_to_config(scaling_factor=latent_scale(latents, ctx.generator(0)))
        vae.save_pretrained(folder)
        (folder / "seconds.txt").write_text(str(round(time.perf_counter() - start)))
    vae = AutoencoderKL.from_pretrained(folder).eval().requires_grad_(False)
    return vae, {"vae_train_s": int((folder / "seconds.txt").read_text())}


@torch.no_grad()
def vae_figures(model: Any, images: torch.Tensor) -> dict[str, float]:
    """Reconstruction PSNR, and how much of a latent residual survives decode -> encode: the gain of a random
    half-resolution residual (the codec's shape) at an image PSNR near 32 dB, read by the posterior mean."""
    images = images.to(model.device)
    z = model.encode_images(images, mode=True)
    rec = model.decode_latents(z)
    psnr = float(10 * torch.log10(4 / ((rec - images) ** 2).mean()))
    g = torch.Generator().manual_seed(0)
    r = torch.nn.functional.interpolate(
        torch.randn(len(z), 1, z.shape[2] // 2, z.shape[3] // 2, generator=g), scale_factor=2
    ).to(z.device)
    r = 0.2 * r.expand_as(z)
    back = model.encode_images(model.decode_latents(z + r), mode=True) - model.encode_images(rec, mode=True)
    return {"vae_psnr_db": round(psnr, 2), "round_trip_gain": round(float((back * r).sum() / (r * r).sum()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. seed=0 defense.codec.steps=2000")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file too")
    parser.add_argument("--vae", nargs="*", default=[], metavar="KEY=VALUE",
                        help="train another VAE first, like the base's with these model.pretrain keys changed, e.g. "
                        "kl_weight=1e-6 vae_steps=3000")  # fmt: skip
    args = parser.parse_args()
    vae = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.vae)}
    line = json.dumps(probe([*args.overrides, "progress=false"], vae=vae))
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
