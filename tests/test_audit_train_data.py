"""Audit "train" (training data): GroupRank's recipe writes 0-10 targets and a head's 0-10 teacher scale is enforced,
BEIR-built examples say what they dropped, a recipe over a foreign run fails, and the data errors say why and where."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rerank.data_recipes.base import build, validate_row
from rerank.data_recipes.mining import _rows_queries
from rerank.errors import ConfigError, DataFormatError
from rerank.methods.grouprank.task import GroupRankTask
from rerank.methods.grouprank.teacher import label_rows
from rerank.trainers import sft
from rerank.trainers.data import DataConfig, build_from_beir, load_examples, load_training_data, teacher_scale
from rerank.trainers.sft_trainer import sft_dataset
from rerank.trainers.task import target_scores
from rerank.types import Document


def _row(qid: str, scores: list[float] | None = None, n: int = 3) -> str:
    cands = [{"id": f"d{i}", "text": f"text {i}"} for i in range(n)]
    row: dict[str, Any] = {"qid": qid, "query": "a query", "candidates": cands, "labels": [1] + [0] * (n - 1)}
    if scores is not None:
        row["teacher_scores"] = scores
    return json.dumps(row) + "\n"


# ---- 1. GroupRank's recipe -> SFT targets; the 0-10 teacher scale -------------------------------------------------


def test_grouprank_recipe_gives_varied_0_10_sft_targets_in_the_teachers_order() -> None:
    """The recipe wrote -0.5·ln(rank_p) - 0.5·ln(rank_l) (<= 0), which target_scores clipped to 0: every GroupRank
    completion was all zeros. Now the targets span 0-10 and follow the fused order."""
    n = 6
    docs = [Document(f"d{i}", f"text {i}") for i in range(n)]
    pointwise = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # d0 best
    listwise = [6.0, 4.0, 5.0, 3.0, 1.0, 2.0]  # mostly agrees, two swaps
    recipe = SimpleNamespace(config=SimpleNamespace(seed=0, group_size=n),
                             scores=lambda role, unit, d: pointwise if role == "pointwise_teacher" else listwise)
    row = {"qid": "q", "query": "a query", "candidates": [{"id": d.id, "text": d.text} for d in docs],
           "labels": [1] + [0] * (n - 1)}
    [out] = label_rows(recipe, "q", docs, row)  # type: ignore[arg-type]
    validate_row(out)
    targets = target_scores(out)
    answer = json.loads(GroupRankTask.target(targets).split("<answer>")[1].split("</answer>")[0])
    assert list(answer.values()) == targets
    by_id = dict(zip([c["id"] for c in out["candidates"]], targets, strict=True))
    assert by_id["d0"] == 10 and by_id["d5"] < 3  # both teachers' first -> 10; near last -> near 0
    assert len(set(targets)) >= 4  # varied, not constant
    rank_p = {f"d{i}": i + 1 for i in range(n)}
    rank_l = {"d0": 1, "d2": 2, "d1": 3, "d3": 4, "d5": 5, "d4": 6}
    fused = {d: -0.5 * math.log(rank_p[d]) - 0.5 * math.log(rank_l[d]) for d in rank_p}
    by_fused = sorted(fused, key=lambda d: -fused[d])
    assert [by_id[d] for d in by_fused] == sorted(by_id.values(), reverse=True)  # the order is kept
    assert all(by_id[d] == round(10 * (1 + fused[d] / math.log(n))) for d in fused)


@pytest.mark.parametrize("head", ["erank", "grouprank"])
def test_teacher_scores_outside_0_10_fail_with_file_line_for_0_10_heads(tmp_path: Path, head: str) -> None:
    """Out-of-range teacher scores were rounded and clipped silently (logits below 0 became 0)."""
    p = tmp_path / "t.jsonl"
    p.write_text(_row("q1", [3.0, 10.0, 0.0]) + _row("q2", [-1.04, -1.15, -0.55]))
    with pytest.raises(DataFormatError, match=rf"t.jsonl:2: teacher_scores\[0\] is -1.04, outside 0-10: head {head} "
                                              "trains on integer 0-10 targets"):
        load_examples(p, teacher_scale(head))
    assert len(load_examples(p, teacher_scale("cross-encoder"))) == 2  # distillation reads any scale
    assert teacher_scale("cross-encoder") is None and teacher_scale("first") is None


def test_out_of_scale_teacher_scores_fail_before_the_model_loads(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text(_row("q1", [12.0, 1.0, 0.0]))
    cfg = {"model": str(tmp_path / "no-model"), "head": "erank", "max_steps": 1, "use_cpu": True,
           "data": {"path": str(tmp_path / "t.jsonl")}}
    with pytest.raises(DataFormatError, match=r"t.jsonl:1: teacher_scores\[0\] is 12.0, outside 0-10"):
        sft(cfg, tmp_path / "out")


def test_probability_teacher_scores_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(_row("q1", [0.93, 0.41, 0.07]) + _row("q2", [0.8, 0.2, 0.0]))
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.data"):
        load_training_data(DataConfig(path=str(p)), scale=teacher_scale("erank"))
    warned = [r.getMessage() for r in caplog.records if "[0, 1]" in r.getMessage()]
    assert len(warned) == 1 and "round to 0 or 1" in warned[0] and "scale them to 0-10" in warned[0]
    caplog.clear()
    p.write_text(_row("q1", [9.3, 4.1, 0.7]))
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.data"):
        load_examples(p, teacher_scale("erank"))
    assert not caplog.records


# ---- 2. data.beir: judgements missing from the corpus ----------------------------------------------------------


def _beir(root: Path, judged: dict[str, str]) -> Path:
    """A 6-document BEIR folder whose train qrels judge ``judged`` (qid -> doc id) relevant."""
    root.mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": f"document {i} about topic {i % 3}"}) + "\n" for i in range(6))
    with open(root / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": q, "text": f"topic {q[-1]}"}) + "\n" for q in judged)
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in judged.items()))
    return root


def test_beir_judged_documents_missing_from_the_corpus_are_warned_with_counts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """3 of 4 queries were skipped silently."""
    ds = _beir(tmp_path / "partial", {"q0": "d0", "q1": "doc-1", "q2": "doc-2", "q3": "doc-3"})
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.data"):
        out = build_from_beir(str(ds), negatives_per_positive=2)
    assert [e["qid"] for e in out] == ["q0"]
    text = caplog.text
    assert "3 judged documents are not in the corpus and were ignored" in text
    assert "3 of 4 queries with a positive judgement have no positive left in the corpus and are skipped" in text


def test_beir_with_no_usable_query_fails_naming_the_qrels_file(tmp_path: Path) -> None:
    """Training stopped after the model loaded with torch's 'num_samples=0'."""
    ds = _beir(tmp_path / "mismatch", {"q0": "doc-0", "q1": "doc-1"})
    with pytest.raises(DataFormatError, match=r"qrels/train.tsv: none of the 2 queries with a positive judgement"):
        load_training_data(DataConfig(beir=str(ds)))
    cfg = {"model": str(tmp_path / "no-model"), "head": "cross-encoder", "max_length": 64, "max_steps": 1,
           "use_cpu": True, "data": {"beir": str(ds)}}
    with pytest.raises(DataFormatError, match="qrels/train.tsv"):
        sft(cfg, tmp_path / "out")


