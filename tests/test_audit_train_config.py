"""Audit "train" (runs/s38): options the trainers accepted although they were dead, out of range or bound to fail
after the model loaded, and config errors blamed on the wrong ``--set``.

The cross-encoder's ``max_length`` follows its inference head's rule (0 / unset: the model's own, else >= 8, at most
the position limit, checked before the weights load) and the number trained with is recorded in ``rerank.json``;
GRPO's ``beta``, ``epsilon`` (only with ``num_iterations`` > 1), ``temperature``, ``top_p`` and
``max_completion_length``, the schedule's ``weight_decay``, ``max_grad_norm``, ``seed`` and ``report_to`` are checked
with the config; ``data.seed`` / ``data.dev_max`` are refused where nothing reads them; an error of a nested block
names the override that set the key it is about.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.trainers.base import load_train_config
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig


def _sft(head: str = "cross-encoder", **over: Any) -> SFTTrainConfig:
    return from_dict(SFTTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, **over})


def _grpo(**over: Any) -> GRPOTrainConfig:
    return from_dict(GRPOTrainConfig, {"model": "m", "head": "erank", "data": {"path": "t.jsonl"}, "batch_size": 40,
                                       **over})


# --- 1. the cross-encoder's max_length ------------------------------------------------------------------------------


def test_cross_encoder_max_length_takes_the_inference_rule() -> None:
    """The default 1024 was refused for every 512-position model; 4 trained a model inference refused; -5 crashed."""
    assert _sft().max_length == 0  # the model's own, resolved by the trainer
    assert _sft(max_length=0).max_length == 0 and _sft(max_length=8).max_length == 8
    for bad in (4, 7, -5):
        with pytest.raises(ConfigError, match=rf"max_length must be >= 8 for the cross-encoder .* got {bad}$"):
            _sft(max_length=bad)
    # the LLM heads keep their default; the seq2seq heads read none
    assert _sft("erank").max_length == 1024 and _grpo().max_length == 1024 and _sft("first", max_length=64).max_length == 64
    assert _sft("monot5").max_length is None
    with pytest.raises(ConfigError, match="max_length must be >= 1"):
        _sft("erank", max_length=0)


def test_cross_encoder_position_limit_is_checked_before_the_weights_load(tmp_path: Path, tiny_bert_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sentence_transformers.cross_encoder import CrossEncoder

    from rerank.data.io import write_jsonl
    from rerank.testing import synthetic_ranking_examples
    from rerank.trainers import sft

    def loaded(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model loaded before max_length was checked")

    monkeypatch.setattr(CrossEncoder, "__init__", loaded)
    write_jsonl(synthetic_ranking_examples(3, num_candidates=2, seed=0), tmp_path / "t.jsonl")
    with pytest.raises(ConfigError, match="max_length 1024 exceeds this model's limit of 512 tokens"):
        sft({"model": str(tiny_bert_dir), "head": "cross-encoder", "max_length": 1024, "max_steps": 1,
             "save_steps": 1, "use_cpu": True, "data": {"path": str(tmp_path / "t.jsonl")}}, tmp_path / "out")
    assert not (tmp_path / "out" / "rerank_train.json").exists()


def test_cross_encoder_default_trains_a_long_document_and_records_its_length(tmp_path: Path,
                                                                             tiny_bert_dir: Path) -> None:
    """Unset, max_length is the model's own (512 here): a 3,000-word document is cut, not a crash, and rerank.json
    holds the number trained with (0 recorded meant 512 at inference after no cut in training)."""
    from rerank.data.io import write_jsonl
    from rerank.heads.base import Reranker
    from rerank.testing import synthetic_ranking_examples
    from rerank.trainers import sft

    rows = synthetic_ranking_examples(2, num_candidates=2, seed=0)
    rows[0]["candidates"][0]["text"] = " ".join(f"w{i % 50}" for i in range(3000))
    write_jsonl(rows, tmp_path / "t.jsonl")
    sft({"model": str(tiny_bert_dir), "head": "cross-encoder", "max_steps": 1, "save_steps": 1, "batch_size": 4,
         "use_cpu": True, "data": {"path": str(tmp_path / "t.jsonl")}}, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "model" / "rerank.json").read_text())
    assert record["options"]["max_length"] == 512
    assert Reranker.load(str(tmp_path / "out" / "model")).max_length == 512  # type: ignore[attr-defined]


# --- 2. GRPO and schedule ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("beta", -5, r"beta \(the KL coefficient\) must be >= 0"),
    ("epsilon", 0.3, "epsilon 0.3 clips the ratio .* num_iterations 1"),
    ("temperature", 0, "temperature must be > 0"),
    ("temperature", -1, "temperature must be > 0"),
    ("top_p", 0, r"top_p must be in \(0, 1\]"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ("max_completion_length", -3, "max_completion_length must be >= 1"),
])
def test_grpo_refuses_out_of_range_and_dead_options(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'--set {key}={value}: ')}{message}"):
        load_train_config(GRPOTrainConfig, None, ["model=m", "head=erank", "data.path=t.jsonl", "batch_size=40",
                                                  f"{key}={value}"])


def test_grpo_accepts_what_acts() -> None:
    assert _grpo(epsilon=0.3, num_iterations=2).epsilon == 0.3
    assert _grpo(beta=0.0, top_p=1.0, temperature=0.5).beta == 0.0
    assert _grpo(max_completion_length=0).max_completion_length == 0


@pytest.mark.parametrize(("key", "value", "message"), [
    ("weight_decay", -1, "weight_decay must be >= 0"),
    ("max_grad_norm", -1, "max_grad_norm must be >= 0"),
    ("seed", -1, r"seed must be in \[0, 2\*\*32\)"),
    ("report_to", "nonsense", "report_to 'nonsense' is not an integration transformers knows"),
    ("report_to", "[none, wandb]", "report_to 'none' stands alone"),
])
def test_schedule_ranges_are_checked_with_the_config(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'--set {key}={value}: ')}{message}"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=erank", "data.path=t.jsonl", f"{key}={value}"])


def test_schedule_accepts_zero_and_the_known_integrations() -> None:
    cfg = _sft("erank", weight_decay=0.0, max_grad_norm=0.0, seed=2**32 - 1, report_to="all")
    assert cfg.report_to == ["all"] and _sft("erank", report_to=[]).report_to == []


def test_known_integrations_are_transformers_own() -> None:
    """The names are kept in rerank (the config is checked without importing transformers' integrations)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from rerank.trainers.common import _INTEGRATIONS

    assert set(INTEGRATION_TO_CALLBACK) == _INTEGRATIONS


# --- 3. data.seed / data.dev_max without a dev split ----------------------------------------------------------------


def test_dev_options_without_a_dev_split_are_refused() -> None:
    """Both runs trained bit-identical weights: nothing read data.seed (with data.path) or data.dev_max."""
    for key, value in (("seed", 7), ("dev_max", 3)):
        with pytest.raises(ConfigError, match=rf"^--set data\.{key}={value}: data\.{key} {value} is read only when a "
                                              "dev split is carved"):
            load_train_config(SFTTrainConfig, None, ["model=m", "head=erank", "data.path=t.jsonl", f"data.{key}={value}"])
    with pytest.raises(ConfigError, match="data.dev_max 3 is read only"):
        from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"beir": "d", "dev_max": 3}})
    # read: the seed draws BEIR negatives and shuffles candidates; both shape a dev split
    assert from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"beir": "d", "seed": 7}}).data.seed == 7
    cfg = _sft("erank", eval_steps=5, save_steps=5, data={"path": "t.jsonl", "seed": 7, "dev_max": 3})
    assert (cfg.data.seed, cfg.data.dev_max, cfg.data.dev_fraction) == (7, 3, 0.1)


