"""``rerank.config.option_default`` / ``changed_options``: the one answer to "does this option differ from its dataclass
default?" that every refusal of an option the setting in force does not read asks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from rerank.config import changed_options, from_dict, option_default
from rerank.errors import ConfigError


@dataclass
class _Parent:
    required: str
    size: int = 8
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class _Child(_Parent):
    size: int = 16


def test_option_default_is_the_own_class_default_and_a_factory_product() -> None:
    child = _Child(required="x")
    assert option_default(child, "size") == option_default(_Child, "size") == 16  # not the parent's 8
    assert option_default(_Parent, "size") == 8
    made = option_default(child, "names")
    assert made == ["a"] and made is not option_default(child, "names")  # a fresh product each time
    assert option_default(child, "required") is dataclasses.MISSING
    with pytest.raises(KeyError, match="_Child has no option 'nope'"):
        option_default(child, "nope")


def test_changed_options_names_what_differs_from_the_own_class_default() -> None:
    assert changed_options(_Child(required="x"), ("size", "names")) == []
    assert changed_options(_Child(required="x", size=8, names=["b"]), ("size", "names")) == ["size", "names"]
    assert changed_options(_Parent(required="x", size=16), ("size",)) == ["size"]


def test_remote_batch_size_is_a_config_error_built_directly_too() -> None:
    """``RemoteRerankerConfig(batch_size=8)`` raised a bare ValueError, unlike ``Reranker.load``'s ConfigError."""
    from rerank.client import RemoteRerankerConfig

    with pytest.raises(ConfigError, match="batch_size=8 is not read by the remote reranker .*: drop it"):
        RemoteRerankerConfig(batch_size=8)
    with pytest.raises(ConfigError, match="batch_size=8 is not read by the remote reranker"):
        from_dict(RemoteRerankerConfig, {"batch_size": 8})


@pytest.mark.parametrize(("cls_path", "options", "message"), [
    ("rerank.trainers.data:DataConfig", {"path": "d.jsonl", "negatives": "random"}, "drop data.negatives"),
    ("rerank.retrieval.index:IndexConfig", {"nprobe": 4}, "index option nprobe=4 applies to ivfpq indexes only"),
    ("rerank.retrieval.hybrid:HybridConfig", {"alpha": 0.3}, "alpha=0.3 applies to fusion: interpolate.*, or drop it"),
    ("rerank.retrieval.dense:DenseConfig", {"index": "i", "shard_size": 4}, "shard_size=4 applies only when .*: drop shard_size=4, or drop the index"),
    ("rerank.methods.erank.head:ERankConfig", {"max_reasoning_tokens": 8}, "set reasoning: true, or drop it"),
    ("rerank.data_recipes.mining:HardNegativesConfig",
     {"source": {"dataset": "d"}, "first_stage": {"retriever": "bm25"}, "seed": 3}, "or drop seed"),
    ("rerank.data_recipes.base:SourceSpec", {"dataset": "d", "queries": "q.jsonl", "split": "dev"}, "drop split"),
])
def test_unread_option_refusals_say_drop(cls_path: str, options: dict[str, object], message: str) -> None:
    """Each refusal of an option the setting does not read says "drop" it (some said "remove")."""
    import importlib

    module, name = cls_path.split(":")
    with pytest.raises(ConfigError, match=message):
        from_dict(getattr(importlib.import_module(module), name), options)


@pytest.mark.parametrize(("key", "shown"), [("max_doc_tokens", True), ("max_new_tokens", True), ("tokenizer", True),
                                            ("hf_token", False), ("api-key", False), ("db_password", False)])
def test_only_secret_like_overrides_are_redacted(key: str, shown: bool) -> None:
    """A token count read as a secret showed ``--set max_doc_tokens=<redacted>`` in every refusal naming it."""
    from rerank.config import apply_overrides, override_source

    cfg = apply_overrides({}, [f"{key}=7"])
    assert (override_source(cfg, key) == f"--set {key}=7") is shown
