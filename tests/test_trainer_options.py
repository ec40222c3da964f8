"""No dead options in the reranker trainers: every option either changes what is trained or is refused, naming it.

GRPO reads ``max_length`` (too-long prompts dropped, as SFT drops too-long examples); the cross-encoder cuts its
queries to ``max_query_tokens`` as its inference head does and refuses ``template`` / ``max_doc_tokens``; monoT5 /
duoT5 refuse ``max_length``; the BEIR-building data options and ``negatives_per_positive`` are refused where nothing
reads them; a ``rewards`` option the head's reward does not read is refused (the per-head sets are checked against
what the rewards read); ``max_steps`` over ``epochs`` is warned of; no dev split is carved that nothing uses; GRPO
rollout options that a rollout ignores and LoRA options with LoRA off are refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from train_support import capture_cross_encoder_datasets

from rerank.config import from_dict, to_dict
from rerank.data.io import write_jsonl
from rerank.errors import ConfigError
from rerank.methods import get_method, method_names
from rerank.testing import build_tokenizer, synthetic_ranking_examples
from rerank.trainers.common import training_kwargs
from rerank.trainers.data import DataConfig, load_training_data
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.rewards import RewardConfig
from rerank.trainers.sft_trainer import SFTTrainConfig
from rerank.trainers.task import build_task

GRPO_HEADS = method_names(trains_with="grpo")


def _sft(head: str, **over: Any) -> SFTTrainConfig:
    return from_dict(SFTTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, **over})


def _grpo(head: str, **over: Any) -> GRPOTrainConfig:
    return from_dict(GRPOTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, "batch_size": 40,
                                       **over})


# --- GRPO max_length ---------------------------------------------------------------------------------------------


def test_grpo_drops_prompts_longer_than_max_length(caplog: pytest.LogCaptureFixture) -> None:
    """GRPO built its TRL config without max_length: a prompt of any length trained. Too-long prompts are dropped
    with a count; none left is an error saying what to change."""
    from rerank.trainers.grpo_trainer import fit_prompts

    tok = build_tokenizer()
    rows = [{"prompt": "a b c d e f g h i j", "k": 0}, {"prompt": "a b", "k": 1}, {"prompt": "a", "k": 2}]
    limit = len(tok("a b")["input_ids"])
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.grpo_trainer"):
        kept = fit_prompts(rows, tok, limit, "training")
    assert [r["k"] for r in kept] == [1, 2]
    assert (f"1 of 3 training prompts are longer than max_length={limit} tokens: 1 queries (1 prompts) were dropped"
            in caplog.messages)
    # one query's rows share a batch and pool their rewards (ERank): a too-long prompt drops its whole query
    pooled = [{"prompt": "a b c d e f g h i j", "qid": "q1"}, {"prompt": "a", "qid": "q1"}, {"prompt": "a", "qid": "q2"}]
    assert [r["qid"] for r in fit_prompts(pooled, tok, limit, "training")] == ["q2"]
    with pytest.raises(ConfigError, match=r"every training prompt is longer than max_length=1 tokens .* raise "
                                          "max_length"):
        fit_prompts(rows[:2], tok, 1, "training")
    assert fit_prompts(rows, tok, 10_000, "dev") == rows


def test_grpo_max_length_applies_before_the_model_loads(tmp_path: Path, tiny_llm_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer runs its prompts through max_length: with none fitting it stops before loading the model."""
    from rerank.trainers import grpo

    write_jsonl(synthetic_ranking_examples(4, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before the prompts were checked"))
    cfg = {"model": str(tiny_llm_dir), "head": "yes-no", "max_length": 8, "max_steps": 1, "save_steps": 1,
           "batch_size": 4, "num_generations": 2, "use_cpu": True, "data": {"path": str(tmp_path / "t.jsonl")}}
    with pytest.raises(ConfigError, match="every training prompt is longer than max_length=8 tokens"):
        grpo(cfg, tmp_path / "out")


# --- cross-encoder: template, max_doc_tokens, max_query_tokens -----------------------------------------------------


def test_cross_encoder_refuses_options_it_has_no_use_for() -> None:
    with pytest.raises(ConfigError, match="template is not an option of head 'cross-encoder'"):
        _sft("cross-encoder", template="no-such-template")
    with pytest.raises(ConfigError, match="max_doc_tokens is not an option of head 'cross-encoder'"):
        _sft("cross-encoder", max_doc_tokens=1)
    assert _sft("cross-encoder", max_doc_tokens=64).max_doc_tokens == 64  # the default is no choice


def test_max_query_tokens_unset_is_the_cross_encoder_heads_own() -> None:
    """Unset, the cross-encoder cuts queries where its inference head does (a 32-token cut would be new to it); the
    other heads keep the training default 32; below 1 is refused (the text would be dropped)."""
    from rerank.methods.cross_encoder.head import CrossEncoderConfig

    assert _sft("cross-encoder").max_query_tokens == CrossEncoderConfig.max_query_tokens
    assert _sft("cross-encoder", max_query_tokens=7).max_query_tokens == 7
    assert _sft("erank").max_query_tokens == 32 and _sft("monot5").max_query_tokens == 32
    with pytest.raises(ConfigError, match="max_query_tokens must be >= 1, got 0"):
        _sft("cross-encoder", max_query_tokens=0)


def test_cross_encoder_training_cuts_the_query_as_its_head_does(tmp_path: Path, tiny_bert_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """max_query_tokens was ignored by the cross-encoder's SFT (every query trained whole, inference cut it): the
    rows the trainer gets hold the query exactly as the head configured with the same option puts it in its pairs."""

    from rerank.heads.base import Reranker
    from rerank.trainers import sft

    rows = synthetic_ranking_examples(4, num_candidates=3, seed=5)
    long_query = "q [SEP] " + " ".join(f"word{i}" for i in range(40))
    for r in rows:
        r["query"] = long_query
    write_jsonl(rows, tmp_path / "t.jsonl")
    seen = capture_cross_encoder_datasets(monkeypatch)
    head = Reranker.load("cross-encoder", model=str(tiny_bert_dir), max_length=64, max_query_tokens=5)
    expected = head.query_text(long_query)  # type: ignore[attr-defined]
    assert expected != long_query and "[SEP]" not in expected
    for loss in ("bce", "mnrl", "listnet"):
        seen.clear()
        with pytest.raises(KeyboardInterrupt):
            sft({"model": str(tiny_bert_dir), "head": "cross-encoder", "loss": loss, "max_length": 64,
                 "max_query_tokens": 5, "max_steps": 1, "save_steps": 1, "use_cpu": True,
                 "data": {"path": str(tmp_path / "t.jsonl")}}, tmp_path / f"out-{loss}")
        assert {r["query"] for r in seen[0]} == {expected}, loss


# --- monoT5 / duoT5: max_length ------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["monot5", "duot5"])
def test_seq2seq_heads_refuse_max_length(head: str) -> None:
    """max_length changed nothing for monoT5 / duoT5 (their input is cut by max_query_tokens / max_doc_tokens)."""
    with pytest.raises(ConfigError, match=f"max_length is not an option of head '{head}': its input is bounded by "
                                          "max_query_tokens and max_doc_tokens"):
        _sft(head, max_length=8)
    assert _sft(head).max_length is None  # unset: no default of another head's (1024 was the LLM heads') is recorded
    with pytest.raises(ConfigError, match="max_length is not an option"):
        _sft(head, max_length=1024)


# --- data options ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("split", "dev"), ("bm25_depth", 1), ("max_candidates", 2),
                                            ("negatives", "random")])
def test_beir_options_are_refused_with_a_file(key: str, value: Any) -> None:
    """These build examples from a BEIR dataset; with data.path they did nothing."""
    with pytest.raises(ConfigError, match=f"data.{key} is an option of data.beir"):
        DataConfig(path="t.jsonl", **{key: value})
    assert getattr(DataConfig(beir="scifact", **{key: value}), key) == value


def test_negatives_per_positive_only_where_it_is_read() -> None:
    """With data.path, only the cross-encoder's mnrl / margin-mse rows and duoT5's pairs read it; with data.beir it
    sets the mining too."""
    data = {"path": "t.jsonl", "negatives_per_positive": 1}
    for head, extra in (("erank", {}), ("monot5", {}), ("cross-encoder", {"loss": "bce"}),
                        ("cross-encoder", {"loss": "listwise-kl"})):
        with pytest.raises(ConfigError, match="data.negatives_per_positive is not read by"):
            _sft(head, data=data, **extra)
    with pytest.raises(ConfigError, match="data.negatives_per_positive is not read by grpo"):
        _grpo("erank", data=data)
    for head, extra in (("duot5", {}), ("cross-encoder", {"loss": "mnrl"}), ("cross-encoder", {"loss": "margin-mse"})):
        assert _sft(head, data=data, **extra).data.negatives_per_positive == 1
    beir = {"beir": "scifact", "negatives_per_positive": 1}
    assert _sft("erank", data=beir).data.negatives_per_positive == 1
    assert _grpo("erank", data=beir).data.negatives_per_positive == 1


# --- dev_fraction ----------------------------------------------------------------------------------------------------


def test_no_dev_split_is_carved_that_nothing_uses(tmp_path: Path) -> None:
    """With the defaults (dev_fraction 0.1, eval_steps 0) a tenth of the training queries was held out and never
    read. Unset, the dev split exists only to select on; a dev_fraction without selection is refused."""
    assert _sft("erank").data.dev_fraction == 0.0
    assert _sft("erank", eval_steps=50).data.dev_fraction == 0.1
    assert _sft("erank", eval_steps=50, data={"path": "t.jsonl", "dev_fraction": 0.3}).data.dev_fraction == 0.3
    with pytest.raises(ConfigError, match="data.dev_fraction 0.2 holds queries out for model selection, but "
                                          "eval_steps is 0"):
        _sft("erank", data={"path": "t.jsonl", "dev_fraction": 0.2})
    with pytest.raises(ConfigError, match="eval_steps 50 selects the model on the dev split, but data.dev_fraction "
                                          "is 0"):
        _sft("erank", eval_steps=50, data={"path": "t.jsonl", "dev_fraction": 0.0})
    write_jsonl(synthetic_ranking_examples(10, num_candidates=3, seed=1), tmp_path / "t.jsonl")
    cfg = _sft("erank", data={"path": str(tmp_path / "t.jsonl")})
    train, dev = load_training_data(cfg.data)
    assert (len(train), dev) == (10, [])
    assert load_training_data(DataConfig(path=str(tmp_path / "t.jsonl")))[1] == []  # unset outside a trainer: none


def test_the_run_record_of_an_unset_dev_fraction_resumes(tmp_path: Path) -> None:
    """The record holds the split the run used; the same config resumes against it, and the record loads again."""
    from rerank.trainers.resume import check_same_run

    for over in ({}, {"eval_steps": 50}):
        cfg = _sft("erank", **over)
        record = {"trainer": "sft", "config": json.loads(json.dumps(to_dict(cfg)))}
        (tmp_path / "rerank_train.json").write_text(json.dumps(record))
        assert check_same_run(tmp_path, "sft", _sft("erank", **over)) == record
        assert from_dict(SFTTrainConfig, record["config"]).data.dev_fraction == cfg.data.dev_fraction


# --- epochs with max_steps -------------------------------------------------------------------------------------------


def test_epochs_with_max_steps_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """max_steps sets the schedule (transformers' rule): an epochs value beside it said nothing and did nothing."""
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.common"):
        training_kwargs(_sft("erank", max_steps=2, epochs=7.0, use_cpu=True), tmp_path, has_dev=False)
    assert caplog.messages == ["max_steps 2 sets the schedule; epochs 7.0 is not used"]
    for over in ({"max_steps": 2}, {"epochs": 7.0}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rerank.trainers.common"):
            training_kwargs(_sft("erank", use_cpu=True, **over), tmp_path, has_dev=False)
        assert caplog.messages == []


# --- GRPO rollouts and vLLM ------------------------------------------------------------------------------------------


def test_rollout_options_a_rollout_ignores_are_refused() -> None:
    """plackett-luce samples the whole permutation from the first-identifier logits / temperature: top_p and
    max_completion_length changed nothing; vllm_mode did nothing without use_vllm."""
    pl = {"rollout": "plackett-luce", "batch_size": 8}
    with pytest.raises(ConfigError, match="top_p is not read by rollout 'plackett-luce'"):
        _grpo("first", top_p=0.5, **pl)
    with pytest.raises(ConfigError, match="max_completion_length is not read by rollout 'plackett-luce'"):
        _grpo("first", max_completion_length=1, **pl)
    with pytest.raises(ConfigError, match="vllm_mode is an option of use_vllm: true"):
        _grpo("first", vllm_mode="server", batch_size=8)
    generate = _grpo("first", top_p=0.5, max_completion_length=16, batch_size=8)
    assert (generate.top_p, generate.max_completion_length) == (0.5, 16)


# --- LoRA --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("r", 8), ("alpha", 16), ("dropout", 0.1), ("target_modules", ["q_proj"])])
def test_lora_options_without_lora_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"lora.{key} is set but lora.enabled is false"):
        _sft("erank", lora={key: value})
    assert getattr(_sft("erank", lora={"enabled": True, key: value}).lora, key) == value


# --- rewards -----------------------------------------------------------------------------------------------------------

_REWARD_FIELDS = [f.name for f in dataclasses.fields(RewardConfig)]
_ODD: dict[str, Any] = {"k": 3, "rel_threshold": 2, "recall_weight": 0.7, "js_weight": 0.7, "rbo_weight": 0.7,
                        "rbo_p": 0.5, "invalid_json_penalty": -0.7, "bad_tags_penalty": -0.7,
                        "wrong_count_reward": 0.3, "repair_incomplete": True, "missing_penalty": 0.7,
                        "bad_format_penalty": -0.7, "erank_negative_above_positive_penalty": -0.7, "erank_scale": 5.0}


def _task_class(head: str) -> Any:
    from rerank.methods import resolve

    return resolve(get_method(head).task)  # type: ignore[arg-type]


def test_every_reward_option_has_an_odd_value() -> None:
    assert sorted(_ODD) == sorted(_REWARD_FIELDS)
    assert all(_ODD[f.name] != f.default for f in dataclasses.fields(RewardConfig))


@pytest.mark.parametrize("head", GRPO_HEADS)
def test_rewards_a_head_does_not_read_are_refused(head: str) -> None:
    """Every rewards option was accepted for every head, read or not (rbo_weight for ERank changed nothing)."""
    read = _task_class(head).reward_fields
    batch = {"batch_size": 40}
    assert read and read <= set(_REWARD_FIELDS)
    for name in _REWARD_FIELDS:
        if name in read:  # missing_penalty is read only with repair_incomplete (alone it is refused)
            extra = {"repair_incomplete": True} if name == "missing_penalty" else {}
            assert getattr(_grpo(head, rewards={name: _ODD[name], **extra}, **batch).rewards, name) == _ODD[name]
        else:
            with pytest.raises(ConfigError, match=f"rewards.{name} is not read by the reward of head '{head}'"):
                _grpo(head, rewards={name: _ODD[name]}, **batch)


_SEEN: set[str] = set()


class _RecordingRewards(RewardConfig):
    """A RewardConfig that notes every option read."""

    def __getattribute__(self, name: str) -> Any:
        if name in _REWARD_FIELDS:
            _SEEN.add(name)
        return object.__getattribute__(self, name)


def _completions(task: Any, row: dict[str, Any], j: int) -> list[str]:
    """Completions of every kind the task's reward tells apart, for its ``j``-th row."""
    method = task.method
    if method == "erank":  # a positive, a negative above it, one below it, a malformed one (in the pooled order)
        return [task.completion([5, 8, 2][j])] if j < 3 else ["no answer"]
    if method in ("yes-no", "qwen3-reranker"):
        return [task.positive, task.negative, "maybe"]
    if method in ("listwise", "first"):
        n = len(row["ids"])
        return [task.target(list(range(n))), task.target([1, 0]), "nothing to read"]
    if method == "grouprank":
        return [task.target([3] * len(row["ids"])), "<reason>r</reason><answer>not json at all</answer>", "no tags"]
    raise AssertionError(f"no completions for {method}")


@pytest.mark.parametrize("head", GRPO_HEADS)
def test_declared_reward_options_are_the_ones_read(head: str) -> None:
    """Each head's reward_fields (declared beside its reward) are exactly the options its reward reads, over every
    kind of completion and with repair_incomplete off and on."""
    tok = build_tokenizer()
    window = {"window": 4} if get_method(head).windowed else {}
    cfg = _grpo(head, **window)
    task = build_task(head, tok, cfg)
    example = synthetic_ranking_examples(1, num_candidates=4, seed=2)[0]
    example["labels"] = [1, 0, 0, 0]
    rows = task.grpo_rows(example)
    _SEEN.clear()
    for repair in (False, True):
        task.reward_config = _RecordingRewards(repair_incomplete=repair)
        if head == "erank":
            completions = [c for j in range(len(rows)) for c in _completions(task, rows[j], j)]
            task.rewards(completions, rows)
        else:
            for j, row in enumerate(rows):
                texts = _completions(task, row, j)
                task.rewards(texts, [row] * len(texts))
    assert _SEEN == set(task.reward_fields), (head, sorted(_SEEN ^ set(task.reward_fields)))


def test_a_reward_that_raises_stops_the_run() -> None:
    """A reward bug was turned into every rollout's penalty (a run that trains nothing and exits 0); it now stops the
    run, naming the head and the exception."""
    from rerank.trainers.grpo_trainer import reward_function

    tok = build_tokenizer()
    for head in ("grouprank", "yes-no"):
        window = {"window": 4} if get_method(head).windowed else {}
        task = build_task(head, tok, _grpo(head, **window))

        def broken(*args: Any) -> list[float]:
            raise ValueError("a bug in the reward")

        task.rewards = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match=f"reward of head '{head}' raised ValueError: a bug in the reward"):
            reward_function(task, [])(["p"], ["c"])
