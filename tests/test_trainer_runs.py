"""Trainer mechanics: kill-and-resume matches an uninterrupted run, LoRA merge + adapter, 2-process accelerate,
the cross-encoder path, FIRST's ranking loss (read from the LM forward), and GRPO's format penalty instead of exceptions."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from train_support import erank_workdir

from rerank.data.io import write_jsonl
from rerank.testing import synthetic_ranking_examples
from rerank.trainers import sft

FIRST_TPL = ('name: first-tiny\nidentifiers: letters\nassistant_prefix: "["\n'
             'user: "Q: {{ query }}\\n{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Rank {{ num }}:"\n')


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = erank_workdir(tmp_path_factory.mktemp("runs"), data_seed=3)
    (d / "first.yaml").write_text(FIRST_TPL)
    return d


def _cfg(work: Path, **over: Any) -> dict[str, Any]:
    cfg = {"model": str(work / "llm"), "head": "erank", "template": str(work / "erank.yaml"), "max_doc_tokens": 24,
           "data": {"path": str(work / "train.jsonl"), "dev_fraction": 0.0}, "batch_size": 4, "max_steps": 6,
           "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-3}
    cfg.update(over)
    return cfg


class Killed(RuntimeError):
    pass


def _losses(out: Path) -> dict[int, float]:
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_kill_and_resume_matches_uninterrupted(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trl
    from safetensors.torch import load_file

    full = sft(_cfg(work), work / "full")
    assert full["global_step"] == 6

    original = trl.SFTTrainer.training_step

    def dies_at_step_3(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == 3:
            raise Killed("simulated crash after step 3")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", dies_at_step_3)
    with pytest.raises(Killed):
        sft(_cfg(work), work / "resumed")
    assert sorted(p.name for p in (work / "resumed" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.setattr(trl.SFTTrainer, "training_step", original)
    resumed = sft(_cfg(work), work / "resumed", resume=True)
    assert resumed["global_step"] == 6
    a, b = _losses(work / "full"), _losses(work / "resumed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:  # same batches in the same order -> the same per-step losses
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5)
    wa = load_file(str(work / "full" / "model" / "model.safetensors"))
    wb = load_file(str(work / "resumed" / "model" / "model.safetensors"))
    assert all((wa[k] - wb[k]).abs().max() < 1e-4 for k in wa)
    with pytest.raises(Exception, match="no checkpoint"):
        sft(_cfg(work), work / "fresh", resume=True)


def test_lora_merged_with_adapter_kept(work: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = work / "lora"
    r = sft(_cfg(work, max_steps=2, lora={"enabled": True, "r": 4, "alpha": 8}), out)
    assert r["global_step"] == 2
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))  # a plain model: LoRA merged
    assert not any("lora" in n for n, _ in model.named_parameters())
    record = json.loads((out / "rerank_train.json").read_text())
    assert record["config"]["lora"]["r"] == 4 and "git_hash" in record


def test_first_ranking_loss_is_added(work: Path) -> None:
    out = work / "first"
    r = sft(_cfg(work, head="first", template=str(work / "first.yaml"), window=4, max_steps=2, batch_size=2), out)
    assert r["global_step"] == 2
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "ranknet_loss" in h]
    assert logged and all(h["ranknet_loss"] > 0 for h in logged)


def test_first_ranking_loss_reads_the_lm_forward(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranking loss takes the identifier logits from the LM forward's hidden state, and they equal a separate
    forward over the prompts (so the step does one forward, not two)."""
    import torch

    from rerank.methods.first import training

    original = training.RankingSFTTrainer.ranking_loss
    shared: list[float] = []

    def checked(self: Any, model: Any, inputs: dict[str, Any], hidden: Any = None) -> Any:
        loss = original(self, model, inputs, hidden)
        if hidden is not None:
            with torch.no_grad():
                separate = original(self, model, inputs, None)
            assert float(loss) == pytest.approx(float(separate), rel=1e-4, abs=1e-5)
            shared.append(float(loss))
        return loss

    monkeypatch.setattr(training.RankingSFTTrainer, "ranking_loss", checked)
    r = sft(_cfg(work, head="first", template=str(work / "first.yaml"), window=4, max_steps=2, batch_size=2),
            work / "first-shared")
    assert r["global_step"] == 2
    assert len(shared) == 2 and all(v > 0 for v in shared)


