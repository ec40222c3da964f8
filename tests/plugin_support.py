"""A user module for the plugin tests: heads and a first stage written as a user's own package would write them
(a length-ranking head and a subclass of it, a subclass of a method's head, a class that is no head, a first stage
ranking short documents first), and the BEIR folder they rank."""

from __future__ import annotations

from pathlib import Path

from rerank.data.io import write_jsonl, write_qrels, write_run

USER_MODULE = '''
from rerank.heads.base import Reranker, RerankerConfig
from rerank.methods.yes_no.head import YesNoReranker
from rerank.retrieval.base import FirstStage, retrieve_args


class LongFirst(Reranker):
    method = "test-a7-long"
    config_class = RerankerConfig

    def score_candidates(self, query, candidates):
        return [float(len(c.doc.text)) for c in candidates]


class WorkerHead(LongFirst):
    method = "test-a7-workers"


class KeepsYesNo(YesNoReranker):
    pass


class NotAHead:
    method = "test-a7-not"


class ShortFirstRetriever(FirstStage):
    name = "test-a7-short"

    def __init__(self, docs):
        self.docs = docs

    @classmethod
    def from_dataset(cls, dataset, **options):
        return cls({d.id: d.text for d in dataset.iter_corpus()})

    def retrieve(self, queries, k):
        queries, k = retrieve_args(queries, k)
        ranked = sorted(self.docs, key=lambda d: (len(self.docs[d]), d))[:k]
        return {q: [(d, float(-i)) for i, d in enumerate(ranked)] for q in queries}
'''


def write_length_beir(root: Path, n_docs: int, n_queries: int, run: bool = False) -> Path:
    """A BEIR folder at ``root`` whose documents ``d0``.. grow one character each, the longest judged relevant to
    every query (and, with ``run``, a first-stage ``run.trec`` ranking them in id order); returns ``root``."""
    last = f"d{n_docs - 1}"
    write_jsonl([{"_id": f"d{i}", "title": "", "text": "x" * (i + 1)} for i in range(n_docs)], root / "corpus.jsonl")
    write_jsonl([{"_id": f"q{i}", "text": f"query {i}"} for i in range(n_queries)], root / "queries.jsonl")
    write_qrels({f"q{i}": {last: 1} for i in range(n_queries)}, root / "qrels" / "test.tsv", beir=True)
    if run:
        write_run({f"q{i}": [(f"d{j}", 10.0 - j) for j in range(n_docs)] for i in range(n_queries)},
                  root / "run.trec")
    return root
