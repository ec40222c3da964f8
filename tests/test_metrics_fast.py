"""evaluate_run's pytrec_eval + numpy path gives ir-measures' values on random runs (ties, any order, short lists)."""

from __future__ import annotations

import random

import ir_measures
import pytest

from rerank.eval.metrics import evaluate_run, parse_measures
from rerank.types import sort_ranking

MEASURES = ("nDCG@10", "RR@10", "R@100", "AP", "P@10", "Judged@10", "nDCG", "RR", "RR@3", "AP@5", "Judged@3", "Rprec",
            "recall_5", "P@3", "Judged@1")


def _random(seed: int, n_queries: int = 200) -> tuple[dict, dict]:
    rng = random.Random(seed)
    run, qrels = {}, {}
    for q in range(n_queries):
        pool = [f"d{rng.randrange(400)}" for _ in range(rng.choice([1, 5, 12, 40, 150]))]
        docs = list(dict.fromkeys(pool))
        levels = rng.choice([3, 20, 10_000])  # few score values: many ties, also across the top-k boundary
        pairs = [(d, float(rng.randrange(levels)) / 7) for d in docs]
        rng.shuffle(pairs)
        if q % 2:  # in trec_eval order, as the runs we read and produce are
            pairs = sort_ranking(pairs)
        if q % 7:
            run[f"q{q}"] = pairs
        if q % 11:
            judged = rng.sample(docs, min(len(docs), rng.randrange(8))) + [f"d{rng.randrange(400)}" for _ in range(3)]
            qrels[f"q{q}"] = {d: rng.choice([-1, 0, 0, 1, 2, 3]) for d in judged}
    qrels["q_empty"] = {}
    run["q_unjudged"] = [("d1", 1.0)]
    return run, qrels


def _reference(run: dict, qrels: dict, rel_level: int) -> dict[str, dict[str, float]]:
    """The former implementation: everything through ir-measures, scores replaced by the trec_eval rank."""
    parsed = parse_measures(MEASURES, rel_level)
    out = {q: {name: 0.0 for name, _ in parsed} for q in qrels}
    ranked = {q: {d: float(-r) for r, (d, _) in enumerate(sort_ranking(run[q]))} for q in qrels if run.get(q)}
    names = {m: name for name, m in parsed}
    for metric in ir_measures.iter_calc([m for _, m in parsed], qrels, ranked):
        out[metric.query_id][names[metric.measure]] = float(metric.value)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rel_level", [1, 2])
def test_matches_ir_measures_on_random_runs(seed: int, rel_level: int) -> None:
    run, qrels = _random(seed)
    result = evaluate_run(run, qrels, MEASURES, rel_level)
    expected = _reference(run, qrels, rel_level)
    assert result.per_query.keys() == expected.keys()
    for q, row in expected.items():
        for name, value in row.items():
            assert result.per_query[q][name] == pytest.approx(value, abs=1e-12), (q, name)
    assert any(0 < v["Judged@10"] < 1 for v in result.per_query.values())  # the random data exercises the measures
