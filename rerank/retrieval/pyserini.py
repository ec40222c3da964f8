"""BM25 with Lucene through pyserini (``--retriever pyserini``), for corpora that outgrow the in-memory bm25s index.

Install: ``pip install 'rerank[pyserini]'``, which pins ``pyserini==0.25.0``: the last pyserini line that runs on
Java 11/17 (tested with OpenJDK 17). pyserini >= 0.35 bundles an Anserini built for Java 21 and fails to start on
Java 17. A JDK/JRE must be on ``PATH`` or under ``JAVA_HOME``.

The corpus is written as an Anserini ``JsonCollection`` (``contents`` = title + text), indexed with
``python -m pyserini.index.lucene`` (Anserini's default English analyzer: Porter stemming, Lucene stopwords) and
searched with ``LuceneSearcher`` under BM25(k1, b). Lucene applies k1 and b at query time, so the index is cached at
``cache_root()/pyserini/<corpus sha256>-<index options hash>`` and shared by every (k1, b); it is built in a temporary
folder and renamed into place. SciFact test, k1=0.9 b=0.4: nDCG@10 0.6789, pyserini's published figure.

pyserini 0.25.0 builds an OpenAI client when ``pyserini.search.lucene`` is imported, which recent ``openai`` releases
refuse without a key; BM25 never calls it, so a placeholder ``OPENAI_API_KEY`` is set for that import only when none
is set.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tqdm.auto import tqdm

from rerank.config import from_dict, to_dict
from rerank.data.datasets import cache_root
from rerank.errors import ConfigError, DataFormatError, RerankError
from rerank.retrieval.base import FirstStage, Queries, retrieve_args
from rerank.types import Run, sort_ranking
from rerank.utils.files import hash_obj, publish_dir, temp_dir, write_json

if TYPE_CHECKING:
    from rerank.data.datasets import Dataset

__all__ = ["PyseriniConfig", "PyseriniBM25", "check_pyserini", "index_cache_path"]

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1
_META = "rerank_meta.json"
_MIN_JAVA = 11
_INSTALL_HINT = "pip install 'rerank[pyserini]' (pyserini==0.25.0; it needs Java 11+, e.g. OpenJDK 17)"


@dataclass
class PyseriniConfig:
    """Lucene BM25 options; only ``include_title`` changes the index (k1 and b apply at query time)."""

    k1: float = 0.9
    b: float = 0.4
    include_title: bool = True
    threads: int = 1
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def index_key(self) -> dict[str, Any]:
        """What the Lucene index depends on, besides the corpus."""
        return {
            "include_title": self.include_title,
            "pyserini": _pyserini_version(),
            "collection": "JsonCollection",
            "generator": "DefaultLuceneDocumentGenerator",
            "format": _CACHE_FORMAT,
        }


def _pyserini_version() -> str | None:
    try:
        return importlib.metadata.version("pyserini")
    except importlib.metadata.PackageNotFoundError:
        return None


def _java_executable() -> str | None:
    """``$JAVA_HOME/bin/java`` when set, else ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def _java_major(java: str) -> int | None:
    """Major version of a Java executable (``1.8`` -> 8), or ``None`` when it cannot be told."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_pyserini() -> None:
    """Raise :class:`ConfigError` saying what to install when pyserini or a suitable Java is missing."""
    if importlib.util.find_spec("pyserini") is None:
        raise ConfigError(f"--retriever pyserini needs the pyserini extra: {_INSTALL_HINT}")
    java = _java_executable()
    if java is None:
        raise ConfigError(
            "--retriever pyserini needs Java 11+ (tested with 17): no java on PATH and JAVA_HOME is not set "
            "(install e.g. openjdk-17-jre-headless)"
        )
    major = _java_major(java)
    if major is not None and major < _MIN_JAVA:
        raise ConfigError(f"--retriever pyserini needs Java {_MIN_JAVA}+ (tested with 17); {java} is Java {major}")


@contextlib.contextmanager
def _openai_placeholder() -> Iterator[None]:
    """Set a placeholder ``OPENAI_API_KEY`` while pyserini's search module is imported (see module docstring)."""
    if os.environ.get("OPENAI_API_KEY"):
        yield
        return
    os.environ["OPENAI_API_KEY"] = "unused-placeholder-set-by-rerank"
    try:
        yield
    finally:
        os.environ.pop("OPENAI_API_KEY", None)


def _lucene_searcher_class() -> Any:
    """pyserini's ``LuceneSearcher`` (imports pyserini and starts the JVM in this process on first use)."""
    try:
        with _openai_placeholder():
            from pyserini.search.lucene import LuceneSearcher
    except Exception as e:  # noqa: BLE001 - pyjnius/JVM start-up failures surface as assorted exception types
        raise ConfigError(f"could not load pyserini's LuceneSearcher ({type(e).__name__}: {e}); {_INSTALL_HINT}") from e
    return LuceneSearcher


