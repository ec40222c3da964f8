"""Methods: one package per method under ``rerank/methods/``, each described once by a :class:`Method` (``METHOD``
in its ``__init__.py``): its inference head, training task, rewards, prompt templates and defaults.

``METHOD_PACKAGES`` is the one list of methods. Every name table is derived from it: the reranker registry
(``Reranker.load``), the trainers (``rerank train NAME``), the heads ``sft`` / ``grpo`` accept, the teacher-label
modes of ``rerank data build`` and the shipped prompt templates. Adding a method = one package + one line here.
Reading the descriptors imports no torch. They are checked as they load (:func:`all_methods`): a name declared twice
or taken by a built-in entry (:data:`RESERVED_NAMES`), a template file that is absent or whose name (file stem) another
method or a data recipe ships too, a field of the wrong shape (:class:`Method`) is a one-line ``ConfigError``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rerank.errors import ConfigError
from rerank.methods.base import GRPODefaults, Method, resolve, shown_path

__all__ = [
    "METHOD_PACKAGES",
    "RESERVED_NAMES",
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

#: names no method may take: the built-in entries of the tables methods register into (the reranker registry, the
#: trainers), which a method of that name would replace or be shadowed by
RESERVED_NAMES: dict[str, str] = {
    "remote": "the client of a served reranker (--reranker remote)",
    "sft": "the shared LLM SFT trainer (rerank train sft)",
    "grpo": "the shared LLM GRPO trainer (rerank train grpo)",
}

_METHODS: dict[str, Method] | None = None


def _load(pkg: str) -> Method:
    """The ``METHOD`` of package ``pkg``, checked to be a :class:`Method` of that package."""
    try:
        module = importlib.import_module(f"{__name__}.{pkg}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{pkg}":
            raise
        raise ConfigError(f"METHOD_PACKAGES ({shown_path(__file__)}) names {pkg!r}, but there is no package "
                          f"{shown_path(Path(__file__).parent / pkg)}") from None
    method = getattr(module, "METHOD", None)
    where = shown_path(module.__file__ or pkg)
    if not isinstance(method, Method):
        raise ConfigError(f"{where}: a method package declares METHOD = Method(...), got {type(method).__name__}")
    if method.package != module.__name__:
        raise ConfigError(f"{where}: METHOD.package is {method.package!r}, not this package {module.__name__!r} "
                          f"(write package=__name__)")
    return method


def _check_templates(methods: list[Method]) -> None:
    """Every method's template files exist, and no template name (file stem) is shipped twice: templates are loaded
    by name, so a second file of one name would silently replace the first one's prompt."""
    from rerank.prompts import TEMPLATE_DIR

    seen: dict[str, Path] = {p.stem: p for p in sorted(TEMPLATE_DIR.glob("*.yaml"))}
    for m in methods:
        for t in m.templates:
            path = m.folder / t
            if not path.is_file():
                raise ConfigError(f"method {m.name!r} ({m.source}): templates: {shown_path(path)} does not exist")
            name = Path(t).stem
            if name in seen:
                raise ConfigError(f"prompt template name {name!r} is declared twice: {shown_path(seen[name])} and "
                                  f"{shown_path(path)}; rename one file (templates are loaded by name)")
            seen[name] = path


def all_methods() -> dict[str, Method]:
    """Every method by name, in ``METHOD_PACKAGES`` order (each package's ``METHOD``), checked as they load: a name
    declared twice or reserved, a missing or twice-named template file raises a one-line ``ConfigError``."""
    global _METHODS
    if _METHODS is None:
        found: dict[str, Method] = {}
        for pkg in METHOD_PACKAGES:
            method = _load(pkg)
            if method.name in found:
                raise ConfigError(f"method name {method.name!r} is declared twice: {found[method.name].source} and "
                                  f"{method.source}")
            if method.name in RESERVED_NAMES:
                raise ConfigError(f"method {method.name!r} ({method.source}): the name is taken by "
                                  f"{RESERVED_NAMES[method.name]}; choose another name")
            found[method.name] = method
        _check_templates(list(found.values()))
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
        if name not in methods and kind in (None, "reranker") and _registered_head(name):
            raise ConfigError(f"reranker {name!r} is a head without a method package: it ranks but does not train "
                              f"(docs/research.md, 'A head can also live in your own package'); the methods that "
                              f"train: {', '.join(method_names('reranker'))}")
        raise ConfigError(f"unknown {kind or 'method'} {name!r}; known: {', '.join(known)}")
    return methods[name]


def _registered_head(name: str) -> bool:
    """Whether ``name`` is a reranker registered outside the method packages (from user code, an installed plugin's
    entry point, ``remote``) or a ``module:Class`` path: a head that ranks but has no trainer. Imports nothing."""
    from rerank.heads.registry import RERANKERS

    return (isinstance(name, str) and ":" in name) or RERANKERS.entry_path(name) is not None


def template_files() -> dict[str, Path]:
    """Shipped prompt templates by name (file stem) -> file, over every method's ``templates`` (each name is one
    file: :func:`all_methods` refuses a name shipped twice)."""
    return {Path(t).stem: m.folder / t for m in all_methods().values() for t in m.templates}
