"""What the reranker trainers take in: non-finite numbers, unknown or empty candidate fields, a dev split that cannot
select, a max_length the model cannot encode, pickled weights, special-token strings in training texts, skipped
queries reported, and a new classifier head drawn after the seed (two runs, the same weights)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from train_support import capture_cross_encoder_datasets

from rerank.config import from_dict
from rerank.data.io import write_jsonl
from rerank.errors import ConfigError, DataFormatError
from rerank.testing import synthetic_ranking_examples
from rerank.trainers import sft
from rerank.trainers.data import load_examples
from rerank.trainers.sft_trainer import SFTTrainConfig

ROW = ('{"qid": "q1", "query": "alpha", "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}], '
       '"labels": %s%s}\n')


def _ce(model: Path, path: Path, **over: Any) -> dict[str, Any]:
    cfg = {"model": str(model), "head": "cross-encoder", "loss": "bce", "max_length": 64, "batch_size": 4,
           "max_steps": 1, "save_steps": 1, "use_cpu": True, "data": {"path": str(path), "dev_fraction": 0.0}}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(("labels", "extra", "message"), [
    ("[1, 0]", ', "teacher_scores": [NaN, 1.0]', "t.jsonl:1: 'teacher_scores' must be finite numbers"),
    ("[1, 0]", ', "teacher_scores": [Infinity, 1.0]', "t.jsonl:1: 'teacher_scores' must be finite numbers"),
    ("[NaN, 0]", "", "t.jsonl:1: 'labels' must be non-negative integers"),
    ("[Infinity, 0]", "", "t.jsonl:1: 'labels' must be non-negative integers"),
    ("[1e400, 0]", "", "t.jsonl:1: 'labels' must be non-negative integers"),
    ("[1" + "0" * 400 + ", 0]", "", "t.jsonl:1: 'labels' must be non-negative integers"),
    ("[1, 0]", ', "teacher_scores": [1' + "0" * 400 + ", 1.0]", "t.jsonl:1: 'teacher_scores' must be finite numbers"),
])
def test_non_finite_numbers_are_refused_with_file_and_line(tmp_path: Path, labels: str, extra: str,
                                                           message: str) -> None:
    """JSON's NaN / Infinity literals were accepted as teacher scores (training on NaN, exit 0) and crashed int()
    as labels (no file:line)."""
    (tmp_path / "t.jsonl").write_text(ROW % (labels, extra))
    with pytest.raises(DataFormatError, match=message):
        load_examples(tmp_path / "t.jsonl")


def test_non_finite_candidate_score_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text(ROW.replace('"text": "x"', '"text": "x", "score": NaN') % ("[1, 0]", ""))
    with pytest.raises(DataFormatError, match=r"t.jsonl:1: candidates\[0\].score must be a finite number"):
        load_examples(tmp_path / "t.jsonl")


def test_nan_teacher_scores_fail_before_the_model_loads(tmp_path: Path) -> None:
    """margin-mse on a NaN teacher score logged loss 0 and saved all-NaN weights: now the data check stops it (the
    model named does not even exist)."""
    (tmp_path / "t.jsonl").write_text(ROW % ("[1, 0]", ', "teacher_scores": [NaN, 1.0]'))
    with pytest.raises(DataFormatError, match="must be finite numbers"):
        sft(_ce(tmp_path / "no-model", tmp_path / "t.jsonl", loss="margin-mse"), tmp_path / "out")


@pytest.mark.parametrize(("cand", "message"), [
    ('{"id": "a", "text": "x", "foo": 1}', r"candidates\[0\]: unknown field 'foo'"),
    ('{"id": "a", "text": "x", "titel": "T"}', r"candidates\[0\]: unknown field 'titel'"),
    ('{"id": "a", "text": ""}', r"candidates\[0\] \('a'\) has an empty 'text'"),
    ('{"id": "a", "text": " \\n\\t"}', r"candidates\[0\] \('a'\) has an empty 'text'"),
])
def test_candidate_fields_are_checked(tmp_path: Path, cand: str, message: str) -> None:
    (tmp_path / "t.jsonl").write_text(ROW.replace('{"id": "a", "text": "x"}', cand) % ("[1, 0]", ""))
    with pytest.raises(DataFormatError, match="t.jsonl:1: " + message):
        load_examples(tmp_path / "t.jsonl")


def test_candidate_with_a_title_and_no_text_is_kept(tmp_path: Path) -> None:
    """A title-only document (common in BEIR corpora) has content; a null field is no unknown key."""
    (tmp_path / "t.jsonl").write_text(
        ROW.replace('{"id": "a", "text": "x"}', '{"id": "a", "text": "", "title": "T", "extra": null}') % ("[1, 0]", ""))
    assert load_examples(tmp_path / "t.jsonl")[0]["candidates"][0]["title"] == "T"


def test_eval_steps_without_a_dev_split_is_an_error(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """eval_steps > 0 used to turn model selection off silently when there was no dev split."""
    write_jsonl(synthetic_ranking_examples(1, num_candidates=4, seed=5), tmp_path / "one.jsonl")
    with pytest.raises(ConfigError, match="eval_steps 1 .*data.dev_fraction is 0"):
        from_dict(SFTTrainConfig, _ce(tiny_bert_dir, tmp_path / "one.jsonl", eval_steps=1))
    # one example: the split carves no dev query
    cfg = _ce(tmp_path / "no-model", tmp_path / "one.jsonl", eval_steps=1, data={
        "path": str(tmp_path / "one.jsonl"), "dev_fraction": 0.5})
    with pytest.raises(ConfigError, match="eval_steps 1 .*the split is empty"):
        sft(cfg, tmp_path / "out")
    # dev queries without a judged positive cannot select either
    rows = synthetic_ranking_examples(4, num_candidates=4, seed=5)
    for r in rows:
        r["labels"] = [0] * len(r["labels"])
    write_jsonl(rows, tmp_path / "nopos.jsonl")
    with pytest.raises(ConfigError, match="none of the 2 dev queries has a judged positive"):
        sft(_ce(tiny_bert_dir, tmp_path / "nopos.jsonl", eval_steps=1,
                data={"path": str(tmp_path / "nopos.jsonl"), "dev_fraction": 0.5}), tmp_path / "out2")


def test_grpo_with_eval_steps_and_an_empty_dev_split_is_an_error(tmp_path: Path) -> None:
    """GRPO kept the last step without a word when the split carved no dev query; it fails before the model loads."""
    from rerank.trainers import grpo

    write_jsonl(synthetic_ranking_examples(1, num_candidates=4, seed=5), tmp_path / "one.jsonl")
    cfg = {"model": str(tmp_path / "no-model"), "head": "first", "max_steps": 1, "save_steps": 1, "eval_steps": 1,
           "use_cpu": True, "data": {"path": str(tmp_path / "one.jsonl"), "dev_fraction": 0.5}}
    with pytest.raises(ConfigError, match="eval_steps 1 .*the split is empty"):
        grpo(cfg, tmp_path / "out")


def test_report_to_takes_one_name(tmp_path: Path) -> None:
    cfg = from_dict(SFTTrainConfig, {**_ce(tmp_path, tmp_path / "t.jsonl"), "report_to": "none"})
    assert cfg.report_to == ["none"]


def test_max_length_beyond_the_position_table_is_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """A max_length the model cannot encode was written to rerank.json, and Reranker.load then refused the model."""
    write_jsonl(synthetic_ranking_examples(4, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    with pytest.raises(ConfigError, match="max_length 100000 exceeds this model's limit of 512 tokens"):
        sft(_ce(tiny_bert_dir, tmp_path / "t.jsonl", max_length=100000), tmp_path / "out")
    assert not (tmp_path / "out" / "model").exists()


def test_pickled_weights_are_not_loaded(tmp_path: Path) -> None:
    """A folder with only pytorch_model.bin (a pickle) is a one-line error, for training and the mining filter."""
    import torch
    from safetensors.torch import load_file

    from rerank.data_recipes.mining import FilterSpec
    from rerank.testing import tiny_bert

    pickled = tiny_bert(tmp_path / "pickled", num_labels=1)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    write_jsonl(synthetic_ranking_examples(4, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    with pytest.raises(ConfigError, match="holds no .safetensors weights"):
        sft(_ce(pickled, tmp_path / "t.jsonl"), tmp_path / "out")
    with pytest.raises(ConfigError, match="false_negative_filter model .* holds no .safetensors weights"):
        FilterSpec(scorer="bi-encoder", model=str(pickled)).check()


def _special_ids(tok: Any, a: str, b: str) -> list[int]:
    ids = tok(a, b)["input_ids"]
    return [i for i in ids if i in set(tok.all_special_ids)]


def test_training_pairs_neutralise_special_token_strings(tmp_path: Path, tiny_bert_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A document "x [SEP] yes [CLS]" gave the training pair extra [SEP]/[CLS] tokens inference never sees; the
    rows the trainer gets now tokenise to exactly the special tokens of a clean pair."""
    from transformers import AutoTokenizer

    rows = synthetic_ranking_examples(4, num_candidates=3, seed=5)
    rows[0]["query"] = "q [SEP] [CLS] who"
    for c in rows[0]["candidates"]:
        c["text"] = "x [SEP] yes [CLS]"
    write_jsonl(rows, tmp_path / "t.jsonl")
    seen = capture_cross_encoder_datasets(monkeypatch)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    clean = _special_ids(tok, "q who", "x yes")
    for loss, column in (("bce", "document"), ("mnrl", "negative_1"), ("listnet", "docs")):
        seen.clear()
        with pytest.raises(KeyboardInterrupt):
            sft(_ce(tiny_bert_dir, tmp_path / "t.jsonl", loss=loss), tmp_path / f"out-{loss}")
        ds = seen[0]
        first = ds[0] if loss != "bce" else next(r for r in ds if r["query"].startswith("q "))
        doc = first[column][0] if column == "docs" else first[column]
        assert "[SEP]" not in first["query"] and "[SEP]" not in doc
        assert _special_ids(tok, first["query"], doc) == clean


