"""Small helpers shared by the backends (prompt checks, requested ids, stop strings, what kind of model a folder
holds, loading a folder's tokenizer and weights with one-line errors)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rerank.errors import ConfigError

__all__ = [
    "ALLOW_NEW_HEAD",
    "architectures",
    "check_causal_lm",
    "check_classifier",
    "check_no_new_weights",
    "check_prompts",
    "custom_code",
    "cut_at_stop",
    "load_tokenizer",
    "unique_ids",
    "weights_errors",
]

_LM_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
ALLOW_NEW_HEAD = "pass allow_new_head=True (--allow-new-head) to start from it anyway"
_TOKENIZER_CONFIGS = ("tokenizer.json", "tokenizer_config.json")
_OPT_IN = ("to run it, if you trust it, set trust_remote_code=true (a cross-encoder's option: --reranker-set "
           "trust_remote_code=true; an LLM reranker's backend option: --reranker-set "
           "backend_options.trust_remote_code=true)")

log = logging.getLogger(__name__)


def architectures(path: str, trust_remote_code: bool = False) -> list[str]:
    """The architectures the model config at ``path`` records (``config.json``'s ``architectures``; may be empty).
    Without ``trust_remote_code``, a config declaring custom code (``auto_map``) is a one-line warning when
    transformers has a stock class for its model type (the code is not run) and a :class:`ConfigError` when not."""
    from transformers import AutoConfig

    if not trust_remote_code:
        _check_custom_code(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise
        try:  # name the line json finds, rather than transformers' traceback
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as bad:
            raise ConfigError(f"{file}: not valid JSON ({bad}); the model folder's config is damaged") from None
        raise ConfigError(f"{file}: transformers cannot read it ({str(e).splitlines()[0]})") from None
    return list(config.architectures or [])


def custom_code(config: Mapping[str, Any] | None) -> tuple[str, Any, bool] | None:
    """The custom code a model's ``config.json`` (as data) declares: ``(its auto_map entries, joined; its model_type;
    whether transformers has a stock class for that type, so the model loads without the code)``, or None when it
    declares none."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    auto_map = config.get("auto_map") if config else None
    if not auto_map or not isinstance(auto_map, Mapping):
        return None
    model_type = config.get("model_type")  # type: ignore[union-attr]
    return ", ".join(map(str, auto_map)), model_type, isinstance(model_type, str) and model_type in CONFIG_MAPPING


def _check_custom_code(path: str) -> None:
    """Say that the custom code a model config declares (``auto_map``) is not run: a warning when the model loads
    with transformers' stock class for its ``model_type``, a :class:`ConfigError` when there is none."""
    declared_code = custom_code(_config_dict(path))
    if declared_code is None:
        return
    entries, model_type, known = declared_code
    declared = f"{path} declares custom code (config.json auto_map: {entries})"
    if known:
        log.warning("%s, which is NOT run: the model loads with transformers' stock %r classes; %s", declared,
                    model_type, _OPT_IN)
        return
    kind = f"model type {model_type!r}" if isinstance(model_type, str) else "no model_type"
    raise ConfigError(f"{declared} and transformers has no stock class for its {kind}, so it cannot load without "
                      f"running that code, which is off by default; {_OPT_IN}")


def _config_dict(path: str) -> dict[str, Any] | None:
    """The raw ``config.json`` of a local folder or hub id (read as data, no code run); None where there is no readable
    one (the loader then says why)."""
    folder = Path(path)
    file = folder / "config.json"
    if file.is_file():
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None
    if folder.exists():
        return None
    from transformers import PretrainedConfig

    try:
        data = PretrainedConfig.get_config_dict(path)[0]
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_causal_lm(shown: str, archs: Sequence[str]) -> None:
    """An LLM head needs a causal language model: a sequence-classification checkpoint (a cross-encoder) or a model
    without a causal language-model head (a bare or masked-LM encoder) is refused, never given a new random head."""
    names = ", ".join(archs)
    if any(a.endswith("ForSequenceClassification") for a in archs):
        raise ConfigError(f"{shown} is a sequence-classification checkpoint ({names}), not a causal language model; "
                          f"use --reranker cross-encoder")
    if archs and not any(a.endswith(_LM_HEADS) for a in archs):
        raise ConfigError(f"{shown} has no causal language-model head ({names}); an LLM reranker needs a causal LM "
                          f"(…ForCausalLM), a bare encoder's would be new and random")


