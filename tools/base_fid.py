"""FID/KID and prompt fidelity of shipped base models against their random initialisation (docs/models.md).

python -m tools.base_fid micro micro_dit          # 64 samples of the shapes eval split, each model's sampler
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from adaptguard.cli.build import instantiate
from adaptguard.cli.config import compose
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.metrics.quality import QualityEvaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model config names, e.g. micro micro_dit")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    ctx = RunContext(cache=ArtifactCache(Path(tempfile.mkdtemp()) / "cache"), progress=False, device="cpu")
    for name in args.models:
        source = instantiate(compose([f"model={name}"]).model)
        data = ShapesDataModule(resolution=source.resolution, splits={"eval": {"offset": 9000, "size": args.samples}})
        ev = QualityEvaluator(num_samples=args.samples, kid_subset_size=args.samples // 2, kid_subsets=20)
        pretrained, _ = ev.evaluate(source.load(ctx), data, "eval", ctx)
        random_init, _ = ev.evaluate(source.build(), data, "eval", ctx)
        print(f"{name}: FID {pretrained.fid:.1f} (random init {random_init.fid:.1f}), KID {pretrained.kid_mean:.3f} "
              f"({random_init.kid_mean:.3f}), kind+colour fidelity {pretrained.fidelity['kind+colour']:.3f} "
              f"({random_init.fidelity['kind+colour']:.3f}; real images {pretrained.fidelity_real['kind+colour']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
