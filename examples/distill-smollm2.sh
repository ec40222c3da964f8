#!/usr/bin/env bash
# Distil SmolLM2-135M-Instruct into a FIRST reranker on real text, SFT then GRPO; the model lands in OUT/model.
#   examples/distill-smollm2.sh OUT [--sft KEY=VALUE ...] [--grpo KEY=VALUE ...]
# (--sft / --grpo options go to that stage's training run as --set KEY=VALUE, e.g. --sft bf16=true on a GPU.)
# Data (examples/distill-data.sh, read from $RERANK_DATA, else ../shared/data from the repository root, the folder
# above examples/): SciFact train queries with their qrels and sentence-as-query (ICT) queries over SciFact documents
# and over the DL19 passage pool, each query's BM25 top 20 ordered by the all-MiniLM-L6-v2 bi-encoder
# (configs/distill/first-labels.yaml).
# SFT: configs/distill/smollm2-first-sft.yaml into OUT/sft; GRPO from OUT/sft/model: smollm2-first-grpo.yaml into
# OUT. DL19 qrels and SciFact test are never read. Both stages' options are checked before any data is built. Every
# step is resumable: run the same command again after an interruption; finished steps are kept (a finished model only
# while it was trained with the same options), a training run continues from its last checkpoint.
set -euo pipefail
usage() {
  echo "usage: examples/distill-smollm2.sh OUT [--sft KEY=VALUE ...] [--grpo KEY=VALUE ...]" >&2
  exit "$1"
}
for arg in "$@"; do
  case $arg in -h|--help) usage 0 2>&1 ;; esac
done
[ $# -ge 1 ] || usage 2
out=$1
shift
case $out in -*) echo "error: OUT $out starts with '-': give the output folder first" >&2; usage 2 ;; esac
sft=() grpo=()
while [ $# -gt 0 ]; do
  case $1 in
    --sft) [ $# -ge 2 ] || usage 2; sft+=(--set "$2"); shift 2 ;;
    --grpo) [ $# -ge 2 ] || usage 2; grpo+=(--set "$2"); shift 2 ;;
    *) usage 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
cfg=$(cd "$here/.." && pwd)/configs/distill
train=$out/data/first-train.jsonl
sft_stage=(sft "$cfg/smollm2-first-sft.yaml" "$out/sft" --set "data.path=$train" "${sft[@]}")
grpo_stage=(grpo "$cfg/smollm2-first-grpo.yaml" "$out" --set "data.path=$train" --set "model=$out/sft/model" "${grpo[@]}")

bash "$here/train-stage.sh" --check "${sft_stage[@]}"
bash "$here/train-stage.sh" --check "${grpo_stage[@]}"
bash "$here/distill-data.sh" "$out/data" first "$cfg/first-labels.yaml"
bash "$here/train-stage.sh" "${sft_stage[@]}"
bash "$here/train-stage.sh" "${grpo_stage[@]}"
echo "model: $out/model"
