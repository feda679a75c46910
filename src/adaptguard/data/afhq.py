"""AFHQ (Animal Faces-HQ): ``{train,val}/{cat,dog,wild}/*.jpg``; captions from a class template."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from adaptguard.data.disk import DiskDataModule, Record, image_files


class AfhqDataModule(DiskDataModule):
    name = "afhq"
    LAYOUT = """
    <root>/train/cat/flickr_cat_000002.jpg   (train/dog/, train/wild/)
    <root>/val/cat/...                       (val/dog/, val/wild/)
    from https://github.com/clovaai/stargan-v2 (afhq.zip, or afhq_v2)"""
    CLASSES = ("cat", "dog", "wild")

    KEY_DOCS: ClassVar[dict[str, str]] = {
        "caption_template": "an item's caption: this template formatted with its class or category"
    }

    def __init__(self, caption_template: str = "a photo of a {} face", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.caption_template = caption_template

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "caption_template": self.caption_template}

    def load_records(self, root: Path) -> list[Record]:
        records = []
        found = [s for s in ("train", "val") if (root / s).is_dir()]
        if not found:
            raise self.missing(f"neither {root / 'train'} nor {root / 'val'} exists")
        for subset in found:
            for cls in self.CLASSES:
                for path in image_files(root / subset / cls):
                    records.append(
                        Record(str(path), (self.caption_template.format(cls),), {"subset": subset, "class": cls})
                    )
        return records
