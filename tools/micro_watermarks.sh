# Sourced by tools/forge_micro.sh and tools/distill_micro.sh: each watermark's protection on the latent micro
# model (the settings of docs/defenses/aqualora.md's micro runs for SleeperMark and AquaLoRA, of
# tests/test_owner.py for the backdoor; 16-bit messages, per-image FPR 1e-2), the CLI, and a runner that takes
# /tmp/cpu.lock when flock exists, so a command never runs beside another torch job.
# shellcheck shell=bash disable=SC2034  # the sourcing scripts read these
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
