"""BM25 over a dataset's corpus with ``bm25s`` (the embedded default first stage, ``--retriever bm25``).

Defaults follow Lucene/Anserini's BM25 (``method="lucene"``, k1=0.9, b=0.4) over title + text with English
(Snowball) stemming and no stopword list: on SciFact test this gives nDCG@10 0.6792 against pyserini's 0.6789
(English stopwords ``"en"`` give 0.6762, no stemming 0.6569). Documents and queries are analysed alike by
:func:`rerank.retrieval.analysis.words` (NFKC, words that keep their combining marks, CJK unigrams and bigrams), then
stopwords and the stemmer. A retrieval where most queries have no term, or match no document, logs a warning.

The index is cached on disk at ``cache_root()/bm25/<corpus sha256>-<config hash>``; it is built in a temporary
folder and renamed into place, so a cache entry is either complete or absent. Its ``rerank_meta.json`` records the
corpus, the document count, each file's size and the sha256 of ``doc_ids.json``; an entry that does not match them, or
does not load, is damaged: it is rebuilt with a warning naming it. Documents that share no term with a
query score exactly 0 under ``lucene``/``atire``/``robertson`` and are not returned, as with Lucene.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import unicodedata
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import bm25s
import numpy as np
import Stemmer
from tqdm.auto import tqdm

from rerank.config import from_dict, to_dict
from rerank.data.datasets import cache_root
from rerank.errors import ConfigError, DataFormatError
from rerank.retrieval.analysis import ANALYZER_VERSION, words
from rerank.retrieval.base import FirstStage, Queries, retrieve_args
from rerank.types import ArrayRanking, Run, sort_ranking
from rerank.utils.files import (
    DamagedEntry,
    cache_permission_error,
    checked_entry_ids,
    hash_obj,
    publish_dir,
    read_entry_json,
    temp_dir,
    write_json,
)

if TYPE_CHECKING:
    from rerank.data.datasets import Dataset

__all__ = ["BM25Config", "BM25Retriever", "index_cache_path"]

log = logging.getLogger(__name__)

# Bump when the on-disk layout written by ``_build`` changes, so old cache entries are not read.
_CACHE_FORMAT = 1
_DOC_IDS = "doc_ids.json"
_META = "rerank_meta.json"


@dataclass
class BM25Config:
    """BM25 options; ``k1``, ``b``, ``method``, ``stemmer``, ``stopwords`` and ``include_title`` key the index cache."""

    k1: float = 0.9
    b: float = 0.4
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stemmer: str | None = "english"
    stopwords: str | None = None
    include_title: bool = True
    n_threads: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.n_threads < -1:
            raise ValueError(f"n_threads must be -1 (all cores), 0 (no thread pool) or a positive count, got {self.n_threads}")
        if self.stemmer is not None and self.stemmer not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer {self.stemmer!r}; PyStemmer knows: {', '.join(Stemmer.algorithms())}")
        if self.stopwords is not None:
            bm25s.tokenization.Tokenizer(stopwords=self.stopwords)  # raises ValueError naming the supported lists

    def index_key(self) -> dict[str, Any]:
        """The options that change the index (retrieval-time options excluded), plus the versions of bm25s, of the
        text analysis and of the Unicode data it normalises with."""
        return {
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "stemmer": self.stemmer,
            "stopwords": self.stopwords,
            "include_title": self.include_title,
            "bm25s": bm25s.__version__,
            "format": _CACHE_FORMAT,
            "analyzer": ANALYZER_VERSION,
            "unicode": unicodedata.unidata_version,
        }


def index_cache_path(dataset: Dataset, config: BM25Config) -> Path:
    """Where the index of ``dataset``'s corpus under ``config`` is cached."""
    return cache_root() / "bm25" / f"{dataset.corpus_hash}-{hash_obj(config.index_key())}"


