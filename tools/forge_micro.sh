#!/usr/bin/env bash
# Forgery on the latent micro model (docs/owner.md#forge-can-someone-else-claim-a-model): every watermark
# protected once (tools/micro_watermarks.sh), then `adaptguard forge` against never-watermarked models (the
# micro base and the base fully fine-tuned for 100 steps on the attacker's split).
#   tools/forge_micro.sh [out_dir]        (BUDGET=64 images or keys, NULL=20 random keys per model)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/forge_micro}
BUDGET=${BUDGET:-64}
NULL=${NULL:-20}
# shellcheck source=tools/micro_watermarks.sh
source tools/micro_watermarks.sh
for d in ${DEFENSES:-backdoor aiao sleepermark aqualora stable_signature}; do
  # shellcheck disable=SC2086  # the settings are word lists
  [ -f "$OUT/$d/owner.key" ] || run $AG protect model=micro progress=false ${PROTECT[$d]} out="$OUT/$d"
  [ -f "$OUT/$d/forge.json" ] || run $AG forge key="$OUT/$d/owner.key" models=auto model=micro 'attacks=[full]' \
    independent=false 'overrides=[attack.steps=100,attack.batch_size=16]' budget="$BUDGET" null_keys="$NULL" \
    out="$OUT/$d/forge.json"
done