# ---- 3. a recipe's first_stage.run over another dataset ----------------------------------------------------------


def _hn(ds: Path, run: Path) -> dict[str, Any]:
    return {"recipe": "hard_negatives", "source": {"dataset": str(ds)}, "first_stage": {"run": str(run), "depth": 10},
            "num_negatives": 2}


def test_recipe_run_sharing_no_query_id_fails_like_eval(tmp_path: Path) -> None:
    """0 rows and exit 0 before."""
    ds = _beir(tmp_path / "ds", {"q0": "d0", "q1": "d1"})
    run = tmp_path / "other.trec"
    run.write_text("x1 Q0 d0 1 3.0 r\nx1 Q0 d1 2 2.0 r\n")
    with pytest.raises(ConfigError, match=r"first_stage.run .*other.trec shares no query id with the 2 train queries "
                                          r"of dataset ds .*is it a run over another dataset\?"):
        build(_hn(ds, run), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_recipe_run_unknown_documents_warn_and_an_empty_build_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = _beir(tmp_path / "ds", {"q0": "d0", "q1": "d1"})
    run = tmp_path / "run.trec"
    run.write_text("q0 Q0 d0 1 5.0 r\nq0 Q0 zz1 2 4.0 r\nq0 Q0 d3 3 3.0 r\nq1 Q0 d1 1 5.0 r\nq1 Q0 d4 2 4.0 r\n")
    with caplog.at_level(logging.WARNING, logger="rerank.data_recipes.mining"):
        manifest = build(_hn(ds, run), tmp_path / "ok", progress=False)
    assert manifest["counts"]["rows"] == 2
    assert "1 of its 5 document ids within first_stage.depth 10" in caplog.text and "zz1" in caplog.text

    unknown = tmp_path / "unknown.trec"
    unknown.write_text("q0 Q0 zz1 1 5.0 r\nq0 Q0 zz2 2 4.0 r\nq1 Q0 zz3 1 5.0 r\n")
    with pytest.raises(ConfigError, match=r"recipe hard_negatives wrote no row from its 2 units: the first stage "
                                          r"ranks no document of the corpus"):
        build(_hn(ds, unknown), tmp_path / "empty", progress=False)
    assert not (tmp_path / "empty").exists()  # nothing half-built to --resume


# ---- 4. errors that say why and where -----------------------------------------------------------------------------


def test_no_sft_rows_says_why_and_names_the_data() -> None:
    task = SimpleNamespace(method="first", cfg=SimpleNamespace(window=4), sft_rows=lambda e: [])
    examples = [{"qid": "q1", "candidates": [{"id": "a"}]}, {"qid": "q2", "candidates": [{"id": "b"}]}]
    with pytest.raises(ConfigError, match=r"no SFT rows from data.path single.jsonl: each of its 2 queries has fewer "
                                          r"than 2 candidates, and head first trains on windows of 2 to 4"):
        sft_dataset(task, examples, "data.path single.jsonl")


def test_no_sft_rows_fails_before_the_model_loads(tmp_path: Path, tiny_llm_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import rerank.trainers.sft_trainer as st

    def no_model(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(st, "load_causal_lm", no_model)
    (tmp_path / "single.jsonl").write_text(_row("q1", n=1) + _row("q2", n=1))
    cfg = {"model": str(tiny_llm_dir), "head": "first", "window": 4, "max_steps": 1, "use_cpu": True,
           "data": {"path": str(tmp_path / "single.jsonl")}}
    with pytest.raises(ConfigError, match=r"no SFT rows from data.path .*single.jsonl: each of its 2 queries"):
        sft(cfg, tmp_path / "out")


def test_beir_folder_as_data_path_points_to_data_beir(tmp_path: Path) -> None:
    """It gave the datasets library's 'neither a Dataset directory nor a DatasetDict directory'."""
    ds = _beir(tmp_path / "my-data", {"q0": "d0"})
    with pytest.raises(ConfigError, match=r"data.path .*my-data is a BEIR dataset folder \(it holds corpus.jsonl and "
                                          r"queries.jsonl\), not training rows: build the examples from it with "
                                          r"data.beir"):
        load_examples(ds)


def test_duplicate_qid_in_source_queries_names_line_and_qid(tmp_path: Path) -> None:
    """It said 'duplicate qids' with no line or qid."""
    p = tmp_path / "dupqid.jsonl"
    p.write_text(_row("q1") + _row("q1"))
    with pytest.raises(DataFormatError, match=r"dupqid.jsonl:2: duplicate qid 'q1' \(first at line 1\)"):
        _rows_queries(str(p), None)
