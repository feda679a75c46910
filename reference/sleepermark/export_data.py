"""Inputs for the authors' SleeperMark code, written by adaptguard's own modules (run with adaptguard's venv).

    python reference/sleepermark/export_data.py data --out /work/refcode/data
    python reference/sleepermark/export_data.py keys --model MODEL_DIR --out /work/refcode/data/trainable_keys.json
    python reference/sleepermark/export_data.py secret --stage1 RUN/stage1/saved_models/last \\
        --clone /work/refcode/sleepermark --latent-size 16 --out RUN/pretrainedWM

data: the shapes splits the latent tiny model uses (conf/dataset/shapes.yaml): `owner` (2048 images, what stage 1
and stage 2 train on) and `eval` (512 held-out images; their captions are stage 2's evaluation prompts), as PNGs
with a `metadata.jsonl` of {file_name, text} (upstream's stage-2 format) and a `captions.jsonl` of {caption}
(upstream's evaluation-prompt format).
keys: the UNet weights upstream's stage 2 trains, by its rule: the up-blocks' attention modules except norms, as
module-name prefixes (upstream's `unet_attention_Upblock_keys.json` format).
secret: upstream ships these as downloads: a fixed 48-bit message (`secret.pt`, float (48,)), its residual from
the trained stage-1 encoder (`res.pt`, (1, C, H, W)), beside the stage-1 `decoder.pth` (and `encoder.pth`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPLITS = {"owner": "owner", "eval": "eval"}  # adaptguard split -> folder
UP_ATTENTION = re.compile(r"^up_blocks\.\d+\.attentions\.(?!.*norm)")  # = adaptguard's TRAINABLE["up_attention"]


def export_data(out: Path) -> None:
    from adaptguard.cli.build import instantiate
    from adaptguard.cli.config import compose

    cfg = compose(["model=tiny", "dataset=shapes", "logger=none"])
    data = instantiate(cfg.dataset)
    for split, folder in SPLITS.items():
        ds = data.dataset(split)
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        meta, caps = [], []
        for i in range(len(ds)):
            item = ds[i]
            array = ((item["image"].clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            name = f"{i:05d}.png"
            Image.fromarray(array).save(target / name)
            meta.append({"file_name": name, "text": item["caption"]})
            caps.append({"caption": item["caption"]})
        for file, rows in (("metadata.jsonl", meta), ("captions.jsonl", caps)):
            (target / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{split}: {len(ds)} images ({tuple(ds[0]['image'].shape)}) -> {target}")


def export_keys(model: Path, out: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    keys: list[str] = []
    chosen = 0
    for name, p in unet.named_parameters():
        if UP_ATTENTION.search(name):
            chosen += p.numel()
            module = name.rsplit(".", 1)[0]
            if module not in keys:
                keys.append(module)
    selected = sum(p.numel() for n, p in unet.named_parameters() if any(n.startswith(k) for k in keys))
    assert selected == chosen, "a key prefix selects more than the rule (upstream matches by startswith)"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(keys, indent=1) + "\n")
    total = sum(p.numel() for p in unet.parameters())
    print(f"{len(keys)} module keys, {chosen} of the UNet's {total} parameters -> {out}")


def export_secret(stage1: Path, clone: Path, latent_size: int, out: Path, seed: int, bits: int = 48) -> None:
    sys.path.insert(0, str(clone / "Stage1"))  # the patched upstream encoder, exactly as stage 1 trained it
    import model as upstream  # noqa: E402

    encoder = upstream.SecretEncoder(secret_size=bits, base_res=latent_size // 2, resolution=latent_size)
    encoder.load_state_dict(torch.load(stage1 / "encoder.pth", map_location="cpu"))
    encoder.eval()
    secret = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, size=bits).astype(np.float32))
    with torch.no_grad():
        residual = encoder(secret[None])
    out.mkdir(parents=True, exist_ok=True)
    torch.save(secret, out / "secret.pt")
    torch.save(residual, out / "res.pt")
    for name in ("decoder.pth", "encoder.pth"):
        shutil.copy(stage1 / name, out / name)
    rms = float(residual.pow(2).mean().sqrt())
    print(f"secret {secret.int().tolist()} residual {tuple(residual.shape)} rms {rms:.4f} -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("data")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("keys")
    p.add_argument("--model", type=Path, required=True, help="diffusers model folder")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("secret")
    p.add_argument("--stage1", type=Path, required=True, help="folder with stage 1's encoder.pth and decoder.pth")
    p.add_argument("--clone", type=Path, required=True, help="the patched upstream clone")
    p.add_argument("--latent-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="draws the message")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.mode == "data":
        export_data(args.out)
    elif args.mode == "keys":
        export_keys(args.model, args.out)
    else:
        export_secret(args.stage1, args.clone, args.latent_size, args.out, args.seed)


if __name__ == "__main__":
    main()
