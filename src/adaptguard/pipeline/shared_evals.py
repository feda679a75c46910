"""Evaluations that every job of a sweep repeats, cached by what determines them.

A sweep of N defenses x M attacks samples and scores the base model N x M times and each protected
model M times, though neither depends on the attack. Here an evaluation of a model is an artifact
keyed by the model's weights (a hash, so a rebuilt protection with a fresh key is a new entry), its
sampler, the split, the evaluation settings, the seed and the device; a hit gives the numbers an
uncached run computes, to the last bit. Verification entries are private (they are made with the
owner's key, which enters the key only as a salted fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptguard.core.artifacts import ArtifactCache, weights_sha256
from adaptguard.core.keys import SecretKey
from adaptguard.core.verification import Verification
from adaptguard.models.bundle import DiffusionModel

EVALUATION = "evaluation"  # cache kind


def model_identity(model: DiffusionModel) -> dict[str, Any]:
    """What decides a model's samples: every weight, the sampler settings and the tokenizer."""
    parts = {
        p: weights_sha256(m) for p in ("unet", "text_encoder", "vae") if (m := getattr(model, p, None)) is not None
    }
    tokenizer = getattr(model, "tokenizer", None)
    return {"weights": parts, "sampler": asdict(model.sampler), "resolution": model.resolution,
            "tokenizer": [type(tokenizer).__name__, getattr(tokenizer, "model_max_length", None)]}  # fmt: skip


def key_digest(key: SecretKey | None) -> str | None:
    """sha256 of a key's contents (tensors by value, nested ones too); only ever stored as a salted fingerprint."""
    if key is None:
        return None
    h = hashlib.sha256(type(key).__name__.encode())
    for f in fields(key):  # type: ignore[arg-type]
        h.update(f.name.encode())
        _feed(h, getattr(key, f.name))
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if torch.is_tensor(value):
        h.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(f"key:{k}".encode())
            _feed(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(f"seq{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(json.dumps(value, default=repr).encode())


def _plain(value: Any) -> Any:
    """numpy scalars and tensors as JSON numbers/lists."""
    if isinstance(value, np.generic):
        return value.item()
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in an evaluation cache entry")


def verification_to_json(v: Verification | None) -> dict[str, Any] | None:
    return None if v is None else json.loads(json.dumps(asdict(v), default=_plain))


def verification_from_json(d: dict[str, Any] | None) -> Verification | None:
    return None if d is None else Verification(**{**d, "ci": tuple(d["ci"])})


@dataclass
class SharedEvaluations:
    """``cache`` None (``eval.cache=false``): every evaluation is computed. ``hits``: labels served from it."""

    cache: ArtifactCache | None
    context: dict[str, Any]  # seed, device: part of every entry's key
    hits: list[str] = field(default_factory=list)

    @contextmanager
    def entry(self, label: str, spec: dict[str, Any], build: Callable[[Path], None], private: bool = False,
              code: Sequence[Any] = ()) -> Iterator[Path]:  # fmt: skip
        """The entry's folder, built by ``build(folder)`` unless cached (``code``: what computes it, part of the
        key). With the cache off it is built in a temporary folder: both ways the values are read back from
        the same files."""
        if self.cache is None:
            with tempfile.TemporaryDirectory(prefix="adaptguard-eval-") as tmp:  # 0700
                build(Path(tmp))
                yield Path(tmp)
            return
        folder, built = self.cache.fetch(EVALUATION, {**spec, **self.context}, build, private=private, code=code)
        if not built:
            self.hits.append(label)
        yield folder
