"""What every trainer leaves in ``OUTPUT/model`` beside the weights: ``rerank.json`` (method, head options, the full
prompt template) and a model card ``README.md`` (Hub metadata, method, base model, the training config, the data,
the trainer's own evaluation, how to use it).

Nothing written here holds an absolute path of the training machine: a local path in the training configuration is
recorded relative to the working directory when it lies under it, else by its last component (a hub id or a packaged
model name is kept as given). The base model (``trained_with`` in ``rerank.json``, ``base_model`` in the card's Hub
metadata) is a hub id only (:func:`base_model_fields`): a packaged model by its hub id (none: its name under
``base_model_local``), a local folder by the base model it records, else by its folder name alone under
``base_model_local``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from rerank.config import to_dict
from rerank.methods import get_method
from rerank.methods.record import RECORD_FILE, read_record, record_payload
from rerank.utils.files import atomic_write, write_json

__all__ = ["HUB_ID_KEY", "base_model_fields", "portable", "scrub_paths", "write_model_artifacts"]

#: a folder of the Hugging Face hub cache: ``…/models--OWNER--NAME/snapshots/REVISION``
_HUB_CACHE = re.compile(r"models--(?P<id>[^/]+)")


def portable(value: str) -> str:
    """``value`` without the training machine's layout: an absolute path becomes relative to the working directory
    (when under it) or its last component; anything else is kept as written."""
    if not value or not os.path.isabs(value):
        return value
    path = Path(value)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def scrub_paths(obj: Any) -> Any:
    """``obj`` (a plain config dict) with every absolute path string made :func:`portable`."""
    if isinstance(obj, dict):
        return {k: scrub_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_paths(v) for v in obj]
    return portable(obj) if isinstance(obj, str) else obj


#: ``trained_with`` key of a ``rerank.json`` whose ``base_model`` rerank wrote as a hub id (:func:`base_model_fields`);
#: a record without it (written before rerank checked) may hold a relative path of the machine that trained it
HUB_ID_KEY = "base_model_is_hub_id"


def _packaged_fields(name: str) -> dict[str, str]:
    """A packaged model by its hub id: its registered ``owner/name`` (``all-MiniLM-L6-v2``: the
    ``sentence-transformers/all-MiniLM-L6-v2`` registered for the same model); one without (the SmolLM2 GGUF, a
    quantised file the Hub does not hold as a model of its own) by its name under ``base_model_local``."""
    from rerank.models import PACKAGED_MODELS

    if "/" in name:
        return {"base_model": name}
    same = [other for other, path in PACKAGED_MODELS.items() if "/" in other and path is PACKAGED_MODELS[name]]
    return {"base_model": same[0]} if same else {"base_model_local": name}


def _hub_id_here(value: str) -> bool:
    """Whether ``value`` is a hub id this machine's Hugging Face cache holds a model of."""
    from rerank.models import _HUB_ID, _in_hub_cache

    if not _HUB_ID.fullmatch(value):
        return False
    try:
        return _in_hub_cache(value)
    except ValueError:  # a name the hub library refuses as a repo id ("a--b", "x.")
        return False


def _recorded_fields(trained_with: dict[str, Any]) -> dict[str, str]:
    """The base model a folder rerank trained records: its ``base_model`` when rerank wrote it as a hub id
    (:data:`HUB_ID_KEY`), names a packaged model or is a hub id in this machine's cache; any other (an older record's
    relative path, ``runs/tiny-llm``) by its last component under ``base_model_local``, as is ``base_model_local``."""
    from rerank.models import PACKAGED_MODELS

    value, local = trained_with.get("base_model"), trained_with.get("base_model_local")
    if isinstance(value, str) and value:
        if value in PACKAGED_MODELS:
            return _packaged_fields(value)
        if trained_with.get(HUB_ID_KEY) is True or _hub_id_here(value):
            return {"base_model": value}
        local = value
    if isinstance(local, str) and Path(local).name:
        return {"base_model_local": Path(local).name}
    return {}


def base_model_fields(model: str) -> dict[str, str]:
    """How ``rerank.json`` and the model card name the starting ``model``: ``{"base_model": ID}`` for a hub id (as
    given), a packaged model (its hub id), a folder rerank trained (the base model its ``rerank.json`` records, see
    :func:`_recorded_fields`) or a folder of the hub cache (its hub id); else ``{"base_model_local": NAME}``, the local
    folder's name alone, never a path of the training machine (nor one the Hub would read as a model id)."""
    from rerank.models import PACKAGED_MODELS

    if not model:
        return {}
    if model in PACKAGED_MODELS:
        return _packaged_fields(model)
    path = Path(model).expanduser()
    if not (path.exists() or path.is_symlink()):
        return {"base_model": model}
    try:
        record = read_record(path) if path.is_dir() else None
    except ValueError:  # a damaged rerank.json: the folder is named as any local one
        record = None
    trained_with = record.get("trained_with") if record is not None else None
    recorded = _recorded_fields(trained_with) if isinstance(trained_with, dict) else {}
    if recorded:
        return recorded
    resolved = path.resolve()
    for part in reversed(resolved.parts[:-1]):
        m = _HUB_CACHE.fullmatch(part)
        if m and "snapshots" in resolved.parts:
            return {"base_model": m.group("id").replace("--", "/", 1)}
    return {"base_model_local": resolved.name}


