#!/usr/bin/env bash
# The training data of both distillation chains, on real text; run by distill-cross-encoder.sh and distill-smollm2.sh.
#   examples/distill-data.sh DATA TAG LABELS_CONFIG      ->  DATA/TAG-train.jsonl
# Queries: the SciFact train queries (with their qrels) and sentence-as-query (ICT) queries over the SciFact documents
# and over the DL19 passage pool (configs/distill/ict-queries.yaml, built once into DATA/ict-*, shared by the chains),
# each labelled by LABELS_CONFIG (a teacher_labels recipe in configs/distill) into DATA/TAG-*. Data is read from
# $RERANK_DATA, else ../shared/data from the repository root (the folder above examples/), wherever the script is run
# from; DL19 qrels and SciFact test are never read. A finished build is kept (while its inputs are unchanged) and an
# unfinished one continues, so running it again after an interruption redoes nothing. DATA/TAG-train.jsonl joins the
# three TAG-* parts, and is joined again whenever a part was rebuilt (DATA/TAG-train.parts.json records their manifests).
set -euo pipefail
usage="usage: examples/distill-data.sh DATA TAG LABELS_CONFIG"
case ${1-} in
  -h|--help) echo "$usage"; exit 0 ;;
esac
if [ $# -ne 3 ]; then
  echo "$usage" >&2
  exit 2
fi
data=$1 tag=$2 labels=$3
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${RERANK_DATA:-$repo/../shared/data}
cfg=$repo/configs/distill
if [ ! -d "$root" ]; then
  echo "error: data root $root does not exist: set RERANK_DATA to the folder holding scifact and dl19-bm25-top100" >&2
  exit 2
fi

build() {  # build OUTPUT_NAME RECIPE [--set ...]
  local dir=$data/$1 recipe=$2
  shift 2
  rerank data build "$recipe" --data-root "$root" --output "$dir" --resume "$@"
}

build ict-scifact "$cfg/ict-queries.yaml" --set source.dataset=scifact
build ict-dl19 "$cfg/ict-queries.yaml" --set source.dataset=dl19-bm25-top100
build "$tag-scifact-train" "$labels"
build "$tag-ict-scifact" "$labels" --set source.dataset=scifact --set "source.queries=$data/ict-scifact/data.jsonl"
build "$tag-ict-dl19" "$labels" --set source.dataset=dl19-bm25-top100 \
  --set "source.queries=$data/ict-dl19/data.jsonl"

# One training file; the DL19 pool's synthetic qids get a prefix so they cannot meet SciFact's. It is joined again
# when the parts' manifests differ from those recorded beside it (a part rebuilt since), or it is missing.
train=$data/$tag-train.jsonl
python - "$data" "$tag" <<'PY'
import json, os, sys
data, tag = sys.argv[1:]
parts = (("scifact-train", ""), ("ict-scifact", ""), ("ict-dl19", "dl19-"))
train, record = f"{data}/{tag}-train.jsonl", f"{data}/{tag}-train.parts.json"
manifests = {}
for name, _ in parts:
    with open(f"{data}/{tag}-{name}/manifest.json", encoding="utf-8") as f:
        manifests[name] = json.load(f)
try:
    with open(record, encoding="utf-8") as f:
        joined = json.load(f)
except (OSError, ValueError):
    joined = None
if joined == manifests and os.path.isfile(train) and all(
        os.path.getmtime(f"{data}/{tag}-{name}/data.jsonl") <= os.path.getmtime(train) for name, _ in parts):
    sys.exit()
with open(f"{train}.tmp", "w", encoding="utf-8") as out:
    for name, prefix in parts:
        with open(f"{data}/{tag}-{name}/data.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                out.write(json.dumps({**row, "qid": prefix + row["qid"]}, ensure_ascii=False) + "\n")
os.replace(f"{train}.tmp", train)
with open(f"{record}.tmp", "w", encoding="utf-8") as f:
    json.dump(manifests, f, indent=1)
os.replace(f"{record}.tmp", record)
print(f"joined {', '.join(f'{tag}-{name}' for name, _ in parts)} into {train}")
PY
echo "training data: $train"
