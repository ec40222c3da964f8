"""Training vocabulary: the retriever trainers' hints for a reranker-style ``data.*`` key name the right key, and
``gradient_checkpointing`` reaches the trainer and the model both ways (TRL defaults it on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict
from rerank.data.io import write_jsonl
from rerank.errors import ConfigError
from rerank.testing import synthetic_ranking_examples
from rerank.trainers.base import get_trainer, load_train_config


# ------------------------------------------------------------------- newcomer #5: the retriever trainers' data.* hints
@pytest.mark.parametrize(("trainer", "key", "use"), [
    ("contrastive", "seed", "seed"),
    ("pgrank", "seed", "seed"),
    ("contrastive", "negatives_per_positive", "hard_negatives"),
    ("pgrank", "negatives_per_positive", "num_candidates"),
    ("adore", "negatives_per_positive", "top_k"),
    ("star", "bm25_depth", "negatives_depth"),
    ("contrastive", "split", "split"),
    ("star", "beir", "dataset"),
])
def test_a_reranker_data_key_names_the_retriever_trainers_own(trainer: str, key: str, use: str) -> None:
    cls = get_trainer(trainer).config_class
    with pytest.raises(ConfigError, match=rf"^--set data.{key}=1: unknown key 'data.{key}' for {cls.__name__}: did "
                                          rf"you mean '{use}'\?"):
        load_train_config(cls, None, ["model=m", "dataset=d", f"data.{key}=1"])


def test_a_data_key_without_a_retriever_counterpart_names_none() -> None:
    cls = get_trainer("star").config_class
    with pytest.raises(ConfigError, match=r"^--set data.negatives_per_positive=2: unknown key "
                                          r"'data.negatives_per_positive' for StarConfig: the retriever trainers have "
                                          r"no block data \(.*STAR draws one per query\)$") as caught:
        load_train_config(cls, None, ["model=m", "dataset=d", "data.negatives_per_positive=2"])
    assert "dataset" not in str(caught.value)


# --------------------------------------------------------------------------- llmtrain #3: gradient_checkpointing
class _Seen(Exception):
    """Raised by the first training step once it has recorded what the trainer and the model say."""


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
@pytest.mark.parametrize("on", [False, True])
def test_gradient_checkpointing_reaches_the_trainer_and_the_model(trainer: str, on: bool, tiny_llm_dir: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from rerank import trainers

    seen: list[tuple[bool, bool, bool]] = []

    def first_step(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        # TRL reads gradient_checkpointing, transformers 5 activation_checkpointing (which the former mirrors)
        seen.append((self.args.activation_checkpointing, self.args.gradient_checkpointing,
                     model.is_activation_checkpointing))
        raise _Seen

    monkeypatch.setattr(transformers.Trainer, "training_step", first_step)
    write_jsonl(synthetic_ranking_examples(4, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    cfg = {"model": str(tiny_llm_dir), "head": "yes-no", "max_steps": 1, "save_steps": 1, "batch_size": 4,
           "use_cpu": True, "gradient_checkpointing": on, "data": {"path": str(tmp_path / "t.jsonl")}}
    if trainer == "grpo":
        cfg["num_generations"] = 2
    with pytest.raises(_Seen):
        getattr(trainers, trainer)(cfg, tmp_path / "out")
    assert seen == [(on, on, on)]


def test_training_kwargs_always_give_activation_checkpointing() -> None:
    from rerank.trainers.common import training_kwargs
    from rerank.trainers.sft_trainer import SFTTrainConfig

    for on in (False, True):
        cfg = from_dict(SFTTrainConfig, {"model": "m", "head": "yes-no", "data": {"path": "t.jsonl"},
                                         "gradient_checkpointing": on})
        assert training_kwargs(cfg, Path("out"), has_dev=False)["activation_checkpointing"] is on
