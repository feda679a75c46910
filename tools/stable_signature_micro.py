"""Stable Signature on the micro model: bits read before and after VAE swaps (docs/defenses/stable_signature.md).

python -m tools.stable_signature_micro                                  # the defaults
python -m tools.stable_signature_micro image_weight=0.2 steps=300       # defense.* keys
python -m tools.stable_signature_micro extractor.steps=300              # defense.extractor.* keys
"""

from __future__ import annotations

import argparse

import yaml

from adaptguard.attacks.vae_swap import VaeSwap
from adaptguard.cli.build import instantiate
from adaptguard.cli.config import compose
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses.stable_signature import StableSignatureDefense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", help="defense keys as key=value (extractor.* for stage 1)")
    parser.add_argument("--samples", type=int, default=16, help="verification images per model")
    args = parser.parse_args()
    settings: dict = {"num_samples": args.samples, "null_messages": 15}
    for item in args.settings:
        key, value = item.split("=", 1)
        target = settings.setdefault("extractor", {}) if key.startswith("extractor.") else settings
        target[key.removeprefix("extractor.")] = yaml.safe_load(value)
    ctx = RunContext(cache=ArtifactCache(), progress=False, device="cpu")  # the extractor is cached across settings
    base = instantiate(compose(["model=micro"]).model).load(ctx)
    data = ShapesDataModule(resolution=32, splits={"owner": {"size": 512}, "attacker": {"offset": 5000, "size": 256},
                                                   "eval": {"offset": 9000, "size": 64}})  # fmt: skip
    defense = StableSignatureDefense(**settings)
    protected = defense.protect(base, data, ctx)
    ex = protected.info["extractor"]
    print(f"extractor: bits on HiDDeN-marked images {ex['marked_bit_accuracy']:.2f} (before whitening "
          f"{ex['marked_bit_accuracy_unwhitened']:.2f}); decoder PSNR {protected.info['decoder_psnr_db']:.1f} dB")  # fmt: skip
    swapped = {"base VAE": VaeSwap(vae="base"), "decoder fine-tuned 100 steps": VaeSwap(steps=100)}
    models = {"protected": protected.model, "never-watermarked base": base}
    models |= {name: attack.run(protected.model, data, None, ctx.with_base(base)) for name, attack in swapped.items()}
    for name, model in models.items():
        v = defense.verify(model, protected.key, ctx)
        bits = sum(v.scores) / len(v.scores) / defense.bits
        print(f"{name}: bits read {bits:.2f}, rate {v.rate:.2f} ({v.successes}/{v.trials} at >= {v.trial_threshold:.0f}"
              f" of {defense.bits}), detected {v.detected}")  # fmt: skip


if __name__ == "__main__":
    main()
