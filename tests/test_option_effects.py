"""Trainer and reward options have their documented effect (no option is only read): each test sets an option to two
values at the narrowest seam that consumes it and checks the exact outcome, so it fails if the option is ignored.

* The schedule (:func:`rerank.trainers.common.training_kwargs`): ``weight_decay``, ``save_total_limit`` and
  ``gradient_checkpointing`` reach transformers' ``TrainingArguments`` and what it drives (AdamW's decayed parameter
  group, checkpoint rotation, activation checkpointing); the retriever trainers' ``weight_decay`` (default 0.01),
  ``dev_depth`` (BM25 depth of the dev candidates) and ``encode_batch_size`` (dev / corpus encoding).
* ``data.max_candidates`` caps the examples built from ``data.beir``.
* GRPO: ``loss_type``, ``max_completion_length``, ``log_completions`` reach TRL's ``GRPOConfig``; ``erank_reference``
  sets the reference score ERank's reward pulls negatives toward.
* ``rewards``: every option below changes the reward of a completion, through the task of a head that reads it, to
  the value the reward's definition (the ReasonRank, GroupRank and ERank papers) gives by hand.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from rerank.config import from_dict
from rerank.data.io import write_jsonl
from rerank.testing import build_tokenizer, synthetic_ranking_examples
from rerank.trainers.common import training_kwargs
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig
from rerank.trainers.task import build_task

L3 = math.log2(3)


def _sft(**over: Any) -> SFTTrainConfig:
    return from_dict(SFTTrainConfig, {"model": "m", "head": "erank", "data": {"path": "t.jsonl"}, "use_cpu": True,
                                      **over})


def _grpo(head: str, **over: Any) -> GRPOTrainConfig:
    return from_dict(GRPOTrainConfig, {"model": "m", "head": head, "data": {"path": "t.jsonl"}, "batch_size": 40,
                                       **over})


def _args(kw: dict[str, Any]) -> Any:
    """transformers' TrainingArguments from ``training_kwargs`` (its deprecation warnings silenced)."""
    from transformers import TrainingArguments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return TrainingArguments(**kw)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


# --- the schedule: training_kwargs -> TrainingArguments -------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.norm = torch.nn.LayerNorm(2)


def test_weight_decay_is_adamws_decay(tmp_path: Path) -> None:
    """weight_decay reaches TrainingArguments and is the decay of the optimizer's decayed group (weights, not biases
    or norms); the retriever trainers take it too, with their own default 0.01."""
    from transformers import Trainer

    from rerank.trainers.base import build_train_config, get_trainer

    for value in (0.0, 0.05):
        kw = training_kwargs(_sft(weight_decay=value), tmp_path, has_dev=False)
        assert kw["weight_decay"] == value
        model = _Tiny()
        opt = Trainer(model=model, args=_args(kw)).create_optimizer()
        groups = {tuple(sorted(n for n, p in model.named_parameters() if any(p is q for q in g["params"]))):
                  g["weight_decay"] for g in opt.param_groups}
        assert groups == {("lin.weight",): value, ("lin.bias", "norm.bias", "norm.weight"): 0.0}
    for opts, expected in (({}, 0.01), ({"weight_decay": 0.2}, 0.2)):
        cfg = build_train_config(get_trainer("contrastive").config_class, {"model": "m", "use_cpu": True, **opts})
        assert _args(training_kwargs(cfg, tmp_path, has_dev=False)).weight_decay == expected


