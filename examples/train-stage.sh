#!/usr/bin/env bash
# One training run of a distillation chain, resumable: examples/train-stage.sh KIND CONFIG OUTPUT [--set KEY=VALUE ...]
# (KIND: sft or grpo). A finished run (OUTPUT/model) is kept; an interrupted one continues from its last checkpoint.
# Data is read from $RERANK_DATA, else ../shared/data.
set -euo pipefail
usage="usage: examples/train-stage.sh KIND CONFIG OUTPUT [--set KEY=VALUE ...]"
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
kind=$1 config=$2 dir=$3
shift 3
if [ -d "$dir/model" ]; then
  echo "$dir/model exists: training is done"
  exit 0
fi
again=()
if compgen -G "$dir/checkpoints/checkpoint-*" > /dev/null; then
  again=(--resume)
fi
rerank train "$kind" --config "$config" --data-root "${RERANK_DATA:-../shared/data}" --output "$dir" "${again[@]}" "$@"
