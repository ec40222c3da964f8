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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rerank.config import changed_options
from rerank.errors import ConfigError
from rerank.retrieval.base import FirstStage, Queries, build_retriever, progress_options, retrieve_args
from rerank.retrieval.dense import DenseConfig, DenseRetriever, searchable_queries
from rerank.types import Run, sort_ranking
from rerank.utils.scores import minmax_normalize

__all__ = ["HybridConfig", "HybridRetriever", "check_depth", "interpolate_fuse", "minmax_normalize", "rrf_fuse"]

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


def check_depth(depth: Any, k: int) -> None:
    """Refuse a hybrid ``depth`` below the retrieval depth ``k``: each side retrieves at least ``k`` candidates, so it
    would change nothing (one line naming both and what to do)."""
    if isinstance(depth, int) and not isinstance(depth, bool) and depth < k:
        raise ConfigError(f"retriever option depth={depth} is below the {k} documents retrieved (rerank eval: "
                          f"--depth): each side of the hybrid retrieves at least {k} before fusion, so it would change "
                          f"nothing; give depth >= {k} to fuse deeper lists, or drop it")


@dataclass
class HybridConfig(DenseConfig):
    """Dense options plus the fusion and the sparse retriever (``sparse`` is a registered retriever name).
    ``depth``: how many candidates each side retrieves before fusion, at least the ``k`` asked for (unset: ``k``); one
    below ``k`` would change nothing and is refused. ``progress: false`` also turns off a built-in sparse retriever's
    bars unless ``sparse_options`` sets ``show_progress``."""

    fusion: Literal["rrf", "interpolate"] = "rrf"
    rrf_k: int = 60
    alpha: float = 0.5
    depth: int | None = None
    sparse: str = "bm25"
    sparse_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        unused = "alpha" if self.fusion == "rrf" else "rrf_k"  # each fusion reads only its own parameter
        if changed_options(self, (unused,)):
            other = "interpolate" if self.fusion == "rrf" else "rrf"
            raise ConfigError(f"{unused}={getattr(self, unused)} applies to fusion: {other}, not {self.fusion}: set "
                              f"fusion: {other}, or drop it")


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
        # progress=False holds for both sides unless the sparse options set their own
        sparse = build_retriever(cfg.sparse, dataset, **progress_options(cfg.sparse, cfg.sparse_options, cfg.progress))
        return cls(sparse, DenseRetriever.from_config(dataset, dense_cfg), cfg)

    def retrieve(self, queries: Queries, k: int) -> Run:
        """Top-``k`` of the fused runs per query, each side retrieving ``depth`` (>= ``k``, else a one-line
        :class:`ConfigError`) or ``k``; an empty or whitespace-only query gets ``[]`` (as with BM25), and one holding a
        lone UTF-16 surrogate is a ``ValueError`` before either side retrieves."""
        queries, k = retrieve_args(queries, k)
        check_depth(self.config.depth, k)
        asked = {q: queries[q] for q in searchable_queries(queries)}
        depth = self.config.depth or k
        sparse_run = self.sparse.retrieve(asked, depth)
        dense_run = self.dense.retrieve(asked, depth)
        if self.config.fusion == "rrf":
            fused = rrf_fuse([sparse_run, dense_run], self.config.rrf_k, k)
        else:
            fused = interpolate_fuse(dense_run, sparse_run, self.config.alpha, k)
        fused.update((q, []) for q in queries if q not in asked)
        return fused

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
