"""The first-stage interface and its explicit name registry (``--retriever NAME``).

Besides the built-in names and :func:`register_retriever`'s, installed packages add retrievers through the entry-point
group ``rerank.retrievers`` (``name = "module:Class"``), and ``--retriever mypkg.fs:MyRetriever`` imports that class
(user code, as naming a module runs it); each is checked to be a :class:`FirstStage` subclass.
"""

from __future__ import annotations

import operator
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from rerank.errors import ConfigError
from rerank.types import Query, Run
from rerank.utils.registry import Registry, named_class, target_path

if TYPE_CHECKING:
    from rerank.data.datasets import Dataset

__all__ = ["PROGRESS_OPTIONS", "FirstStage", "Queries", "available_retrievers", "build_retriever", "progress_options",
           "register_retriever", "retrieve_args", "retriever_config_class"]

#: What :meth:`FirstStage.retrieve` takes as queries: ``{query id: Query}`` (the run is keyed by the mapping's ids),
#: ``{query id: text}``, or a sequence of :class:`~rerank.types.Query` with distinct ids.
Queries = Mapping[str, Query | str] | Iterable[Query]


class FirstStage(ABC):
    """Retrieve a ranked candidate list per query from a corpus."""

    name: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def from_dataset(cls, dataset: Dataset, **options: Any) -> FirstStage:
        """Build (or load from cache) the retriever over ``dataset``'s corpus; options fill its typed config."""

    @abstractmethod
    def retrieve(self, queries: Queries, k: int) -> Run:
        """Top-``k`` (doc id, score) per query id, best first (ties by doc id descending, as trec_eval). ``queries``
        as :data:`Queries` says, ``k`` an integer >= 1: implementations check both with :func:`retrieve_args`."""

    def describe(self) -> dict[str, Any]:
        """Name and configuration, recorded in ``metrics.json``."""
        return {"name": self.name}


def retrieve_args(queries: Any, k: Any) -> tuple[Mapping[str, Query], int]:
    """``retrieve``'s arguments checked and made uniform (``{query id: Query}`` and an ``int``), so every retriever
    takes the same forms and a wrong one is a one-line ``TypeError`` / ``ValueError`` naming the argument instead of
    a failure deep in the index. ``k`` may be any integer type (``operator.index``: numpy integers too), not a bool
    or float."""
    if isinstance(k, bool):
        raise TypeError(f"k (the retrieval depth) must be an integer >= 1, got {k!r}")
    try:
        depth = operator.index(k)
    except TypeError:
        raise TypeError(f"k (the retrieval depth) must be an integer >= 1, got {k!r} ({type(k).__name__})") from None
    if depth < 1:
        raise ConfigError(f"retrieval depth k must be >= 1, got {depth}")
    return _queries(queries), depth


def _queries(queries: Any) -> Mapping[str, Query]:
    """``queries`` (any :data:`Queries` form) as a ``{query id: Query}`` dict, in the order given."""
    forms = "a {query id: Query or text} mapping or a list of Query"
    if isinstance(queries, Mapping):
        converted: dict[str, Query] = {}
        for qid, q in queries.items():
            if not isinstance(qid, str):
                raise TypeError(f"queries: query id {qid!r} must be a string, got {type(qid).__name__}")
            if isinstance(q, str):
                q = Query(qid, q)
            elif not isinstance(q, Query):
                raise TypeError(f"queries[{qid!r}] must be a Query or the query text, got {type(q).__name__}")
            _check_text(q, f"queries[{qid!r}]")
            converted[qid] = q
        return converted
    if isinstance(queries, (str, bytes, Query)) or not isinstance(queries, Iterable):
        hint = " (wrap a single Query in a list)" if isinstance(queries, Query) else ""
        raise TypeError(f"queries must be {forms}, got {type(queries).__name__}{hint}")
    out: dict[str, Query] = {}
    for i, q in enumerate(queries):
        if not isinstance(q, Query):
            raise TypeError(f"queries[{i}] must be a Query, got {type(q).__name__} (texts go in a {{query id: text}} "
                            "mapping)")
        if not isinstance(q.id, str):
            raise TypeError(f"queries[{i}]: query id {q.id!r} must be a string, got {type(q.id).__name__}")
        _check_text(q, f"queries[{i}]")
        if q.id in out:
            raise ValueError(f"queries: query id {q.id!r} appears twice (a run holds one ranking per id)")
        out[q.id] = q
    return out


def _check_text(query: Query, where: str) -> None:
    if not isinstance(query.text, str):
        raise TypeError(f"{where}: query text must be a string, got {type(query.text).__name__}")


def _builtins(registry: Registry[type[FirstStage]]) -> None:
    """The built-in retrievers (names a user's or an installed package's class cannot take)."""
    registry.register("bm25", "rerank.retrieval.bm25:BM25Retriever", builtin=True)
    registry.register("pyserini", "rerank.retrieval.pyserini:PyseriniBM25", builtin=True)
    registry.register("dense", "rerank.retrieval.dense:DenseRetriever", builtin=True)
    registry.register("hybrid", "rerank.retrieval.hybrid:HybridRetriever", builtin=True)


