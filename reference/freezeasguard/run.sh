#!/usr/bin/env bash
# The authors' FreezeAsGuard code (patched clone, outside this repository) on adaptguard's tiny model and the
# freezing presets' shapes domains. See README.md beside this file.
#
#   flock /tmp/cpu.lock bash reference/freezeasguard/run.sh smoke     # a few steps of every stage and evaluation
#   flock /tmp/cpu.lock bash reference/freezeasguard/run.sh compare   # the comparison, seeds 0 1 2
#
# Environment (defaults in brackets):
#   SEEDS [smoke: 0, compare: 0 1 2]   MASK_HP [reference | ours]   RHO [0.5]   THREADS [1]
#   OUT [/work/refcode/runs_fag/<mode>]   REF [/work/refcode/freezeasguard]   EXTRA [/work/refcode/extra_fag]
#   EVAL_SPLIT [test: the attacker's training images, as upstream | validation: the presets' held-out eval split]
#   FT_STEPS FT_BATCH FT_LR FT_MAX_GRAD_NORM: the attacker's fine-tunes [compare: 100, 32, 1e-4, inf = the page's
#   attack=full]; EVAL_SAMPLES [compare: 64], EVAL_STEPS [10], EVAL_GUIDANCE [3.0]: the page's FID settings
# It runs no lock itself: wrap the whole script in flock (a lock taken inside would deadlock under an outer one).
set -euo pipefail

MODE=${1:?usage: run.sh smoke|compare}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN=$(cd "$HERE/../.." && pwd)
PY=${PY:-$MAIN/.venv/bin/python}
REF=${REF:-/work/refcode/freezeasguard}
EXTRA=${EXTRA:-/work/refcode/extra_fag}
OUT=${OUT:-/work/refcode/runs_fag/$MODE}
MODEL=${MODEL:-$MAIN/src/adaptguard/assets/base-1748f68c09ec82d3/model}
MASK_HP=${MASK_HP:-reference}
RHO=${RHO:-0.5}
THREADS=${THREADS:-1}
EVAL_SPLIT=${EVAL_SPLIT:-test}

case "$MODE" in
  smoke)
    SEEDS=${SEEDS:-0}
    U_STEPS=${U_STEPS:-8}; M_STEPS=${M_STEPS:-8}; FT_STEPS=${FT_STEPS:-6}
    EVAL_SAMPLES=${EVAL_SAMPLES:-16} ;;
  compare)
    SEEDS=${SEEDS:-0 1 2}
    # the page's budget (experiment=page/compare_freezing): 150 simulated-user and 150 mask-learning steps
    U_STEPS=${U_STEPS:-150}
    if [ "$MASK_HP" = ours ]; then
      M_STEPS=${M_STEPS:-120}  # the reference counts only user steps; 120 of them + every 5th batch a mask step = 150
    else
      M_STEPS=${M_STEPS:-150}  # upstream's 2000, scaled to the page's 150 (counted as upstream counts them)
    fi
    FT_STEPS=${FT_STEPS:-100}
    EVAL_SAMPLES=${EVAL_SAMPLES:-64} ;;
  *) echo "run.sh: unknown mode $MODE (smoke|compare)" >&2; exit 2 ;;
esac

if [ "$MASK_HP" = ours ]; then
  # adaptguard's defaults for what the reference exposes as flags (conf/defense/freezeasguard.yaml)
  U_LR=1e-4; U_BATCH=32; U_ACCUM=1          # simulated user: user_lr, user_batch_size
  M_BATCH=32; MASK_LR=30; C_SPARSITY=50     # 16 illegal + 16 legal per step on average (upstream mixes at random)
elif [ "$MASK_HP" = reference ]; then
  U_LR=1e-5; U_BATCH=1; U_ACCUM=4           # upstream's run_mixed_full_trainer.sh
  M_BATCH=16; MASK_LR=10; C_SPARSITY=5e3    # upstream's run_mask_learner.sh
else
  echo "run.sh: MASK_HP must be reference or ours, not $MASK_HP" >&2; exit 2
fi
M_USER_LR=1e-5; USER_INTERVAL=5; TEMPERATURE=0.2
FT_BATCH=${FT_BATCH:-32}; FT_LR=${FT_LR:-1e-4}; FT_MAX_GRAD_NORM=${FT_MAX_GRAD_NORM:-inf}
EVAL_STEPS=${EVAL_STEPS:-10}; EVAL_GUIDANCE=${EVAL_GUIDANCE:-3.0}; EVAL_SAMPLER=${EVAL_SAMPLER:-ddim}

