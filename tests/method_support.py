"""Adding a method package to ``rerank.methods`` for one test, as docs/research.md's "Writing a new method" does (a
package plus a ``METHOD_PACKAGES`` entry), and taking it out again."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

import pytest

import rerank.heads.registry as reranker_registry
import rerank.methods as methods_pkg
from rerank.trainers.base import TRAINERS


def add_method_package(monkeypatch: pytest.MonkeyPatch, added: list[str], pkg: str) -> None:
    """Make the package ``rerank.methods.<pkg>`` (its folder already written) a method for the rest of the test."""
    importlib.invalidate_caches()
    added.append(pkg)
    monkeypatch.setattr(methods_pkg, "METHOD_PACKAGES", (*methods_pkg.METHOD_PACKAGES, pkg))
    monkeypatch.setattr(methods_pkg, "_METHODS", None)


def forget_method_packages(added: list[str]) -> None:
    """Drop the modules of the packages ``added`` imported, so the next test imports none of them."""
    for pkg in added:
        for mod in [m for m in sys.modules if m == f"rerank.methods.{pkg}" or m.startswith(f"rerank.methods.{pkg}.")]:
            del sys.modules[mod]
        if hasattr(methods_pkg, pkg):
            delattr(methods_pkg, pkg)


@contextlib.contextmanager
def kept_registries() -> Iterator[None]:
    """Put the reranker and trainer registries back as they were afterwards (a replaced built-in included, and the
    built-in names of methods a test added and took out again)."""
    saved = [(r, {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in vars(r).items()})
             for r in (reranker_registry.RERANKERS, TRAINERS)]
    try:
        yield
    finally:
        for registry, state in saved:
            vars(registry).clear()
            vars(registry).update(state)
