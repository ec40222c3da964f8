#!/usr/bin/env bash
# Distil SmolLM2-135M-Instruct into an ERank reranker on real text, SFT then GRPO; the model lands in OUT/model.
#   examples/distill-smollm2.sh OUT [--sft KEY=VALUE ...] [--grpo KEY=VALUE ...]
# (--sft / --grpo options go to that stage's training run as --set KEY=VALUE, e.g. --sft bf16=true on a GPU.)
# Data (examples/distill-data.sh, read from $RERANK_DATA, else ../shared/data): SciFact train queries with their qrels
# and sentence-as-query (ICT) queries over SciFact documents and over the DL19 passage pool, each query's hybrid
# BM25 + all-MiniLM-L6-v2 top 8 labelled 0-10 by the all-MiniLM-L6-v2 bi-encoder (configs/distill/erank-labels.yaml).
# SFT: configs/distill/smollm2-erank-sft.yaml into OUT/sft; GRPO from OUT/sft/model: smollm2-erank-grpo.yaml into
# OUT. DL19 qrels and SciFact test are never read. Every step is resumable: run the same command again after an
# interruption; finished steps are kept, a training run continues from its last checkpoint.
set -euo pipefail
usage="usage: examples/distill-smollm2.sh OUT [--sft KEY=VALUE ...] [--grpo KEY=VALUE ...]"
out=${1:?$usage}
shift
sft=() grpo=()
while [ $# -gt 0 ]; do
  case $1 in
    --sft) sft+=(--set "${2:?$usage}"); shift 2 ;;
    --grpo) grpo+=(--set "${2:?$usage}"); shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
root=${RERANK_DATA:-../shared/data}
here=$(cd "$(dirname "$0")" && pwd)
cfg=$(cd "$here/.." && pwd)/configs/distill
train=$out/data/erank-train.jsonl

bash "$here/distill-data.sh" "$out/data" erank "$cfg/erank-labels.yaml"

stage() {  # stage KIND CONFIG OUTPUT [--set ...]: a finished stage (OUTPUT/model) is kept, an interrupted one resumes
  local kind=$1 config=$2 dir=$3
  shift 3
  if [ -d "$dir/model" ]; then
    echo "$dir/model exists: $kind is done"
    return
  fi
  local again=()
  if compgen -G "$dir/checkpoints/checkpoint-*" > /dev/null; then
    again=(--resume)
  fi
  rerank train "$kind" --config "$config" --data-root "$root" --output "$dir" --set "data.path=$train" \
    "${again[@]}" "$@"
}

stage sft "$cfg/smollm2-erank-sft.yaml" "$out/sft" "${sft[@]}"
stage grpo "$cfg/smollm2-erank-grpo.yaml" "$out" --set "model=$out/sft/model" "${grpo[@]}"
echo "model: $out/model"
