"""Explicit backend registry: ``--backend NAME`` -> ``module:Class`` (imported on first use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.backends.base import Backend

__all__ = ["register_backend", "build_backend", "available_backends"]

_REGISTRY: dict[str, str | type] = {}


def register_backend(name: str, target: str | type) -> None:
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def build_backend(name: str, model: str | None, **options: Any) -> Backend:
    """Construct backend ``name`` for ``model``; options fill the backend's typed config (unknown keys raise)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(available_backends()) or '(none)'}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = target
    return target.from_options(model, **options)  # type: ignore[union-attr]


# built-in backends
register_backend("transformers", "rerank.backends.transformers:TransformersBackend")
