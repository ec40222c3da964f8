#!/usr/bin/env bash
# Distil a cross-encoder from the hybrid BM25 + all-MiniLM-L6-v2 first stage on real text; the model lands in OUT/model.
#   examples/distill-cross-encoder.sh OUT [--set KEY=VALUE ...]      (extra --set options go to the training run)
# Data (examples/distill-data.sh, read from $RERANK_DATA, else ../shared/data from the repository root, the folder
# above examples/): SciFact train queries with their qrels, and sentence-as-query (ICT) queries over SciFact documents
# and over the DL19 passage pool, each labelled with the hybrid's fused scores (configs/distill/ce-labels.yaml);
# training: configs/distill/ce-train.yaml. DL19 qrels and SciFact test are never read. The training options are
# checked before any data is built. Every step is resumable: run the same command again after an interruption;
# finished steps are kept (a finished model only while it was trained with the same options).
set -euo pipefail
usage() {
  echo "usage: examples/distill-cross-encoder.sh OUT [--set KEY=VALUE ...]" >&2
  exit "$1"
}
for arg in "$@"; do
  case $arg in -h|--help) usage 0 2>&1 ;; esac
done
[ $# -ge 1 ] || usage 2
out=$1
shift
case $out in -*) echo "error: OUT $out starts with '-': give the output folder first" >&2; usage 2 ;; esac
sets=()
while [ $# -gt 0 ]; do
  case $1 in
    --set) [ $# -ge 2 ] || usage 2; sets+=(--set "$2"); shift 2 ;;
    *) usage 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
cfg=$(cd "$here/.." && pwd)/configs/distill
stage=(sft "$cfg/ce-train.yaml" "$out" --set "data.path=$out/data/ce-train.jsonl" "${sets[@]}")

bash "$here/train-stage.sh" --check "${stage[@]}"
bash "$here/distill-data.sh" "$out/data" ce "$cfg/ce-labels.yaml"
bash "$here/train-stage.sh" "${stage[@]}"
echo "model: $out/model"
