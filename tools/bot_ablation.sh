#!/usr/bin/env bash
# One-trick-off ablation of the CPU-sized strong baseline (configs/cuhk01-bot.yaml, method baseline, one seed):
# which trick costs or buys what at 5 epochs. Usage: tools/bot_ablation.sh DATA_ROOT [SEED]
# Each run is an ordinary run directory runs/bot-ablation-<name>-s<seed>; docs/results.md tabulates them.
set -euo pipefail
root=${1:?usage: tools/bot_ablation.sh DATA_ROOT [SEED]}
seed=${2:-0}
declare -A off=(
  [no-triplet]="train.triplet_weight=0"
  [no-erasing]="augment.random_erasing=0"
  [no-smoothing]="train.label_smoothing=0"
  [stride-2]="model.last_stride=2"
  [no-bnneck]="model.neck=none"
  [no-warmup]="train.lr_warmup_epochs=0"
)
for name in no-triplet no-bnneck no-erasing stride-2 no-smoothing no-warmup; do
  sets=(--set "data.root=$root" --set "seed=$seed" --set eval.umap=false)
  for kv in ${off[$name]}; do sets+=(--set "$kv"); done
  run="runs/bot-ablation-$name-s$seed"
  if [ -f "$run/results.json" ]; then continue; fi
  if [ -d "$run" ]; then cpl resume "$run"; else cpl run --config configs/cuhk01-bot.yaml --run-dir "$run" "${sets[@]}"; fi
done