class BM25Retriever(FirstStage):
    """Lucene-style BM25 with bm25s, over title + text, cached on disk per corpus and parameters."""

    name: ClassVar[str] = "bm25"

    def __init__(
        self, model: bm25s.BM25, doc_ids: list[str], config: BM25Config, cache_path: Path, cache_hit: bool
    ) -> None:
        self.model = model
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.config = config
        self.cache_path = cache_path
        self.cache_hit = cache_hit
        self._stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        self._stopwords = frozenset(_tokenizer(config).stopwords)
        self._warned = False

    @classmethod
    def from_dataset(cls, dataset: Dataset, **options: Any) -> BM25Retriever:
        """Load the cached index of ``dataset``'s corpus, or build and cache it; ``options`` fill :class:`BM25Config`."""
        config = from_dict(BM25Config, options, where="bm25")
        path = index_cache_path(dataset, config)
        if (path / _META).is_file():
            log.info("bm25 index cache hit: loading %s", path)
            try:
                model, doc_ids = _load(path, dataset, config)
            except DamagedEntry as e:
                log.warning("bm25 index cache entry %s is damaged (%s); rebuilding it", path, e)
                _discard(path, str(e))
            else:
                return cls(model, doc_ids, config, path, cache_hit=True)
        log.info("bm25 index cache miss: building the index of %s into %s", dataset.corpus_path, path)
        model, doc_ids = _build(dataset, config, path)
        return cls(model, doc_ids, config, path, cache_hit=False)

    @property
    def num_docs(self) -> int:
        return len(self.doc_ids)

    def tokenize_queries(self, texts: list[str]) -> list[list[str]]:
        """Queries as token strings, analysed exactly as the corpus was (:func:`words`, stopwords, stemmer)."""
        out = []
        for text in texts:
            terms = [w for w in words(text) if w not in self._stopwords]
            out.append(self._stemmer.stemWords(terms) if self._stemmer else terms)
        return out

    def retrieve(self, queries: Queries, k: int) -> Run:
        """Top-``k`` (capped at the corpus size) per query, in trec_eval order; zero-score non-matches dropped."""
        queries, k = retrieve_args(queries, k)
        qids = list(queries)
        if not qids:
            return {}
        k = min(k, self.num_docs)
        tokens = self.tokenize_queries([queries[q].text for q in qids])
        docs, scores = self.model.retrieve(
            tokens, k=k, n_threads=self.config.n_threads, show_progress=self.config.show_progress
        )
        run = self._to_run(qids, docs, scores)
        self._warn_if_mostly_empty(tokens, [len(run[q]) for q in qids])
        return run

    def _warn_if_mostly_empty(self, tokens: list[list[str]], hits: list[int]) -> None:
        """Log a warning, once per retriever, when more than half the queries have no term or match no document,
        naming the counts and the likely cause."""
        n = len(tokens)
        no_term = sum(not t for t in tokens)
        no_match = sum(bool(t) and not h for t, h in zip(tokens, hits))
        if self._warned or 2 * (no_term + no_match) <= n:
            return
        self._warned = True
        c = self.config
        causes = []
        if no_term:
            causes.append(f"{no_term} have no term (none of their words has two or more characters, or all are "
                          f"stopwords={c.stopwords!r})")
        if no_match:
            causes.append(f"{no_match} share no term with the corpus (check that queries and corpus are in one "
                          f"language and that stemmer={c.stemmer!r} is that language's, e.g. stemmer=german)")
        log.warning("bm25: %d of %d queries retrieved no document: %s", no_term + no_match, n, "; ".join(causes))

    def _to_run(self, qids: list[str], docs: np.ndarray, scores: np.ndarray) -> Run:
        """bm25s' score-sorted arrays -> a Run in trec_eval order, zero-score non-matches dropped.

        bm25s sorts by score but leaves ties in arbitrary order, so each run of equal scores is put in
        :func:`sort_ranking`'s order (doc id descending); rows without ties are already in that order. Each list is an
        :class:`~rerank.types.ArrayRanking` over the arrays: no Python pair is built per hit.
        """
        keep = scores != 0
        if (scores < 0).any():  # robertson's negative idf: move zero-score non-matches behind negative matches
            order = np.argsort(np.where(keep, -scores, np.inf), axis=1, kind="stable")
            docs, scores = np.take_along_axis(docs, order, 1), np.take_along_axis(scores, order, 1)
        counts = np.count_nonzero(keep, axis=1)
        names = self.doc_ids[docs]
        # tie[i, j]: kept documents j and j + 1 of row i have equal scores
        tie = (scores[:, 1:] == scores[:, :-1]) & (np.arange(scores.shape[1] - 1) < (counts - 1)[:, None])
        if tie.any():  # each group of tied documents, all rows at once, gets its doc ids in descending order
            member = np.zeros(scores.shape, dtype=bool)
            member[:, :-1] |= tie
            member[:, 1:] |= tie
            rows, cols = np.nonzero(member)
            starts = np.ones(len(rows), dtype=bool)
            starts[1:] = ~((rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1] + 1) & tie[rows[1:], cols[1:] - 1])
            _, id_rank = np.unique(names[rows, cols], return_inverse=True)
            perm = np.lexsort((-id_rank.ravel(), np.cumsum(starts)))
            names[rows, cols] = names[rows[perm], cols[perm]]  # scores are equal within a group: they stay
        run: Run = {}
        for i, (qid, c) in enumerate(zip(qids, counts.tolist())):
            run[qid] = ArrayRanking(names[i, :c], scores[i, :c])
        return run

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": to_dict(self.config),
            "cache_path": str(self.cache_path),
            "cache_hit": self.cache_hit,
            "num_docs": self.num_docs,
            "bm25s_version": bm25s.__version__,
        }


