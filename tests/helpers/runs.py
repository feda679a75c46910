"""Contexts, data and in-process runs of the command line for tests."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from adaptguard.cli.config import compose
from adaptguard.cli.run import run
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.reporting.results import RunResult

REPO = Path(__file__).resolve().parents[2]


# Stable Signature with a 16-bit message at settings that detect it on micro and micro_dit
# (docs/defenses/stable_signature.md): the diagonals' settings
STABLE_SIGNATURE = ["defense=stable_signature", "defense.extractor.bits=16", "defense.extractor.steps=200",
                    "defense.extractor.batch_size=16",
                    "defense.steps=150", "defense.batch_size=8", "defense.num_samples=16", "defense.null_messages=15",
                    "defense.fpr=1e-2", "defense.model_fpr=1e-2", "defense.sample_steps=10", "defense.key_seed=3"]  # fmt: skip
# those settings as the first member of a stack with a random mask, every seed fixed: the owner's protect of this
# stack is served the run's cached protection
STACK = ["defense=stack", "defense.members=[{defense:stable_signature,extractor:{bits:16,steps:200,batch_size:16},steps:150,batch_size:8,"
         "num_samples:16,null_messages:15,fpr:1e-2,model_fpr:1e-2,sample_steps:10,key_seed:3},"
         "{defense:random_freeze,mask_seed:5}]"]  # fmt: skip


def make_micro_data() -> ShapesDataModule:
    return ShapesDataModule(
        resolution=16,
        splits={
            "owner": {"size": 256},
            "attacker": {"offset": 5000, "size": 256},
            "eval_attacker": {"offset": 7000, "size": 64},
            "eval": {"offset": 9000, "size": 64},
        },
    )


def make_ctx(tmp_path: Path) -> RunContext:
    trainer = functools.partial(
        L.Trainer, accelerator="cpu", devices=1, enable_model_summary=False, log_every_n_steps=1
    )
    return RunContext(
        cache=ArtifactCache(tmp_path / "cache"), make_trainer=trainer, out_dir=tmp_path / "out", progress=False
    )


def run_config(overrides: Sequence[str], out: Path) -> RunResult:
    """``adaptguard run <overrides>`` in this process, results in ``out``."""
    return run(compose([*overrides, "progress=false"], output_dir=out), out)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def cli(args: Sequence[str]) -> CliResult:
    """``adaptguard <args>`` in this process (the console script's code path), with its exit code and output."""
    from adaptguard.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        logging.getLogger().handlers.clear()  # Hydra's job logging wrote to the captured streams
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_secrets_only_in_owner_only_keys(cache: Path, *secrets: str) -> list[Path]:
    """In the cache the secrets are in key files only, and those (and their folders) are owner-only."""
    holders = [p for p in cache.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]
    assert all(p.name == "key.pt" for p in holders), holders
    for path in holders:
        assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0, path
    return holders


VERDICT_NUMBERS = ("rate", "successes", "trials", "p_value", "detected")


def verify_json(*args: str) -> dict:
    """``adaptguard verify <args> --json``: the verdict (exit status 0 asserted)."""
    import json

    result = cli(["verify", *args, "--json"])
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def same_numbers(verdict: dict, expected) -> None:
    """A verdict's decision numbers equal ``expected``'s (a verdict, a report dict or a Verification)."""
    expected = expected if isinstance(expected, dict) else vars(expected)
    assert {k: verdict[k] for k in VERDICT_NUMBERS} == {k: expected[k] for k in VERDICT_NUMBERS}
