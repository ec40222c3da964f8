#!/usr/bin/env bash
# Distil a cross-encoder from the hybrid BM25 + all-MiniLM-L6-v2 first stage on real text; the model lands in OUT/model.
#   examples/distill-cross-encoder.sh OUT [--set KEY=VALUE ...]      (extra --set options go to the training run)
# Data (examples/distill-data.sh, read from $RERANK_DATA, else ../shared/data): SciFact train queries with their qrels,
# and sentence-as-query (ICT) queries over SciFact documents and over the DL19 passage pool, each labelled with the
# hybrid's fused scores (configs/distill/ce-labels.yaml); training: configs/distill/ce-train.yaml. DL19 qrels and
# SciFact test are never read. Every step is resumable: run the same command again after an interruption; finished
# steps are kept.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: examples/distill-cross-encoder.sh OUT [--set KEY=VALUE ...]" >&2
  exit 2
fi
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
cfg=$(cd "$here/.." && pwd)/configs/distill

bash "$here/distill-data.sh" "$out/data" ce "$cfg/ce-labels.yaml"

bash "$here/train-stage.sh" sft "$cfg/ce-train.yaml" "$out" --set "data.path=$out/data/ce-train.jsonl" "$@"
echo "model: $out/model"
