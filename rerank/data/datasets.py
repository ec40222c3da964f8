"""Resolve ``--dataset`` (a path, a registered name under the data root, or ``irds:ID``) into a lazily loaded BEIR
folder."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Set as AbstractSet
from pathlib import Path

from rerank.data import irds
from rerank.data.io import (
    DUPLICATES_FIX,
    CorpusPart,
    Duplicates,
    count_records,
    find_file,
    iter_corpus,
    iter_lines,
    read_corpus,
    read_corpus_part,
    read_qrels,
    read_queries,
)
from rerank.data.registry import DatasetInfo, get_dataset_info
from rerank.errors import ConfigError, DataFormatError, DatasetNotFoundError, RerankError
from rerank.types import Document, Qrels, Query
from rerank.utils.files import sha256_file

__all__ = ["Dataset", "check_max_queries", "default_data_root", "is_dataset_name", "resolve_dataset"]

log = logging.getLogger(__name__)


def default_data_root() -> Path:
    """``$RERANK_DATA``, else ``$XDG_CACHE_HOME/rerank/data`` (``~/.cache/rerank/data``)."""
    env = os.environ.get("RERANK_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "rerank" / "data"


def cache_root() -> Path:
    """Where derived artefacts (BM25 indexes, embeddings) are cached: ``$RERANK_CACHE``, else ``$XDG_CACHE_HOME/rerank``,
    else ``~/.cache/rerank``."""
    env = os.environ.get("RERANK_CACHE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "rerank"


class Dataset:
    """A BEIR-layout folder; files are read on first use and kept. ``qrels_duplicates``: what reading its qrels does
    with a pair judged twice (see :func:`~rerank.data.io.read_qrels`)."""

    def __init__(
        self, root: str | Path, name: str | None = None, info: DatasetInfo | None = None,
        qrels_duplicates: Duplicates = "error",
    ) -> None:
        self.root = Path(root)
        self.name = name or self.root.name
        self.info = info if info is not None else get_dataset_info(self.name)
        self.qrels_duplicates: Duplicates = qrels_duplicates
        #: the fix a repeated judgement's error names, worded for the caller (a trainer's key); None: read_qrels' flag
        self.duplicates_fix: str | None = None

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, root={str(self.root)!r})"

    @property
    def rel_level(self) -> int:
        """Minimum grade that counts as relevant for binary measures: the registry entry's (a folder named exactly as
        a registered dataset inherits it) or a converted ``irds:`` folder's manifest's, else 1 (``rerank eval`` warns
        when such a dataset's qrels grade above 1)."""
        return self.info.rel_level if self.info else 1

    @property
    def corpus_path(self) -> Path:
        return find_file(self.root / "corpus.jsonl")

    @property
    def queries_path(self) -> Path:
        """``queries.jsonl``, else ``queries.tsv`` (``qid<TAB>text`` lines), either possibly gzipped."""
        try:
            return find_file(self.root / "queries.jsonl")
        except FileNotFoundError:
            try:
                return find_file(self.root / "queries.tsv")
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.root} holds no queries.jsonl or queries.tsv (nor either .gz)") from None

    def qrels_path(self, split: str) -> Path:
        qdir = self.root / "qrels"
        for name in (f"{split}.tsv", f"{split}.txt", f"{split}.trec"):
            for cand in (qdir / name, qdir / f"{name}.gz"):
                if cand.exists():
                    return cand
        have = sorted(p.name for p in qdir.glob("*")) if qdir.is_dir() else []
        raise DatasetNotFoundError(f"{self.name}: no qrels for split {split!r} in {qdir} (found: {have or 'none'})")

    def splits(self) -> list[str]:
        qdir = self.root / "qrels"
        return sorted({p.name.split(".")[0] for p in qdir.glob("*")}) if qdir.is_dir() else []

    @functools.cached_property
    def corpus(self) -> dict[str, Document]:
        return read_corpus(self.corpus_path)

    def iter_corpus(self):
        """Stream the corpus without keeping it (for encoders over big corpora)."""
        return iter_corpus(self.corpus_path)

    def documents(self, ids: AbstractSet[str], ask: AbstractSet[str] = frozenset()) -> CorpusPart:
        """The documents ``ids`` (and which of ``ask`` the corpus holds): from :attr:`corpus` when it is already in
        memory, else from one checked pass over the file that holds only those (:func:`read_corpus_part`). The last
        part read is kept: a request within it (a head's ``prepare_corpus`` ids, then the pipeline's) reads nothing."""
        if "corpus" not in vars(self):
            last = self.__dict__.get("_last_part")
            if last is not None and ids <= last[0] and ask <= last[0] | last[1]:
                kept: CorpusPart = last[2]
                docs = {d: kept.docs[d] for d in ids if d in kept.docs}
                return CorpusPart(docs, frozenset(docs).union(d for d in ask if d in kept.found), kept.size)
            part = read_corpus_part(self.corpus_path, ids, ask)
            self.__dict__.setdefault("corpus_size", part.size)
            self.__dict__["_last_part"] = (frozenset(ids), frozenset(ask), part)
            return part
        corpus = self.corpus
        docs = {d: corpus[d] for d in ids if d in corpus}
        return CorpusPart(docs, frozenset(docs).union(d for d in ask if d in corpus), len(corpus))

    @functools.cached_property
    def corpus_size(self) -> int:
        """How many documents the corpus holds: counted in memory when it is read, else its non-blank lines (a pass
        over the bytes, not parsed)."""
        return len(self.corpus) if "corpus" in vars(self) else count_records(self.corpus_path)

    @functools.cached_property
    def queries(self) -> dict[str, Query]:
        return read_queries(self.queries_path)

    @functools.cache  # noqa: B019 - one Dataset per folder, cached for its lifetime
    def qrels(self, split: str = "test") -> Qrels:
        try:
            return read_qrels(self.qrels_path(split), self.qrels_duplicates)
        except DataFormatError as e:
            if self.duplicates_fix is None or DUPLICATES_FIX not in str(e):
                raise
            raise ConfigError(str(e).replace(DUPLICATES_FIX, self.duplicates_fix)) from None

    def split_queries(self, split: str = "test", max_queries: int | None = None) -> dict[str, Query]:
        """Queries judged in ``split``, in sorted id order, optionally only the first ``max_queries``.

        A judged query absent from ``queries.jsonl`` is an error (it could never be retrieved).
        """
        check_max_queries(max_queries)
        qrels = self.qrels(split)
        missing = [q for q in qrels if q not in self.queries]
        if missing:
            raise DatasetNotFoundError(
                f"{self.name}: {len(missing)} judged queries of split {split!r} are not in {self.queries_path} "
                f"(e.g. {missing[:3]})"
            )
        qids = sorted(qrels)
        if max_queries is not None:
            qids = qids[:max_queries]
        return {q: self.queries[q] for q in qids}

    @functools.cache  # noqa: B019 - one Dataset per folder, cached for its lifetime
    def excluded_ids(self, split: str = "test") -> dict[str, set[str]]:
        """Doc ids to drop from each query's ranking before scoring (BRIGHT's ``excluded_ids``): ``excluded/{split}.tsv``.

        Lines are ``query-id<TAB>doc-id``; a folder without that file excludes nothing.
        """
        path = self.root / "excluded" / f"{split}.tsv"
        out: dict[str, set[str]] = {}
        if not path.exists():
            return out
        for lineno, line in iter_lines(path, controls=True):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataFormatError(path, lineno, f"expected 'query-id<TAB>doc-id', got {len(parts)} fields")
            out.setdefault(parts[0], set()).add(parts[1])
        return out

    @functools.cached_property
    def corpus_hash(self) -> str:
        """SHA-256 of the corpus file: the key for every cache derived from the corpus."""
        return sha256_file(self.corpus_path)


