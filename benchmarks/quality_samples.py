"""How many samples a quality difference needs: paired interval width vs samples vs time (docs/evaluation.md).

    python -m benchmarks.quality_samples [--model tiny] [--sigma 0.1] [--max 512] [--seeds 0 1 2]

The shipped base and the base with `attack=weight_noise` (sigma x each tensor's std: the positive control,
a change that visibly degrades samples) draw the eval split's first ``--max`` captions from the same noise.
For each sample count n (the first n images: the set `eval.fid.num_samples=n` scores), it reports the paired
difference (noisy - base) of FID, KID and prompt fidelity with its 95 % bootstrap interval, the interval of
the same difference when the noisy model draws its images from other noise (unpaired), and the seconds the
two models' sampling and the bootstrap take at n.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

from adaptguard.cli.build import instantiate
from adaptguard.cli.config import compose
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.metrics.paired import ImageScores, paired_deltas

COUNTS = (32, 64, 128, 256, 512)
METRICS = ("fid", "kid", "fidelity/kind+colour", "fidelity/all")


def _prefix(s: ImageScores, n: int) -> ImageScores:
    return ImageScores(s.features[:n], {k: v[:n] for k, v in s.matches.items()})


def measure(model: str, sigma: float, most: int, seed: int, resamples: int) -> dict:
    cfg = compose([f"model={model}", f"eval.fid.num_samples={most}", "attack=weight_noise", f"attack.sigma={sigma}",
                   f"seed={seed}"])  # fmt: skip
    source, data, ev, attack = (instantiate(cfg.model), instantiate(cfg.dataset), instantiate(cfg.eval),
                                instantiate(cfg.attack))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(cache=ArtifactCache(tmp), progress=False, device="cpu", seed=seed)
        base = source.load(ctx)
        noisy = attack.run(copy.deepcopy(base), data, None, ctx)
        scores, seconds = {}, {}
        for name, m, offset in (("base", base, 100), ("noisy", noisy, 100), ("noisy_afresh", noisy, 7100)):
            start = time.perf_counter()
            report, _ = ev.fid.evaluate(m, data, "eval", ctx, offset=offset)
            seconds[name] = time.perf_counter() - start
            scores[name] = report.per_image
        real = ev.fid.real_features(data, "eval", ctx)
    rows = []
    for n in (c for c in COUNTS if c <= most):
        start = time.perf_counter()
        paired = paired_deltas(real[:n], _prefix(scores["base"], n), _prefix(scores["noisy"], n), resamples, seed)
        boot_s = time.perf_counter() - start
        unpaired = paired_deltas(real[:n], _prefix(scores["base"], n), _prefix(scores["noisy_afresh"], n), resamples,
                                 seed)  # fmt: skip
        rows.append({"n": n, "seconds": round((seconds["base"] + seconds["noisy"]) * n / most + boot_s, 1),
                     "paired": {k: paired[k].to_dict() for k in METRICS},
                     "unpaired": {k: unpaired[k].to_dict() for k in METRICS}})  # fmt: skip
    return {"model": model, "sigma": sigma, "seed": seed, "steps": base.sampler.steps, "resamples": resamples,
            "rows": rows}  # fmt: skip


def table(runs: list[dict]) -> str:
    """Markdown, a row per n: each metric's mean paired interval width over the seeds (unpaired in brackets)
    and on how many seeds the positive control is resolved (its paired interval excludes 0)."""
    names = {"fid": "FID", "kid": "KID", "fidelity/kind+colour": "kind+colour", "fidelity/all": "all five"}
    head = ["n", "s (2 models)", *(f"{names[k]} width" for k in METRICS), "seeds resolved (FID / KID / k+c / all)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(runs[0]["rows"]):
        cells = [str(row["n"]), str(row["seconds"])]
        resolved = []
        for k in METRICS:
            paired = [r["rows"][i]["paired"][k]["ci"] for r in runs]
            unpaired = [r["rows"][i]["unpaired"][k]["ci"] for r in runs]
            digits = 1 if k == "fid" else 3
            width = sum(hi - lo for lo, hi in paired) / len(paired)
            cells.append(f"{width:.{digits}f} ({sum(hi - lo for lo, hi in unpaired) / len(unpaired):.{digits}f})")
            resolved.append(str(sum(lo > 0 or hi < 0 for lo, hi in paired)))
        lines.append("| " + " | ".join([*cells, " / ".join(resolved) + f" of {len(runs)}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--max", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--resamples", type=int, default=500)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--table", default=None, help="only print the table of a JSON an earlier run wrote")
    a = p.parse_args()
    if a.table:
        print(table(json.loads(open(a.table).read())))
        return
    runs = [measure(a.model, a.sigma, a.max, s, a.resamples) for s in a.seeds]
    if a.out:
        with open(a.out, "w") as f:
            json.dump(runs, f, indent=1)
    print(table(runs))


if __name__ == "__main__":
    main()
