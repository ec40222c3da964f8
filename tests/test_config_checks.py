"""Config-time checks of options: what a data build's manifest records, teacher rerankers and LoRA checked when the
config is read (before any data work), and the shipped configs setting no option their trainer or recipe does not
read."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank.config import from_dict
from rerank.data_recipes.base import build
from rerank.data_recipes.mining import HardNegativesConfig, TeacherLabelsConfig
from rerank.data_recipes.synthesis import QuerySynthesisConfig, QuerySynthesisRecipe
from rerank.errors import ConfigError
from rerank.trainers.sft_trainer import SFTTrainConfig


# ------------------------------------------------------------------------------------- 1. query synthesis manifest
def test_sentence_synthesis_manifest_records_only_what_it_reads(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """``generator.kind: sentence`` loads no model: the manifest records no generator model, backend or template, and
    without a first stage no negatives' options."""
    recipe = {"recipe": "query_synthesis", "dataset": str(tiny_beir_dir), "max_docs": 3, "min_doc_chars": 10,
              "generator": {"kind": "sentence"}}
    m = build(recipe, tmp_path / "q", progress=False)
    assert m["config"]["generator"] == {"kind": "sentence"} and m["source"]["generator"] == {"kind": "sentence"}
    assert "negative_window" not in m["config"] and "num_negatives" not in m["config"]
    assert m["config"]["dedup_jaccard"] == 0.8 and m["config"]["first_stage"] is None


def test_llm_synthesis_manifest_keeps_the_generator() -> None:
    cfg = from_dict(QuerySynthesisConfig, {"dataset": "d", "generator": {"model": "m"},
                                           "first_stage": {"retriever": "bm25"}})
    rec = QuerySynthesisRecipe.record(cfg)
    assert rec["generator"]["model"] == "m" and rec["generator"]["template"] == "query_synthesis"
    assert rec["negative_window"] == [1, 30] and rec["num_negatives"] == 7


# --------------------------------------------------------------------------- 2. teacher rerankers at config time
def test_unknown_teacher_reranker_is_refused_when_the_config_is_read(tmp_path: Path) -> None:
    base = {"source": {"dataset": "no-such-dataset"}, "first_stage": {"retriever": "bm25"}, "mode": "grouprank",
            "pointwise_teacher": {"reranker": "erank"}, "listwise_teacher": {"reranker": "no-such-reranker"}}
    msg = r"listwise_teacher: unknown reranker 'no-such-reranker'; known rerankers: .*\blistwise\b"
    with pytest.raises(ConfigError, match=msg):
        from_dict(TeacherLabelsConfig, base)
    with pytest.raises(ConfigError, match=msg):  # before the dataset (which does not exist) is read
        build({"recipe": "teacher_labels", **base}, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="false_negative_filter: unknown reranker 'nope'"):
        from_dict(HardNegativesConfig, {"source": {"dataset": "d"}, "first_stage": {"retriever": "bm25"},
                                        "false_negative_filter": {"reranker": "nope"}})
    from_dict(TeacherLabelsConfig, {**base, "listwise_teacher": {"reranker": "remote"}})  # served: registered too


# ------------------------------------------------------------------------------------------------ 3. LoRA at config
@pytest.mark.parametrize("head", ["cross-encoder", "monot5", "duot5"])
def test_lora_refused_at_config_time_for_full_fine_tune_heads(head: str) -> None:
    raw = {"model": "m", "head": head, "data": {"path": "train.jsonl"}, "lora": {"enabled": True}}
    with pytest.raises(ConfigError, match=f"^config: lora is for the LLM heads; {head} is fine-tuned in full: drop "
                                          "lora.enabled$"):
        from_dict(SFTTrainConfig, raw)
    assert not from_dict(SFTTrainConfig, {**raw, "lora": {"enabled": False}}).lora.enabled


def test_lora_follows_the_trainers_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal reads the method's own SFT module (``SUPPORTS_LORA``), not the head's name; LLM heads take LoRA."""
    import rerank.methods.monot5.train as t5

    raw = {"model": "m", "head": "monot5", "data": {"path": "train.jsonl"}, "lora": {"enabled": True}}
    monkeypatch.setattr(t5, "SUPPORTS_LORA", True)
    assert from_dict(SFTTrainConfig, raw).lora.enabled
    assert from_dict(SFTTrainConfig, {**raw, "head": "erank"}).lora.enabled
