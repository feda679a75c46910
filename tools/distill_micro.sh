#!/usr/bin/env bash
# Does a watermark survive distillation, and re-encoding through another autoencoder? (docs/attacks.md#adaptive-attacks)
# The latent micro model, one seed: each output watermark protected at the settings of tools/forge_micro.sh, then
# attack=distill (a student from the never-protected base on 256 of the protected model's images, 100 steps),
# with the protected model's verification images also re-encoded through the base's autoencoder.
#   tools/distill_micro.sh [out_dir]
# Each command takes /tmp/cpu.lock when flock exists, so it never runs beside another torch job.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/distill_micro}
AG=".venv/bin/adaptguard"
run() { if command -v flock >/dev/null; then flock /tmp/cpu.lock "$@"; else "$@"; fi; }
BASE=$(.venv/bin/python -c "from adaptguard.cli.build import instantiate; from adaptguard.cli.config import compose; \
from adaptguard.core.artifacts import ArtifactCache; \
print(ArtifactCache().shipped('base', instantiate(compose(['model=micro']).model).describe()) / 'model')")
V="defense.num_samples=32 defense.fpr=1e-2 defense.sample_steps=10"
C="defense.codec.bits=16 defense.codec.encoder_hidden=256 defense.codec.residual=full defense.codec.steps=600
   defense.codec.batch_size=16 defense.codec.perceptual=none defense.codec.image_weight=1.0"
declare -A PROTECT=(
  [backdoor]="defense=backdoor defense.steps=300 defense.batch_size=16 defense.lr=2e-3 defense.trigger_fraction=0.6
              defense.grid=4 $V"
  [sleepermark]="defense=sleepermark $C defense.steps=200 defense.batch_size=32 defense.lr=1e-3 $V"
  [aqualora]="defense=aqualora $C defense.steps=300 $V"
  [stable_signature]="defense=stable_signature defense.extractor.bits=16 defense.extractor.steps=200
                      defense.extractor.batch_size=16 defense.steps=150 defense.batch_size=8 $V"
)
for d in ${DEFENSES:-aqualora stable_signature sleepermark backdoor}; do
  # shellcheck disable=SC2086  # the settings are word lists
  [ -f "$OUT/$d/results.json" ] || run $AG run model=micro logger=none progress=false ${PROTECT[$d]} attack=distill \
    attack.steps=100 eval.fid.num_samples=64 eval.fid.kid_subset_size=32 \
    "eval.image_attacks=[{name: reencode, vae: $BASE}]" hydra.run.dir="$OUT/$d"
done
