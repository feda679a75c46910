#!/usr/bin/env bash
# The authors' SleeperMark code (patched clone) on adaptguard's tiny model and shapes data. See README.md.
#
#   bash reference/sleepermark/run.sh smoke|ours|compare
#
# smoke:   a few steps of stage 1, its evaluation, stage 2 and both of its evaluations (end-to-end check)
# ours:    stage 1 at adaptguard's codec defaults (1000 steps, batch 32, lr 1e-3, image weight 3 over 300 steps,
#          1-SSIM 0.25 over 600, clip 1.0), evaluated through the VAE decode -> encode round trip on the 512 eval
#          images; stage 2 at the reference's settings (train.sh) for 300 steps at batch 16; evaluation of the
#          watermarked and of the base UNet, triggered and untriggered
# compare: stage 1 at the reference's settings (train.sh: lr 1e-4, image weight 30, 1-SSIM 0.25, clip 1e-2,
#          batch 3 x 3 processes = 9) for COMPARE_STEPS steps (default 10000, the reference's whole schedule:
#          about 31 min at the smoke's 0.19 s/step; ~18000 fit in 60 min), its ramps (2000 / 4000 of 10k)
#          scaled to that length, and its evaluation
# Outputs: $RUNS/<mode>/ (default /work/refcode/runs); the last line printed is the summary JSON's path.
# Every python step takes the CPU lock ($LOCK, default /tmp/cpu.lock; LOCK= for none): do not wrap this script
# itself in flock. Any variable below can be set from the environment.
set -euo pipefail
MODE=${1:?usage: run.sh smoke|ours|compare}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLONE=${CLONE:-/work/refcode/sleepermark}
DATA=${DATA:-/work/refcode/data}
EXTRA=${EXTRA:-/work/refcode/extra}
OUT=${RUNS:-/work/refcode/runs}/$MODE
PY=${PY:-$REPO/.venv/bin/python}
MODEL=${MODEL:-$REPO/src/adaptguard/assets/base-1748f68c09ec82d3/model}
LOCK=${LOCK-/tmp/cpu.lock}
DEVICE=${DEVICE:-cpu}
IMG=64 LAT=16
SAMPLE_STEPS=${SAMPLE_STEPS:-20} GUIDANCE=${GUIDANCE:-3.0}  # the tiny model's own sampler (upstream: 50, 7.5)
export PYTHONPATH=$EXTRA${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

case $MODE in
  smoke)
    S1_STEPS=${S1_STEPS:-6} S1_BATCH=${S1_BATCH:-32} S1_LR=1e-3 S1_IMG=3 S1_IMG_RAMP=300 S1_LP=0.25 S1_LP_RAMP=600
    S1_CLIP=1.0 VAL=${VAL:-4} EVAL_IMAGES=${EVAL_IMAGES:-8} S2_STEPS=${S2_STEPS:-5} S2_BATCH=${S2_BATCH:-16}
    PROMPTS=${PROMPTS:-4} ;;
  ours)
    S1_STEPS=${S1_STEPS:-1000} S1_BATCH=${S1_BATCH:-32} S1_LR=1e-3 S1_IMG=3 S1_IMG_RAMP=300 S1_LP=0.25 S1_LP_RAMP=600
    S1_CLIP=1.0 VAL=${VAL:-16} EVAL_IMAGES=${EVAL_IMAGES:-512} S2_STEPS=${S2_STEPS:-300} S2_BATCH=${S2_BATCH:-16}
    PROMPTS=${PROMPTS:-256} ;;
  compare)
    S1_STEPS=${COMPARE_STEPS:-10000} S1_BATCH=${S1_BATCH:-9} S1_LR=1e-4 S1_IMG=30 S1_LP=0.25 S1_CLIP=1e-2
    S1_IMG_RAMP=$((S1_STEPS / 5)) S1_LP_RAMP=$((S1_STEPS * 2 / 5)) VAL=${VAL:-16} EVAL_IMAGES=${EVAL_IMAGES:-512} ;;
  *) echo "unknown mode $MODE (smoke|ours|compare)" >&2; exit 2 ;;
esac

