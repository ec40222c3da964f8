"""Config-time checks of options: what a data build's manifest records, teacher rerankers and LoRA checked when the
config is read (before any data work), and the shipped configs setting no option their trainer or recipe does not
read."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict, load_yaml
from rerank.data_recipes import RECIPE_DIR
from rerank.data_recipes.base import _recipe_class, build
from rerank.data_recipes.mining import HardNegativesConfig, TeacherLabelsConfig
from rerank.data_recipes.synthesis import QuerySynthesisConfig, QuerySynthesisRecipe
from rerank.errors import ConfigError
from rerank.trainers.base import get_trainer
from rerank.trainers.sft_trainer import SFTTrainConfig

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- 1. query synthesis manifest
def test_sentence_synthesis_manifest_records_only_what_it_reads(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """``generator.kind: sentence`` loads no model: the manifest records no generator model, backend or template, and
    without a first stage no negatives' options."""
    recipe = {"recipe": "query_synthesis", "source": {"dataset": str(tiny_beir_dir)}, "max_docs": 3,
              "min_doc_chars": 10, "generator": {"kind": "sentence"}}
    m = build(recipe, tmp_path / "q", progress=False)
    assert m["config"]["generator"] == {"kind": "sentence"} and m["source"]["generator"] == {"kind": "sentence"}
    assert "negative_window" not in m["config"] and "num_negatives" not in m["config"]
    assert m["config"]["dedup_jaccard"] == 0.8 and m["config"]["first_stage"] is None


def test_llm_synthesis_manifest_keeps_the_generator() -> None:
    cfg = from_dict(QuerySynthesisConfig, {"source": {"dataset": "d"}, "generator": {"model": "m"},
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
    """The refusal reads the method's registry entry (``lora``), not the head's name; LLM heads take LoRA."""
    import dataclasses

    import rerank.methods

    real = rerank.methods.get_method
    monkeypatch.setattr(rerank.methods, "get_method", lambda name, kind=None: (
        dataclasses.replace(real(name, kind), lora=True) if name == "monot5" else real(name, kind)))
    raw = {"model": "m", "head": "monot5", "data": {"path": "train.jsonl"}, "lora": {"enabled": True}}
    assert from_dict(SFTTrainConfig, raw).lora.enabled
    assert from_dict(SFTTrainConfig, {**raw, "head": "erank"}).lora.enabled


# ------------------------------------------------------------------------------- 4. shipped configs: no unread keys
#: the phrases of the refusals of an option the config in force does not read (as opposed to an invalid value)
UNREAD = re.compile(r"\bunused\b|not read|not an option|is an option of|is set but|not used by|appl(?:y|ies) to|"
                    r"needs? a first_stage")
_SAME = object()


def _config_files() -> list[Path]:
    return sorted([*(REPO / "configs").rglob("*.yaml"), *RECIPE_DIR.glob("*.yaml")])


def _config_class(path: Path, raw: dict[str, Any]) -> type | None:
    """The typed config ``path`` is read into: a recipe's, or the trainer its comment runs (None: a leaderboard)."""
    if "recipe" in raw:
        return _recipe_class(raw["recipe"]).config_class
    if "rows" in raw and "columns" in raw:
        return None
    trainer = re.search(r"rerank train (\w+)", path.read_text(encoding="utf-8"))
    assert trainer, f"{path}: no 'rerank train NAME' command in its comments"
    return get_trainer(trainer.group(1)).config_class


def _inner(tp: Any) -> Any:
    """``X`` of ``X | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) and len(args) == 1 else tp


def _other(tp: Any, value: Any) -> Any:
    """Another valid value of ``value``'s type (``_SAME``: none tried)."""
    if typing.get_origin(tp) is typing.Literal:
        return next(a for a in typing.get_args(tp) if a != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.05
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [value[0], value[1] + 1]
    return _SAME


def _variants(cls: type, raw: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, ``raw`` with that one value changed) for every value of ``raw`` that can change to another."""
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        tp = _inner(hints[key])
        if is_dataclass(tp) and isinstance(value, dict):
            for sub, changed in _variants(tp, value):  # type: ignore[arg-type]
                yield f"{key}.{sub}", {**raw, key: changed}
        elif (new := _other(tp, value)) is not _SAME:
            yield key, {**raw, key: new}


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_set_no_option_they_do_not_read(path: Path) -> None:
    """Every key a shipped config sets is read in that config: changing its value is never refused as an option the
    config does not read (e.g. ``max_doc_tokens`` with ``train_doc_encoder: false``, accepted at its default only)."""
    raw = dict(load_yaml(path))
    cls = _config_class(path, raw)
    if cls is None:
        return
    raw.pop("recipe", None)
    if "model" in (f.name for f in cls.__dataclass_fields__.values()):
        raw.setdefault("model", "some/model")
    from_dict(cls, raw, where=str(path))
    unread = []
    for key, changed in _variants(cls, raw):
        try:
            from_dict(cls, changed, where=str(path))
        except ConfigError as e:
            if UNREAD.search(str(e)):
                unread.append(f"{key}: {e}")
    assert not unread, f"{path} sets options it does not read: {unread}"


@pytest.mark.parametrize("path", [p for p in _config_files() if "data" in load_yaml(p)], ids=lambda p: p.name)
def test_shipped_configs_set_no_dev_option_without_a_dev_split(path: Path) -> None:
    """``data.seed`` and ``data.dev_max`` are read when building from ``data.beir`` (seed) or carving a dev split;
    a config reading ``data.path`` with no dev split sets neither (nothing would read them)."""
    raw = dict(load_yaml(path))
    cls = _config_class(path, raw)
    assert cls is not None
    cfg = from_dict(cls, {"model": "some/model", **raw}, where=str(path))
    if cfg.data.path and not cfg.data.dev_fraction:
        assert not {"seed", "dev_max"} & set(raw["data"]), f"{path}: data.seed / data.dev_max are read by nothing"