def check_max_queries(max_queries: int | None) -> None:
    """``max_queries`` is None (all queries) or at least 1; anything else would silently score fewer queries."""
    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                    or max_queries < 1):
        raise ConfigError(f"--max-queries must be an integer >= 1 (or left out for all queries), got {max_queries!r}")


def resolve_dataset(
    name_or_path: str | Path, data_root: str | Path | None = None, download: bool = True,
    qrels_duplicates: Duplicates = "error",
) -> Dataset:
    """A dataset from an existing path, ``irds:ID`` (an ir_datasets dataset: :mod:`rerank.data.irds`), or a
    registered/plain name under ``data_root``.

    A registered BEIR dataset that is absent locally is downloaded (verified, atomic) when ``download`` is true and
    the network allows, and an ``irds:`` one converted; otherwise the error says where to put the files. A
    ``data_root`` given that does not exist is a :class:`ConfigError` (a mistyped root would be downloaded into); the
    default root (``$RERANK_DATA`` or the cache) is created when needed. With a root given (``data_root`` or
    ``$RERANK_DATA``), a bare name found under it wins over a same-named folder in the current directory (a warning
    names that folder; ``./NAME`` reads it).
    """
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        _check_data_root(name_or_path, Path(data_root).expanduser(), data_root)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if isinstance(name_or_path, str) and name_or_path.startswith(irds.PREFIX):
        folder, name, info = irds.load_irds(name_or_path[len(irds.PREFIX):], root, convert=download)
        return Dataset(folder, name=name, info=info, qrels_duplicates=qrels_duplicates)
    path = Path(name_or_path).expanduser()
    name = str(name_or_path)
    local = root / name
    if (data_root is not None or os.environ.get("RERANK_DATA")) and is_dataset_name(name_or_path) and local.is_dir():
        if path.is_dir() and path.resolve() != local.resolve():
            log.warning("dataset %r: reading %s under the data root, not the folder %s in the current directory "
                        "(give ./%s to read that one)", name, local, path, name)
        return Dataset(local, name=name, qrels_duplicates=qrels_duplicates)
    if path.is_dir():
        converted = irds.converted_info(path)  # a converted irds: folder given by its path keeps its name and grading
        if converted is not None:
            return Dataset(path, name=converted[0], info=converted[1], qrels_duplicates=qrels_duplicates)
        return Dataset(path, qrels_duplicates=qrels_duplicates)
    if local.is_dir():
        return Dataset(local, name=name, qrels_duplicates=qrels_duplicates)
    info = get_dataset_info(name)
    if info is not None and info.url and download:
        from rerank.data.download import download_dataset

        return Dataset(download_dataset(info, root), name=name, info=info, qrels_duplicates=qrels_duplicates)
    _check_not_folder(path, f"dataset {name_or_path}", "a dataset folder (corpus.jsonl, queries.jsonl, qrels/)",
                      DatasetNotFoundError)
    if os.sep in name or name.startswith("."):
        raise DatasetNotFoundError(f"dataset folder {path} does not exist")
    hint = f" (registered; no public download: place its BEIR folder at {local})" if info else ""
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: no folder {local}{hint}. Pass a path, or put a BEIR folder "
        f"(corpus.jsonl, queries.jsonl, qrels/<split>.tsv) there, or give an ir_datasets id as irds:ID; set the data "
        "root with --data-root or RERANK_DATA."
    )