def _data_text(config: dict[str, Any]) -> str:
    data = config.get("data")
    if isinstance(data, dict):
        if data.get("path"):
            return f"Training examples from `{data['path']}` (the rerank training schema)."
        return (f"Built from the BEIR dataset `{data.get('beir')}` (split `{data.get('split')}`): qrels positives and "
                f"BM25 hard negatives, as configured under `data` below.")
    return f"The judged queries of `{config.get('dataset')}` (split `{config.get('split', 'train')}`)."


def _base_text(base: dict[str, str]) -> str:
    from rerank.models import PACKAGED_MODELS

    if "base_model" in base:
        return f"`{base['base_model']}`"
    if base.get("base_model_local") in PACKAGED_MODELS:
        return f"The packaged model `{base['base_model_local']}` (not a hub model)."
    if "base_model_local" in base:
        return f"A local model folder, `{base['base_model_local']}` (not a hub model)."
    return "Not recorded."


def _use_text(method: Any) -> str:
    if method.kind == "retriever":
        return """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/model")
queries = model.encode_query(["what is bm25?"])
documents = model.encode_document(["BM25 is a ranking function ..."])
```

```bash
rerank eval --dataset scifact --retriever dense --model path/to/model --output runs/eval
```
"""
    extra = ""
    # a sentence-transformers text-ranking model (its Hub metadata) is what sentence-transformers' CrossEncoder loads
    if method.library_name == "sentence-transformers" and method.pipeline_tag == "text-ranking":
        extra = """
```python
from sentence_transformers import CrossEncoder

scores = CrossEncoder("path/to/model").predict([("what is bm25?", "BM25 is a ranking function ...")])
```
"""
    return f"""```python
from rerank import Reranker

reranker = Reranker.load("path/to/model")  # the method and its prompt come from rerank.json
result = reranker.rerank("what is bm25?", ["BM25 is a ranking function ...", "Paris is in France."])
```

```bash
rerank rank --model path/to/model --input queries_docs.jsonl --output ranked.jsonl
rerank eval --dataset scifact --retriever bm25 --model path/to/model --output runs/eval
```
{extra}"""


def write_model_artifacts(
    model_dir: Path,
    *,
    method: str,
    trainer: str,
    config: Any,
    options: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    metrics_note: str = "",
) -> None:
    """Write ``rerank.json`` and the model card into ``model_dir`` (the folder the weights are already in).

    ``options``: the inference head's options the model was trained with (the template as a full mapping);
    ``metrics``: what the trainer measured on its dev split for model selection (None: it did not evaluate).
    """
    m = get_method(method)
    given = to_dict(config)
    cfg = scrub_paths(given)
    if isinstance(cfg.get("max_steps"), int) and cfg["max_steps"] > 0:  # max_steps overrides epochs: the card
        cfg.pop("epochs", None)  # shows the schedule that ran, not a default nobody used
    base = base_model_fields(str(given.get("model") or ""))
    payload = record_payload(method, m.kind, options or {}, trainer, base.get("base_model", ""))
    payload["trained_with"] = {k: v for k, v in payload["trained_with"].items() if k != "base_model" or v}
    payload["trained_with"].update({k: v for k, v in base.items() if k != "base_model"})
    if "base_model" in base:
        payload["trained_with"][HUB_ID_KEY] = True
    write_json(payload, model_dir / RECORD_FILE)
    meta: dict[str, Any] = {"base_model": base["base_model"]} if "base_model" in base else {}
    meta.update({"library_name": m.library_name, "tags": ["rerank", m.kind, method, f"rerank-train-{trainer}"]})
    if m.pipeline_tag:
        meta["pipeline_tag"] = m.pipeline_tag
    if metrics:
        evaluation = "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items())
        evaluation = f"{metrics_note}\n\n{evaluation}" if metrics_note else evaluation
    else:
        evaluation = ("The trainer did not evaluate this model (no dev split or `eval_steps: 0`); evaluate it with "
                      "`rerank eval` (below).")
    card = f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {method} {m.kind}, trained with rerank

## Method

`{method}`: {m.summary}. Trained with `rerank train {trainer}`; `rerank.json` holds the method and the options it was
trained with (the prompt template in full), so `rerank` loads it without being told the method.

## Base model

{_base_text(base)}

## Data

{_data_text(cfg)}

## Training configuration

```yaml
{yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True).strip()}
```

## Evaluation

{evaluation}

## Use

{_use_text(m).strip()}
"""
    with atomic_write(model_dir / "README.md") as f:
        f.write(card)
