"""Prompt fidelity of a shipped base model's samples next to its real-image ceiling (docs/evaluation.md).

    python -m benchmarks.prompt_fidelity [--model tiny] [--samples 128] [--steps 20] [--seeds 0 1 2]

Samples the eval split's captions with the evaluation's settings (the default: 128 samples, the model's
sampler) and prints, per seed, FID and the share of images matching their prompt per attribute, for
kind+colour and for all five, then the same on the real images with their own captions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from adaptguard.cli.build import instantiate
from adaptguard.cli.config import compose
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext


def measure(model: str, samples: int, steps: int | None, seeds: list[int]) -> dict:
    cfg = compose([f"model={model}", f"eval.fid.num_samples={samples}"])
    source, data, ev = instantiate(cfg.model), instantiate(cfg.dataset), instantiate(cfg.eval)
    out: dict = {"model": model, "samples": samples, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            ctx = RunContext(cache=ArtifactCache(tmp), progress=False, device="cpu", seed=seed)
            m = source.load(ctx)
            if steps:
                m.sampler.steps = steps
            start = time.perf_counter()
            report, _ = ev.fid.evaluate(m, data, "eval", ctx, offset=100)
            out["steps"] = m.sampler.steps
            out["runs"].append({"seed": seed, "fid": round(report.fid, 2), "wall_s": round(time.perf_counter() - start),
                                "fidelity": {k: round(v, 3) for k, v in report.fidelity.items()},
                                "ceiling": {k: round(v, 3) for k, v in report.fidelity_real.items()}})  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    print(json.dumps(measure(a.model, a.samples, a.steps, a.seeds), indent=1))


if __name__ == "__main__":
    main()
