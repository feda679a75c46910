"""The data contract: every dataset yields ``{"image", "caption", "domain"}`` items.

Images are float tensors in [-1, 1], shape (3, H, W). Named splits (owner, attacker,
legal, illegal, eval, ...) are config values: each is a :class:`SplitSpec` that filters
and subsamples the dataset deterministically, so which data each party sees is never
decided in code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from adaptguard.core.config import Rule, check_value
from adaptguard.core.errors import ConfigError


@dataclass
class SplitSpec:
    """Which items a party sees.

    ``where`` keeps items whose attributes match (``{"kind": ["circle"]}``); ``offset``
    and ``size`` then select a window of the filtered items, so owner and attacker can
    get disjoint data from the same source. For a dataset on disk, a float in [0, 1] is a
    share of the filtered items (``offset: 0.5, size: 0.5``: its second half), so one
    config works for 60 images or 60 000.
    """

    where: dict[str, list[str]] = field(default_factory=dict)
    offset: int | float = 0
    size: int | float | None = None

    @classmethod
    def parse(cls, name: str, value: Mapping[str, Any] | SplitSpec | None) -> SplitSpec:
        if isinstance(value, SplitSpec):
            return value
        value = dict(value or {})
        unknown = set(value) - {"where", "offset", "size"}
        if unknown:
            raise ConfigError(f"dataset.splits.{name}: unknown keys {sorted(unknown)}; use where, offset, size")
        where = {
            k: [v] if isinstance(v, str) else list(v)
            for k, v in dict(value.get("where") or {}).items()
            if v is not None  # null: any value
        }
        key = f"dataset.splits.{name}"
        offset = check_value(f"{key}.offset", value.get("offset", 0), int | float, Rule(ge=0))
        size = check_value(f"{key}.size", value.get("size"), int | float | None, Rule(gt=0))
        for what, v in (("offset", offset), ("size", size)):
            if isinstance(v, float) and v > 1:
                raise ConfigError(f"{key}.{what}: a float is a share of the filtered items and must be <= 1, got {v}")
        return cls(where=where, offset=offset, size=size)

    @property
    def is_share(self) -> bool:
        return isinstance(self.offset, float) or isinstance(self.size, float)

    def window(self, n: int) -> tuple[int, int]:
        """[start, end) of the items this split takes from ``n`` filtered items."""
        share = isinstance(self.offset, float)
        start = int(self.offset * n) if share else int(self.offset)
        if self.size is None:
            end = n
        elif isinstance(self.size, float):  # shares end where the next share starts: halves cover every item
            end = int((self.offset + self.size) * n) if share else start + int(self.size * n)
        else:
            end = start + self.size
        return min(start, n), min(end, n)

    def empty_reason(self, name: str, n: int) -> str | None:
        """Why this split selects nothing from ``n`` filtered items, naming the setting at fault; None if it does not."""
        start, end = self.window(n)
        if end > start:
            return None
        key = f"dataset.splits.{name}"
        if n == 0:
            return f"{key}.where: the filter {self.where} keeps no items"
        if start >= n:
            return (f"{key}.offset: {self.offset} is past the {n} items this split's filter keeps; lower it or "
                    f"give shares of the data (offset: 0.5, size: 0.5)")  # fmt: skip
        return f"{key}.size: {self.size} of {n} filtered items is no item; raise it"

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(k) in allowed for k, allowed in self.where.items())


@dataclass
class LabelledImages:
    """Images with attribute labels, from which a domain feature extractor for FID/KID is trained.

    ``train`` and ``test`` yield ``(image in [0, 1], label indices)``, one index per attribute
    of ``labels`` (attribute -> its values, in index order).
    """

    labels: dict[str, list[str]]
    train: Dataset
    test: Dataset


class CaptionedImageDataModule(L.LightningDataModule):
    """Base for all datasets: named splits, dataloaders, domain labels.

    Subclasses implement :meth:`build_split`; the callers choose batch sizes (each stage has its own).
    """

    name = "base"

    # the config key (``dataset.<parameter>``) docs of this class's __init__; each subclass documents its own
    KEY_DOCS: ClassVar[dict[str, str]] = {
        "splits": "`{<name>: {where, offset, size}}`: the items each party sees; on disk a float offset / size is a "
        "share of the filtered images",
        "num_workers": "DataLoader worker processes",
        "name": "label in results and logs",
    }

    def __init__(
        self,
        splits: Mapping[str, Any] | None = None,
        num_workers: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if name:
            self.name = name
        self.splits = {name: SplitSpec.parse(name, spec) for name, spec in (splits or {}).items()}
        self.num_workers = check_value("dataset.num_workers", num_workers, int, Rule(ge=0))
        self._datasets: dict[str, Dataset] = {}

    # -- to implement
    def build_split(self, name: str, spec: SplitSpec) -> Dataset:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able description used in cache keys: what data a model was trained on."""
        return {"name": self.name, "splits": {k: vars(v) for k, v in sorted(self.splits.items())}}

    def data_report(self) -> dict[str, Any]:
        """Facts for results.json: items per split used (and, on disk, images skipped as unreadable)."""
        return {"split_sizes": {name: len(ds) for name, ds in sorted(self._datasets.items())}}  # type: ignore[arg-type]

    def feature_extractor_spec(self) -> dict[str, Any] | None:
        """What identifies this dataset's domain feature extractor for FID/KID (a cache key); None: InceptionV3."""
        return None

    def feature_training_data(self) -> LabelledImages | None:
        """The labelled images that extractor is trained on (when ``feature_extractor_spec`` is not None)."""
        return None

    def prompt_attributes(self, caption: str) -> dict[str, str] | None:
        """The attribute values ``caption`` asks for, named like ``feature_training_data``'s labels, so the
        domain extractor's heads can check a generated image against its prompt (prompt fidelity); None: the
        caption is not one this dataset can read, or the dataset has no labelled attributes."""
        return None

    def fidelity_groups(self) -> dict[str, tuple[str, ...]]:
        """Named attribute sets whose joint prompt fidelity is reported besides each attribute and all of them."""
        return {}

    def check(self) -> None:
        """Raise a DataError now if the data is not where the config says (before any long work)."""

    def subject_prompts(self) -> tuple[str, str] | None:
        """(instance prompt, class prompt) of the subject in the ``instance`` split, if the dataset has one;
        lets ``attack=dreambooth`` follow the dataset instead of asking the user to repeat it."""
        return None

    # -- shared
    def spec(self, split: str) -> SplitSpec:
        if split not in self.splits:
            raise ConfigError(
                f"dataset.splits.{split}: this experiment needs a '{split}' split; "
                f"the dataset config defines {sorted(self.splits)}"
            )
        return self.splits[split]

    def dataset(self, split: str) -> Dataset:
        if split not in self._datasets:
            ds = self.build_split(split, self.spec(split))
            if len(ds) == 0:
                raise ConfigError(f"dataset.splits.{split}: selects no items (check its 'where' filter)")
            self._datasets[split] = ds
        return self._datasets[split]

    def dataloader(self, split: str, batch_size: int, shuffle: bool = True, drop_last: bool = True) -> DataLoader:
        ds = self.dataset(split)
        return train_loader(ds, batch_size, self.num_workers, shuffle=shuffle, drop_last=drop_last)

    def captions(self, split: str, n: int, seed: int = 0) -> list[str]:
        """``n`` captions from a split (deterministic), used as prompts for evaluation."""
        ds = self.dataset(split)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(ds), size=n, replace=len(ds) < n)
        return [ds.caption(int(i)) if hasattr(ds, "caption") else ds[int(i)]["caption"] for i in idx]


def train_loader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True, drop_last: bool = True
) -> DataLoader:
    """Training batches whose position (sampler state included) Lightning saves in its checkpoints, so a resumed
    stage sees the batches an uninterrupted one would (torchdata's StatefulDataLoader). Workers persist, so a short
    epoch does not re-fork them; a split smaller than two batches loads in the main process."""
    size = len(dataset)  # type: ignore[arg-type]
    workers = num_workers if size >= 2 * batch_size else 0
    return StatefulDataLoader(
        dataset,
        batch_size=min(batch_size, size),
        shuffle=shuffle,
        drop_last=drop_last and size >= batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def subsample(indices: list[int], spec: SplitSpec) -> list[int]:
    start, end = spec.window(len(indices))
    return indices[start:end]