def _load(path: Path, dataset: Dataset, config: BM25Config) -> tuple[bm25s.BM25, list[str]]:
    """The index and doc ids of the cache entry ``path``, checked against its ``rerank_meta.json`` and ``dataset``;
    :class:`DamagedEntry` when they do not match or do not load. Entries written before the meta recorded file sizes
    and the doc ids' hash are checked for what their meta has."""
    meta = read_entry_json(path / _META)
    if not isinstance(meta, dict):
        raise DamagedEntry(f"{_META} is not a JSON object")
    if meta.get("corpus_sha256", dataset.corpus_hash) != dataset.corpus_hash:
        raise DamagedEntry(f"it was built from another corpus (sha256 {meta['corpus_sha256']})")
    doc_ids = checked_entry_ids(path, meta, _DOC_IDS, "doc_ids_sha256")
    try:
        model = bm25s.BM25.load(str(path), show_progress=config.show_progress)
    except PermissionError:
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DamagedEntry(f"the index does not load: {type(e).__name__}: {e}") from None
    indexed = model.scores.get("num_docs") if isinstance(model.scores, dict) else None
    if indexed != len(doc_ids):
        raise DamagedEntry(f"the index holds {indexed} documents, {_DOC_IDS} {len(doc_ids)}")
    return model, doc_ids


def _discard(path: Path, reason: str) -> None:
    """Make the damaged cache entry ``path`` incomplete (its meta removed) so that the rebuild replaces it; a
    one-line error naming it when that is not allowed here."""
    try:
        (path / _META).unlink(missing_ok=True)
    except OSError as e:
        raise ConfigError(f"bm25 index cache entry {path} is damaged ({reason}) and cannot be rebuilt here "
                          f"({e.strerror}): delete it") from None


def _tokenize_corpus(dataset: Dataset, config: BM25Config) -> tuple[list[str], bm25s.tokenization.Tokenized]:
    """Tokenize the corpus as it streams into doc ids and ``bm25s`` token ids (int32 arrays); texts are never all held.

    Analysis matches :meth:`BM25Retriever.tokenize_queries` (:func:`words`, stopwords, stemmer); a document with no
    token is empty and the vocabulary has no ``""`` (``bm25s.BM25.index`` adds it). A duplicate id is an error naming
    both lines (the reader's); an empty corpus, or one where no document has a token, a :class:`DataFormatError`.
    """
    tokenizer = _tokenizer(config)
    doc_ids: list[str] = []

    def texts() -> Iterator[str]:
        for doc in tqdm(dataset.iter_corpus(), desc="bm25 read + tokenize corpus", unit="doc",
                        disable=not config.show_progress):
            doc_ids.append(doc.id)
            yield doc.full_text() if config.include_title else doc.text

    # an int32 array per document: 4 bytes a token instead of a list's 8-byte pointers
    ids = [array("i", d) for d in tokenizer.streaming_tokenize(texts(), update_vocab=True, allow_empty=False)]
    if not doc_ids:
        raise DataFormatError(dataset.corpus_path, None, "empty corpus: no documents found")
    if not any(ids):
        raise DataFormatError(dataset.corpus_path, None, _no_token_message(len(doc_ids), config))
    return doc_ids, bm25s.tokenization.Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict())


def _tokenizer(config: BM25Config) -> bm25s.tokenization.Tokenizer:
    """A bm25s tokenizer that splits with :func:`words` and applies ``config``'s stopwords and stemmer."""
    stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
    return bm25s.tokenization.Tokenizer(lower=False, splitter=words, stopwords=config.stopwords, stemmer=stemmer)


def _no_token_message(num_docs: int, config: BM25Config) -> str:
    """Why a corpus of ``num_docs`` documents has no BM25 token at all: the analysis settings that removed them."""
    fields = "title and text" if config.include_title else "text"
    return (f"none of its {num_docs} documents has a token after tokenisation (the {fields} NFKC-normalised and "
            f"lowercased, words of two or more characters, CJK characters, stopwords={config.stopwords!r}, "
            f"stemmer={config.stemmer!r}): BM25 cannot index it; check the corpus' text fields, or the bm25 stopwords "
            f"setting")


def _build(dataset: Dataset, config: BM25Config, path: Path) -> tuple[bm25s.BM25, list[str]]:
    """Tokenize and index the corpus, save it into a temporary folder and rename that into ``path``."""
    doc_ids, tokens = _tokenize_corpus(dataset, config)
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    model.index(tokens, show_progress=config.show_progress)
    del tokens
    try:
        tmp = temp_dir(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as e:
        raise cache_permission_error(path, e) from None
    try:
        model.save(str(tmp), show_progress=config.show_progress)
        raw = json.dumps(doc_ids).encode()
        (tmp / _DOC_IDS).write_bytes(raw)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(
            {"corpus": str(dataset.corpus_path), "corpus_sha256": dataset.corpus_hash, "num_docs": len(doc_ids),
             "index": config.index_key(), "files": sizes, "doc_ids_sha256": hashlib.sha256(raw).hexdigest()},
            tmp / _META,
        )
        if not publish_dir(tmp, path, _META):
            log.info("bm25 index %s was written concurrently; keeping that copy", path)
    except PermissionError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise cache_permission_error(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model, doc_ids