def _check(name: str | None, cls: Any) -> type[FirstStage]:
    """``cls`` when it is a :class:`FirstStage` subclass whose ``name`` (what ``describe()`` and so ``metrics.json``
    record) is ``name``, or, for a ``"module:Class"`` name (``name`` None), a valid name that no other registered class
    holds (a built-in's included); otherwise a one-line :class:`ConfigError`
    (:func:`~rerank.utils.registry.named_class`)."""
    return named_class(RETRIEVERS, name, cls, FirstStage, "rerank.retrieval.base.FirstStage", "name")


RETRIEVERS: Registry[type[FirstStage]] = Registry("retriever", fill=_builtins, check=_check,
                                                  group="rerank.retrievers", paths=True, exclusive=True)


def register_retriever(name: str, target: str | type[FirstStage], *, replace: bool = False) -> None:
    """Register ``name`` -> ``"module:Class"`` (imported on first use) or a :class:`FirstStage` subclass (checked
    now). Another target under a name taken from user code raises unless ``replace``; a built-in name (``bm25``,
    ``dense``, ...) is refused for another class."""
    RETRIEVERS.register(name, target, replace=replace)


def retriever_config_class(name: str) -> type | None:
    """The typed config of the registered retriever ``name`` (the dataclass annotated as its ``__init__``'s
    ``config``, which ``from_dataset`` builds from the options), or None when it has none that can be told; an
    unknown name raises listing the known ones."""
    import dataclasses
    import typing

    cls = RETRIEVERS.get(name)
    try:
        config_class = typing.get_type_hints(cls.__init__).get("config")
    except (NameError, TypeError):
        return None
    return config_class if config_class is not None and dataclasses.is_dataclass(config_class) else None


def available_retrievers() -> list[str]:
    """Registered retriever names (built-in, an installed package's, registered from user code), sorted."""
    return RETRIEVERS.names()


def build_retriever(name: str, dataset: Dataset | str | os.PathLike[str], **options: Any) -> FirstStage:
    """Construct the registered retriever ``name`` over ``dataset``: a :class:`~rerank.data.datasets.Dataset`, or a
    dataset name or folder, which is read with :func:`~rerank.data.datasets.resolve_dataset` (default data root)."""
    from rerank.data.datasets import Dataset, resolve_dataset

    cls = RETRIEVERS.get(name)
    if isinstance(dataset, (str, os.PathLike)):
        dataset = resolve_dataset(dataset)
    elif not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a Dataset (resolve_dataset(name or folder)), a name or a folder, got "
                        f"{type(dataset).__name__}")
    try:
        retriever = cls.from_dataset(dataset, **options)
    except TypeError as e:  # a retriever without a typed config: its __init__ or from_dataset refused a keyword
        unknown = _UNEXPECTED.search(str(e))
        if unknown is None or unknown.group(1) not in options:
            raise
        accepted = _plain_options(cls)
        known = f"; its options: {', '.join(accepted) or '(none)'}" if accepted is not None else ""
        raise ConfigError(f"retriever {name!r}: unknown option {unknown.group(1)!r} (--retriever-set / "
                          f"retriever_options){known}") from None
    if not isinstance(retriever, FirstStage):
        raise ConfigError(f"retriever {name!r}: {target_path(cls)}.from_dataset returned "
                          f"{type(retriever).__name__}, not a FirstStage (does it return the retriever it builds?)")
    return retriever


#: what Python's TypeError says of a keyword argument a function does not take
_UNEXPECTED = re.compile(r"got an unexpected keyword argument '([^']+)'")


def _plain_options(cls: type[FirstStage]) -> list[str] | None:
    """The options a retriever without a typed config takes, read from its signatures: ``from_dataset``'s keywords
    after the dataset, or, where it takes ``**options``, ``__init__``'s keyword-only arguments and those with a
    default; None where they cannot be told (``**kwargs`` in both, an unannotated ``config``, no signature)."""
    import inspect

    try:
        params = list(inspect.signature(cls.from_dataset).parameters.values())[1:]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD or p.name == "config" for p in params):
        return None
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY
            or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)]


#: the option of each built-in retriever that switches its progress bars
PROGRESS_OPTIONS = {"bm25": "show_progress", "pyserini": "show_progress", "dense": "progress", "hybrid": "progress"}


def progress_options(name: str, options: Mapping[str, Any], progress: bool) -> dict[str, Any]:
    """``options`` for retriever ``name`` with its progress bars off when ``progress`` is false, unless the options
    set them themselves (``show_progress`` / ``progress``, :data:`PROGRESS_OPTIONS`); a retriever without such an
    option gets ``options`` as they are. The copy keeps the record of which override gave each key
    (``--retriever-set``, :func:`~rerank.config.override_source`); where there is one, the options are checked against
    the retriever's typed config (:func:`retriever_config_class`) here, as the retriever builds it from a plain
    mapping, so that an error about a key names the override that gave it."""
    from rerank.config import from_dict, layered

    out = layered({}, options)
    key = PROGRESS_OPTIONS.get(name)
    if not progress and key is not None:
        out.setdefault(key, False)
    config_class = retriever_config_class(name) if getattr(options, "given", None) else None
    if config_class is not None:
        from_dict(config_class, out, where="retriever options")
    return out