def test_save_total_limit_rotates_the_checkpoints(tmp_path: Path) -> None:
    """save_total_limit is the number of checkpoint-N folders transformers keeps under OUTPUT/checkpoints (null: all)."""
    from transformers.trainer_utils import rotate_checkpoints

    for limit, kept in ((2, [3, 4]), (3, [2, 3, 4]), (None, [1, 2, 3, 4])):
        out = tmp_path / f"run-{limit}"
        args = _args(training_kwargs(_sft(save_total_limit=limit), out, has_dev=False))
        assert args.save_total_limit == limit and args.output_dir == str(out / "checkpoints")
        for step in (1, 2, 3, 4):
            (out / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        rotate_checkpoints(args.output_dir, save_total_limit=args.save_total_limit)
        left = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
        assert left == kept, limit


def test_gradient_checkpointing_turns_on_activation_checkpointing(tmp_path: Path) -> None:
    """gradient_checkpointing is transformers' (activation) checkpointing switch: on when set, off by default."""
    on = _args(training_kwargs(_sft(gradient_checkpointing=True), tmp_path, has_dev=False))
    off = _args(training_kwargs(_sft(), tmp_path, has_dev=False))
    assert on.gradient_checkpointing is True and off.gradient_checkpointing is False
    if hasattr(on, "activation_checkpointing"):  # transformers 5 name; gradient_checkpointing is its alias
        assert on.activation_checkpointing is True and off.activation_checkpointing is False


# --- the retriever trainers: dev_depth and encode_batch_size ---------------------------------------------------------


class _Stop(Exception):
    """Raised where a test has seen what it needs, before any training."""


class _FakeEncoder(torch.nn.Module):
    """Stands in for the starting BiEncoder (the run stops before its first forward)."""

    def __init__(self) -> None:
        super().__init__()
        from rerank.retrieval.dense import EncoderSettings

        self.settings = EncoderSettings()
        self.query_model = self.doc_model = torch.nn.Identity()  # no position table: no length limit to check


class _RecordingEncoder:
    """``encode_numpy`` noting (side, number of texts, batch size); random vectors."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def encode_numpy(self, texts: list[str], side: str, batch_size: int) -> np.ndarray:
        self.calls.append((side, len(texts), batch_size))
        return np.random.default_rng(0).normal(size=(len(texts), 4)).astype(np.float32)


def _contrastive_until_training(tmp_path: Path, beir: Path, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> Any:
    """The contrastive trainer run until transformers' Trainer would be built: its dev candidates are in place."""
    from rerank.retrieval.dense import BiEncoder
    from rerank.trainers import retriever
    from rerank.trainers.base import TrainContext, build_train_config, get_trainer

    monkeypatch.setattr(BiEncoder, "load", classmethod(lambda cls, *a, **k: _FakeEncoder()))

    def stop(*a: Any, **k: Any) -> None:
        raise _Stop

    monkeypatch.setattr(retriever, "_hf_trainer", stop)
    trainer = get_trainer("contrastive")
    cfg = build_train_config(trainer.config_class, {
        "model": "m", "dataset": str(beir), "hard_negatives": 0, "batch_size": 2, "eval_steps": 5, "save_steps": 5,
        "dev_fraction": 0.3, "use_cpu": True, "progress": False, **opts})
    with pytest.raises(_Stop):
        trainer.train(cfg, TrainContext(output=tmp_path))
    return trainer


def test_dev_depth_is_the_bm25_depth_of_the_dev_candidates(tmp_path: Path, tiny_beir_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each dev query's candidates are BM25's top dev_depth, then its positives BM25 did not return."""
    from rerank.data.datasets import resolve_dataset
    from rerank.retrieval.base import build_retriever

    ds = resolve_dataset(str(tiny_beir_dir))
    bm25 = build_retriever("bm25", ds)
    for depth in (3, 9):
        trainer = _contrastive_until_training(tmp_path / f"d{depth}", tiny_beir_dir, monkeypatch, dev_depth=depth)
        dev = trainer.data.dev_qids
        assert dev
        top = bm25.retrieve({q: ds.split_queries("train")[q] for q in dev}, depth)
        for q in dev:
            ranked = [d for d, _ in top[q]]  # up to depth: BM25 returns only documents sharing a query term
            missing = [d for d in trainer.data.positives[q] if d not in ranked]
            assert trainer._dev_candidates[q] == ranked + missing
        assert max(len(top[q]) for q in dev) == depth


def test_encode_batch_size_batches_the_dev_and_corpus_encoding(tmp_path: Path, tiny_beir_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Dev selection encodes its queries and candidates, and fixed documents are encoded, in encode_batch_size
    batches."""
    from rerank.retrieval import index as index_module

    seen: list[int] = []

    def encode(encoder: Any, dataset: Any, batch_size: int, progress: bool) -> Any:
        seen.append(batch_size)
        raise _Stop

    for bs in (3, 17):
        trainer = _contrastive_until_training(tmp_path / f"b{bs}", tiny_beir_dir, monkeypatch, encode_batch_size=bs)
        enc = _RecordingEncoder()
        metrics = trainer.dev_metrics(enc)
        docs = len({d for q in trainer.data.dev_qids for d in trainer._dev_candidates[q]})
        assert enc.calls == [("query", len(trainer.data.dev_qids), bs), ("doc", docs, bs)]
        assert set(metrics) == {"ndcg@10"}  # the candidates hold every positive: no recall, it would be 1

        seen.clear()
        monkeypatch.setattr(index_module, "encode_corpus_cached", encode)
        trainer.args = SimpleNamespace(world_size=1, process_index=0)
        trainer.encoder = SimpleNamespace(settings=None)
        with pytest.raises(_Stop):
            trainer.load_frozen_docs()
        assert seen == [bs]


# --- data.max_candidates ---------------------------------------------------------------------------------------------


def test_max_candidates_caps_the_examples_built_from_beir(tiny_beir_dir: Path) -> None:
    """Built from data.beir, each example holds its positives and BM25's top non-positive documents, at most
    max_candidates in all (each tiny-BEIR query has 2 positives; 4 negatives per positive would give 10)."""
    from rerank.data.datasets import resolve_dataset
    from rerank.retrieval.base import build_retriever
    from rerank.trainers.data import DataConfig, load_training_data

    ds = resolve_dataset(str(tiny_beir_dir))
    qrels, queries = ds.qrels("train"), ds.split_queries("train")
    run = build_retriever("bm25", ds).retrieve(queries, 30)
    for cap in (2, 5, 20):
        train, _ = load_training_data(DataConfig(beir=str(tiny_beir_dir), max_candidates=cap))
        assert len(train) == len(queries)
        sizes = []
        for ex in train:
            q = ex["qid"]
            pos = {d for d, g in qrels[q].items() if g > 0}
            negs = [d for d, _ in run[q] if qrels[q].get(d, 0) <= 0][: min(4 * len(pos), cap - len(pos))]
            assert {c["id"] for c in ex["candidates"]} == pos | set(negs)
            sizes.append(len(ex["candidates"]))
        assert max(sizes) == min(cap, 10)  # the cap binds (every query has at least 3 BM25 negatives)


# --- GRPO options reach TRL's GRPOConfig, and ERank's reference ------------------------------------------------------


def _grpo_args(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> Any:
    """The GRPOConfig the trainer hands TRL's GRPOTrainer for a yes-no run with ``opts`` (no model, no training)."""
    import trl

    from rerank.trainers import grpo_trainer
    from rerank.trainers.base import TrainContext

    data = tmp_path / "t.jsonl"
    write_jsonl(synthetic_ranking_examples(2, num_candidates=2, seed=3), data)
    monkeypatch.setattr(grpo_trainer, "load_tokenizer", lambda model: tok)
    monkeypatch.setattr(grpo_trainer, "load_causal_lm", lambda model, cpu, tokenizer=None: (object(), tokenizer))
    seen: dict[str, Any] = {}

    class Capture:
        def __init__(self, **kw: Any) -> None:
            seen.update(kw)
            raise _Stop

    monkeypatch.setattr(trl, "GRPOTrainer", Capture)
    cfg = from_dict(GRPOTrainConfig, {"model": "m", "head": "yes-no", "data": {"path": str(data)}, "batch_size": 4,
                                      "num_generations": 2, "max_steps": 1, "save_steps": 1, "use_cpu": True, **opts})
    with pytest.raises(_Stop), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        grpo_trainer.GRPOTrainer().build(cfg, TrainContext(output=tmp_path / "out"))
    return seen["args"]


def test_grpo_options_reach_trls_grpo_config(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """loss_type, max_completion_length (0: the task's bound, yes-no's 4 tokens) and log_completions are TRL's."""
    from trl import GRPOConfig

    default = _grpo_args(tmp_path / "a", tok, monkeypatch)
    assert isinstance(default, GRPOConfig)
    assert (default.loss_type, default.max_completion_length, default.log_completions) == ("grpo", 4, False)
    set_ = _grpo_args(tmp_path / "b", tok, monkeypatch, loss_type="dr_grpo", max_completion_length=7,
                      log_completions=True, weight_decay=0.03, save_total_limit=1, gradient_checkpointing=True)
    assert (set_.loss_type, set_.max_completion_length, set_.log_completions) == ("dr_grpo", 7, True)
    assert (set_.weight_decay, set_.save_total_limit, set_.gradient_checkpointing) == (0.03, 1, True)
    assert _grpo_args(tmp_path / "c", tok, monkeypatch, loss_type="bnpo").loss_type == "bnpo"


class _AnswersSix:
    """A causal LM stand-in whose greedy answer to every prompt is the ERank completion ``6</answer>``."""

    device = "cpu"

    def __init__(self, tok: Any) -> None:
        self.answer = torch.tensor(tok.encode("6</answer>", add_special_tokens=False))
        self.calls = 0

    def eval(self) -> None:
        pass

    def train(self) -> None:
        pass

    def generate(self, input_ids: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls += 1
        return torch.cat([input_ids, self.answer.repeat(input_ids.shape[0], 1)], dim=1)


def test_erank_reference_is_the_starting_models_answer_or_zero(tok: Any) -> None:
    """erank_reference model: each row's reference t is the starting model's greedy score (6 here); zero: 0, and the
    model is not asked. A negative scored 2 below every positive earns -((2 - t) / 10)^2 (ERank)."""
    example = {"qid": "q", "query": "what", "labels": [1, 0],
               "candidates": [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]}
    expected = {"model": (6.0, -((2 - 6) / 10) ** 2), "zero": (0.0, -((2 - 0) / 10) ** 2)}
    for ref, (t, negative_reward) in expected.items():
        task = build_task("erank", tok, _grpo("erank", erank_reference=ref))
        rows = task.grpo_rows(example)
        lm = _AnswersSix(tok)
        task.prepare_grpo_rows(lm, rows)
        assert [r["reference"] for r in rows] == [t, t] and lm.calls == (ref == "model")
        assert task.rewards(["9</answer>", "2</answer>"], rows) == pytest.approx([1.0, negative_reward])


# --- rewards: each option, through a head whose reward reads it -------------------------------------------------------


def _task(tok: Any, head: str, window: int | None = None, **rewards: Any) -> Any:
    extra = {"window": window} if window else {}
    return build_task(head, tok, _grpo(head, rewards=rewards, **extra))


# listwise window a, b, c, d with grades 0, 2, 1, 0; teacher b > c > a > d; the model writes c > b > a > d
_IDS = ["a", "b", "c", "d"]
_LISTWISE_ROW = {"prompt": "p", "ids": _IDS, "teacher": ["b", "c", "a", "d"],
                 "labels_json": json.dumps({"a": 0, "b": 2, "c": 1, "d": 0})}
_C_B_A_D = "[3] > [2] > [1] > [4]"
_NDCG = (1 + 2 / L3) / (2 + 1 / L3)  # gains 1, 2, 0, 0 against the ideal 2, 1
# RBO of c b a d vs b c a d: agreement 0 at depth 1, 1 from depth 2 on; extrapolated to depth 4:
# (1 - p) / p * (p^2 + p^3 + p^4) + p^4 = p


def _listwise(tok: Any, text: str = _C_B_A_D, **rewards: Any) -> float:
    return _task(tok, "listwise", 4, **rewards).rewards([text], [_LISTWISE_ROW])[0]


def test_listwise_recall_weight(tok: Any) -> None:
    """ReasonRank: nDCG@10 + recall_weight * Recall@10 + rbo_weight * RBO (recall 1 here: both relevant in the top)."""
    assert _listwise(tok) == pytest.approx(_NDCG + 0.2 * 1 + 0.1 * 0.9)
    assert _listwise(tok, recall_weight=0.5) == pytest.approx(_NDCG + 0.5 * 1 + 0.1 * 0.9)


def test_listwise_rbo_weight_and_rbo_p(tok: Any) -> None:
    assert _listwise(tok, rbo_weight=0.4) == pytest.approx(_NDCG + 0.2 + 0.4 * 0.9)
    assert _listwise(tok, rbo_p=0.5) == pytest.approx(_NDCG + 0.2 + 0.1 * 0.5)
    assert _listwise(tok, rbo_weight=0.4, rbo_p=0.5) == pytest.approx(_NDCG + 0.2 + 0.4 * 0.5)


def test_listwise_wrong_count_reward(tok: Any) -> None:
    """A permutation missing an id earns wrong_count_reward (ReasonRank's 0)."""
    missing = "[3] > [2] > [1]"
    assert _listwise(tok, missing) == 0.0
    assert _listwise(tok, missing, wrong_count_reward=-0.25) == -0.25
    assert _listwise(tok, wrong_count_reward=-0.25) == pytest.approx(_NDCG + 0.2 + 0.09)  # a complete one: unchanged


def test_listwise_rel_threshold(tok: Any) -> None:
    """Recall counts documents graded >= rel_threshold; with k=2 the top two (c, a) hold c (grade 1) but not b
    (grade 2): recall 1/2 at threshold 1, 0 at threshold 2."""
    text = "[3] > [1] > [2] > [4]"  # c a b d
    ndcg2 = 1 / (2 + 1 / L3)  # gains 1, 0 against the ideal 2, 1
    # RBO of c a b d vs b c a d: agreements 0, 1/2, 1, 1 -> (1 - p) / p * (p^2/2 + p^3 + p^4) + p^4
    p = 0.9
    rbo = (1 - p) / p * (p**2 / 2 + p**3 + p**4) + p**4
    assert _listwise(tok, text, k=2) == pytest.approx(ndcg2 + 0.2 * 0.5 + 0.1 * rbo)
    assert _listwise(tok, text, k=2, rel_threshold=2) == pytest.approx(ndcg2 + 0.2 * 0.0 + 0.1 * rbo)


# GroupRank: a group [1] = a, [2] = b
_GROUP = {"prompt": "p", "ids": ["a", "b"], "gold": [2.0, 0.0]}
_EXACT = '<reason>r</reason>\n<answer>{"[1]": 10, "[2]": 0}</answer>'  # the gold's own distribution: JS 0
_FLAT = '<reason>r</reason>\n<answer>{"[1]": 5, "[2]": 5}</answer>'
# P = (1/2, 1/2), Q = (1, 0), M = (3/4, 1/4): KL(P||M) = 1 - L3/2, KL(Q||M) = 2 - L3, JS = 3/2 - 3/4 L3
_JS_FLAT = 1.5 - 0.75 * L3
_NDCG_FLAT = (1 + 1 / L3) / 2  # tie-aware: mean gain 1 at ranks 1 and 2, ideal 2


def _grouprank(tok: Any, text: str, row: dict[str, Any] = _GROUP, **rewards: Any) -> float:
    return _task(tok, "grouprank", 2, **rewards).rewards([text], [row])[0]


def test_grouprank_recall_and_js_weights(tok: Any) -> None:
    """GroupRank: nDCG@10 + recall_weight * Recall@10 + js_weight * (1 - JS(P||Q))."""
    assert _grouprank(tok, _EXACT) == pytest.approx(1 + 0.2 + 0.1)
    assert _grouprank(tok, _EXACT, recall_weight=0.7) == pytest.approx(1 + 0.7 + 0.1)
    assert _grouprank(tok, _EXACT, js_weight=0.5) == pytest.approx(1 + 0.2 + 0.5)
    assert _grouprank(tok, _FLAT) == pytest.approx(_NDCG_FLAT + 0.2 + 0.1 * (1 - _JS_FLAT))
    assert _grouprank(tok, _FLAT, js_weight=0.5) == pytest.approx(_NDCG_FLAT + 0.2 + 0.5 * (1 - _JS_FLAT))


def test_grouprank_rel_threshold(tok: Any) -> None:
    """Recall counts grades >= rel_threshold: a group whose best grade is 1 has no relevant document at 2."""
    row = {**_GROUP, "gold": [1.0, 0.0]}
    assert _grouprank(tok, _EXACT, row) == pytest.approx(1 + 0.2 * 1 + 0.1)
    assert _grouprank(tok, _EXACT, row, rel_threshold=2) == pytest.approx(1 + 0.2 * 0 + 0.1)


def test_grouprank_penalties(tok: Any) -> None:
    """Good tags around invalid JSON earn invalid_json_penalty (-0.1); bad tags earn bad_tags_penalty (-0.5)."""
    bad_json, no_tags = "<reason>r</reason>\n<answer>not json at all</answer>", "[1]: 10, [2]: 0"
    assert _grouprank(tok, bad_json) == -0.1
    assert _grouprank(tok, bad_json, invalid_json_penalty=-0.3) == -0.3
    assert _grouprank(tok, no_tags) == -0.5
    assert _grouprank(tok, no_tags, bad_tags_penalty=-0.8) == -0.8
    assert _grouprank(tok, no_tags, invalid_json_penalty=-0.3) == -0.5  # each penalty is its own case's
    assert _grouprank(tok, bad_json, bad_tags_penalty=-0.8) == -0.1


# ERank: one query's pooled rollouts, documents A (grade 2), B (grade 1), C (grade 0) scored 8, 5, 2; references 9,
# 3, 6
_ERANK_ROWS = [{"prompt": "p", "qid": "q", "label": g, "reference": t} for g, t in ((2, 9.0), (1, 3.0), (0, 6.0))]
_ERANK_TEXTS = ["8</answer>", "5</answer>", "2</answer>"]


def _erank(tok: Any, **rewards: Any) -> list[float]:
    return _task(tok, "erank", **rewards).rewards(_ERANK_TEXTS, _ERANK_ROWS)


def test_erank_rel_threshold(tok: Any) -> None:
    """Threshold 1: A and B are positives (1/rank: 1, 1/2); threshold 2: B is a negative below every positive,
    pulled toward its reference: -((5 - 3) / 10)^2."""
    assert _erank(tok) == pytest.approx([1.0, 0.5, -((2 - 6) / 10) ** 2])
    assert _erank(tok, rel_threshold=2) == pytest.approx([1.0, -((5 - 3) / 10) ** 2, -((2 - 6) / 10) ** 2])


def test_erank_scale(tok: Any) -> None:
    """The pull -((s - t) / erank_scale)^2; erank_scale 1 is the paper's raw -(s - t)^2."""
    assert _erank(tok, erank_scale=5.0) == pytest.approx([1.0, 0.5, -((2 - 6) / 5) ** 2])
    assert _erank(tok, erank_scale=1.0) == pytest.approx([1.0, 0.5, -16.0])


def test_yes_no_rel_threshold(tok: Any) -> None:
    """yes-no: 1 for the right word, the right word for grade g being 'yes' iff g >= rel_threshold."""
    rows = [{"prompt": "p", "label": 1}, {"prompt": "p", "label": 2}]
    assert _task(tok, "yes-no").rewards(["yes", "yes"], rows) == [1.0, 1.0]
    assert _task(tok, "yes-no", rel_threshold=2).rewards(["yes", "yes"], rows) == [0.0, 1.0]
    assert _task(tok, "yes-no", rel_threshold=2).rewards(["no", "no"], rows) == [1.0, 0.0]
