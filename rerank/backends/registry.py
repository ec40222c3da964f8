"""Explicit backend registry: ``--backend NAME`` -> ``module:Class`` (imported on first use)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rerank.utils.registry import Registry

if TYPE_CHECKING:
    from rerank.backends.base import Backend

__all__ = ["BACKENDS", "available_backends", "backend_accepts", "backend_class", "build_backend", "register_backend"]

BACKENDS: Registry[type[Backend]] = Registry("backend")


def register_backend(name: str, target: str | type) -> None:
    """Register backend ``name`` -> ``"module:Class"`` or a class; a built-in name is refused for another class."""
    BACKENDS.register(name, target)


def available_backends() -> list[str]:
    return BACKENDS.names()


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name`` (imported on first use); unknown names raise listing the known ones."""
    return BACKENDS.get(name)


def backend_accepts(name: str, option: str) -> bool:
    """Whether backend ``name``'s typed config has the field ``option``."""
    cfg = backend_class(name).config_class
    return cfg is not None and option in {f.name for f in dataclasses.fields(cfg)}


def build_backend(name: str, model: str | None, **options: Any) -> Backend:
    """Construct backend ``name`` for ``model``; options fill the backend's typed config (unknown keys raise)."""
    return backend_class(name).from_options(model, **options)


# built-in backends
BACKENDS.register("transformers", "rerank.backends.transformers:TransformersBackend", builtin=True)
BACKENDS.register("vllm", "rerank.backends.vllm:VLLMBackend", builtin=True)
BACKENDS.register("openai", "rerank.backends.openai:OpenAIBackend", builtin=True)
BACKENDS.register("llamacpp", "rerank.backends.llamacpp:LlamaCppBackend", builtin=True)
