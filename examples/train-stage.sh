#!/usr/bin/env bash
# One training run of a distillation chain, resumable:
#   examples/train-stage.sh [--check] KIND CONFIG OUTPUT [--set KEY=VALUE ...]      (KIND: sft or grpo)
# A finished run (OUTPUT/model) is kept when OUTPUT/rerank_train.json records the same config; one trained with other
# options is refused, naming them (a longer max_steps or epochs continues it with `rerank train --resume`). An
# interrupted run continues from its last checkpoint. --check: only validate the config with the options (and compare
# it with a finished run), so a chain can fail on a typo before it builds any data.
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
sets=() args=()
while [ $# -gt 0 ]; do
  case $1 in
    --set) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; sets+=("$2"); args+=(--set "$2"); shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
root=${RERANK_DATA:-$(cd "$here/.." && pwd)/../shared/data}

# train | done | resume: the config with the options must load, and a finished run must have been trained with it
state=$(python - "$kind" "$config" "$dir" "${sets[@]}" <<'PY'
import json, os, sys
from pathlib import Path
from rerank.config import to_dict
from rerank.errors import RerankError
from rerank.trainers.base import get_trainer, load_train_config
from rerank.trainers.resume import INPUT_OPTIONS, config_differences


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


kind, config, out, *sets = sys.argv[1:]
try:
    cfg = load_train_config(get_trainer(kind).config_class, config, sets)
except RerankError as e:
    fail(str(e))
out = Path(out)
try:
    record = json.loads((out / "rerank_train.json").read_text(encoding="utf-8"))
except (OSError, ValueError):
    record = None
if not (out / "model").is_dir() or not isinstance(record, dict):
    print("train" if not (out / "model").is_dir() else "done")
    sys.exit()
if record.get("trainer") != kind:
    fail(f"{out}/model is a {record.get('trainer')!r} run, not {kind!r}: write to another OUT")
old, new = record.get("config", {}), json.loads(json.dumps(to_dict(cfg)))
for name in INPUT_OPTIONS:  # a path spelt another way (./OUT, an absolute OUT) names the same input
    *parents, last = name.split(".")
    o, n = old, new
    for part in parents:
        o, n = (o or {}).get(part), (n or {}).get(part)
    if isinstance(o, dict) and isinstance(n, dict) and isinstance(o.get(last), str) and isinstance(n.get(last), str) \
            and os.path.realpath(os.path.expanduser(o[last])) == os.path.realpath(os.path.expanduser(n[last])):
        n[last] = o[last]
diffs = config_differences(old, new, cfg)
length = [d for d in diffs if d.split(":", 1)[0] in ("max_steps", "epochs")]
other = [d for d in diffs if d.split(":", 1)[0] not in ("max_steps", "epochs", "save_total_limit", "logging_steps",
                                                        "report_to")]  # the last three leave the weights alone
if other:
    more = f" (and {len(other) - 4} more)" if len(other) > 4 else ""
    fail(f"{out}/model was trained with other options ({out}/rerank_train.json): {'; '.join(other[:4])}{more}: "
         f"rerun with those, write to another OUT, or remove {out}/model, {out}/checkpoints and "
         f"{out}/rerank_train.json to train it again")
if length:  # a resumed run keeps its first record: the newest checkpoint tells how long the model trained
    steps = sorted((p for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json")
                    if p.parent.name.split("-", 1)[1].isdigit()), key=lambda p: int(p.parent.name.split("-", 1)[1]))
    state = json.loads(steps[-1].read_text(encoding="utf-8")) if steps else {}
    max_steps = getattr(cfg, "max_steps", 0) or 0
    if max_steps > 0:
        same = state.get("max_steps") == max_steps
    else:
        same = state.get("num_train_epochs") == getattr(cfg, "epochs", None)
    if not same and not steps:
        fail(f"{out}/model was trained with {'; '.join(length)} and keeps no checkpoint to continue from: write to "
             f"another OUT, or remove {out}/model and {out}/rerank_train.json to train it again")
    print("done" if same else "resume")
    sys.exit()
print("done")
PY
)
if [ "$check" = 1 ]; then
  exit 0
fi
again=()
case $state in
  done) echo "$dir/model exists: training is done"; exit 0 ;;
  resume) again=(--resume) ;;
  *) if compgen -G "$dir/checkpoints/checkpoint-*" > /dev/null; then again=(--resume); fi ;;
esac
rerank train "$kind" --config "$config" --data-root "$root" --output "$dir" "${again[@]}" "${args[@]}"