# --- set-up: the reference's missing packages (never into the project venv), the patched clone, the data
if ! PYTHONPATH=$EXTRA "$PY" -c "import datasets, pytorch_msssim" 2>/dev/null; then
  "$PY" -m pip install -q --target "$EXTRA" --no-deps datasets pytorch_msssim pyarrow dill multiprocess pandas
fi
[ -d "$REF/.git" ] || { echo "run.sh: no clone at $REF (git clone the pittisl/FreezeAsGuard mirror there)" >&2; exit 2; }
"$PY" "$HERE/apply_patches.py" "$REF" --reset

mkdir -p "$OUT"
export PYTHONPATH="$EXTRA:$HERE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_CACHE="$OUT/hf_datasets_cache"
export WANDB_MODE=disabled MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
TIMINGS="$OUT/timings.jsonl"
DATA="$OUT/data"

# stage NAME SEED STEPS LOG cmd...: run in the reference's src/, log to LOG, append the wall time to timings.jsonl
stage() {
  local name=$1 seed=$2 steps=$3 log=$4; shift 4
  local t0 t1
  echo "[$(date +%T)] seed $seed: $name"
  t0=$(date +%s.%N)
  if ! (cd "$REF/src" && "$@") >"$log" 2>&1; then
    echo "run.sh: stage $name (seed $seed) failed; last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1
  fi
  t1=$(date +%s.%N)
  printf '{"stage": "%s", "seed": %s, "steps": %s, "seconds": %.2f, "log": "%s"}\n' \
    "$name" "$seed" "$steps" "$(awk "BEGIN{print $t1 - $t0}")" "$log" >>"$TIMINGS"
}

T_START=$(date +%s)
: >"$TIMINGS"
if [ ! -f "$DATA/export.json" ]; then
  echo "[$(date +%T)] exporting the illegal / legal domains"
  "$PY" "$HERE/export_data.py" "$DATA" >"$OUT/export.log" 2>&1
fi
N_ILLEGAL=$(ls "$DATA/illegal/train/illegal" | wc -l)
N_ATTACK=$(ls "$DATA/illegal/test/illegal" | wc -l)
N_LEGAL_PUB=$(( $(ls "$DATA/legal/train/legal" | wc -l) - $(ls "$DATA/legal/test/legal" | wc -l) ))
USER_START=$N_LEGAL_PUB  # legal/train holds the publisher's rows, then the user's (upstream's --user_start_idx)

COMMON=(--pretrained_model_name_or_path="$MODEL" --caption_column=text --resolution=64 --center_crop
        --mixed_precision=no --checkpointing_steps=100000000 --lr_scheduler=constant --lr_warmup_steps=0)

