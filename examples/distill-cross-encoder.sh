#!/usr/bin/env bash
# Distil a cross-encoder from the hybrid BM25 + all-MiniLM-L6-v2 first stage on real text; the model lands in OUT/model.
#   examples/distill-cross-encoder.sh OUT [--set KEY=VALUE ...]      (extra --set options go to the training run)
# Data (read from $RERANK_DATA, else ../shared/data): SciFact train queries with their qrels, and sentence-as-query
# (ICT) queries over SciFact documents and over the DL19 passage pool, each labelled with the hybrid's fused scores
# (configs/distill/*.yaml). DL19 qrels and SciFact test are never read. Every step is resumable: run the same command
# again after an interruption; finished steps are kept.
set -euo pipefail
out=${1:?usage: examples/distill-cross-encoder.sh OUT [--set KEY=VALUE ...]}
shift
root=${RERANK_DATA:-../shared/data}
cfg=$(cd "$(dirname "$0")/.." && pwd)/configs/distill
data=$out/data

build() {  # build OUTPUT_NAME RECIPE [--set ...]: a finished build is kept, an unfinished one continues
  local dir=$data/$1 recipe=$2
  shift 2
  rerank data build "$cfg/$recipe" --data-root "$root" --output "$dir" --resume "$@"
}

build scifact-train ce-scifact-train.yaml
build ict-scifact ce-ict-queries.yaml --set dataset=scifact
build ict-scifact-labels ce-ict-labels.yaml --set source.dataset=scifact \
  --set "source.queries=$data/ict-scifact/data.jsonl"
build ict-dl19 ce-ict-queries.yaml --set dataset=dl19-bm25-top100
build ict-dl19-labels ce-ict-labels.yaml --set source.dataset=dl19-bm25-top100 \
  --set "source.queries=$data/ict-dl19/data.jsonl"

# One training file; the DL19 pool's synthetic qids get a prefix so they cannot meet SciFact's.
train=$data/train.jsonl
if [ ! -f "$train" ]; then
  python - "$data" <<'PY'
import json, os, sys
data = sys.argv[1]
with open(f"{data}/train.jsonl.tmp", "w", encoding="utf-8") as out:
    for name, prefix in (("scifact-train", ""), ("ict-scifact-labels", ""), ("ict-dl19-labels", "dl19-")):
        with open(f"{data}/{name}/data.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                out.write(json.dumps({**row, "qid": prefix + row["qid"]}, ensure_ascii=False) + "\n")
os.replace(f"{data}/train.jsonl.tmp", f"{data}/train.jsonl")
PY
fi

again=()
if [ -d "$out/model" ]; then
  echo "$out/model exists: training is done"
  exit 0
elif compgen -G "$out/checkpoints/checkpoint-*" > /dev/null; then
  again=(--resume)
fi
rerank train sft --config "$cfg/ce-train.yaml" --data-root "$root" --output "$out" --set "data.path=$train" \
  "${again[@]}" "$@"
echo "model: $out/model"
