"""``rerank.json``: what makes a trained model folder self-describing — its method, kind and the head options it was
trained with, the prompt template included in full (not a name), so ``Reranker.load(folder)`` needs no method name
and a newer toolkit renders the very prompts the model was trained on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rerank.errors import ConfigError
from rerank.utils.registry import NAME_RULE, valid_name

__all__ = ["RECORD_FILE", "USER_ONLY_OPTIONS", "read_record", "record_payload"]

log = logging.getLogger(__name__)

RECORD_FILE = "rerank.json"
_FORMAT = "rerank-model"
#: options that decide what code runs and where queries, documents and keys are sent: the user's to give, never a model
#: folder's (a downloaded folder setting ``trust_remote_code`` would run its own code, ``base_url`` send the data away)
USER_ONLY_OPTIONS = frozenset({"trust_remote_code", "base_url", "api_key"})
_WARNED: set[str] = set()


def _without_user_only(options: Any, where: str = "") -> tuple[Any, list[str]]:
    """``options`` without :data:`USER_ONLY_OPTIONS` at any depth, and the dotted names of those it dropped."""
    if not isinstance(options, dict):
        return options, []
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for k, v in options.items():
        name = f"{where}{k}"
        if k in USER_ONLY_OPTIONS:
            dropped.append(name)
            continue
        kept[k], inner = _without_user_only(v, f"{name}.")
        dropped.extend(inner)
    return kept, dropped


def record_payload(method: str, kind: str, options: dict[str, Any], trainer: str, base_model: str) -> dict[str, Any]:
    """The content of ``rerank.json`` (``options`` are the head's options, the template as a full mapping; an API key,
    a server address or ``trust_remote_code`` among them is left out: they belong to whoever runs the model)."""
    from rerank import __version__
    from rerank.config import without_secrets

    return {"format": _FORMAT, "version": 1, "method": method, "kind": kind,
            "options": _without_user_only(without_secrets(options))[0],
            "trained_with": {"trainer": trainer, "base_model": base_model, "rerank_version": __version__}}


def read_record(model: str | Path | None) -> dict[str, Any] | None:
    """The ``rerank.json`` of model folder ``model`` (None when ``model`` is not a folder holding one). Its ``method``
    must be a plain name (:data:`~rerank.utils.registry.NAME_RULE`), never a ``"module:Class"`` to import."""
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
    if not valid_name(data["method"]):
        raise ConfigError(f"{path}: method {data['method']!r} is not a method name ({NAME_RULE}): a model folder names "
                          "a registered method, never code to import (give a 'module:Class' yourself: "
                          "--reranker / Reranker.load('module:Class', model=...), if you trust it)")
    if data["method"] == "remote":
        raise ConfigError(f"{path}: a model folder cannot name the remote reranker (load it with "
                          "Reranker.load('remote', base_url=...) yourself)")
    data["options"], dropped = _without_user_only(data.get("options", {}))
    if isinstance(data["options"], dict) and isinstance(data["options"].get("template"), dict):
        from rerank.prompts import mark_recorded  # loaded as recorded: the model was trained with it (head_template)

        data["options"]["template"] = mark_recorded(data["options"]["template"], path)
    if dropped and str(path.resolve()) not in _WARNED:  # once per folder: a command reads it more than once
        _WARNED.add(str(path.resolve()))
        log.warning("%s sets %s, which only the user may choose (what code runs, where requests go): ignored; give "
                    "them as options yourself if you trust this folder", path, ", ".join(dropped))
    return data