def check_classifier(shown: str, archs: Sequence[str]) -> None:
    """A cross-encoder is a ``…ForSequenceClassification`` checkpoint; anything else (a bare encoder, a causal LM)
    would get a new, random classification head, so it is refused (the fix: :data:`ALLOW_NEW_HEAD`)."""
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return
    kind = ", ".join(archs) or "no architecture recorded"
    if any(a.endswith(_LM_HEADS) for a in archs):
        raise ConfigError(f"{shown} is a causal language model ({kind}), not a sequence-classification checkpoint; "
                          f"rank with an LLM reranker (e.g. method 'yes-no', --reranker yes-no), or {ALLOW_NEW_HEAD}")
    raise ConfigError(f"{shown} is not a sequence-classification checkpoint ({kind}): its classification head would "
                      f"be new and random; load a trained cross-encoder, or {ALLOW_NEW_HEAD}")


def check_no_new_weights(shown: str, info: Mapping[str, Any], fix: str) -> None:
    """Refuse a model whose loading left weights newly initialised (``output_loading_info``'s ``missing_keys``): its
    scores would be random. ``fix`` says what to do instead."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(f"{shown}: {', '.join(missing[:3])}{more} are not in the checkpoint and would start "
                          f"random; {fix}")


def load_tokenizer(path: str | Path, what: str = "model", **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(path, **kwargs)``; a local folder that holds no tokenizer is a one-line
    :class:`ConfigError` (transformers would build a placeholder that reads every word as unknown). Hub ids load as
    is."""
    from transformers import AutoTokenizer

    folder = Path(path)
    local = folder.is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError):
        if local and not any((folder / name).is_file() for name in _TOKENIZER_CONFIGS):
            raise ConfigError(_no_tokenizer(what, folder, _TOKENIZER_CONFIGS)) from None
        raise
    if local:  # the files the tokenizer's class reads its vocabulary from
        names = [n for n in (getattr(tokenizer, "vocab_files_names", None) or {}).values() if isinstance(n, str)]
        if names and not any((folder / name).is_file() for name in [*names, "tokenizer.json"]):
            raise ConfigError(_no_tokenizer(what, folder, names))
    return tokenizer


def _no_tokenizer(what: str, folder: Path, names: Sequence[str]) -> str:
    files = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    return (f"{what} {folder} holds no tokenizer (no {files}); save the model's tokenizer into it with "
            f"tokenizer.save_pretrained({str(folder)!r})")


@contextmanager
def weights_errors(path: str | Path, what: str = "model") -> Iterator[None]:
    """Turn a damaged ``.safetensors`` file met in the block (safetensors' ``SafetensorError``, which transformers
    passes on as it is: empty, truncated or corrupt) into a one-line :class:`ConfigError` naming the file."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        found = _damaged_weights(Path(path))
        shown = f"weights file {found[0]}" if found else f"{path}: a .safetensors weights file"
        detail = (found[1] if found else str(e)).splitlines()[0].removeprefix("Error while deserializing header: ")
        raise ConfigError(f"{what} {shown} is damaged or incomplete ({detail}); download or save it again") from None


def _damaged_weights(path: Path) -> tuple[Path, str] | None:
    """The first ``.safetensors`` file at ``path`` (the file, or the files of the folder) whose header safetensors
    refuses, with its reason; None when none is refused or ``path`` is not local."""
    from safetensors import SafetensorError, safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path] if path.is_file() else []
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as e:
            return file, str(e)
    return None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the first occurrence of any stop string (stop strings are not returned, as in OpenAI/vLLM)."""
    cut = len(text)
    for s in stop:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]


def check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    """Reject empty prompts early with a clear message (engines fail obscurely on them)."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")


def unique_ids(token_ids: Sequence[int], vocab_size: int | None) -> list[int]:
    """The requested ids without repeats, checked against the vocabulary size."""
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("next_token_logprobs needs at least one token id")
    if vocab_size is not None:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary (size {vocab_size})")
    return list(dict.fromkeys(ids))
