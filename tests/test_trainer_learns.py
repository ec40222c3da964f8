"""Proof that the shared trainer learns: SFT then GRPO of tiny LLM heads on the synthetic key-word task.

For each LLM head (ERank, FIRST, GroupRank): SFT lowers the loss and changes the weights; GRPO from the SFT output
raises the mean reward and its nDCG@10 on held-out synthetic queries (ranked by the inference head, as
``rerank eval`` would) beats the SFT starting point's. Short test templates keep prompts small so the tiny models
learn within the CI budget (the template is an ordinary config option).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rerank.data.io import write_jsonl
from rerank.testing import synthetic_ranking_examples, tiny_llm
from rerank.trainers import grpo, sft
from rerank.trainers.evaluate import mean_ndcg

TEMPLATES = {
    "erank": (
        'name: erank-tiny\nuser: "Q: {{ query }}\\nD: {{ document }}\\nScore 0-10:"\n'
        'assistant_prefix: "<answer>"\nanswer_open: "<answer>"\nanswer_close: "</answer>"\n'
    ),
    "first": (
        'name: first-tiny\nidentifiers: letters\nassistant_prefix: "["\n'
        'user: "Q: {{ query }}\\n{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Rank {{ num }}:"\n'
    ),
    "grouprank": (
        'name: grouprank-tiny\n'
        'user: "Q: {{ query }}\\n{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Score {{ num }}:"\n'
    ),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("learn")
    tiny_llm(d / "llm", seed=0)
    write_jsonl(synthetic_ranking_examples(48, num_candidates=6, seed=1), d / "train.jsonl")
    write_jsonl(synthetic_ranking_examples(16, num_candidates=6, seed=2), d / "heldout.jsonl")
    for name, text in TEMPLATES.items():
        (d / f"{name}.yaml").write_text(text)
    return d


def _heldout(d: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (d / "heldout.jsonl").read_text().splitlines()]


def _weights_changed(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return any(not (wa[k] == wb[k]).all() for k in wa)


HEADS = {
    # head: (sft overrides, grpo overrides, head options for evaluation)
    "erank": (
        {"learning_rate": 3e-3, "max_steps": 40, "batch_size": 8},
        {"learning_rate": 2e-5, "max_steps": 12, "batch_size": 30, "num_generations": 5, "temperature": 1.0},
        {"scoring": "expectation"},
    ),
    "first": (
        {"learning_rate": 3e-3, "max_steps": 40, "batch_size": 4, "window": 6},
        {"learning_rate": 2e-5, "max_steps": 12, "batch_size": 8, "num_generations": 4, "window": 6},
        {"window": 6, "stride": 3},
    ),
    "grouprank": (
        {"learning_rate": 3e-3, "max_steps": 40, "batch_size": 4, "window": 6},
        {"learning_rate": 2e-5, "max_steps": 12, "batch_size": 8, "num_generations": 4, "window": 6},
        {"group_size": 6, "repeats": 1, "fusion_weight": 1.0, "max_new_tokens": 64},
    ),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_sft_then_grpo_learns(task_dir: Path, head: str) -> None:
    sft_over, grpo_over, eval_opts = HEADS[head]
    common = {"head": head, "template": str(task_dir / f"{head}.yaml"), "max_doc_tokens": 40,
              "data": {"path": str(task_dir / "train.jsonl"), "dev_fraction": 0.0}, "save_steps": 1000,
              "logging_steps": 5}
    sft_out = task_dir / f"{head}-sft"
    r1 = sft({**common, **sft_over, "model": str(task_dir / "llm")}, sft_out)
    assert r1["global_step"] == sft_over["max_steps"]
    assert r1["last_logged_loss"] < 0.7 * r1["first_logged_loss"]
    assert _weights_changed(task_dir / "llm", sft_out)
    state = json.loads((sft_out / "checkpoints" / f"checkpoint-{sft_over['max_steps']}" / "trainer_state.json")
                       .read_text())
    assert state["global_step"] == sft_over["max_steps"]

    grpo_out = task_dir / f"{head}-grpo"
    r2 = grpo({**common, **grpo_over, "model": str(sft_out)}, grpo_out)
    assert r2["global_step"] == grpo_over["max_steps"]
    assert _weights_changed(sft_out, grpo_out)
    assert r2["last_logged_reward"] > r2["first_logged_reward"]

    heldout = _heldout(task_dir)
    opts = {"template": str(task_dir / f"{head}.yaml"), "max_doc_tokens": 40, **eval_opts}
    ndcg_sft = mean_ndcg(str(sft_out), head, heldout, **opts)
    ndcg_grpo = mean_ndcg(str(grpo_out), head, heldout, **opts)
    print(f"{head}: nDCG@10 SFT {ndcg_sft:.4f} -> GRPO {ndcg_grpo:.4f}")
    assert ndcg_grpo > ndcg_sft
