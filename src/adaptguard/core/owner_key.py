"""The owner key file: everything ``verify`` needs to check a suspect model, and the only copy of the secret.

``protect`` writes it with mode 0600 beside (not inside) the published model folder. It holds the
defense's secret key, the defense config it was made with (secret fields included: they
determine how the watermark is read), the decision rule with its calibration, and a hash of
the protected weights. ``repr`` is redacted, so printing or logging a key shows no secret.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from adaptguard.core.errors import ConfigError
from adaptguard.core.private import private_file

FORMAT = 1


@dataclass(repr=False)
class OwnerKey:
    defense: str  # the defense's config name, e.g. "backdoor"
    target: str  # the defense class (module.Class), rebuilt from ``config`` at verify time
    defense_version: int  # the defense's verification protocol version
    config: dict[str, Any]  # the defense's full config (secret fields included)
    secret: dict[str, Any]  # the SecretKey's fields
    decision: dict[str, Any]  # threshold, target FPRs and how they were calibrated
    protected_sha256: str  # hash of the protected UNet's weights
    architecture: dict[str, Any]  # what a suspect's UNet must match
    model_path: str | None = None  # where protect wrote the model: the default base for LoRA / bare UNet suspects
    seed: int = 0  # the run seed verification sampled with at protect time
    created: str = ""
    adaptguard_version: str = ""
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write owner-only (0600) from the first byte: the file is never readable by others."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with private_file(path) as handle:
            torch.save(asdict(self), handle)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OwnerKey:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"key: {path} does not exist; pass the owner.key file written by `adaptguard protect`")
        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise ConfigError(f"key: {path} is not an adaptguard owner key ({type(err).__name__})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"defense", "secret", "decision"} <= set(data):
            raise ConfigError(f"key: {path} is not an adaptguard owner key (written by `adaptguard protect`)")
        if data.get("format", FORMAT) > FORMAT:
            raise ConfigError(f"key: {path} has key format {data['format']}; upgrade adaptguard to read it")
        return cls(**{k: v for k, v in data.items() if k in names})

    def __repr__(self) -> str:
        return f"OwnerKey(defense={self.defense!r}, <secret>)"

    __str__ = __repr__
