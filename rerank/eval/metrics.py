"""trec_eval-exact metrics through ir-measures (pytrec_eval backend).

Conventions, stated once so reports can say them:

* Measures are named in ir-measures' (``nDCG@10``) or trec_eval's (``ndcg_cut_10``, ``recip_rank``, ``map``) spelling.
* Keys are ir-measures' canonical names (``nDCG@10``, ``RR@10``, ``R@100``, ``AP``, ``P@10``, ``Judged@10``). With a
  relevance level (TREC DL: binary measures at grade >= 2) binary measures are named as ir-measures prints them,
  e.g. ``AP(rel=2)``; nDCG always uses the graded judgements.
* Every query in the qrels is evaluated; a qrels query absent from the run scores 0 on every measure (trec_eval
  ``-c``). Run queries without judgements are ignored. Ties are broken by doc id, as trec_eval does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import ir_measures

from rerank.errors import ConfigError
from rerank.types import Qrels, Run, sort_ranking

__all__ = ["DEFAULT_MEASURES", "MetricResult", "evaluate_run", "parse_measures"]

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "AP", "P@10", "Judged@10")
BINARY_MEASURES = {"AP", "R", "RR", "P", "SetP", "SetR", "SetF", "Success", "Rprec", "NumRelRet", "BPM"}


@dataclass
class MetricResult:
    """Aggregate (mean) and per-query values, plus which qrels queries the run lacked."""

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int
    missing_queries: list[str] = field(default_factory=list)


def _parse_one(name: str, rel_level: int) -> list[ir_measures.Measure]:
    """An ir-measures name (``nDCG@10``), else a trec_eval name (``ndcg_cut_10``, ``ndcg_cut.10,20``, ``recip_rank``,
    ``map``, ``P_10``, ``recall_100``), which may stand for several measures."""
    try:
        m = ir_measures.parse_measure(name)
    except (ValueError, NameError, SyntaxError, TypeError):
        try:
            found = list(ir_measures.parse_trec_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError, KeyError):
            raise ConfigError(
                f"unknown measure {name!r}: give an ir-measures name (nDCG@10, RR@10, AP, R@100, P@10) or a trec_eval "
                f"one (ndcg_cut_10, recip_rank, map, recall_100, P_10)"
            ) from None
        # trec_eval's -l applies to every binary measure, including those its parser pins to rel=1 (num_rel_ret)
        return [x(rel=rel_level) if rel_level > 1 and x.params.get("rel") == 1 else _binary(x, rel_level)
                for x in found]
    return [_binary(m, rel_level)]


def _binary(m: ir_measures.Measure, rel_level: int) -> ir_measures.Measure:
    if rel_level > 1 and m.NAME in BINARY_MEASURES and "rel" in m.SUPPORTED_PARAMS and "rel" not in m.params:
        return m(rel=rel_level)
    return m


def parse_measures(names: Sequence[str], rel_level: int = 1) -> list[tuple[str, ir_measures.Measure]]:
    """Parse measure names (ir-measures or trec_eval spelling) into (canonical ir-measures name, measure), without
    repeats; binary measures get ``rel=rel_level`` when it is above 1."""
    out: dict[str, ir_measures.Measure] = {}
    for name in names:
        for m in _parse_one(name, rel_level):
            out.setdefault(str(m), m)
    return list(out.items())


def evaluate_run(
    run: Run,
    qrels: Qrels,
    measures: Sequence[str] = DEFAULT_MEASURES,
    rel_level: int = 1,
) -> MetricResult:
    """Score ``run`` against ``qrels``; the mean is over all qrels queries (missing ones count 0)."""
    parsed = parse_measures(measures, rel_level)
    by_measure = {m: name for name, m in parsed}
    qids = sorted(qrels)
    per_query: dict[str, dict[str, float]] = {q: {name: 0.0 for name, _ in parsed} for q in qids}
    # dict-of-dicts is pytrec_eval's native form (~2x faster than lists of tuples). Scores are replaced by trec_eval's
    # rank order: ir-measures' RR@k and Judged@k providers break ties by doc id ascending, unlike trec_eval, so no
    # measure may see a tie.
    qrels_dict = {q: {d: int(g) for d, g in qrels[q].items()} for q in qids}
    run_dict = {
        q: {d: float(-rank) for rank, (d, _) in enumerate(sort_ranking(run[q]))} for q in qids if run.get(q)
    }
    if run_dict:
        for metric in ir_measures.iter_calc([m for _, m in parsed], qrels_dict, run_dict):
            per_query[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    n = len(qids)
    aggregate = {name: (sum(per_query[q][name] for q in qids) / n if n else 0.0) for name, _ in parsed}
    missing = [q for q in qids if not run.get(q)]
    return MetricResult(aggregate=aggregate, per_query=per_query, num_queries=n, missing_queries=missing)
