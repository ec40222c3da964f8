"""Registered datasets: where they come from, how they are judged, and published reference figures.

A name given to ``--dataset`` is looked up here (exact name, never a substring). A local folder whose name equals a
registered name inherits its judging conventions (e.g. ``dl19-bm25-top100`` uses relevance >= 2 for binary
measures).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BEIR_BASE_URL", "DATASETS", "IGNORE_IDENTICAL_IDS", "DatasetInfo", "get_dataset_info"]


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

# TREC DL 2020 passage and MS MARCO passage dev (small) in the same local reranking form as dl19-bm25-top100:
# queries.jsonl, qrels/{split}.tsv, the candidate pool as corpus.jsonl and the Anserini BM25 run bm25_top100.trec.
# Topics/qrels: castorini/anserini-tools (topics.dl20.txt + qrels.dl20-passage.txt; topics/qrels
# msmarco-passage.dev-subset). BM25 (k1=0.9 b=0.4) references: pyserini 2CR msmarco-v1-passage.
_register(
    DatasetInfo(
        name="dl20-bm25-top100",
        splits=("test",),
        rel_level=2,
        num_test_queries=54,
        reference={"bm25_ndcg@10": 0.4796},  # Anserini docs/regressions/regressions-dl20-passage.md, BM25 default
        description="TREC DL 2020 passage, Anserini BM25 top-100 candidates with text (reranking form).",
    )
)
_register(
    DatasetInfo(
        name="msmarco-dev-bm25-top100",
        splits=("dev",),
        rel_level=1,
        num_test_queries=6980,
        reference={"bm25_rr@10": 0.1840},  # Anserini's MS MARCO passage regressions: BM25 MRR@10 0.184
        description="MS MARCO passage dev (small, 6,980 queries, MRR@10), Anserini BM25 top-100 (reranking form).",
    )
)

# The public BEIR datasets (beir-cellar/beir README, "Available Datasets": every row marked public, with its zip and
# md5). Doc counts: lines of each corpus.jsonl (TensorFlow Datasets' BEIR catalogue); test queries: BEIR's table.
# References: pyserini's BEIR two-click-reproduction figures (pyserini/2cr/beir.yaml, Lucene BM25 k1=0.9 b=0.4,
# --remove-query), nDCG@10 on the test split: "flat" indexes title+text as one field, "multifield" searches both.
BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

# name: (md5, splits, docs, test queries, BM25 flat, BM25 multifield)
_BEIR: dict[str, tuple[str, tuple[str, ...], int, int | None, float | None, float | None]] = {
    "msmarco": ("444067daf65d982533ea17ebd59501e4", ("train", "dev", "test"), 8841823, None, None, None),
    "trec-covid": ("ce62140cb23feb9becf6270d0d1fe6d1", ("test",), 171332, 50, 0.5947, 0.6559),
    "nfcorpus": ("a89dba18a62ef92f7d323ec890a0d38d", ("train", "dev", "test"), 3633, 323, 0.3218, 0.3254),
    "nq": ("d4d3d2e48787a744b6f6e691ff534307", ("train", "test"), 2681468, 3452, 0.3055, 0.3285),
    "hotpotqa": ("f412724f78b0d91183a0e86805e16114", ("train", "dev", "test"), 5233329, 7405, 0.6330, 0.6027),
    "fiqa": ("17918ed23cd04fb15047f73e6c3bd9d9", ("train", "dev", "test"), 57638, 648, 0.2361, 0.2361),
    "arguana": ("8ad3e3c2a5867cdced806d6503f29b99", ("test",), 8674, 1406, 0.3970, 0.4142),
    "webis-touche2020": ("46f650ba5a527fc69e0a6521c5a23563", ("test",), 382545, 49, 0.4422, 0.3673),
    "cqadupstack": ("4e41456d7df8ee7760a7f866133bda78", ("test",), 457199, 13145, None, None),
    "quora": ("18fb154900ba42a600f84b839c173167", ("dev", "test"), 522931, 10000, 0.7886, 0.7886),
    "dbpedia-entity": ("c2a39eb420a3164af735795df012ac2c", ("dev", "test"), 4635922, 400, 0.3180, 0.3128),
    "scidocs": ("38121350fc3a4d2f48850f6aff52e4a9", ("test",), 25657, 1000, 0.1490, 0.1581),
    "fever": ("5a818580227bfb4b35bb6fa46d9b6c03", ("train", "dev", "test"), 5416568, 6666, 0.6513, 0.7530),
    "climate-fever": ("8b66f0a9126c521bae2bde127b4dc99d", ("test",), 5416593, 1535, 0.1651, 0.2129),
    "scifact": ("5f7d1de60b170fc8027bb7898e2efca1", ("train", "test"), 5183, 300, 0.6789, 0.6647),
}
# BEIR's evaluation drops a retrieved doc whose id equals the query id; it matters where queries are corpus docs.
IGNORE_IDENTICAL_IDS = {"arguana", "quora"}
_NOTES = {
    "msmarco": "BEIR evaluates MS MARCO on its dev split (6,980 queries; use --split dev).",
    "cqadupstack": "12 StackExchange forums, each a BEIR folder inside the zip: use --dataset cqadupstack/FORUM "
    "(BEIR reports the mean over the forums).",
}
for _name, (_md5, _splits, _docs, _nq, _flat, _multi) in _BEIR.items():
    _ref = {"bm25_flat_ndcg@10": _flat, "bm25_multifield_ndcg@10": _multi} if _flat is not None else {}
    _register(
        DatasetInfo(
            name=_name,
            splits=_splits,
            url=f"{BEIR_BASE_URL}/{_name}.zip",
            md5=_md5,
            ignore_identical_ids=_name in IGNORE_IDENTICAL_IDS,
            num_docs=_docs,
            num_test_queries=_nq,
            reference={k: v for k, v in _ref.items() if v is not None},
            description=" ".join(("BEIR (public download).", _NOTES.get(_name, ""))).strip(),
        )
    )

# The CQADupStack forums, downloaded together in cqadupstack.zip (counts: TFDS catalogue; figures: pyserini 2CR).
# forum: (docs, test queries, BM25 flat, BM25 multifield)
_CQA: dict[str, tuple[int, int, float, float]] = {
    "android": (22998, 699, 0.3801, 0.3709),
    "english": (40221, 1570, 0.3453, 0.3321),
    "gaming": (45301, 1595, 0.4822, 0.4418),
    "gis": (37637, 885, 0.2901, 0.2904),
    "mathematica": (16705, 804, 0.2015, 0.2046),
    "physics": (38316, 1039, 0.3214, 0.3248),
    "programmers": (32176, 876, 0.2802, 0.2963),
    "stats": (42269, 652, 0.2711, 0.2790),
    "tex": (68184, 2906, 0.2244, 0.2086),
    "unix": (47382, 1072, 0.2749, 0.2788),
    "webmasters": (17405, 506, 0.3059, 0.3008),
    "wordpress": (48605, 541, 0.2483, 0.2562),
}
for _forum, (_docs, _nq, _flat, _multi) in _CQA.items():
    _register(
        DatasetInfo(
            name=f"cqadupstack/{_forum}",
            splits=("test",),
            url=f"{BEIR_BASE_URL}/cqadupstack.zip",
            md5=_BEIR["cqadupstack"][0],
            num_docs=_docs,
            num_test_queries=_nq,
            reference={"bm25_flat_ndcg@10": _flat, "bm25_multifield_ndcg@10": _multi},
            description=f"BEIR CQADupStack, {_forum} forum (a folder of cqadupstack.zip).",
        )
    )


def get_dataset_info(name: str) -> DatasetInfo | None:
    """The registered entry for ``name``, or ``None`` if unregistered."""
    return DATASETS.get(name)