def index_cache_path(dataset: Dataset, config: PyseriniConfig) -> Path:
    """Where the Lucene index of ``dataset``'s corpus under ``config`` is cached."""
    return cache_root() / "pyserini" / f"{dataset.corpus_hash}-{hash_obj(config.index_key())}"


class PyseriniBM25(FirstStage):
    """Lucene BM25 via pyserini's ``LuceneSearcher`` over an index of title + text, cached on disk."""

    name: ClassVar[str] = "pyserini"

    def __init__(self, searcher: Any, num_docs: int, config: PyseriniConfig, cache_path: Path, cache_hit: bool) -> None:
        self.searcher = searcher
        self.num_docs = num_docs
        self.config = config
        self.cache_path = cache_path
        self.cache_hit = cache_hit

    @classmethod
    def from_dataset(cls, dataset: Dataset, **options: Any) -> PyseriniBM25:
        """Load the cached Lucene index of ``dataset``'s corpus, or build it; ``options`` fill :class:`PyseriniConfig`."""
        config = from_dict(PyseriniConfig, options, where="pyserini")
        check_pyserini()
        path = index_cache_path(dataset, config)
        cache_hit = (path / _META).is_file()
        if cache_hit:
            log.info("pyserini index cache hit: %s", path)
        else:
            log.info("pyserini index cache miss: building the Lucene index of %s into %s", dataset.corpus_path, path)
            _build(dataset, config, path)
        with open(path / _META, encoding="utf-8") as f:
            num_docs = int(json.load(f)["num_docs"])
        searcher = _lucene_searcher_class()(str(path / "index"))
        searcher.set_bm25(config.k1, config.b)
        return cls(searcher, num_docs, config, path, cache_hit)

    def retrieve(self, queries: Queries, k: int) -> Run:
        """Top-``k`` (capped at the corpus size) per query from Lucene, re-ordered as trec_eval orders ties."""
        queries, k = retrieve_args(queries, k)
        qids = list(queries)
        k = min(k, self.num_docs)
        if self.config.threads > 1 and qids:
            hits = self.searcher.batch_search(
                [queries[q].text for q in qids], qids, k=k, threads=self.config.threads
            )
        else:
            bar = tqdm(qids, desc="pyserini search", unit="q", disable=not self.config.show_progress)
            hits = {q: self.searcher.search(queries[q].text, k=k) for q in bar}
        return {q: sort_ranking([(h.docid, float(h.score)) for h in hits.get(q, [])]) for q in qids}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": to_dict(self.config),
            "cache_path": str(self.cache_path),
            "cache_hit": self.cache_hit,
            "num_docs": self.num_docs,
            "pyserini_version": _pyserini_version(),
        }


def _write_collection(dataset: Dataset, config: PyseriniConfig, folder: Path) -> int:
    """Write the corpus as an Anserini JsonCollection (``id``, ``contents``); returns the document count."""
    folder.mkdir(parents=True)
    seen: set[str] = set()
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for doc in tqdm(dataset.iter_corpus(), desc="pyserini collection", unit="doc",
                        disable=not config.show_progress):
            if doc.id in seen:
                raise DataFormatError(dataset.corpus_path, None, f"duplicate document id {doc.id!r}")
            seen.add(doc.id)
            contents = doc.full_text() if config.include_title else doc.text
            f.write(json.dumps({"id": doc.id, "contents": contents}, ensure_ascii=False) + "\n")
    if not seen:
        raise DataFormatError(dataset.corpus_path, None, "empty corpus: no documents found")
    return len(seen)


def _build(dataset: Dataset, config: PyseriniConfig, path: Path) -> None:
    """Index the corpus with pyserini's Lucene indexer in a temporary folder, then rename it into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        num_docs = _write_collection(dataset, config, tmp / "collection")
        cmd = [
            sys.executable, "-m", "pyserini.index.lucene",
            "--collection", "JsonCollection",
            "--input", str(tmp / "collection"),
            "--index", str(tmp / "index"),
            "--generator", "DefaultLuceneDocumentGenerator",
            "--threads", str(config.threads),
        ]
        log.info("indexing %d documents with Lucene: %s", num_docs, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "index").is_dir():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise RerankError(f"pyserini indexing of {dataset.corpus_path} failed (exit {proc.returncode}):\n{tail}")
        shutil.rmtree(tmp / "collection")
        write_json(
            {"corpus": str(dataset.corpus_path), "corpus_sha256": dataset.corpus_hash, "num_docs": num_docs,
             "index": config.index_key()},
            tmp / _META,
        )
        if not publish_dir(tmp, path, _META):
            log.info("pyserini index %s was written concurrently; keeping that copy", path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