# --- 4. errors name the override that set the key -------------------------------------------------------------------


def test_nested_errors_name_the_override_that_set_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "ce.yaml"
    cfg.write_text("model: m\nhead: erank\ndata:\n  path: t.jsonl\n")
    for overrides, blamed in (
        (["lora.enabled=true", "lora.r=0"], "--set lora.r=0: lora.r must be >= 1"),
        (["lora.enabled=true", "lora.dropout=2"], r"--set lora.dropout=2: lora.dropout must be in"),
        (["lora={enabled: true, r: 0}"], r"--set lora={enabled: true, r: 0}: lora.r must be >= 1"),
        (["head=nope"], "--set head=nope: unknown reranker 'nope'"),
        (["eval_steps=5", "save_steps=5", "data.dev_fraction=0.2", "data.seed=3", "data.path=u.jsonl",
          "data.dev_max=0"], None),
        (["data.seed=3"], "--set data.seed=3: data.seed 3 is read only"),
        (["data.beir=x"], rf"{cfg}.data, --set data.beir=x: data: give exactly one of"),
    ):
        if blamed is None:
            load_train_config(SFTTrainConfig, cfg, overrides)
            continue
        with pytest.raises(ConfigError) as err:
            load_train_config(SFTTrainConfig, cfg, overrides)
        assert str(err.value).startswith(blamed.replace("\\", "")), (overrides, str(err.value))
