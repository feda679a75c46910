"""Export the freezing presets' illegal and legal shapes domains in the folder layout the reference reads.

    python export_data.py OUT [--experiment page/compare_freezing] [hydra overrides...]

adaptguard's own data module (composed from the preset, as ``experiment=...`` would) renders every image, so the
pixels and captions are the ones our implementation trains and scores on. Layout (HF ``imagefolder``: one class
folder per domain, ``metadata.csv`` with ``file_name,text,label`` per split; recent ``datasets`` releases no
longer infer the class label from the folder once a metadata file exists, so ``label`` (0: the one class) is a
column, for the reference's ``example["label"] == idx`` filters):

    OUT/illegal/train/illegal/*.png        split `illegal`           the publisher's examples (mask learning)
    OUT/illegal/test/illegal/*.png         split `attacker_illegal`  the attacker's fine-tune (upstream: the "test"
                                                                     split of FF25; its FID also scores against it)
    OUT/illegal/validation/illegal/*.png   split `eval_illegal`      held out (our FID's real images)
    OUT/legal/train/legal/*.png            splits `legal` then `attacker_legal`: the reference takes the first
                                           N rows for the publisher and the rows from --user_start_idx for the user
    OUT/legal/test/legal/*.png             split `attacker_legal`    (what the FID script reads, as for illegal)
    OUT/legal/validation/legal/*.png       split `eval_legal`        held out

File names are zero-padded row numbers, so file order, metadata order and split order agree. OUT/export.json
records the splits and counts.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image

LAYOUT = {  # domain -> folder split -> adaptguard splits, in row order
    "illegal": {"train": ["illegal"], "test": ["attacker_illegal"], "validation": ["eval_illegal"]},
    "legal": {"train": ["legal", "attacker_legal"], "test": ["attacker_legal"], "validation": ["eval_legal"]},
}


def write_split(data, names: list[str], folder: Path, label: str) -> list[dict]:
    (folder / label).mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        ds = data.dataset(name)
        for i in range(len(ds)):
            file_name = f"{label}/{len(rows):05d}.png"
            Image.fromarray(ds.world.render(ds.attributes(i), ds.resolution)).save(folder / file_name)
            rows.append({"file_name": file_name, "text": ds.caption(i), "label": 0})
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--experiment", default="page/compare_freezing")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for the preset (dataset.splits...)")
    args = parser.parse_args()

    from adaptguard.cli.build import instantiate
    from adaptguard.cli.config import compose

    cfg = compose([f"experiment={args.experiment}", *args.overrides])
    data = instantiate(cfg.dataset)
    record = {"experiment": args.experiment, "overrides": args.overrides, "resolution": data.resolution,
              "splits": {k: vars(v) for k, v in data.splits.items()}, "folders": {}}  # fmt: skip
    for domain, splits in LAYOUT.items():
        for folder_split, names in splits.items():
            rows = write_split(data, names, args.out / domain / folder_split, domain)
            record["folders"][f"{domain}/{folder_split}"] = {"splits": names, "images": len(rows)}
    (args.out / "export.json").write_text(json.dumps(record, indent=2, default=str))
    print(json.dumps(record["folders"], indent=2))


if __name__ == "__main__":
    main()
