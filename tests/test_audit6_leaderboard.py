"""Audit s43 (evalres findings 5 and 6): the leaderboard says when a row's run lacks judged queries (per-cell count in
leaderboard.json, "n/N missing" and a note in the Markdown), marks rows significantly above and below the baseline
differently, states the test and whether p-values are corrected, and offers a Holm / Bonferroni correction over the
rows compared with one column's baseline."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.eval import leaderboard as lb
from rerank.eval.leaderboard import LeaderboardConfig, SignificanceSpec, adjust_p_values, load_config, render_markdown


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        q, d, g = line.split("\t")
        out.setdefault(q, {})[d] = int(g)
    return out


def _write_run(path: Path, ranking: dict[str, list[str]]) -> None:
    path.write_text("".join(f"{q} Q0 {d} {i} {100 - i} x\n" for q, docs in ranking.items()
                            for i, d in enumerate(docs, 1)), encoding="utf-8")


def _board(tmp_path: Path, tiny_beir_dir: Path, correction: str | None = None) -> tuple[list[Any], Path, list[str]]:
    """Four precomputed runs over the tiny test queries: a baseline (grade 1 first, grade 2 second), a better one (2
    then 1), a worse one (both below 8 unjudged documents) and the better one without its first two queries."""
    data = tmp_path / "tiny"
    shutil.copytree(tiny_beir_dir, data)
    qrels = _qrels(data / "qrels" / "test.tsv")
    fill = [f"d{i:03d}" for i in range(200)]
    runs: dict[str, dict[str, list[str]]] = {"base": {}, "good": {}, "bad": {}}
    for q, judged in qrels.items():
        by = {g: d for d, g in judged.items()}
        other = [d for d in fill if d not in judged][:8]
        runs["base"][q] = [by[1], by[2], *other]
        runs["good"][q] = [by[2], by[1], *other]
        runs["bad"][q] = [*other, by[2], by[1]]
    queries = sorted(qrels)
    runs["partial"] = {q: runs["good"][q] for q in queries[2:]}
    for name, ranking in runs.items():
        _write_run(data / f"{name}.trec", ranking)
    cfg: dict[str, Any] = {
        "name": "audit6", "published": False, "significance": {"samples": 2000},
        "columns": [{"label": "tiny", "dataset": str(data), "top_k": 10,
                     "runs": {n: f"{n}.trec" for n in runs}}],
        "rows": [{"name": "Base", "retriever": "base"}, {"name": "Good", "retriever": "good"},
                 {"name": "Bad", "retriever": "bad"}, {"name": "Partial", "retriever": "partial"}]}
    if correction is not None:
        cfg["significance"]["correction"] = correction
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    res = tmp_path / "res"
    return ["leaderboard", "--config", path, "--results-dir", res, "--output-md", res / "lb.md"], res, queries


def _cell_text(md: str, row: str) -> str:
    line = next(x for x in md.splitlines() if x.startswith("| ") and f" | {row} | " in x)
    return line.split(" | ")[6]


def test_missing_queries_are_counted_and_named_and_better_and_worse_are_marked_apart(
        tmp_path: Path, tiny_beir_dir: Path, run_cli) -> None:
    """Finding 5: the Partial row lacked 2 judged queries (scored 0) and neither table said so; finding 6: Bad (worse
    than Base on every query) carried the same † as Good (better on every query)."""
    args, res, queries = _board(tmp_path, tiny_beir_dir)
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    board = json.loads((res / "leaderboard.json").read_text())
    n = len(queries)
    assert board["cells"]["Partial"]["tiny"]["missing_queries"] == 2
    assert board["cells"]["Good"]["tiny"]["missing_queries"] == 0
    rows = {r["name"]: r["columns"]["tiny"] for r in board["rows"]}
    assert rows["Partial"]["missing_queries"] == 2 and rows["Partial"]["num_queries"] == n
    assert rows["Good"]["direction"] == "above" and rows["Good"]["significant"] and rows["Good"]["mean_difference"] > 0
    assert rows["Bad"]["direction"] == "below" and rows["Bad"]["significant"] and rows["Bad"]["mean_difference"] < 0
    assert rows["Base"]["direction"] is None and rows["Base"]["p_vs_baseline"] is None
    assert rows["Good"]["p_adjusted"] == rows["Good"]["p_vs_baseline"]  # correction: none
    assert board["significance"]["correction"] == "none"
    note = f"'Partial' x 'tiny': 2 of {n} judged queries are absent from the run and count as 0"
    assert any(x.startswith(note) for x in board["notes"]) and note in out
    md = (res / "lb.md").read_text()
    assert _cell_text(md, "Good").endswith(" ▲") and _cell_text(md, "Bad").endswith(" ▼")
    assert _cell_text(md, "Base") == f"{rows['Base']['value']:.4f}"
    assert f"(2/{n} missing)" in _cell_text(md, "Partial") and "missing" not in _cell_text(md, "Good")
    assert note in md and "(n/N missing): n of the column's N judged queries are absent" in md
    assert "†" not in md
    assert ("▲ / ▼: significantly above / below (better / worse than) the first row that has the column" in md
            and "paired two-sided randomization test" in md and "p < 0.05" in md
            and "p-values not corrected for multiple comparisons" in md)


def test_a_cached_cell_without_the_missing_count_still_loads(tmp_path: Path, tiny_beir_dir: Path, run_cli) -> None:
    """A metrics.json written before ``missing_queries`` was recorded is reused; its count reads as unknown (null)."""
    args, res, _ = _board(tmp_path, tiny_beir_dir)
    assert run_cli(*args)[0] == 0
    file = res / "Partial" / "tiny" / "metrics.json"
    metrics = json.loads(file.read_text())
    del metrics["missing_queries"]
    file.write_text(json.dumps(metrics))
    rc, out, err = run_cli(*args, "--only-cached")
    assert rc == 0 and "0 cells run, 4 reused" in out, err
    board = json.loads((res / "leaderboard.json").read_text())
    assert board["cells"]["Partial"]["tiny"]["missing_queries"] is None
    assert "missing" not in _cell_text((res / "lb.md").read_text(), "Partial")


def test_an_older_leaderboard_json_renders_with_direction_marks() -> None:
    """A report without ``direction``/``p_adjusted``/``correction`` (written before them) marks by value vs baseline."""
    def cell(value: float, p: float | None) -> dict[str, Any]:
        return {"value": value, "p_vs_baseline": p, "baseline": "A", "significant": p is not None and p < 0.05,
                "top_k": None}

    rows = [{"name": n, "first_stage": "bm25", "reranker": None, "backend": None, "model": None, "top_k": None,
             "columns": {"c": cell(v, p)}, "average": v, "queries_per_s": None, "note": ""}
            for n, v, p in (("A", 0.5, None), ("B", 0.6, 0.01), ("C", 0.4, 0.01), ("D", 0.45, 0.2))]
    report = {"name": "old", "measure": "nDCG@10", "columns": [{"label": "c", "dataset": "d", "split": "test",
                                                                "max_queries": None, "top_k": 10, "runs": {},
                                                                "note": ""}],
              "average_over": ["c"], "rows": rows, "cells": {}, "pairwise": {},
              "significance": {"p": 0.05, "samples": 10, "seed": 0}, "published": [], "notes": [],
              "generated": "now", "machine": "here"}
    md = render_markdown(report, "lb.yaml", None)
    assert [_cell_text(md, n) for n in "ABCD"] == ["0.5000", "0.6000 ▲", "0.4000 ▼", "0.4500"]
    assert "p-values not corrected for multiple comparisons" in md


def test_adjust_p_values_against_hand_computed_values() -> None:
    """Holm and Bonferroni, worked by hand: m = 4, p = (0.5, 0.01, 0.5, 0.2); Holm sorted 0.01·4, 0.2·3, 0.5·2
    capped at 1, then the running maximum."""
    p = [0.5, 0.01, 0.5, 0.2]
    assert adjust_p_values(p, "none") == p
    assert adjust_p_values(p, "bonferroni") == pytest.approx([1.0, 0.04, 1.0, 0.8])
    assert adjust_p_values(p, "holm") == pytest.approx([1.0, 0.04, 1.0, 0.6])
    assert adjust_p_values([0.01, 0.04, 0.03, 0.005], "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_p_values([], "holm") == []
    with pytest.raises(ConfigError, match="unknown p-value correction 'bh'; known: none, holm, bonferroni"):
        adjust_p_values(p, "bh")


def _holm_rejects(p: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure itself: reject the k-th smallest while p_(k) <= alpha / (m - k), stop at the first
    that is not."""
    m = len(p)
    rejected = [False] * m
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if p[i] > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