[ -f "$CLONE/Stage1/train.py" ] || { echo "no clone at $CLONE (README.md: fetch, clone, apply_patches.py)" >&2; exit 1; }
git -C "$CLONE" diff --quiet && { echo "$CLONE is not patched: python $HERE/apply_patches.py $CLONE" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT/logs"

step() {  # step NAME DIR CMD...: run CMD in DIR under the CPU lock, each output line timestamped in logs/NAME.log
  local name=$1 dir=$2 log=$OUT/logs/$1.log
  shift 2
  echo "[$(date +%T)] $name" >&2
  if ! (cd "$dir" && ${LOCK:+flock "$LOCK"} bash -c \
        'echo "@start $EPOCHREALTIME"; "$@"; rc=$?; echo "@end $EPOCHREALTIME rc=$rc"; exit $rc' _ "$@") 2>&1 |
      stdbuf -oL tr '\r' '\n' | while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$log"; then
    tail -n 30 "$log" >&2
    echo "step $name failed: $log" >&2
    exit 1
  fi
}

if [ ! -f "$DATA/eval/captions.jsonl" ]; then
  step export_data "$REPO" "$PY" "$HERE/export_data.py" data --out "$DATA"
fi
if [ ! -f "$DATA/trainable_keys.json" ]; then
  step export_keys "$REPO" "$PY" "$HERE/export_data.py" keys --model "$MODEL" --out "$DATA/trainable_keys.json"
fi

EVAL_DIR=$DATA/eval
EVAL_PNGS=("$DATA"/eval/*.png)
if [ "$EVAL_IMAGES" -lt "${#EVAL_PNGS[@]}" ]; then  # a subset: links to the first images
  EVAL_DIR=$OUT/eval_images && mkdir -p "$EVAL_DIR"
  ln -s "${EVAL_PNGS[@]:0:$EVAL_IMAGES}" "$EVAL_DIR/"
fi

step stage1 "$CLONE/Stage1" "$PY" train.py --output_dir "$OUT/stage1" --train_path "$DATA/owner" \
  --validation_path "$DATA/eval" --max_val_samples "$VAL" --validation_freq 100000000 --save_freq 100000000 \
  --recordImg_freq 100000000 --num_steps "$S1_STEPS" --batch_size "$S1_BATCH" --lr "$S1_LR" --warm_up_steps 0 \
  --image_loss_scale "$S1_IMG" --image_loss_ramp "$S1_IMG_RAMP" --lpips_scale "$S1_LP" --lpips_ramp "$S1_LP_RAMP" \
  --max_grad_norm "$S1_CLIP" --perceptual ssim --sd_model "$MODEL" --image_size $IMG --latent_size $LAT \
  --device "$DEVICE" --seed 0
STAGE1=$OUT/stage1/saved_models/last
step eval_stage1 "$CLONE/Stage1" "$PY" eval.py --model_dir "$STAGE1" --img_cover_dir "$EVAL_DIR" \
  --sd_model "$MODEL" --image_size $IMG --latent_size $LAT --device "$DEVICE" --out_dir "$OUT/stage1_eval" --seed 0

if [ "$MODE" != compare ]; then
  WM=$OUT/pretrainedWM
  step secret "$REPO" "$PY" "$HERE/export_data.py" secret --stage1 "$STAGE1" --clone "$CLONE" --latent-size $LAT \
    --seed 0 --out "$WM"
  step stage2 "$CLONE/Stage2" "$PY" dm_finetune.py --pretrained_model_name_or_path "$MODEL" \
    --instance_data_dir "$DATA/owner" --output_dir "$OUT/stage2" --resolution $IMG --latent_size $LAT \
    --max_train_steps "$S2_STEPS" --train_batch_size "$S2_BATCH" --checkpointing_steps "$S2_STEPS" \
    --validation_steps 100000000 --mixed_precision no --lr_scheduler cosine --learning_rate 1e-4 \
    --pretrainedWM_dir "$WM" --trigger "*[Z]& " --wm_residual_path "$WM/res.pt" --secret_pt_path "$WM/secret.pt" \
    --para_json_path "$DATA/trainable_keys.json" --wmLoss_weight 0.02 --loss_t_threshold 250 --coeff_steepness 100 \
    --wandb_project_name sleepermark_reference --device "$DEVICE" --seed 0
  for which in wm base; do
    if [ $which = wm ]; then UNET=$OUT/stage2/checkpoint-$S2_STEPS/unet; else UNET=$MODEL/unet; fi
    step eval_$which "$CLONE/Stage2" "$PY" eval.py --unet_dir "$UNET" --pretrainedWM_dir "$WM" --model_dir "$MODEL" \
      --device "$DEVICE" --image_size $IMG --latent_size $LAT --prompts_file "$DATA/eval/captions.jsonl" \
      --num_prompts "$PROMPTS" --num_inference_steps "$SAMPLE_STEPS" --guidance_scale "$GUIDANCE" \
      --out_dir "$OUT/stage2_eval_$which" --seed 0
  done
fi

"$PY" "$HERE/summarize.py" "$OUT" "$MODE" "upstream=$(git -C "$CLONE" rev-parse HEAD)" "model=$MODEL" \
  "stage1_steps=$S1_STEPS" "stage1_batch=$S1_BATCH" "stage1_lr=$S1_LR" "stage1_image_weight=$S1_IMG/$S1_IMG_RAMP" \
  "stage1_ssim_weight=$S1_LP/$S1_LP_RAMP" "stage1_clip=$S1_CLIP" "eval_images=$EVAL_IMAGES" \
  ${S2_STEPS:+"stage2_steps=$S2_STEPS" "stage2_batch=$S2_BATCH" "prompts=$PROMPTS" "sampler=ddim $SAMPLE_STEPS cfg $GUIDANCE"}
