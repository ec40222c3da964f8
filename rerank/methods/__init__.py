"""Methods: one package per method under ``rerank/methods/``, each described once by a :class:`Method` (``METHOD``
in its ``__init__.py``): its inference head, training task, rewards, prompt templates and defaults.

``METHOD_PACKAGES`` is the one list of methods. Every name table is derived from it: the reranker registry
(``Reranker.load``), the trainers (``rerank train NAME``), the heads ``sft`` / ``grpo`` accept, the teacher-label
modes of ``rerank data build`` and the shipped prompt templates. Adding a method = one package + one line here.
Reading the descriptors imports no torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rerank.errors import ConfigError
from rerank.methods.base import GRPODefaults, Method, resolve

__all__ = [
    "METHOD_PACKAGES",
    "GRPODefaults",
    "Method",
    "all_methods",
    "get_method",
    "method_names",
    "resolve",
    "template_files",
]

METHOD_PACKAGES: tuple[str, ...] = (
    "cross_encoder",
    "yes_no",
    "erank",
    "listwise",
    "first",
    "grouprank",
    "bi_encoder",
    "qwen3_reranker",
    "bge_reranker_v2_gemma",
    "monot5",
    "duot5",
    "setwise",
    "colbert",
    "contrastive",
    "star",
    "adore",
    "pgrank",
)

_METHODS: dict[str, Method] | None = None


def all_methods() -> dict[str, Method]:
    """Every method by name, in ``METHOD_PACKAGES`` order (each package's ``METHOD``)."""
    global _METHODS
    if _METHODS is None:
        found: dict[str, Method] = {}
        for pkg in METHOD_PACKAGES:
            method = importlib.import_module(f"{__name__}.{pkg}").METHOD
            if method.name in found:
                raise RuntimeError(f"method name {method.name!r} is declared twice")
            found[method.name] = method
        _METHODS = found
    return _METHODS


def method_names(kind: str | None = None, trains_with: str | None = None, teacher_labels: bool = False) -> list[str]:
    """Method names, optionally only one ``kind``, those a shared trainer trains, or those with a teacher mode."""
    out = []
    for m in all_methods().values():
        if kind is not None and m.kind != kind:
            continue
        if trains_with is not None and not m.trains_with(trains_with):
            continue
        if teacher_labels and m.teacher_labels is None:
            continue
        out.append(m.name)
    return out


def get_method(name: str, kind: str | None = None) -> Method:
    """The method ``name``; an unknown name (or one of another kind) raises, listing the known ones."""
    methods = all_methods()
    if name not in methods or (kind is not None and methods[name].kind != kind):
        known = method_names(kind)
        raise ConfigError(f"unknown {kind or 'method'} {name!r}; known: {', '.join(known)}")
    return methods[name]


def template_files() -> dict[str, Path]:
    """Shipped prompt templates by name (file stem) -> file, over every method's ``templates``."""
    out: dict[str, Path] = {}
    for m in all_methods().values():
        for t in m.templates:
            out[Path(t).stem] = m.folder / t
    return out
