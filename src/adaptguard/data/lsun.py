"""LSUN scenes/objects: the official lmdb databases, or an exported image folder, per category.

The lmdb is read with the ``lmdb`` package directly rather than torchvision's LSUNClass,
which writes a key cache into the working directory and shares one environment across
DataLoader workers; the keys are listed once and each worker opens its own environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from adaptguard.core.errors import ConfigError
from adaptguard.data.disk import DiskDataModule, Record, image_files

FORMATS = ("auto", "lmdb", "folder")


class LsunDataModule(DiskDataModule):
    name = "lsun"
    LAYOUT = """
    lmdb (official, from https://github.com/fyu/lsun download.py):
      <root>/bedroom_train_lmdb/data.mdb   (and lock.mdb; bedroom_val_lmdb/ too)
    or an exported folder (lsun data.py export):
      <root>/bedroom/<any subfolders>/*.jpg|*.webp"""

    KEY_DOCS: ClassVar[dict[str, str]] = {
        "category": "the LSUN category",
        "subsets": "which subsets to read (coco: `annotations/captions_<subset><year>.json`, null: [train, val]; "
        "lsun: `<category>_<subset>_lmdb` databases, null: [train])",
        "format": "auto (the lmdb when present) | lmdb | folder (an exported image folder)",
        "caption_template": "an item's caption: this template formatted with its class or category",
    }

    def __init__(
        self,
        category: str = "bedroom",
        subsets: list[str] | None = None,
        format: str = "auto",
        caption_template: str = "a photo of a {}",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("domain_attribute", "category")
        super().__init__(**kwargs)
        if format not in FORMATS:
            raise ConfigError(f"dataset.format: {format!r} is not one of {FORMATS}")
        self.category = category
        self.subsets = list(subsets or ["train"])
        self.format = format
        self.caption_template = caption_template

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "category": self.category, "subsets": self.subsets, "format": self.format,
                "caption_template": self.caption_template}  # fmt: skip

    def load_records(self, root: Path) -> list[Record]:
        caption = (self.caption_template.format(self.category.replace("_", " ")),)
        dbs = [root / f"{self.category}_{s}_lmdb" for s in self.subsets]
        use_lmdb = self.format == "lmdb" or (self.format == "auto" and any((d / "data.mdb").is_file() for d in dbs))
        if use_lmdb:
            records = []
            for subset, db in zip(self.subsets, dbs, strict=True):
                if not (db / "data.mdb").is_file():
                    raise self.missing(f"{db / 'data.mdb'} not found (dataset.category={self.category})")
                attrs = {"subset": subset, "category": self.category}
                records += [Record(str(db), caption, attrs, key=k) for k in _lmdb_keys(db)]
            return records
        folder = root / self.category
        if not folder.is_dir():
            raise self.missing(f"neither {dbs[0]}/data.mdb nor the folder {folder} exists")
        return [Record(str(p), caption, {"subset": "folder", "category": self.category}) for p in image_files(folder)]


def _lmdb_keys(db: Path) -> list[bytes]:
    import lmdb

    env = lmdb.open(str(db), readonly=True, lock=False, readahead=False, meminit=False)
    try:
        with env.begin(write=False) as txn:
            return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
    finally:
        env.close()