def is_dataset_name(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is a dataset name rather than a path: a string without a folder separator that does
    not start with ``.`` or ``~`` (``./scifact`` is the folder in the current directory)."""
    return (isinstance(name_or_path, str) and "/" not in name_or_path and os.sep not in name_or_path
            and not name_or_path.startswith((".", "~")))


def _check_not_folder(path: Path, shown: str, wanted: str, error: type[RerankError] = ConfigError) -> None:
    """A ``path`` that exists but is no folder, or is a symbolic link loop, is an ``error`` saying which (``shown``
    names it, ``wanted`` says what folder was expected), not a missing folder."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{shown} is a symlink loop; give {wanted}") from None
        return
    if not path.is_dir():
        raise error(f"{shown} is a file, not {wanted}")


def _check_data_root(name_or_path: str | Path, root: Path, given: str | Path) -> None:
    """A ``data_root`` given that does not exist is an error whenever the dataset would be looked up (or downloaded,
    or converted) under it: an existing folder given by its path does not need it."""
    is_irds = isinstance(name_or_path, str) and name_or_path.startswith(irds.PREFIX)
    if is_irds or is_dataset_name(name_or_path) or not Path(name_or_path).expanduser().is_dir():
        _check_not_folder(root, f"--data-root {given}", "the folder holding datasets by name")
        where = f" ({root.resolve()})" if str(root.resolve()) != str(given) else ""
        raise ConfigError(f"--data-root {given} does not exist{where}: fix the path, create the folder, or leave "
                          f"--data-root out for the default ({default_data_root()})")
