#!/usr/bin/env bash
# Forgery on the latent micro model (docs/owner.md#forge-can-someone-else-claim-a-model): every watermark
# protected once (the settings of docs/defenses/aqualora.md's micro runs for SleeperMark and AquaLoRA, of
# tests/test_owner.py for the backdoor), then `adaptguard forge` against never-watermarked models (the micro base and the base fully
# fine-tuned for 100 steps on the attacker's split).
#   tools/forge_micro.sh [out_dir]        (BUDGET=64 images or keys, NULL=20 random keys per model)
# Each command takes /tmp/cpu.lock when flock exists, so it never runs beside another torch job.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/forge_micro}
BUDGET=${BUDGET:-64}
NULL=${NULL:-20}
AG=".venv/bin/adaptguard"
run() { if command -v flock >/dev/null; then flock /tmp/cpu.lock "$@"; else "$@"; fi; }
V="defense.num_samples=32 defense.fpr=1e-2 defense.sample_steps=10"
C="defense.codec.bits=16 defense.codec.encoder_hidden=256 defense.codec.residual=full defense.codec.steps=600
   defense.codec.batch_size=16 defense.codec.perceptual=none defense.codec.image_weight=1.0"
declare -A PROTECT=(
  [backdoor]="defense=backdoor defense.steps=300 defense.batch_size=16 defense.lr=2e-3 defense.trigger_fraction=0.6
              defense.grid=4 $V"
  [aiao]="defense=aiao defense.steps=100 defense.probe_steps=20 defense.batch_size=16"
  [sleepermark]="defense=sleepermark $C defense.steps=200 defense.batch_size=32 defense.lr=1e-3 $V"
  [aqualora]="defense=aqualora $C defense.steps=300 $V"
  [stable_signature]="defense=stable_signature defense.extractor.bits=16 defense.extractor.steps=200
                      defense.extractor.batch_size=16 defense.steps=150 defense.batch_size=8 $V"
)
for d in ${DEFENSES:-backdoor aiao sleepermark aqualora stable_signature}; do
  # shellcheck disable=SC2086  # the settings are word lists
  [ -f "$OUT/$d/owner.key" ] || run $AG protect model=micro progress=false ${PROTECT[$d]} out="$OUT/$d"
  [ -f "$OUT/$d/forge.json" ] || run $AG forge key="$OUT/$d/owner.key" models=auto model=micro 'attacks=[full]' \
    independent=false 'overrides=[attack.steps=100,attack.batch_size=16]' budget="$BUDGET" null_keys="$NULL" \
    out="$OUT/$d/forge.json"
done
