#!/usr/bin/env bash
# The training data of both distillation chains, on real text; run by distill-cross-encoder.sh and distill-smollm2.sh.
#   examples/distill-data.sh DATA TAG LABELS_CONFIG      ->  DATA/TAG-train.jsonl
# Queries: the SciFact train queries (with their qrels) and sentence-as-query (ICT) queries over the SciFact documents
# and over the DL19 passage pool (configs/distill/ict-queries.yaml, built once into DATA/ict-*, shared by the chains),
# each labelled by LABELS_CONFIG (a teacher_labels recipe in configs/distill) into DATA/TAG-*. Data is read from
# $RERANK_DATA, else ../shared/data; DL19 qrels and SciFact test are never read. A finished build is kept and an
# unfinished one continues, so running it again after an interruption redoes nothing.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: examples/distill-data.sh DATA TAG LABELS_CONFIG" >&2
  exit 2
fi
data=$1 tag=$2 labels=$3
root=${RERANK_DATA:-../shared/data}
cfg=$(cd "$(dirname "$0")/.." && pwd)/configs/distill

build() {  # build OUTPUT_NAME RECIPE [--set ...]
  local dir=$data/$1 recipe=$2
  shift 2
  rerank data build "$recipe" --data-root "$root" --output "$dir" --resume "$@"
}

build ict-scifact "$cfg/ict-queries.yaml" --set dataset=scifact
build ict-dl19 "$cfg/ict-queries.yaml" --set dataset=dl19-bm25-top100
build "$tag-scifact-train" "$labels"
build "$tag-ict-scifact" "$labels" --set source.dataset=scifact --set "source.queries=$data/ict-scifact/data.jsonl"
build "$tag-ict-dl19" "$labels" --set source.dataset=dl19-bm25-top100 \
  --set "source.queries=$data/ict-dl19/data.jsonl"

# One training file; the DL19 pool's synthetic qids get a prefix so they cannot meet SciFact's.
train=$data/$tag-train.jsonl
if [ ! -f "$train" ]; then
  python - "$data" "$tag" <<'PY'
import json, os, sys
data, tag = sys.argv[1:]
with open(f"{data}/{tag}-train.jsonl.tmp", "w", encoding="utf-8") as out:
    for name, prefix in (("scifact-train", ""), ("ict-scifact", ""), ("ict-dl19", "dl19-")):
        with open(f"{data}/{tag}-{name}/data.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                out.write(json.dumps({**row, "qid": prefix + row["qid"]}, ensure_ascii=False) + "\n")
os.replace(f"{data}/{tag}-train.jsonl.tmp", f"{data}/{tag}-train.jsonl")
PY
fi
echo "training data: $train"
