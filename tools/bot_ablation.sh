#!/usr/bin/env bash
# One-trick-off ablation of the CPU-sized strong baseline (configs/cuhk01-bot.yaml, method baseline, one seed),
# and two controls on the paper's config (configs/cuhk01.yaml): its schedule shortened to the BoT config's 5
# epochs, and its batches drawn by the P x K sampler. Which trick or setting costs or buys what at this budget.
# Usage: tools/bot_ablation.sh DATA_ROOT [SEED [NAME ...]]   (default: every variant, in the order below)
# Each run is an ordinary run directory runs/bot-ablation-<name>-s<seed>; docs/results.md tabulates them.
set -euo pipefail
root=${1:?usage: tools/bot_ablation.sh DATA_ROOT [SEED [NAME ...]]}
seed=${2:-0}
shift $(( $# > 1 ? 2 : 1 ))
declare -A sets=(
  [no-triplet]="train.triplet_weight=0"
  [no-bnneck]="model.neck=none"
  [no-erasing]="augment.random_erasing=0"
  [stride-2]="model.last_stride=2"
  [no-smoothing]="train.label_smoothing=0"
  [no-warmup]="train.lr_warmup_epochs=0"
  [paper-5-epochs]="train.epochs=5 train.lr_milestones=[4]"
  [paper-pk]="train.sampler=pk"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(no-triplet no-bnneck no-erasing stride-2 no-smoothing no-warmup paper-5-epochs paper-pk)
for name in "${names[@]}"; do
  config=configs/cuhk01-bot.yaml
  [[ $name == paper-* ]] && config=configs/cuhk01.yaml
  args=(--set "data.root=$root" --set "seed=$seed" --set eval.umap=false --set train.method=baseline)
  for kv in ${sets[$name]}; do args+=(--set "$kv"); done
  run="runs/bot-ablation-$name-s$seed"
  if [ -f "$run/results.json" ]; then continue; fi
  if [ -d "$run" ]; then cpl resume "$run"; else cpl run --config "$config" --run-dir "$run" "${args[@]}"; fi
done