for SEED in $SEEDS; do
  S="$OUT/seed$SEED"; mkdir -p "$S"
  # 1. the simulated user: a full fine-tune on illegal + legal (upstream's "relearned" model)
  stage relearn "$SEED" "$U_STEPS" "$S/relearn.log" "$PY" mixed_full_trainer.py "${COMMON[@]}" \
    --target_dataset_name="$DATA/illegal" --innocent_dataset_name="$DATA/legal" \
    --target_idx=0 --num_samples_per_target_idx="$N_ILLEGAL" --num_innocent_samples="$N_LEGAL_PUB" \
    --train_batch_size="$U_BATCH" --gradient_accumulation_steps="$U_ACCUM" --max_train_steps="$U_STEPS" \
    --learning_rate="$U_LR" --max_grad_norm=1 --seed="$SEED" --output_dir="$S/relearned"
  # 2. mask learning
  stage mask "$SEED" "$M_STEPS" "$S/mask.log" "$PY" mask_learner.py "${COMMON[@]}" \
    --finetuned_model_name_or_path="$S/relearned" \
    --target_dataset_name="$DATA/illegal" --innocent_dataset_name="$DATA/legal" \
    --target_idx=0 --num_samples_per_target_idx="$N_ILLEGAL" --num_innocent_samples="$N_LEGAL_PUB" \
    --train_batch_size="$M_BATCH" --gradient_accumulation_steps=1 --max_train_steps="$M_STEPS" \
    --learning_rate=1e-5 --max_grad_norm=1 --temperature="$TEMPERATURE" --freeze_ratio="$RHO" \
    --c_sparsity="$C_SPARSITY" --mask_lr="$MASK_LR" --user_lr="$M_USER_LR" --user_interval="$USER_INTERVAL" \
    --seed="$SEED" --output_dir="$S/aux-model" --mask_output_dir="$S/mask_learned.txt"
  "$PY" "$HERE/masks.py" stats "$MODEL" "$S/mask_learned.txt" >/dev/null
  # 3. the random baseline: exactly round(RHO * #tensors) tensors, applied through the reference's mask option
  "$PY" "$HERE/masks.py" random "$MODEL" "$S/mask_random.txt" --ratio "$RHO" --seed "$SEED" >/dev/null
  # 4. the attacker's fine-tunes: unconstrained, under the learned mask, under the random mask; each domain
  for SCHEME in full learned random; do
    if [ "$SCHEME" = full ]; then MASKARGS=(--finetune_scheme=full)
    else MASKARGS=(--finetune_scheme=learned_mask --mask_dir="$S/mask_$SCHEME.txt"); fi
    FT=(--train_batch_size="$FT_BATCH" --gradient_accumulation_steps=1 --max_train_steps="$FT_STEPS"
        --learning_rate="$FT_LR" --max_grad_norm="$FT_MAX_GRAD_NORM" --seed="$SEED" "${MASKARGS[@]}")
    stage "ft_illegal_$SCHEME" "$SEED" "$FT_STEPS" "$S/ft_illegal_$SCHEME.log" "$PY" target_trainer.py "${COMMON[@]}" \
      --dataset_name="$DATA/illegal" --split=test --selected_idx=0 --num_samples_per_class="$N_ATTACK" \
      "${FT[@]}" --output_dir="$S/ft_illegal_$SCHEME"
    stage "ft_legal_$SCHEME" "$SEED" "$FT_STEPS" "$S/ft_legal_$SCHEME.log" "$PY" innocent_trainer.py "${COMMON[@]}" \
      --dataset_name="$DATA/legal" --user_start_idx="$USER_START" \
      "${FT[@]}" --output_dir="$S/ft_legal_$SCHEME"
  done
  # 5. FID and prompt fidelity (the patched upstream script, two models a call): base vs full, learned vs random
  for DOMAIN in illegal legal; do
    EV=(--data_dir="$DATA/$DOMAIN" --selected_idx=0 --num_samples="$EVAL_SAMPLES" --seed="$SEED" --crop_size=64
        --sampler="$EVAL_SAMPLER" --steps="$EVAL_STEPS" --guidance="$EVAL_GUIDANCE" --split="$EVAL_SPLIT")
    stage "eval_${DOMAIN}_base_full" "$SEED" "$EVAL_SAMPLES" "$S/eval_${DOMAIN}_base_full.log" \
      "$PY" evaluate_fid_topiq_target.py --description="$DOMAIN: base vs full fine-tune" "${EV[@]}" \
      --ft_model="$MODEL" --mft_model="$S/ft_${DOMAIN}_full" --out_json="$S/eval_${DOMAIN}_base_full.json"
    stage "eval_${DOMAIN}_learned_random" "$SEED" "$EVAL_SAMPLES" "$S/eval_${DOMAIN}_learned_random.log" \
      "$PY" evaluate_fid_topiq_target.py --description="$DOMAIN: learned vs random mask" "${EV[@]}" \
      --ft_model="$S/ft_${DOMAIN}_learned" --mft_model="$S/ft_${DOMAIN}_random" \
      --out_json="$S/eval_${DOMAIN}_learned_random.json"
  done
  rm -rf "$S/aux-model"  # the mask learner's final soft-masked UNet: not used
done

cat >"$OUT/settings.json" <<EOF
{"mode": "$MODE", "mask_hp": "$MASK_HP", "rho": $RHO, "threads": $THREADS, "eval_split": "$EVAL_SPLIT",
 "upstream_commit": "$(git -C "$REF" rev-parse HEAD)", "model": "$MODEL",
 "relearn": {"steps": $U_STEPS, "lr": $U_LR, "batch": $U_BATCH, "grad_accum": $U_ACCUM},
 "mask": {"user_steps_counted": $M_STEPS, "batch": $M_BATCH, "mask_lr": $MASK_LR, "c_sparsity": $C_SPARSITY,
          "user_lr": $M_USER_LR, "user_interval": $USER_INTERVAL, "temperature": $TEMPERATURE},
 "finetune": {"steps": $FT_STEPS, "batch": $FT_BATCH, "lr": $FT_LR, "max_grad_norm": "$FT_MAX_GRAD_NORM"},
 "eval": {"samples": $EVAL_SAMPLES, "sampler": "$EVAL_SAMPLER", "steps": $EVAL_STEPS, "guidance": $EVAL_GUIDANCE},
 "wall_seconds": $(( $(date +%s) - T_START ))}
EOF
"$PY" "$HERE/summary.py" "$OUT" $SEEDS
