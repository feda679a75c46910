#!/usr/bin/env bash
# Does a watermark survive distillation, and re-encoding through another autoencoder? (docs/attacks.md#adaptive-attacks)
# The latent micro model, one seed: each output watermark protected at the settings of tools/micro_watermarks.sh, then
# attack=distill (a student from the never-protected base on 256 of the protected model's images, 100 steps),
# with the protected model's verification images also re-encoded through the base's autoencoder.
#   tools/distill_micro.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/distill_micro}
# shellcheck source=tools/micro_watermarks.sh
source tools/micro_watermarks.sh
BASE=$(.venv/bin/python -c "from adaptguard.cli.build import instantiate; from adaptguard.cli.config import compose; \
from adaptguard.core.artifacts import ArtifactCache; \
print(ArtifactCache().shipped('base', instantiate(compose(['model=micro']).model).describe()) / 'model')")
for d in ${DEFENSES:-aqualora stable_signature sleepermark backdoor}; do
  # shellcheck disable=SC2086  # the settings are word lists
  [ -f "$OUT/$d/results.json" ] || run $AG run model=micro logger=none progress=false ${PROTECT[$d]} attack=distill \
    attack.steps=100 eval.fid.num_samples=64 eval.fid.kid_subset_size=32 \
    "eval.image_attacks=[{name: reencode, vae: $BASE}]" hydra.run.dir="$OUT/$d"
done