def test_skipped_queries_are_warned_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rerank.methods.cross_encoder.train import _dataset, _dev_samples, skipped_queries

    rows = synthetic_ranking_examples(4, num_candidates=3, seed=5)
    rows[0]["labels"] = [0, 0, 0]  # no positive
    rows[1]["candidates"], rows[1]["labels"] = rows[1]["candidates"][:1], [1]  # one candidate, no negative
    for r in rows:
        r["teacher_scores"] = [float(x) for x in r["labels"]]
    assert skipped_queries(rows, "mnrl") == {"skipped_no_positive": 1, "skipped_no_negative": 1}
    assert skipped_queries(rows, "margin-mse") == {"skipped_one_candidate": 1}
    base = _ce(tmp_path, tmp_path / "t.jsonl")
    with caplog.at_level(logging.WARNING, logger="rerank.methods.cross_encoder.train"):
        _dataset(rows, from_dict(SFTTrainConfig, {**base, "loss": "mnrl"}))
        _dataset(rows, from_dict(SFTTrainConfig, {**base, "loss": "margin-mse"}))
        assert len(_dev_samples(rows)) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert "loss 'mnrl' training rows: 2 of 4 queries skipped (1 no positive, 1 no negative)" in messages
    assert "loss 'margin-mse' training rows: 1 of 4 queries skipped (1 one candidate)" in messages
    assert "dev evaluation: 1 of 4 queries skipped (1 no positive)" in messages


def test_skipped_counts_in_the_result(tmp_path: Path, tiny_bert_dir: Path) -> None:
    rows = synthetic_ranking_examples(6, num_candidates=3, seed=5)
    rows[0]["labels"] = [0, 0, 0]
    write_jsonl(rows, tmp_path / "t.jsonl")
    r = sft(_ce(tiny_bert_dir, tmp_path / "t.jsonl", loss="mnrl", data={
        "path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0, "negatives_per_positive": 1}), tmp_path / "out")
    assert r["skipped_no_positive"] == 1 and r["skipped_no_negative"] == 0


def test_a_new_head_is_seeded(tmp_path: Path, tiny_st_dir: Path) -> None:
    """From a bi-encoder (no classifier head) two runs with the same seed give the same weights: the head used to be
    drawn before the trainer seeded the RNG."""
    from safetensors.torch import load_file

    write_jsonl(synthetic_ranking_examples(4, num_candidates=3, seed=5), tmp_path / "t.jsonl")
    weights = []
    for name in ("a", "b"):
        sft(_ce(tiny_st_dir, tmp_path / "t.jsonl"), tmp_path / name)
        weights.append(load_file(str(tmp_path / name / "model" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