def test_first_ranking_loss_under_gradient_accumulation(work: Path) -> None:
    """Two micro-batches of one accumulated into a step move the weights as one batch of two does (the ranking loss
    is averaged over the accumulation, like the LM loss)."""
    from safetensors.torch import load_file

    base = _cfg(work, head="first", template=str(work / "first.yaml"), window=4, max_steps=1, save_steps=1,
                learning_rate=1e-2)
    sft({**base, "batch_size": 2}, work / "first-b2")
    sft({**base, "batch_size": 1, "grad_accum": 2}, work / "first-b1x2")
    start = load_file(str(work / "llm" / "model.safetensors"))
    a = load_file(str(work / "first-b2" / "model" / "model.safetensors"))
    b = load_file(str(work / "first-b1x2" / "model" / "model.safetensors"))
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # the step moved the weights
    # Adam's first step moves a weight by about +-lr (1e-2), so a ranking loss weighted differently under accumulation
    # flips gradient signs and leaves differences of 2e-2; float noise between one padded batch of two and two batches
    # of one stays below 2e-4 (Intel Xeon and AMD EPYC kernels differ there), hence the 1e-3 bound
    assert all(float((a[k] - b[k]).abs().max()) < 1e-3 for k in a)


def test_grpo_unparseable_completions_get_the_format_penalty(work: Path) -> None:
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.trainers.grpo_trainer import GRPOTrainConfig, reward_function
    from rerank.trainers.task import build_task

    tok = AutoTokenizer.from_pretrained(str(work / "llm"))
    for head, extra in (("erank", {}), ("first", {"template": str(work / "first.yaml"), "window": 4}),
                        ("grouprank", {"window": 4}), ("listwise", {"window": 4}), ("yes-no", {})):
        cfg = from_dict(GRPOTrainConfig, {**_cfg(work, head=head, batch_size=8, num_generations=4), **extra})
        if head not in ("erank",):
            cfg.template = extra.get("template", "")
        task = build_task(head, tok, cfg)
        ex = synthetic_ranking_examples(1, num_candidates=4, seed=9)[0]
        rows = task.grpo_rows(ex)
        cols = [k for k in rows[0] if k != "prompt"]
        fn = reward_function(task, cols)
        garbage = ["", "\x00}{", "<answer>{\"[1]\": 'x'</answer>", "[Z] > [Q]", "11</answer>"]
        for text in garbage:
            kwargs = {k: [r[k] for r in rows] for k in cols}
            out = fn(prompts=[r["prompt"] for r in rows], completions=[text] * len(rows), **kwargs)
            assert len(out) == len(rows) and all(v <= 0.0 for v in out), (head, text, out)


def test_good_completions_score_higher_than_bad(work: Path) -> None:
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.trainers.grpo_trainer import GRPOTrainConfig
    from rerank.trainers.task import build_task

    tok = AutoTokenizer.from_pretrained(str(work / "llm"))
    ex = synthetic_ranking_examples(1, num_candidates=4, seed=9)[0]
    cfg = from_dict(GRPOTrainConfig, _cfg(work, head="grouprank", template="", window=4, batch_size=8))
    task = build_task("grouprank", tok, cfg)
    row = task.grpo_rows(ex)[0]
    gold = {f"[{k + 1}]": int(g * 5) for k, g in enumerate(row["gold"])}
    worst = {f"[{k + 1}]": int((2 - g) * 5) for k, g in enumerate(row["gold"])}
    good = task.rewards([f"<reason>x</reason><answer>{json.dumps(gold)}</answer>"], [row])[0]
    bad = task.rewards([f"<reason>x</reason><answer>{json.dumps(worst)}</answer>"], [row])[0]
    assert good > bad > -0.1
    assert task.rewards(["<reason>x</reason><answer>{not json</answer>"], [row])[0] == pytest.approx(-0.1)
    assert task.rewards(["no tags at all"], [row])[0] == pytest.approx(-0.5)
    cfg = from_dict(GRPOTrainConfig, _cfg(work, head="erank", batch_size=10))
    task = build_task("erank", tok, cfg)
    rows = [{"prompt": "", "qid": "q", "label": g, "reference": 0.0} for g in (2, 0, 0)]
    assert task.rewards(["9</answer>", "1</answer>", "0</answer>"], rows)[0] == pytest.approx(1.0)
    assert task.rewards(["1</answer>", "9</answer>", "0</answer>"], rows)[1] < -0.5


