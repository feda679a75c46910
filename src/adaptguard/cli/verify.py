"""``adaptguard verify`` / ``python -m experiments.verify``: is this model derived from my protected one?

    adaptguard verify key=release/owner.key suspect=downloads/some-model          # pipeline or unet/ folder
    adaptguard verify key=release/owner.key suspect=downloads/model.safetensors   # single-file checkpoint
    adaptguard verify key=release/owner.key suspect.lora=pytorch_lora_weights.safetensors [suspect.base=folder]

Options: seed=<int> (default: the seed protect verified with), device=auto|cpu|cuda,
verify.out=<file.json>, --json (print JSON instead of text). Exit status 0 whether or not the
watermark is detected; 2 for bad input (missing file, a key without verification, a suspect of
another architecture).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from adaptguard.cli.app import quiet_libraries, user_errors
from adaptguard.cli.options import key_context, parse_options
from adaptguard.core.errors import ConfigError
from adaptguard.core.owner_key import OwnerKey
from adaptguard.models.suspect import Suspect
from adaptguard.pipeline.owner import Verdict, verify_suspect

OPTIONS = {"key": str, "suspect": str, "suspect.path": str, "suspect.lora": str, "suspect.base": str, "seed": int,
           "device": str, "verify.out": str}  # fmt: skip


def verify(argv: list[str]) -> tuple[Verdict, dict[str, Any]]:
    """In-process ``verify`` (tests, notebooks): the verdict and the parsed options."""
    opts = parse_options(argv, OPTIONS, ["--json"], usage=__doc__ or "")
    if not opts.get("key"):
        raise ConfigError("key: required; key=<owner.key written by adaptguard protect>")
    key = OwnerKey.load(opts["key"])
    suspect = Suspect(
        opts.get("suspect") or opts.get("suspect.path"), opts.get("suspect.lora"), opts.get("suspect.base")
    )
    ctx = key_context(key, opts)
    verdict = verify_suspect(key, suspect, ctx)
    if out := opts.get("verify.out"):
        Path(out).expanduser().write_text(json.dumps(verdict.to_dict(), indent=2))
    return verdict, opts


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()
    with user_errors():
        verdict, opts = verify(sys.argv[1:] if argv is None else argv)
    print(json.dumps(verdict.to_dict(), indent=2) if opts["--json"] else verdict.text())


if __name__ == "__main__":
    main()
