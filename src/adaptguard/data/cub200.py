"""CUB-200-2011 birds, with the text_c10 captions (Reed et al. 2016) when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from adaptguard.data.disk import DiskDataModule, Record, readable_name


class Cub200DataModule(DiskDataModule):
    name = "cub200"
    LAYOUT = """
    <root>/CUB_200_2011/images.txt, classes.txt, image_class_labels.txt, train_test_split.txt
    <root>/CUB_200_2011/bounding_boxes.txt           (only for dataset.crop_to_box=true)
    <root>/CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
    <root>/text_c10/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.txt   (optional captions)
    (<root> may also be the CUB_200_2011 folder itself)
    from https://www.vision.caltech.edu/datasets/cub_200_2011/; captions from Reed et al. (cvpr2016_cub)"""
    FILES = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt")

    KEY_DOCS: ClassVar[dict[str, str]] = {
        "caption_template": "an item's caption: this template formatted with its class or category",
        "captions_dir": "the text_c10 caption folder (null: a `text_c10` in `<root>` or beside `CUB_200_2011`, when "
        "present)",
        "crop_to_box": "crop to the bird's bounding box (`bounding_boxes.txt`) before resizing",
    }

    def __init__(
        self,
        caption_template: str = "a photo of a {}, a type of bird",
        captions_dir: str | None = None,  # None: <root>/text_c10 (or beside CUB_200_2011) when present
        crop_to_box: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.caption_template = caption_template
        self.captions_dir = captions_dir
        self.crop_to_box = crop_to_box

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "caption_template": self.caption_template, "captions_dir": self.captions_dir,
                "crop_to_box": self.crop_to_box}  # fmt: skip

    def load_records(self, root: Path) -> list[Record]:
        base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
        missing = [f for f in self.FILES if not (base / f).is_file()]
        if missing:
            raise self.missing(f"{base} lacks {', '.join(missing)}")
        paths = _table(base / "images.txt")
        classes = _table(base / "classes.txt")
        labels = _table(base / "image_class_labels.txt")
        is_train = _table(base / "train_test_split.txt")
        boxes = {}
        if self.crop_to_box:
            if not (base / "bounding_boxes.txt").is_file():
                raise self.missing(f"dataset.crop_to_box=true needs {base / 'bounding_boxes.txt'}")
            boxes = {k: tuple(float(x) for x in v.split()) for k, v in _table(base / "bounding_boxes.txt").items()}
        text = self._captions_folder(root, base)
        records = []
        for image_id, rel in paths.items():
            label = classes[labels[image_id]]
            captions = _caption_lines(text / Path(rel).with_suffix(".txt")) if text else ()
            captions = captions or (self.caption_template.format(readable_name(label)),)
            attrs = {"class": readable_name(label), "subset": "train" if is_train[image_id] == "1" else "test"}
            records.append(Record(str(base / "images" / rel), captions, attrs, box=boxes.get(image_id)))
        return records

    def _captions_folder(self, root: Path, base: Path) -> Path | None:
        if self.captions_dir is not None:
            folder = Path(self.captions_dir).expanduser()
            if not folder.is_dir():
                raise self.missing(f"dataset.captions_dir={folder} is not a folder")
            return folder
        return next((p for p in (root / "text_c10", base / "text_c10", base.parent / "text_c10") if p.is_dir()), None)


def _table(path: Path) -> dict[str, str]:
    """``<id> <value...>`` lines as a dict."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            k, v = line.strip().split(" ", 1)
            out[k] = v
    return out


def _caption_lines(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return ()
    return tuple(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip())