def test_holm_adjusted_p_values_agree_with_the_step_down_procedure() -> None:
    """An adjusted p is the smallest level at which the procedure rejects: adjusted <= alpha iff rejected at alpha."""
    rng = random.Random(0)
    for _ in range(200):
        p = [rng.random() ** 3 for _ in range(rng.randint(1, 8))]
        adjusted = adjust_p_values(p, "holm")
        bonferroni = adjust_p_values(p, "bonferroni")
        for alpha in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5):
            assert [a <= alpha for a in adjusted] == _holm_rejects(p, alpha)
            assert [b <= alpha for b in bonferroni] == [x <= alpha / len(p) for x in p]


_P = {(0.6, "a"): 0.01, (0.7, "a"): 0.02, (0.3, "a"): 0.03, (0.6, "b"): 0.02}


def _assemble(correction: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Column a: rows A (0.6), B (0.7), C (0.3) against Base (0.5), raw p 0.01, 0.02, 0.03; column b: A alone, p 0.02."""
    def fake_test(a: list[float], b: list[float], samples: int, seed: int) -> float:
        if a[0] == 0.5:  # a pair with the baseline, which comes first
            return _P[(b[0], "b" if len(b) == 3 else "a")]
        return 0.5

    monkeypatch.setattr(lb, "randomization_test", fake_test)
    cfg = from_dict(LeaderboardConfig, {
        "name": "t", "published": False, "significance": {"correction": correction},
        "columns": [{"label": "a", "dataset": "a"}, {"label": "b", "dataset": "b"}],
        "rows": [{"name": "Base", "retriever": "x"}, {"name": "A", "retriever": "x"},
                 {"name": "B", "retriever": "x", "columns": ["a"]}, {"name": "C", "retriever": "x", "columns": ["a"]}]})

    def cell(v: float, nq: int) -> dict[str, Any]:
        return {"value": v, "per_query": {f"q{i}": v for i in range(nq)}, "num_queries": nq, "seconds": 1.0,
                "queries_per_s": 1.0, "parse": None, "reused": True, "dir": "d", "load_avg_1min": None,
                "workers": 1}

    cells = {"Base": {"a": cell(0.5, 4), "b": cell(0.5, 3)}, "A": {"a": cell(0.6, 4), "b": cell(0.6, 3)},
             "B": {"a": cell(0.7, 4)}, "C": {"a": cell(0.3, 4)}}
    return lb._assemble(cfg, cells, [])


@pytest.mark.parametrize(("correction", "adjusted", "marks", "words"), [
    ("none", [0.01, 0.02, 0.03], ["0.6000 ▲", "0.7000 ▲", "0.3000 ▼"], "p-values not corrected"),
    ("holm", [0.03, 0.04, 0.04], ["0.6000 ▲", "0.7000 ▲", "0.3000 ▼"],
     "p-values Holm-corrected over the rows compared with that baseline in the column"),
    ("bonferroni", [0.03, 0.06, 0.09], ["0.6000 ▲", "0.7000", "0.3000"],
     "p-values Bonferroni-corrected over the rows compared with that baseline in the column"),
])
def test_the_correction_is_over_one_columns_rows_against_its_baseline(
        monkeypatch: pytest.MonkeyPatch, correction: str, adjusted: list[float], marks: list[str], words: str) -> None:
    """Column a's family is A, B, C (m = 3; Holm by hand: 0.01·3, 0.02·2, max(0.04, 0.03·1)); column b's is A alone
    (m = 1), so A keeps p = 0.02 there whatever the correction. The marks follow the corrected p."""
    report = _assemble(correction, monkeypatch)
    rows = {r["name"]: r["columns"] for r in report["rows"]}
    assert [rows[n]["a"]["p_vs_baseline"] for n in "ABC"] == [0.01, 0.02, 0.03]
    assert [rows[n]["a"]["p_adjusted"] for n in "ABC"] == pytest.approx(adjusted)
    assert rows["A"]["b"]["p_adjusted"] == pytest.approx(0.02) and rows["A"]["b"]["direction"] == "above"
    assert report["significance"]["correction"] == correction
    json.dumps(report)  # as leaderboard.json is written
    pairs = {(x["a"], x["b"]): x for x in report["pairwise"]["a"]}
    assert pairs[("Base", "B")]["p_adjusted"] == pytest.approx(adjusted[1]) and pairs[("A", "B")]["p_adjusted"] is None
    md = render_markdown(report, "lb.yaml", None)
    assert [_cell_text(md, n) for n in "ABC"] == marks
    assert words in md
    header = next(x for x in md.splitlines() if x.startswith("| column | row A |"))
    if correction == "none":
        assert header == "| column | row A | row B | queries | p |" and "(uncorrected)" in md
    else:
        name = correction.capitalize()
        assert header == f"| column | row A | row B | queries | p | p ({name}) |"
        assert f"| a | Base | B | 4 | 0.0200 | {adjusted[1]:.4f} |" in md and "| a | A | B | 4 | 0.5000 | — |" in md


def test_an_unknown_correction_is_refused_in_one_line(tmp_path: Path, tiny_beir_dir: Path, run_cli) -> None:
    """``significance: {correction: bh}`` was "unknown key 'correction'"; now a named choice, refused otherwise."""
    args, res, _ = _board(tmp_path, tiny_beir_dir, correction="bh")
    with pytest.raises(ConfigError, match=r"significance\.correction: must be one of \['none', 'holm', 'bonferroni'\]"):
        load_config(args[2])
    rc, _, err = run_cli(*args)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "'bh'" in err
    assert not (res / "leaderboard.json").exists()
    with pytest.raises(ValueError, match="significance.correction must be one of none, holm, bonferroni"):
        SignificanceSpec(correction="bh")  # type: ignore[arg-type]


def test_a_holm_board_records_and_states_its_correction(tmp_path: Path, tiny_beir_dir: Path, run_cli) -> None:
    """End to end: the correction is in leaderboard.json and the legend, and p_adjusted is Holm's over the 3 rows."""
    args, res, _ = _board(tmp_path, tiny_beir_dir, correction="holm")
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    board = json.loads((res / "leaderboard.json").read_text())
    assert board["significance"]["correction"] == "holm"
    cols = [next(r for r in board["rows"] if r["name"] == n)["columns"]["tiny"] for n in ("Good", "Bad", "Partial")]
    assert [c["p_adjusted"] for c in cols] == pytest.approx(adjust_p_values([c["p_vs_baseline"] for c in cols], "holm"))
    assert "p-values Holm-corrected" in (res / "lb.md").read_text()
