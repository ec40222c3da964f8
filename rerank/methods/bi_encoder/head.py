"""bi-encoder reranking: score = <E(query), E(document)> (or their cosine) with the dense retriever's encoder.

Queries and documents are embedded with :class:`~rerank.retrieval.dense.BiEncoder` (the same pooling, prefixes,
maximum lengths and document text as ``--retriever dense``), so reranking a candidate list gives each candidate the
score dense retrieval over the corpus would. Within one call every distinct document is embedded once. In ``rerank
eval`` (:meth:`BiEncoderReranker.prepare_corpus`) the candidates' embeddings are read from (or written to) the
dense retriever's embedding cache of the whole corpus when that cache exists or the candidates are at least half the
corpus; otherwise only the candidates are embedded, once for the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.heads.base import Reranker, RerankerConfig, check_local_model, sigmoid
from rerank.retrieval.dense import BiEncoder, EncoderOptions, load_encoder
from rerank.types import Candidate, Query

__all__ = ["BiEncoderConfig", "BiEncoderReranker"]


@dataclass
class BiEncoderConfig(RerankerConfig, EncoderOptions):
    """Encoder options as ``--retriever dense`` has them (``None``: as the model says), the texts per forward batch,
    the similarity, and whether ``eval`` may use the corpus embedding cache."""

    batch_size: int = 64
    similarity: Literal["dot", "cosine"] = "dot"
    corpus_cache: bool = True

    def __post_init__(self) -> None:
        EncoderOptions.__post_init__(self)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.similarity not in ("dot", "cosine"):
            raise ConfigError(f"similarity must be 'dot' or 'cosine', got {self.similarity!r}")


class BiEncoderReranker(Reranker):
    """Embedding similarity of the query and each candidate (independent per document)."""

    method = "bi-encoder"
    config_class: ClassVar[type[RerankerConfig]] = BiEncoderConfig
    independent_scores = True

    def __init__(self, config: BiEncoderConfig | None = None, encoder: BiEncoder | None = None,
                 model_name: str | None = None) -> None:
        super().__init__(config)
        if encoder is None:
            raise ValueError("bi-encoder: give an encoder (or use Reranker.load)")
        self.encoder = encoder
        self.model_name = model_name
        self.encoded_docs = 0  # documents embedded by this head (the corpus cache's are not counted)
        self._prepared: dict[str, np.ndarray] = {}  # doc text -> embedding, filled by prepare_corpus()

    @classmethod
    def from_options(cls, model: str | None = None, backend: str = "transformers", **options: Any) -> Reranker:
        cfg = from_dict(BiEncoderConfig, options, where="bi-encoder options")
        model = check_local_model(cls.method, backend, model)
        return cls(cfg, load_encoder(model, cfg), model_name=model)

    @property
    def tokenizer(self) -> Any:
        """The document side's tokenizer (what :meth:`document_token_limit` counts in)."""
        return self.encoder.doc_tokenizer

    def _embed_docs(self, texts: list[str]) -> np.ndarray:
        cfg: BiEncoderConfig = self.config  # type: ignore[assignment]
        self.encoded_docs += len(texts)
        return self.encoder.encode_numpy(texts, "doc", cfg.batch_size)

    @classmethod
    def writes_cache(cls, options: Mapping[str, Any]) -> bool:
        """The corpus embedding cache is written when the candidates are half the corpus, unless ``corpus_cache``
        is off."""
        return options.get("corpus_cache", True) is not False

    def prepare_corpus(self, dataset: Any, doc_ids: AbstractSet[str]) -> None:
        """Embed the documents ``eval`` will rerank before it starts: from the corpus embedding cache when it exists
        or the candidates are at least half the corpus (then it is written), else only the candidates. Only the
        candidates' documents are read (:meth:`~rerank.data.datasets.Dataset.documents`)."""
        from rerank.retrieval.index import cached_corpus_embeddings, doc_text, encode_corpus_cached

        cfg: BiEncoderConfig = self.config  # type: ignore[assignment]
        part = dataset.documents(doc_ids)  # from the corpus when it is in memory, else one pass keeping only these
        corpus = part.docs
        ids = sorted(corpus)
        if not ids:
            return
        emb = cached_corpus_embeddings(self.encoder, dataset.corpus_hash) if cfg.corpus_cache else None
        if emb is None and cfg.corpus_cache and 2 * len(ids) >= part.size:
            emb = encode_corpus_cached(self.encoder, dataset, True, None, batch_size=cfg.batch_size, progress=False)
        if emb is not None:
            row = {d: i for i, d in enumerate(emb.ids)}
            vectors = np.asarray(emb.embeddings[[row[d] for d in ids]])
        else:
            vectors = self._embed_docs([doc_text(corpus[d]) for d in ids])
        self._prepared = {doc_text(corpus[d]): v for d, v in zip(ids, vectors, strict=True)}

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        from rerank.retrieval.index import doc_text

        cfg: BiEncoderConfig = self.config  # type: ignore[assignment]
        q_emb = self.encoder.encode_numpy([q.text for q in queries], "query", cfg.batch_size)
        texts = [[doc_text(c.doc) for c in cs] for cs in candidate_lists]
        todo = list(dict.fromkeys(t for ts in texts for t in ts if t not in self._prepared))
        known = dict(zip(todo, self._embed_docs(todo), strict=True)) if todo else {}
        known.update(self._prepared)
        out = []
        for q, ts in zip(q_emb, texts, strict=True):
            if not ts:
                out.append([])
                continue
            d = np.stack([known[t] for t in ts])
            if cfg.similarity == "cosine":
                q = q / max(float(np.linalg.norm(q)), 1e-12)
                d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
            out.append([float(x) for x in d @ q])
        return out

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Cosine mapped linearly from [-1, 1] to [0, 1]; a dot product through the sigmoid."""
        cfg: BiEncoderConfig = self.config  # type: ignore[assignment]
        if cfg.similarity == "cosine":
            return [min(max((float(s) + 1.0) / 2.0, 0.0), 1.0) for s in scores]
        return [sigmoid(s) for s in scores]

    def document_token_limit(self, query: str) -> int | None:
        """The document side's maximum length less its prefix and special tokens."""
        tok = self.encoder.doc_tokenizer
        prefix = len(tok.encode(self.encoder.settings.doc_prefix, add_special_tokens=False))
        return max(1, self.encoder.settings.max_doc_tokens - prefix - tok.num_special_tokens_to_add())

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "config": to_dict(self.config), "model": self.model_name,
                "encoder": self.encoder.describe()}

    def close(self) -> None:
        self._prepared = {}
