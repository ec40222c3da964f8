#!/usr/bin/env bash
# One training run of a distillation chain, resumable:
#   examples/train-stage.sh [--check] KIND CONFIG OUTPUT [--set KEY=VALUE ...]      (KIND: sft or grpo)
# A finished run (OUTPUT/model) is kept when OUTPUT/rerank_train.json records the same config; one trained with other
# options is refused, naming them (a longer max_steps or epochs continues it with `rerank train --resume`). An
# interrupted run continues from its last checkpoint. --check: only validate the config with the options (and compare
# it with a finished run), so a chain can fail on a typo before it builds any data. Both checks are
# `rerank train ... --check` (docs/training.md), the first with --inputs-later (the data is not built yet).
# Data is read from $RERANK_DATA, else ../shared/data from the repository root (the folder above examples/).
set -euo pipefail
usage="usage: examples/train-stage.sh [--check] KIND CONFIG OUTPUT [--set KEY=VALUE ...]"
check=0
case ${1-} in
  -h|--help) echo "$usage"; exit 0 ;;
  --check) check=1; shift ;;
esac
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
kind=$1 config=$2 dir=$3
shift 3
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --set) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; args+=(--set "$2"); shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
root=${RERANK_DATA:-$(cd "$here/.." && pwd)/../shared/data}

# `rerank train --check`: the config with the options must load, and a run in OUTPUT must have been trained with it;
# its last line is "state: train|done|resume"
train=(rerank train "$kind" --config "$config" --data-root "$root" --output "$dir" "${args[@]}")
if [ "$check" = 1 ]; then
  "${train[@]}" --check --inputs-later > /dev/null
  exit 0
fi
report=$("${train[@]}" --check)
state=${report##*state: }
case $state in
  done) echo "$dir/model exists: training is done" ;;
  resume) "${train[@]}" --resume ;;
  *) "${train[@]}" ;;
esac
