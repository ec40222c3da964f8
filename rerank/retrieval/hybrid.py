"""Hybrid first stage: a sparse retriever (BM25 by default) and the dense retriever, fused per query.

Fusion rules (pure functions, usable on any runs):

* ``rrf``: score(d) = sum over runs of 1 / (k + rank(d)), rank 1-based in trec_eval order; a run that lacks d adds 0
  (Cormack et al., 2009; k = 60).
* ``interpolate``: each run's scores min-max normalised per query to [0, 1] (all-equal scores become 1), then
  alpha * dense + (1 - alpha) * sparse; a document missing from one run gets 0 for that run. An infinite score (which
  trec_eval and :func:`~rerank.data.io.read_run` accept) counts as one finite score range beyond the finite scores:
  ``-inf`` normalises to 0 and ranks below every finite score of its run, ``+inf`` to 1 and above them; scores near
  the float limits (``±1e308``) normalise without overflow. A NaN score is a ``ValueError`` naming the query and
  document.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rerank.errors import ConfigError
from rerank.retrieval.base import FirstStage, build_retriever
from rerank.retrieval.dense import DenseConfig, DenseRetriever
from rerank.types import Query, Run, sort_ranking

__all__ = ["HybridConfig", "HybridRetriever", "rrf_fuse", "interpolate_fuse", "minmax_normalize"]


def minmax_normalize(pairs: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Scores mapped to [0, 1] by (s - min) / (max - min); all-equal scores map to 1.

    ``-inf`` maps to 0 and ``+inf`` to 1, each as if one finite score range (1 when the finite scores are all equal)
    beyond the finite scores, which keep their order strictly between; a NaN score is a ``ValueError``.
    """
    if not pairs:
        return {}
    finite = [s for _, s in pairs if math.isfinite(s)]
    if len(finite) < len(pairs):
        for d, s in pairs:
            if math.isnan(s):
                raise ValueError(f"document {d!r}: score is NaN")
    below = len(finite) < len(pairs) and any(s == -math.inf for _, s in pairs)
    above = len(finite) < len(pairs) and any(s == math.inf for _, s in pairs)
    if not finite:  # only infinities: all equal (1), or -inf 0 and +inf 1
        return {d: 0.0 if below and above and s < 0 else 1.0 for d, s in pairs}
    lo, hi = min(finite), max(finite)
    span = hi - lo
    if span == math.inf:  # both near the float limits: halve before subtracting (exact but for subnormals)
        lo, hi, span, half = lo / 2, hi / 2, hi / 2 - lo / 2, 0.5
    else:
        half = 1.0
    out: dict[str, float] = {}
    for d, s in pairs:
        if s == math.inf:
            out[d] = 1.0
        elif s == -math.inf:
            out[d] = 0.0
        elif span == 0:  # all finite scores equal: 1, or between the infinities present
            out[d] = 1.0 if not above else (0.5 if below else 0.0)
        else:
            out[d] = ((s * half - lo) / span + below) / (1 + below + above)
    return out


def rrf_fuse(runs: Sequence[Run], k: int = 60, depth: int | None = None) -> Run:
    """Reciprocal-rank fusion of ``runs``; each ranked list is put in trec_eval order first, ``depth`` cuts the result."""
    if k < 0:
        raise ConfigError(f"rrf_k must be >= 0, got {k}")
    fused: Run = {}
    for q in sorted({q for run in runs for q in run}):
        acc: dict[str, float] = {}
        for run in runs:
            for rank, (d, _) in enumerate(sort_ranking(run.get(q, [])), start=1):
                acc[d] = acc.get(d, 0.0) + 1.0 / (k + rank)
        fused[q] = sort_ranking(list(acc.items()))[:depth]
    return fused


def interpolate_fuse(dense: Run, sparse: Run, alpha: float = 0.5, depth: int | None = None) -> Run:
    """``alpha * minmax(dense) + (1 - alpha) * minmax(sparse)`` per query (missing documents count 0; infinite
    scores as :func:`minmax_normalize` places them); a NaN score is a ``ValueError`` naming the query and document."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    fused: Run = {}
    for q in sorted(set(dense) | set(sparse)):
        try:
            nd, ns = minmax_normalize(dense.get(q, [])), minmax_normalize(sparse.get(q, []))
        except ValueError as e:
            raise ValueError(f"query {q!r}, {e}") from None
        docs = set(nd) | set(ns)
        fused[q] = sort_ranking([(d, alpha * nd.get(d, 0.0) + (1 - alpha) * ns.get(d, 0.0)) for d in docs])[:depth]
    return fused


@dataclass
class HybridConfig(DenseConfig):
    """Dense options plus the fusion and the sparse retriever (``sparse`` is a registered retriever name)."""

    fusion: Literal["rrf", "interpolate"] = "rrf"
    rrf_k: int = 60
    alpha: float = 0.5
    depth: int | None = None
    sparse: str = "bm25"
    sparse_options: dict[str, Any] = field(default_factory=dict)


class HybridRetriever(FirstStage):
    """Fuse a sparse first stage (BM25 by default) with the dense retriever by RRF or score interpolation."""

    name = "hybrid"

    def __init__(self, sparse: FirstStage, dense: DenseRetriever, config: HybridConfig) -> None:
        self.sparse = sparse
        self.dense = dense
        self.config = config

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> HybridRetriever:
        from rerank.config import from_dict

        cfg = from_dict(HybridConfig, options, "retriever options")
        if cfg.sparse in ("hybrid", "dense"):
            raise ConfigError(f"retriever options.sparse: {cfg.sparse!r} cannot be the sparse side of hybrid")
        if cfg.fusion == "interpolate" and not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"retriever options.alpha: must be in [0, 1], got {cfg.alpha}")
        if cfg.depth is not None and cfg.depth < 1:
            raise ConfigError("retriever options.depth: must be >= 1")
        dense_cfg = DenseConfig(**{f: getattr(cfg, f) for f in DenseConfig.__dataclass_fields__})
        sparse = build_retriever(cfg.sparse, dataset, **cfg.sparse_options)
        return cls(sparse, DenseRetriever.from_config(dataset, dense_cfg), cfg)

    def retrieve(self, queries: Mapping[str, Query], k: int) -> Run:
        depth = max(self.config.depth or k, k)
        sparse_run = self.sparse.retrieve(queries, depth)
        dense_run = self.dense.retrieve(queries, depth)
        if self.config.fusion == "rrf":
            return rrf_fuse([sparse_run, dense_run], self.config.rrf_k, k)
        return interpolate_fuse(dense_run, sparse_run, self.config.alpha, k)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fusion": self.config.fusion,
            "rrf_k": self.config.rrf_k if self.config.fusion == "rrf" else None,
            "alpha": self.config.alpha if self.config.fusion == "interpolate" else None,
            "depth": self.config.depth,
            "sparse": self.sparse.describe(),
            "dense": self.dense.describe(),
        }
