"""The DreamBooth benchmark (google/dreambooth): one folder per subject + prompts_and_classes.txt."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from adaptguard.data.disk import DiskDataModule, Record, image_files


class DreamBoothDataModule(DiskDataModule):
    name = "dreambooth"
    LAYOUT = """
    <root>/prompts_and_classes.txt   ("subject_name,class" lines, e.g. "dog,dog", "backpack,backpack")
    <root>/dog/00.jpg, 01.jpg, ...   (one folder per subject)
    (<root> may also be the repository, with the above under <root>/dataset/)
    from https://github.com/google/dreambooth"""

    KEY_DOCS: ClassVar[dict[str, str]] = {
        "subject": "the subject folder",
        "class_name": "the subject's class (null: from `prompts_and_classes.txt`)",
        "instance_template": "the subject's prompt, formatted with its class (`attack=dreambooth` uses it)",
        "class_template": "the class prompt, formatted with the class",
    }

    def __init__(
        self,
        subject: str = "dog",
        class_name: str | None = None,  # None: from prompts_and_classes.txt
        instance_template: str = "a photo of sks {}",
        class_template: str = "a photo of {}",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("domain_attribute", "subject")
        super().__init__(**kwargs)
        self.subject = subject
        self.class_name = class_name
        self.instance_template = instance_template
        self.class_template = class_template

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subject": self.subject, "class_name": self.class_name,
                "instance_template": self.instance_template}  # fmt: skip

    def base(self) -> Path:
        root = self.root
        assert root is not None
        return root / "dataset" if (root / "dataset" / "prompts_and_classes.txt").is_file() else root

    def subject_class(self) -> str:
        if self.class_name:
            return self.class_name
        table = self.base() / "prompts_and_classes.txt"
        if not table.is_file():
            raise self.missing(f"{table} not found (or set dataset.class_name)")
        for line in table.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0] == self.subject:
                return parts[1]
        raise self.missing(f"subject {self.subject!r} is not listed in {table}")

    @property
    def instance_prompt(self) -> str:
        return self.instance_template.format(self.subject_class())

    @property
    def class_prompt(self) -> str:
        return self.class_template.format(self.subject_class())

    def subject_prompts(self) -> tuple[str, str]:
        return self.instance_prompt, self.class_prompt

    def load_records(self, root: Path) -> list[Record]:
        prompt = (self.instance_prompt,)  # first: a subject missing from the prompts file is the clearer error
        folder = self.base() / self.subject
        if not folder.is_dir():
            raise self.missing(f"subject folder {folder} not found (dataset.subject={self.subject})")
        return [Record(str(p), prompt, {"subject": self.subject}) for p in image_files(folder)]
