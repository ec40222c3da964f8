"""Evaluation: trec_eval-exact metrics (via ir-measures) and the ``rerank eval`` pipeline."""

from rerank.eval.metrics import DEFAULT_MEASURES, MetricResult, evaluate_run

__all__ = ["DEFAULT_MEASURES", "MetricResult", "evaluate_run"]
