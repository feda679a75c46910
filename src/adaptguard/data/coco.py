"""MS-COCO captions, 2014 or 2017 (``annotations/captions_<subset>.json`` + ``<subset>/`` images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from adaptguard.data.disk import DiskDataModule, Record


class CocoDataModule(DiskDataModule):
    name = "coco"
    LAYOUT = """
    <root>/annotations/captions_train2017.json   (captions_val2017.json; 2014: captions_train2014.json, ...)
    <root>/train2017/000000000009.jpg            (val2017/, train2014/COCO_train2014_....jpg, ...)
    from https://cocodataset.org/#download: 2017 Train/Val images + 2017 Train/Val annotations"""

    KEY_DOCS: ClassVar[dict[str, str]] = {
        "year": "which annotation files: `captions_<subset><year>.json` (2017 or 2014)",
        "subsets": "which subsets to read (coco: `annotations/captions_<subset><year>.json`, null: [train, val]; "
        "lsun: `<category>_<subset>_lmdb` databases, null: [train])",
    }

    def __init__(self, year: int = 2017, subsets: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("domain_attribute", "subset")
        super().__init__(**kwargs)
        self.year = int(year)
        self.subsets = list(subsets or ["train", "val"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "year": self.year, "subsets": self.subsets}

    def load_records(self, root: Path) -> list[Record]:
        records: list[Record] = []
        for subset in self.subsets:
            name = f"{subset}{self.year}"
            ann = root / "annotations" / f"captions_{name}.json"
            if not ann.is_file():
                raise self.missing(f"{ann} not found (dataset.year={self.year}, dataset.subsets={self.subsets})")
            images = root / name
            if not images.is_dir():
                raise self.missing(f"image folder {images} not found")
            data = json.loads(ann.read_text())
            captions: dict[int, list[str]] = {}
            for a in data.get("annotations", []):
                captions.setdefault(a["image_id"], []).append(a["caption"].strip())
            for im in sorted(data.get("images", []), key=lambda x: x["id"]):
                if im["id"] in captions:  # images without a caption are not text-to-image data
                    records.append(Record(str(images / im["file_name"]), tuple(captions[im["id"]]), {"subset": subset}))
        return records
