"""Registered datasets: where they come from, how they are judged, and published reference figures.

A name given to ``--dataset`` is looked up here (exact name, never a substring). A local folder whose name equals a
registered name inherits its judging conventions (e.g. ``dl19-bm25-top100`` uses relevance >= 2 for binary
measures).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DatasetInfo", "DATASETS", "get_dataset_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset."""

    name: str
    splits: tuple[str, ...] = ("test",)
    url: str | None = None
    md5: str | None = None
    rel_level: int = 1
    ignore_identical_ids: bool = False
    num_docs: int | None = None
    num_test_queries: int | None = None
    reference: dict[str, float] = field(default_factory=dict)
    description: str = ""


DATASETS: dict[str, DatasetInfo] = {}


def _register(info: DatasetInfo) -> None:
    DATASETS[info.name] = info


_register(
    DatasetInfo(
        name="dl19-bm25-top100",
        splits=("test",),
        rel_level=2,
        num_docs=4297,
        num_test_queries=43,
        reference={"bm25_ndcg@10": 0.5058},
        description="TREC DL 2019 passage, Anserini BM25 top-100 candidates with text (reranking form).",
    )
)


def get_dataset_info(name: str) -> DatasetInfo | None:
    """The registered entry for ``name``, or ``None`` if unregistered."""
    return DATASETS.get(name)
