"""``rerank.json``: what makes a trained model folder self-describing — its method, kind and the head options it was
trained with, the prompt template included in full (not a name), so ``Reranker.load(folder)`` needs no method name
and a newer toolkit renders the very prompts the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank.errors import ConfigError

__all__ = ["RECORD_FILE", "read_record", "record_payload"]

RECORD_FILE = "rerank.json"
_FORMAT = "rerank-model"


def record_payload(method: str, kind: str, options: dict[str, Any], trainer: str, base_model: str) -> dict[str, Any]:
    """The content of ``rerank.json`` (``options`` are the head's options, the template as a full mapping; an API key
    among them is left out: it belongs to whoever runs the model, not to the model)."""
    from rerank import __version__
    from rerank.config import without_secrets

    return {"format": _FORMAT, "version": 1, "method": method, "kind": kind, "options": without_secrets(options),
            "trained_with": {"trainer": trainer, "base_model": base_model, "rerank_version": __version__}}


def read_record(model: str | Path | None) -> dict[str, Any] | None:
    """The ``rerank.json`` of model folder ``model`` (None when ``model`` is not a folder holding one)."""
    if model is None:
        return None
    path = Path(str(model)).expanduser() / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the model record: {e}") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or "method" not in data:
        raise ConfigError(f"{path}: not a rerank model record (format {_FORMAT!r} with a 'method')")
    return data