def test_cross_encoder_sft_tiny(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from rerank.heads.base import Reranker
    from rerank.testing import tiny_bert

    model = tiny_bert(tmp_path / "bert1", num_labels=1, seed=0)
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), tmp_path / "t.jsonl")
    for loss in ("bce", "listnet", "mnrl"):
        out = tmp_path / f"ce-{loss}"
        r = sft({"model": str(model), "head": "cross-encoder", "loss": loss, "max_length": 64, "batch_size": 4,
                 "max_steps": 3, "save_steps": 3, "learning_rate": 1e-4, "eval_steps": 3,
                 "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.3}}, out)
        assert r["global_step"] == 3 and r["selected_by"] == "dev nDCG@10"
        ranked = Reranker.load("cross-encoder", model=str(out / "model")).rerank("q", ["a b", "c d"])
        assert len(ranked.results) == 2


def test_bf16_is_honoured_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bf16: true`` on a CPU-only run trains under torch's bfloat16 autocast (it used to be dropped silently)."""
    import torch
    from transformers import BertForSequenceClassification

    from rerank.testing import tiny_bert

    seen: list[bool] = []
    forward = BertForSequenceClassification.forward

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", recording)
    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    write_jsonl(synthetic_ranking_examples(8, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    for bf16 in (False, True):
        seen.clear()
        r = sft({"model": str(model), "head": "cross-encoder", "loss": "mnrl", "max_length": 64, "batch_size": 4,
                 "max_steps": 2, "save_steps": 2, "use_cpu": True, "bf16": bf16,
                 "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0}}, tmp_path / f"ce-{bf16}")
        assert r["global_step"] == 2
        assert seen and set(seen) == {bf16}


@pytest.mark.parametrize(("bf16", "native", "warned"), [(True, False, True), (True, True, False), (False, False, False)])
def test_bf16_on_a_cpu_without_native_bfloat16_is_warned(bf16: bool, native: bool, warned: bool,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Emulated bfloat16 made a CPU training ~10x slower than float32 with no word said: now it is said, once."""
    from rerank.trainers import common
    from rerank.trainers.common import CommonTrainConfig, training_kwargs
    from rerank.trainers.data import DataConfig

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="rerank.trainers.common"):
        cfg = CommonTrainConfig(model="m", head="erank", use_cpu=True, bf16=bf16, data=DataConfig(path="t.jsonl"))
        kw = training_kwargs(cfg, tmp_path, has_dev=False)
    assert kw["bf16"] is bf16
    assert any("set bf16: false" in r.getMessage() for r in caplog.records) is warned


def test_mnrl_uses_the_no_duplicates_batch_sampler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mnrl trains with sentence-transformers' NO_DUPLICATES sampler (an in-batch negative must not be a copy of a
    row's own query or positive); bce keeps the library's default sampler."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    from rerank.testing import tiny_bert

    samplers: list[Any] = []
    init = CrossEncoderTrainer.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        samplers.append(kwargs["args"].batch_sampler)
        init(self, *args, **kwargs)

    monkeypatch.setattr(CrossEncoderTrainer, "__init__", recording)
    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    write_jsonl(synthetic_ranking_examples(8, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    for loss in ("mnrl", "bce"):
        sft({"model": str(model), "head": "cross-encoder", "loss": loss, "max_length": 64, "batch_size": 4,
             "max_steps": 1, "save_steps": 1, "use_cpu": True,
             "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0}}, tmp_path / f"ce-{loss}")
    assert samplers == ["no_duplicates", "batch_sampler"]  # BatchSamplers is a str enum


def _training_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every training-mode forward of a BERT cross-encoder, appended as they run."""
    from transformers import BertForSequenceClassification

    sizes: list[int] = []
    forward = BertForSequenceClassification.forward

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            sizes.append(int(kwargs["input_ids"].shape[0]))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", recording)
    return sizes


def test_mnrl_in_batch_negatives_set_the_forward_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``in_batch_negatives`` k: each mnrl step scores every row against its positive, its hard negatives and k other
    rows' documents (one forward per column: 1 + negatives_per_positive + k), and k = 0 (which the library itself
    cannot draw) runs without in-batch negatives; it is refused for any other loss."""
    from rerank.errors import ConfigError
    from rerank.testing import tiny_bert
    from rerank.trainers.base import load_train_config
    from rerank.trainers.sft_trainer import SFTTrainConfig

    calls = _training_forwards(monkeypatch)
    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    write_jsonl(synthetic_ranking_examples(8, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    for k in (0, 2):
        calls.clear()
        r = sft({"model": str(model), "head": "cross-encoder", "loss": "mnrl", "in_batch_negatives": k,
                 "max_length": 64, "batch_size": 4, "max_steps": 1, "save_steps": 1, "use_cpu": True,
                 "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0, "negatives_per_positive": 2}},
                tmp_path / f"ce-{k}")
        assert r["global_step"] == 1
        assert calls == [4] * (1 + 2 + k)
    for k in (2, 4):  # the default value too: set with another loss it would do nothing
        with pytest.raises(ConfigError, match="in_batch_negatives is an option of"):
            load_train_config(SFTTrainConfig, None, ["model=m", "head=cross-encoder", "loss=bce", "data.path=x",
                                                     f"in_batch_negatives={k}"])
    unset = load_train_config(SFTTrainConfig, None, ["model=m", "head=cross-encoder", "loss=mnrl", "data.path=x"])
    assert unset.in_batch_negatives == 4
    with pytest.raises(ConfigError, match="in_batch_negatives must be >= 0"):
        load_train_config(SFTTrainConfig, None, ["model=m", "head=cross-encoder", "loss=mnrl", "data.path=x",
                                                 "in_batch_negatives=-1"])


def test_cross_encoder_contrastive_rows() -> None:
    """mnrl rows: one per positive, its own query's negatives only, n_neg of them (repeats only when short)."""
    from rerank.methods.cross_encoder.train import _contrastive_rows

    def cand(i: int) -> dict[str, str]:
        return {"id": f"d{i}", "text": f"doc {i}", "title": ""}

    examples = [
        {"query": "q1", "candidates": [cand(i) for i in range(8)], "labels": [2, 0, 1, 0, 0, 0, 0, 0]},
        {"query": "q2", "candidates": [cand(i) for i in range(10, 12)], "labels": [0, 1]},
        {"query": "q3", "candidates": [cand(20)], "labels": [1]},
    ]
    rows = _contrastive_rows(examples, 4, seed=0)
    assert [(r["query"], r["positive"]) for r in rows] == [("q1", "doc 0"), ("q1", "doc 2"), ("q2", "doc 11")]
    q1_negs = {f"doc {i}" for i in (1, 3, 4, 5, 6, 7)}
    for r in rows[:2]:
        negs = [r[f"negative_{i}"] for i in range(1, 5)]
        assert len(set(negs)) == 4 and set(negs) <= q1_negs
    assert [rows[2][f"negative_{i}"] for i in range(1, 5)] == ["doc 10"] * 4
    assert "negative_5" not in rows[0]
    assert _contrastive_rows(examples, 4, seed=0) == rows


def test_accelerate_two_processes(work: Path, repo_root: Path) -> None:
    cfg = work / "acc.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(_cfg(work, max_steps=2, batch_size=2, save_steps=2)))
    out = work / "acc"
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    # a torchrun-style launch of 2 processes; with no GPU the trainer runs on CPU and accelerate uses gloo
    # (MULTI_CPU). accelerate's own ``--cpu`` flag would start a single process.
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "rerank", "train", "sft", "--config", str(cfg), "--output", str(out)],
                       check=False, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (out / "model" / "model.safetensors").is_file()
    # 12 queries x 4 candidates = 48 rows; 2 processes x batch 2 = 4 rows a step -> 12 steps an epoch
    assert state["epoch"] == pytest.approx(2 / 12), state["epoch"]


def test_first_plackett_luce_rollouts_score_first_logits(work: Path) -> None:
    """FIRST's Plackett-Luce GRPO: each rollout is a complete permutation the FIRST task parses, only its identifier
    tokens are in the loss mask, and the loss path's per-token log-probabilities equal the rollout's and an
    independent PL computation from the unpadded prompt's first-position logits."""
    import torch

    from rerank.config import from_dict
    from rerank.trainers.base import TrainContext
    from rerank.trainers.grpo_trainer import GRPOTrainConfig, GRPOTrainer
    from rerank.trainers.task import build_task

    cfg = from_dict(GRPOTrainConfig, _cfg(work, head="first", template=str(work / "first.yaml"), window=4,
                                          batch_size=8, num_generations=4, rollout="plackett-luce",
                                          temperature=0.7, max_steps=2))
    trainer = GRPOTrainer().build(cfg, TrainContext(output=work / "pl"))
    task = build_task("first", trainer.processing_class, cfg)
    rows = [r for ex in synthetic_ranking_examples(2, num_candidates=4, seed=3) for r in task.grpo_rows(ex)]
    prompts = [r["prompt"] for r in rows for _ in range(3)]
    torch.manual_seed(0)
    rows_run: list[int] = []
    hook = trainer.model.register_forward_hook(lambda _m, args, kwargs, _o: rows_run.append(len(kwargs["input_ids"])),
                                               with_kwargs=True)
    out = trainer._plackett_luce_rollout(prompts, trainer)
    hook.remove()
    assert rows_run == [len(rows)]  # one forward row per distinct prompt, not per rollout
    tok = trainer.processing_class
    id_tokens = task.identifier_token_ids()
    model = trainer.model.eval()
    for i, prompt in enumerate(prompts):
        comp, mask, lps = out["completion_ids"][i], out["env_mask"][i], out["logprobs"][i]
        parsed = task.parse(tok.decode(comp, skip_special_tokens=True), rows[i // 3])
        assert parsed.valid and sorted(parsed.order) == [0, 1, 2, 3]
        assert [t for t, m in zip(comp, mask, strict=True) if m] == [id_tokens[k] for k in parsed.order]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([out["prompt_ids"][i]])).logits[0, -1, id_tokens].float() / 0.7
        expect = [float(logits[k] - torch.logsumexp(logits[parsed.order[j:]], 0))
                  for j, k in enumerate(parsed.order)]
        assert [lp for lp, m in zip(lps, mask, strict=True) if m] == pytest.approx(expect, abs=1e-4)
    width = max(map(len, out["prompt_ids"]))
    clen = max(map(len, out["completion_ids"]))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p + c + [pad] * (clen - len(c))
                        for p, c in zip(out["prompt_ids"], out["completion_ids"], strict=True)])
    att = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (clen - len(c))
                        for p, c in zip(out["prompt_ids"], out["completion_ids"], strict=True)])
    rows_run.clear()
    hook = trainer.model.register_forward_hook(lambda _m, args, kwargs, _o: rows_run.append(len(kwargs["input_ids"])),
                                               with_kwargs=True)
    with torch.no_grad():
        logps, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, att, clen, batch_size=5,
                                                                   compute_entropy=True)
    hook.remove()
    assert sum(rows_run) == len(rows)
    for i, (lps, mask) in enumerate(zip(out["logprobs"], out["env_mask"], strict=True)):
        got = [float(logps[i, t]) for t, m in enumerate(mask) if m]
        assert got == pytest.approx([lp for lp, m in zip(lps, mask, strict=True) if m], abs=1e-4)
        assert float(ent[i, next(t for t, m in enumerate(mask) if m)]) > 0
    r = GRPOTrainer().train(cfg, TrainContext(output=work / "pl-run"))
    assert r["global_step"] == 2 and all(math.isfinite(v) for v in r["logged_rewards"])


@pytest.mark.parametrize("over", [{"head": "erank", "window": 10}, {"use_vllm": True}])
def test_plackett_luce_rollout_needs_first_without_vllm(work: Path, over: dict[str, Any]) -> None:
    from rerank.config import from_dict
    from rerank.errors import ConfigError
    from rerank.trainers.grpo_trainer import GRPOTrainConfig

    base = _cfg(work, head="first", template=str(work / "first.yaml"), window=4, batch_size=8, num_generations=4,
                rollout="plackett-luce")
    with pytest.raises(ConfigError, match="plackett-luce"):
        from_dict(GRPOTrainConfig, {**base, **over})


def _with_teacher(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Teacher scores that follow the labels (grade + 0.1 * position, so no two tie)."""
    return [{**e, "teacher_scores": [g + 0.1 * i for i, g in enumerate(e["labels"])]} for e in examples]


def test_cross_encoder_distillation_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """margin-mse and listwise-kl train on teacher scores (one forward per pair of each row: listwise-kl scores
    group_size candidates per query, margin-mse 1 + negatives_per_positive), save a loadable model, and a row without
    teacher scores fails before any model is loaded."""
    from rerank.errors import ConfigError
    from rerank.heads.base import Reranker
    from rerank.testing import tiny_bert

    pairs = _training_forwards(monkeypatch)
    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    examples = synthetic_ranking_examples(8, num_candidates=6, seed=4)
    write_jsonl(_with_teacher(examples), tmp_path / "t.jsonl")
    base = {"model": str(model), "head": "cross-encoder", "max_length": 64, "batch_size": 4, "max_steps": 2,
            "save_steps": 2, "use_cpu": True, "learning_rate": 1e-4}
    for loss, extra, per_step in (("listwise-kl", {"group_size": 4, "distill_temperature": 0.5}, 4 * 4),
                                  ("margin-mse", {"positive_bonus": 1.0}, 4 * 3)):
        pairs.clear()
        out = tmp_path / loss
        data = {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0,
                **({"negatives_per_positive": 2} if loss == "margin-mse" else {})}  # listwise-kl does not read it
        r = sft({**base, **extra, "loss": loss, "data": data}, out)
        assert r["global_step"] == 2 and sum(pairs) == per_step * 2
        assert len(Reranker.load("cross-encoder", model=str(out / "model")).rerank("q", ["a b", "c d"]).results) == 2
    write_jsonl(examples, tmp_path / "plain.jsonl")
    monkeypatch.setattr("sentence_transformers.cross_encoder.CrossEncoder.__init__",
                        lambda *a, **k: pytest.fail("the model was loaded before the data was checked"))
    with pytest.raises(ConfigError, match="no 'teacher_scores'"):
        sft({**base, "loss": "listwise-kl", "data": {"path": str(tmp_path / "plain.jsonl"), "dev_fraction": 0.0}},
            tmp_path / "bad")


def test_cross_encoder_distillation_rows() -> None:
    """Targets = teacher / temperature + bonus for judged positives; a listwise group keeps every positive; the
    margin-mse row's first document is a judged positive, else the teacher's best."""
    import random

    from rerank.methods.cross_encoder.train import _distill_rows, _group

    def cand(i: int) -> dict[str, str]:
        return {"id": f"d{i}", "text": f"doc {i}", "title": ""}

    e1 = {"query": "q1", "candidates": [cand(i) for i in range(6)], "labels": [0, 0, 1, 0, 0, 0],
          "teacher_scores": [0.9, 0.1, 0.5, 0.3, 0.2, 0.0]}
    e2 = {"query": "q2", "candidates": [cand(i) for i in range(3)], "labels": [0, 0, 0],
          "teacher_scores": [0.2, 0.8, 0.4]}
    kl = _distill_rows([e1, e2], "listwise-kl", 2, 0, 0.5, 1.0, seed=0)
    assert kl[0]["labels"] == pytest.approx([1.8, 0.2, 2.0, 0.6, 0.4, 0.0]) and len(kl[0]["docs"]) == 6
    for seed in range(5):
        idx = _group(e1, 3, random.Random(seed))
        assert len(idx) == 3 and 2 in idx and idx == sorted(idx)
    mm = _distill_rows([e1, e2], "margin-mse", 2, 0, 1.0, 0.0, seed=0)
    assert mm[0]["positive"] == "doc 2" and mm[1]["positive"] == "doc 1"
    assert mm[0]["label"][0] == pytest.approx(0.5) and len(mm[0]["label"]) == 3
    assert {mm[1]["negative_1"], mm[1]["negative_2"]} == {"doc 0", "doc 2"}


def test_distillation_options_belong_to_distillation_losses() -> None:
    from rerank.errors import ConfigError
    from rerank.trainers.base import load_train_config
    from rerank.trainers.sft_trainer import SFTTrainConfig

    base = ["model=m", "head=cross-encoder", "data.path=x"]
    with pytest.raises(ConfigError, match="positive_bonus is an option of the cross-encoder's distillation"):
        load_train_config(SFTTrainConfig, None, [*base, "loss=mnrl", "positive_bonus=1"])
    with pytest.raises(ConfigError, match="group_size is an option of loss 'listwise-kl'"):
        load_train_config(SFTTrainConfig, None, [*base, "loss=margin-mse", "group_size=4"])
    with pytest.raises(ConfigError, match="distill_temperature must be > 0"):
        load_train_config(SFTTrainConfig, None, [*base, "loss=listwise-kl", "distill_temperature=0"])
    cfg = load_train_config(SFTTrainConfig, None, [*base, "loss=listwise-kl"])
    assert (cfg.group_size, cfg.distill_temperature, cfg.positive_bonus) == (0, 1.0, 0.0)


def test_window_order_first_stage_keeps_the_data_order(work: Path) -> None:
    """``window_order: first_stage`` cuts windows in the data's (first-stage) order and puts candidates without a
    first-stage score (qrels positives the recipe appends) at seeded places, so the last passage is no tell; the
    SFT ranks are still the teacher's; ``shuffled`` (the default) reorders; an unknown order is an error."""
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.errors import ConfigError
    from rerank.trainers.data import teacher_order
    from rerank.trainers.sft_trainer import SFTTrainConfig
    from rerank.trainers.task import build_task

    tok = AutoTokenizer.from_pretrained(str(work / "llm"))
    ex = synthetic_ranking_examples(1, num_candidates=8, seed=4)[0]
    for j, c in enumerate(ex["candidates"]):
        c["score"] = float(100 - j)
    del ex["candidates"][-1]["score"]  # a positive the first stage missed, appended last as the recipe does

    def task(order: str) -> Any:
        cfg = from_dict(SFTTrainConfig, _cfg(work, head="first", template=str(work / "first.yaml"), window=8,
                                             window_order=order))
        return build_task("first", tok, cfg)

    stage, shuffled = task("first_stage"), task("shuffled")
    assert shuffled.cfg.window_order == from_dict(SFTTrainConfig, _cfg(work)).window_order  # the default
    got = stage.windows(ex, 8)[0]
    assert sorted(got) == list(range(8)) and [j for j in got if j != 7] == list(range(7))
    assert shuffled.windows(ex, 8)[0] != list(range(8))
    places = {stage.windows({**ex, "qid": f"q{q}"}, 8)[0].index(7) for q in range(8)}
    assert len(places) > 1  # seeded per query, not always last
    rank = {j: r for r, j in enumerate(teacher_order(ex), 1)}
    row = stage.sft_rows(ex)[0]
    assert row["rank_ranks"] == [rank[j] for j in got]
    # with no first-stage scores at all, the data's order as it is
    bare = {**ex, "candidates": [{k: v for k, v in c.items() if k != "score"} for c in ex["candidates"]]}
    assert stage.windows(bare, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ConfigError, match="window_order"):
        from_dict(SFTTrainConfig, _cfg(work, head="first", window_order="bm25"))


def test_grpo_epsilon_clips_only_with_several_iterations_per_generation(work: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With num_iterations 1 every step is on-policy (ratio 1): the clip range changes nothing, so setting it there is
    refused (it trained silently before, to bit-identical weights at 0.5 and 1e-4). With 2, the second
    step reuses the batch under moved weights, so a tight clip range gives other weights than a loose one. (The
    tiny random model's completions would all earn the format penalty, so a reward by completion length gives the
    rollouts of a prompt different advantages.)"""
    from safetensors.torch import load_file

    from rerank.config import from_dict
    from rerank.errors import ConfigError
    from rerank.trainers import grpo_trainer
    from rerank.trainers.api import run_trainer
    from rerank.trainers.grpo_trainer import GRPOTrainConfig

    def by_length(task: Any, columns: list[str]) -> Any:
        def reward(prompts: list[str], completions: list[Any], **kwargs: Any) -> list[float]:
            return [float(len(c) % 5) for c in completions]
        return reward

    monkeypatch.setattr(grpo_trainer, "reward_function", by_length)

    def weights(name: str, **over: Any) -> dict[str, Any]:
        cfg = _cfg(work, batch_size=20, num_generations=5, max_steps=2, save_steps=2, learning_rate=5e-3,
                   temperature=1.0, **over)  # 20: one whole query (4 documents x 5 rollouts) a batch
        run_trainer("grpo", cfg, work / name)
        return load_file(str(work / name / "model" / "model.safetensors"))

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(bool((a[k] == b[k]).all()) for k in a)

    for eps in (0.5, 1e-4):
        with pytest.raises(ConfigError, match=f"epsilon {eps} clips the ratio .* set num_iterations > 1"):
            from_dict(GRPOTrainConfig, _cfg(work, batch_size=10, num_generations=5, epsilon=eps))
    assert not same(weights("mu2-wide", epsilon=0.5, num_iterations=2),
                    weights("mu2-tight", epsilon=1e-4, num_iterations=2))
    for bad in ({"num_iterations": 0}, {"epsilon": 0.0}):
        with pytest.raises(ConfigError, match="num_iterations|epsilon"):
            from_dict(GRPOTrainConfig, _cfg(work, batch_size=10, num_generations=5, **bad))
    if importlib.util.find_spec("vllm") is None:  # refused before the data is read or the model loaded
        cfg = _cfg(work, batch_size=10, num_generations=5, use_vllm=True, data={"path": str(work / "nope.jsonl")})
        with pytest.raises(ConfigError, match="use_vllm needs vLLM in this environment"):
            run_trainer("grpo", cfg, work / "no-vllm")


def test_sft_examples_longer_than_max_length_are_named(work: Path, caplog: pytest.LogCaptureFixture) -> None:
    """TRL drops the examples whose target max_length cuts off: none left is an error saying so (torch's was
    "num_samples=0"), some dropped a warning with the count."""
    from types import SimpleNamespace

    from rerank.errors import ConfigError
    from rerank.trainers.api import run_trainer
    from rerank.trainers.sft_trainer import _check_fits

    with pytest.raises(ConfigError, match="every training example is longer than max_length=16 tokens"):
        run_trainer("sft", _cfg(work, max_length=16), work / "too-short")
    assert not (work / "too-short" / "model").exists()
    with caplog.at_level("WARNING", logger="rerank.trainers.sft_trainer"):
        _check_fits([1, 2, 3], 5, SimpleNamespace(max_length=99))
    assert "2 of 5 training examples are longer than max_length=99 tokens and were dropped" in caplog.text
