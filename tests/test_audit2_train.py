"""Audit "llmtrain" (SFT -> GRPO of the LLM heads): --overwrite never removes a run's inputs, rerank.json's
``reasoning`` is what the model was trained to do, ERank's pooled reward sees whole queries, reward bugs and reward
values fail loudly, GRPO keeps the SFT's prompt options, and the data and key errors name what is wrong."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict
from rerank.errors import ConfigError, DataFormatError
from rerank.methods.record import RECORD_FILE, record_payload
from rerank.prompts import load_template
from rerank.testing.tokenizer import build_tokenizer
from rerank.trainers.base import load_train_config
from rerank.trainers.grpo_trainer import GRPOTrainConfig, reward_function
from rerank.trainers.sft_trainer import SFTTrainConfig
from rerank.trainers.task import build_task


def _rows_file(path: Path, n_queries: int, n_cands: int | list[int], **extra: Any) -> Path:
    counts = n_cands if isinstance(n_cands, list) else [n_cands] * n_queries
    with open(path, "w", encoding="utf-8") as f:
        for q, n in enumerate(counts):
            cands = [{"id": f"d{j}", "text": f"apples text {j}"} for j in range(n)]
            f.write(json.dumps({"qid": f"q{q}", "query": "apples", "candidates": cands,
                                "labels": [1] + [0] * (n - 1), **extra}) + "\n")
    return path


def _model_folder(path: Path, method: str | None = None, options: dict[str, Any] | None = None,
                  tokenizer: bool = False) -> Path:
    """A stand-in model folder: a config.json, optionally a tokenizer and a rerank.json (no weights)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    if tokenizer:
        build_tokenizer(path)
    if method is not None:
        payload = record_payload(method, "reranker", options or {}, "sft", "base")
        (path / RECORD_FILE).write_text(json.dumps(payload), encoding="utf-8")
    return path


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the model fail loudly: a check that must come first is proven to."""
    import rerank.trainers.grpo_trainer as gt

    def load(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(gt, "load_causal_lm", load)


# ---- 1. --overwrite never removes what the run reads ----------------------------------------------------------------


def test_overwrite_refuses_to_remove_the_starting_model(tmp_path: Path, run_cli: Any) -> None:
    out = tmp_path / "run"
    model = _model_folder(out / "model")
    (model / "model.safetensors").write_bytes(b"weights")
    data = _rows_file(tmp_path / "rows.jsonl", 2, 3)
    code, _, err = run_cli("train", "grpo", "--output", out, "--set", f"model={model}", "--set", f"data.path={data}",
                           "--set", "head=erank", "--set", "batch_size=30", "--overwrite")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "--overwrite would remove" in line and str(out / "model") in line and "model" in line
    assert (model / "model.safetensors").is_file()  # nothing was removed


def test_overwrite_refuses_to_remove_the_data(tmp_path: Path) -> None:
    from rerank.trainers import grpo

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    data = _rows_file(out / "checkpoints" / "rows.jsonl", 2, 3)
    with pytest.raises(ConfigError, match=r"--overwrite would remove .*checkpoints, which holds the run's data.path"):
        grpo({"model": str(tmp_path / "m"), "head": "erank", "data": {"path": str(data)}, "batch_size": 30}, out,
             overwrite=True)
    assert data.is_file()


# ---- 2. rerank.json's reasoning follows the template ---------------------------------------------------------------


def test_grpo_from_a_reasoning_sft_records_reasoning_true(tmp_path: Path) -> None:
    template = load_template("erank_reasoning").to_dict()
    sft = _model_folder(tmp_path / "sft", "erank", {"template": template, "reasoning": False, "max_doc_tokens": 40,
                                                    "max_query_tokens": 32})
    cfg = from_dict(GRPOTrainConfig, {"model": str(sft), "head": "erank", "data": {"path": "x"}, "batch_size": 30})
    task = build_task("erank", build_tokenizer(), cfg)
    assert task.record_options()["reasoning"] is True and task.template.name == "erank_reasoning"


def test_sft_reasoning_record_follows_the_template() -> None:
    tok = build_tokenizer()
    cfg = from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"path": "x"},
                                     "template": "erank_reasoning"})
    assert build_task("erank", tok, cfg).record_options()["reasoning"] is True
    cfg = from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"path": "x"}})
    assert build_task("erank", tok, cfg).record_options()["reasoning"] is False
    with pytest.raises(ConfigError, match="reasoning: true trains <think>…</think> targets, but template 'erank'"):
        from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"path": "x"}, "reasoning": True,
                                   "template": "erank"})


# ---- 3. ERank's pooled reward sees whole queries --------------------------------------------------------------------


def test_whole_queries_fixed_counts_refused_with_the_batch_size_that_works() -> None:
    from rerank.trainers.grpo_trainer import check_whole_queries

    rows = [{"qid": f"q{q}"} for q in range(4) for _ in range(6)]
    with pytest.raises(ConfigError, match=r"cuts \d of 4 queries: set batch_size to a multiple of 6 x 5 = 30"):
        check_whole_queries(rows, 2, 5, "erank", "batch_size 10 x grad_accum 1")
    check_whole_queries(rows, 6, 5, "erank", "batch_size 30 x grad_accum 1")  # one query a batch
    check_whole_queries(rows, 12, 5, "erank", "batch_size 60 x grad_accum 1")


def test_whole_queries_varying_counts_warn_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    from rerank.trainers.grpo_trainer import check_whole_queries

    rows = [{"qid": f"q{q}"} for q, n in enumerate([3, 4, 3, 5]) for _ in range(n)]
    with caplog.at_level(logging.WARNING):
        check_whole_queries(rows, 6, 5, "erank", "batch_size 30 x grad_accum 1")
    assert "have 3 to 5 prompts" in caplog.text and "2 of 4 queries are cut" in caplog.text


def test_erank_grpo_refuses_a_batch_that_cuts_queries_before_the_model_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.trainers import grpo

    _no_model(monkeypatch)
    model = _model_folder(tmp_path / "m", tokenizer=True)
    data = _rows_file(tmp_path / "rows.jsonl", 3, 6)
    with pytest.raises(ConfigError, match="set batch_size to a multiple of 6 x 5 = 30"):
        grpo({"model": str(model), "head": "erank", "data": {"path": str(data)}, "batch_size": 10}, tmp_path / "o")


def test_shipped_erank_grpo_example_keeps_whole_queries(repo_root: Path, tiny_beir_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.trainers import grpo

    _no_model(monkeypatch)
    model = _model_folder(tmp_path / "m", tokenizer=True)
    cfg = load_train_config(GRPOTrainConfig, repo_root / "configs/examples/tiny-erank-grpo.yaml",
                            [f"model={model}", f"data.beir={tiny_beir_dir}"])
    with pytest.raises(AssertionError, match="the model was loaded"):  # every check passed
        grpo(cfg, tmp_path / "o")


# ---- 4. reward bugs and reward values -------------------------------------------------------------------------------


def test_a_reward_that_raises_stops_the_run_naming_the_exception() -> None:
    task = build_task("erank", build_tokenizer(), from_dict(GRPOTrainConfig, {
        "model": "m", "head": "erank", "data": {"path": "x"}, "batch_size": 30}))

    def broken(*args: Any) -> list[float]:
        raise ZeroDivisionError("float division by zero")

    task.rewards = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="reward of head 'erank' raised ZeroDivisionError"):
        reward_function(task, [])(["p"], ["c"])


@pytest.mark.parametrize(("rewards", "match"), [
    ({"erank_scale": 0}, "rewards.erank_scale .* must be > 0"),
    ({"erank_scale": -10}, "rewards.erank_scale"),
    ({"rel_threshold": -1}, "rewards.rel_threshold .* must be >= 1"),
    ({"bad_format_penalty": 5}, "rewards.bad_format_penalty is a penalty"),
    ({"erank_negative_above_positive_penalty": 1}, "rewards.erank_negative_above_positive_penalty is a penalty"),
])
def test_erank_reward_values_are_range_checked(rewards: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(GRPOTrainConfig, {"model": "m", "head": "erank", "data": {"path": "x"}, "batch_size": 30,
                                    "rewards": rewards})


@pytest.mark.parametrize(("rewards", "match"), [
    ({"rbo_p": 0}, r"rewards.rbo_p .* must be in \(0, 1\)"),
    ({"rbo_p": 1.0}, "rewards.rbo_p"),
    ({"k": 0}, "rewards.k .* must be >= 1"),
    ({"rbo_weight": -0.1}, "rewards.rbo_weight must be >= 0"),
    ({"repair_incomplete": True, "missing_penalty": -1}, "rewards.missing_penalty .* must be >= 0"),
])
def test_listwise_reward_values_are_range_checked(rewards: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(GRPOTrainConfig, {"model": "m", "head": "first", "data": {"path": "x"}, "batch_size": 8,
                                    "window": 4, "rewards": rewards})


# ---- 5. GRPO of a window head without a 2-candidate query -----------------------------------------------------------


@pytest.mark.parametrize("head", ["first", "listwise", "grouprank"])
def test_grpo_window_head_without_two_candidates_is_one_line_before_the_model(
        head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.trainers import grpo

    _no_model(monkeypatch)
    model = _model_folder(tmp_path / "m", tokenizer=True)
    data = _rows_file(tmp_path / "one.jsonl", 3, 1)
    with pytest.raises(ConfigError, match=r"no GRPO rows from data.path .*one.jsonl: each of its 3 queries has fewer "
                                          r"than 2 candidates"):
        grpo({"model": str(model), "head": head, "data": {"path": str(data)}, "window": 4, "batch_size": 8},
             tmp_path / "o")


def test_queries_without_rows_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    from rerank.trainers import grpo

    _no_model(monkeypatch)
    model = _model_folder(tmp_path / "m", tokenizer=True)
    data = _rows_file(tmp_path / "mixed.jsonl", 3, [1, 4, 1])
    with caplog.at_level(logging.WARNING), pytest.raises(AssertionError, match="the model was loaded"):
        grpo({"model": str(model), "head": "first", "data": {"path": str(data)}, "window": 4, "batch_size": 8},
             tmp_path / "o")
    assert "2 of 3 queries of data.path" in caplog.text and "fewer than 2 candidates" in caplog.text


# ---- 6. wrongly typed row fields ------------------------------------------------------------------------------------


def _one_row(tmp_path: Path, **change: Any) -> Path:
    row: dict[str, Any] = {"qid": "q1", "query": "a", "candidates": [{"id": "d1", "text": "x"}, {"id": "d2",
                           "text": "y"}], "labels": [1, 0]}
    row.update(change)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("change", "match"), [
    ({"teacher_ranking": 5}, "rows.jsonl:1: 'teacher_ranking' must be a list of candidate ids"),
    ({"teacher_ranking": {"d2": 1, "d1": 0}}, "'teacher_ranking' must be a list of candidate ids .*dict"),
    ({"teacher_ranking": "d1"}, "'teacher_ranking' must be a list of candidate ids .*str"),
    ({"teacher_ranking": [["d1"], "d2"]}, "'teacher_ranking' must be a list of candidate ids"),
    ({"qid": {"x": 1}}, r"rows.jsonl:1: 'qid' must be a string \(or an integer\), got dict"),
    ({"candidates": [{"id": {"a": 1}, "text": "x"}, {"id": "d2", "text": "y"}]},
     r"rows.jsonl:1: candidates\[0\].id must be a string"),
    ({"candidates": [{"id": [1], "text": "x"}, {"id": "d2", "text": "y"}]}, r"candidates\[0\].id must be a string"),
    ({"candidates": [{"id": "d1", "text": "x", "title": ["x", "y"]}, {"id": "d2", "text": "y"}]},
     r"rows.jsonl:1: candidates\[0\].title must be a string, got list"),
    ({"candidates": [{"id": "d1", "text": "x"}, {"id": "d1", "text": "y"}]},
     r"duplicate candidate id 'd1' \(candidates\[0\] and candidates\[1\]\)"),
])
def test_wrongly_typed_row_fields_name_the_line_and_field(tmp_path: Path, change: dict[str, Any],
                                                           match: str) -> None:
    from rerank.trainers.data import load_examples

    with pytest.raises(DataFormatError, match=match):
        load_examples(_one_row(tmp_path, **change))


def test_integer_ids_and_null_titles_still_load(tmp_path: Path) -> None:
    from rerank.trainers.data import load_examples

    [ex] = load_examples(_one_row(tmp_path, qid=7, candidates=[{"id": 1, "text": "x", "title": None},
                                                              {"id": "d2", "text": "y"}], teacher_ranking=["d2", 1]))
    assert ex["qid"] == "7" and ex["teacher_ranking"] == ["d2", "1"]


# ---- 7. reward options a rollout never reads ------------------------------------------------------------------------


@pytest.mark.parametrize("rewards", [{"repair_incomplete": True}, {"wrong_count_reward": -0.3},
                                     {"bad_format_penalty": -5}])
def test_plackett_luce_refuses_the_incomplete_and_unreadable_rewards(rewards: dict[str, Any]) -> None:
    name = next(iter(rewards))
    with pytest.raises(ConfigError, match=f"rewards.{name} is not read with rollout 'plackett-luce'"):
        from_dict(GRPOTrainConfig, {"model": "m", "head": "first", "data": {"path": "x"}, "batch_size": 8,
                                    "rollout": "plackett-luce", "rewards": rewards})


def test_missing_penalty_needs_repair_incomplete() -> None:
    base = {"model": "m", "head": "first", "data": {"path": "x"}, "batch_size": 8}
    with pytest.raises(ConfigError, match="rewards.missing_penalty 0.5 is read only with rewards.repair_incomplete"):
        from_dict(GRPOTrainConfig, {**base, "rewards": {"missing_penalty": 0.5}})
    cfg = from_dict(GRPOTrainConfig, {**base, "rewards": {"missing_penalty": 0.5, "repair_incomplete": True}})
    assert cfg.rewards.missing_penalty == 0.5
    with pytest.raises(ConfigError, match="rewards.repair_incomplete is not read with rollout 'plackett-luce'"):
        from_dict(GRPOTrainConfig, {**base, "rollout": "plackett-luce",
                                    "rewards": {"missing_penalty": 0.5, "repair_incomplete": True}})


# ---- 8. GRPO keeps the SFT's prompt options -------------------------------------------------------------------------


def test_grpo_inherits_the_sft_head_options(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sft = _model_folder(tmp_path / "first-sft", "first", {"window": 6, "stride": 3, "max_doc_tokens": 40,
                                                          "max_query_tokens": 24})
    base = {"model": str(sft), "head": "first", "data": {"path": "x"}, "batch_size": 8}
    cfg = from_dict(GRPOTrainConfig, base)
    assert (cfg.window, cfg.max_doc_tokens, cfg.max_query_tokens) == (6, 40, 24)
    with caplog.at_level(logging.WARNING):
        cfg = from_dict(GRPOTrainConfig, {**base, "window": 10, "max_doc_tokens": 40})
    assert (cfg.window, cfg.max_doc_tokens, cfg.max_query_tokens) == (10, 40, 24)
    assert caplog.text.count("window 10 (it was trained with window 6)") == 1 and "max_doc_tokens" not in caplog.text


def test_grpo_inherits_grouprank_group_size_and_defaults_without_a_record(tmp_path: Path) -> None:
    sft = _model_folder(tmp_path / "gr-sft", "grouprank", {"group_size": 6, "max_doc_tokens": 40})
    cfg = from_dict(GRPOTrainConfig, {"model": str(sft), "head": "grouprank", "data": {"path": "x"}, "batch_size": 8})
    assert (cfg.window, cfg.max_doc_tokens, cfg.max_query_tokens) == (6, 40, 32)
    other = from_dict(GRPOTrainConfig, {"model": str(sft), "head": "first", "data": {"path": "x"}, "batch_size": 8})
    assert (other.window, other.max_doc_tokens) == (10, 64)  # another method's record is not this head's prompt
    erank = from_dict(GRPOTrainConfig, {"model": "m", "head": "erank", "data": {"path": "x"}, "batch_size": 30})
    assert (erank.window, erank.max_doc_tokens, erank.max_query_tokens) == (10, 64, 32)


# ---- 9. the other family's key names --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "override", "use"), [
    ("grpo", "group_size=6", "window"),
    ("sft", "dataset=scifact", "data.beir"),
    ("sft", "data.dataset=scifact", "beir"),
    ("sft", "split=train", "data.split"),
    ("contrastive", "beir=scifact", "dataset"),
])
def test_the_other_familys_key_gets_did_you_mean(cls: str, override: str, use: str) -> None:
    from rerank.trainers.base import get_trainer

    config_class = get_trainer(cls).config_class
    base = ["model=m", "head=grouprank", "data.path=x"] if cls in ("sft", "grpo") else ["model=m", "dataset=d"]
    with pytest.raises(ConfigError, match=rf"--set {override}: unknown key .* did you mean '{use}'\?"):
        load_train_config(config_class, None, [*base, override])


@pytest.mark.parametrize(("cls", "override", "use"), [
    ("sft", "query_max_length=16", "max_query_tokens"),
    ("grpo", "doc_max_length=16", "max_doc_tokens"),
    ("contrastive", "query_max_length=16", "max_query_tokens"),
])
def test_the_former_token_limit_names_name_the_one_name(cls: str, override: str, use: str) -> None:
    from rerank.trainers.base import get_trainer

    config_class = get_trainer(cls).config_class
    base = ["model=m", "head=grouprank", "data.path=x"] if cls in ("sft", "grpo") else ["model=m", "dataset=d"]
    with pytest.raises(ConfigError, match=rf"^--set {override}: key '\w+' is now '{use}'"):
        load_train_config(config_class, None, [*base, override])


def test_sft_group_size_for_grouprank_names_window() -> None:
    with pytest.raises(ConfigError, match="head grouprank's group size is the key window"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=grouprank", "data.path=x", "group_size=6"])


# ---- 10. the override an error blames -------------------------------------------------------------------------------


def test_error_blames_the_dotted_key_over_a_bare_word(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("head: erank\ndata:\n  path: x\nsave_steps: 10\neval_steps: 10\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^--set data.dev_fraction=0: eval_steps 10 selects the model"):
        load_train_config(SFTTrainConfig, cfg, ["model=m", "data.dev_fraction=0"])


# ---- 11. reasoning without reasoning text; the test split -----------------------------------------------------------


def test_reasoning_targets_need_reasoning_text(caplog: pytest.LogCaptureFixture) -> None:
    cfg = from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"path": "x"}, "reasoning": True})
    task = build_task("erank", build_tokenizer(), cfg)
    ex = [{"qid": f"q{i}", "labels": [1]} for i in range(3)]
    with pytest.raises(ConfigError, match="none of the 3 examples of data.beir d .*has one"):
        task.check_sft_examples(ex, "data.beir d (split train)")
    ex[0]["reasoning"] = "because"
    with caplog.at_level(logging.WARNING):
        task.check_sft_examples(ex, "data.path x")
    assert "2 of 3 examples of data.path x have no 'reasoning' text" in caplog.text
    plain = build_task("erank", build_tokenizer(), from_dict(SFTTrainConfig, {"model": "m", "head": "erank",
                                                                              "data": {"path": "x"}}))
    plain.check_sft_examples([{"qid": "q"}], "x")  # no reasoning template: nothing to check


def test_training_refuses_the_test_split() -> None:
    with pytest.raises(ConfigError, match="data.split test is the evaluation split"):
        from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"beir": "scifact", "split": "test"}})
