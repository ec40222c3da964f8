"""Proof that the shared trainer learns: SFT then GRPO of tiny LLM heads on the synthetic key-word task.

For each LLM head (ERank, FIRST, GroupRank), in CI: SFT lowers the loss and changes the weights, GRPO from the SFT
output updates it, and GRPO raises the mean reward and beats its SFT start on 300 fresh held-out synthetic queries
(ranked by the inference head, as ``rerank eval`` would), judged by a paired randomization test on the per-query
nDCG@10 (p < 0.05), not by one mean. FIRST's and GroupRank's GRPO start from a checkpoint of their SFT run that has
not converged, on queries the SFT never saw (GRPO_FROM). Short test templates keep prompts small so the tiny models
learn within the CI budget (the template is an ordinary config option).

``RERANK_LEARN_SEED`` (default 0) seeds everything here: the tiny model's initial weights, the synthetic data and the
trainers. The claims are checked on seeds 0, 1 and 2 (docs/results.md, "Learning claims"); CI runs seed 0.
A mutation check (``test_the_judge_rejects_a_noop_grpo``) shows the judge fails when GRPO changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rerank.data.io import write_jsonl
from rerank.testing import synthetic_ranking_examples, tiny_llm
from rerank.trainers import grpo, sft
from rerank.eval.leaderboard import randomization_test
from rerank.trainers.evaluate import mean_ndcg, per_query_ndcg

# The first test of a head trains its SFT (GroupRank's 1,000 steps x 16 take ~11 min on one CI core), beyond the
# project's 900 s per-test guard against hangs.
pytestmark = pytest.mark.timeout(1800)

SEED = int(os.environ.get("RERANK_LEARN_SEED", "0"))
# the judge: GRPO's per-query nDCG@10 on the 300 held-out queries against its start's, paired randomization test
ALPHA = 0.05

TEMPLATES = {
    "erank": (
        'name: erank-tiny\nuser: "Q: {{ query }}\\nD: {{ document }}\\nScore 0-10:"\n'
        'assistant_prefix: "<answer>"\nanswer_open: "<answer>"\nanswer_close: "</answer>"\n'
    ),
    "first": (
        'name: first-tiny\nidentifiers: letters\nassistant_prefix: "["\n'
        'user: "Q: {{ query }}\\n{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Rank {{ num }}:"\n'
    ),
    # The id follows its passage: under causal attention only a token after the passage can summarise it, and the tiny
    # 2-layer model learns GroupRank's per-id scores from that layout (1,500 SFT steps x 16: 0.96, id first 0.76).
    "grouprank": (
        'name: grouprank-tiny\n'
        'user: "Q: {{ query }}\\n{% for p in passages %}{{ p.text }} [{{ p.id }}]\\n{% endfor %}Score {{ num }}:"\n'
    ),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("learn")
    tiny_llm(d / "llm", seed=SEED)
    base = 1000 * SEED
    for n in sorted({cfg[3] for cfg in HEADS.values()}):
        write_jsonl(synthetic_ranking_examples(n, num_candidates=6, seed=base + 1), d / f"train-{n}.jsonl")
    write_jsonl(synthetic_ranking_examples(32, num_candidates=6, seed=base + 2), d / "heldout.jsonl")
    write_jsonl(synthetic_ranking_examples(300, num_candidates=6, seed=base + 3), d / "heldout-300.jsonl")
    write_jsonl(synthetic_ranking_examples(800, num_candidates=6, seed=base + 4), d / "grpo-fresh.jsonl")
    for name, text in TEMPLATES.items():
        (d / f"{name}.yaml").write_text(text)
    return d


def _heldout(d: Path, name: str = "heldout") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()]


def _weights_changed(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return any(not (wa[k] == wb[k]).all() for k in wa)


HEADS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]] = {
    # head: (sft overrides, grpo overrides, head options for evaluation, number of training queries).
    # ERank: 100 SFT steps learn the format and some relevance (held-out nDCG@10 ~0.66); GRPO needs several whole
    # queries per step (batch 120 = 4 queries x 6 documents x G=5) for its pooled reward to carry signal.
    "erank": (
        {"learning_rate": 3e-3, "max_steps": 100, "batch_size": 8},
        {"learning_rate": 3e-5, "max_steps": 30, "batch_size": 120, "num_generations": 5, "temperature": 1.0},
        {"scoring": "expectation"},
        200,
    ),
    # The window heads see one prompt per query, 2,500 queries; 8 rollouts at temperature 1.0. FIRST's
    # first-identifier choice is learnt only past a sharp transition (benchmarks/first_token_probe.py): 300 steps x 16
    # with the RankNet term x50 cross it (held-out nDCG@10 0.84); FIRST's default x10, or 300 x 8, stay near a random
    # order's 0.63, the permutation's LM loss drowning the first-identifier signal. FIRST's GRPO (GRPO_FROM) samples
    # its own ranking (rollout plackett-luce) on queries the SFT never saw, from the SFT's step-200 checkpoint.
    "first": (
        {"learning_rate": 1e-3, "max_steps": 300, "batch_size": 16, "window": 6, "ranking_weight": 50.0,
         "save_steps": 100},
        {"learning_rate": 3e-5, "max_steps": 60, "batch_size": 64, "num_generations": 8, "window": 6,
         "temperature": 1.0, "rollout": "plackett-luce"},
        {"window": 6, "stride": 3},
        2500,
    ),
    # GroupRank: its per-id relevance is learnt only past a transition (as FIRST's first identifier): 1,000 SFT steps
    # x 16 over 20,000 queries (one epoch of 16,000) reach held-out nDCG@10 0.91, 500 x 16 stay at chance. GRPO starts
    # from the step-750 checkpoint (0.84) on fresh queries (GRPO_FROM).
    "grouprank": (
        {"learning_rate": 1e-3, "max_steps": 1000, "batch_size": 16, "window": 6, "save_steps": 250},
        {"learning_rate": 1e-4, "max_steps": 30, "batch_size": 64, "num_generations": 8, "window": 6,
         "temperature": 1.0},
        {"group_size": 6, "repeats": 1, "fusion_weight": 1.0, "max_new_tokens": 64},
        20000,
    ),
}


# head: (the GRPO start inside the SFT output folder, the GRPO training file); default: the SFT model, the SFT's data.
# FIRST's SFT at 300 steps has fitted its first-identifier labels, and GRPO from it does not gain on fresh queries (on
# the SFT's own queries it raises the reward and lowers held-out nDCG: docs/results.md, "Learning claims");
# from the same run's step-200 checkpoint, on 800 fresh queries, it does. GroupRank's likewise starts mid-transition.
GRPO_FROM: dict[str, tuple[str, str]] = {"first": ("checkpoints/checkpoint-200", "grpo-fresh"),
                                         "grouprank": ("checkpoints/checkpoint-750", "grpo-fresh")}


def _common(task_dir: Path, head: str) -> dict[str, Any]:
    n_train = HEADS[head][3]
    return {"head": head, "template": str(task_dir / f"{head}.yaml"), "max_doc_tokens": 40,
            "data": {"path": str(task_dir / f"train-{n_train}.jsonl"), "dev_fraction": 0.0}, "save_steps": 1000,
            "logging_steps": 5, "seed": SEED}


def _sft_once(task_dir: Path, head: str) -> tuple[dict, Path]:
    """The head's SFT from the random tiny model, trained once per module and reused by every test."""
    sft_out = task_dir / f"{head}-sft"
    if not (sft_out / "model" / "model.safetensors").exists():
        r1 = sft({**_common(task_dir, head), **HEADS[head][0], "model": str(task_dir / "llm")}, sft_out)
        (sft_out / "result.json").write_text(json.dumps(r1))
    return json.loads((sft_out / "result.json").read_text()), sft_out


def _sft_then_grpo(task_dir: Path, head: str, grpo_steps: int | None = None) -> tuple[dict, dict, Path, Path]:
    """SFT (once), then GRPO from the head's GRPO start; returns both results, that start and the GRPO folder."""
    grpo_over = dict(HEADS[head][1], **({"max_steps": grpo_steps} if grpo_steps else {}))
    r1, sft_out = _sft_once(task_dir, head)
    start_in, data_name = GRPO_FROM.get(head, ("", ""))
    start = sft_out / start_in if start_in else sft_out / "model"
    common = _common(task_dir, head)
    if data_name:
        common["data"] = {"path": str(task_dir / f"{data_name}.jsonl"), "dev_fraction": 0.0}
    grpo_out = task_dir / f"{head}-grpo-{grpo_over['max_steps']}"
    r2 = grpo({**common, **grpo_over, "model": str(start), "logging_steps": 1}, grpo_out)
    return r1, r2, start, grpo_out


@pytest.mark.parametrize("head", sorted(HEADS))
def test_sft_lowers_loss_and_grpo_updates(task_dir: Path, head: str) -> None:
    """CI-sized: SFT lowers the loss by a third, runs the configured steps and changes the weights; GRPO from the
    head's GRPO start runs its steps on finite rewards and changes the weights."""
    r1, r2, start, grpo_out = _sft_then_grpo(task_dir, head, grpo_steps=2)
    steps = HEADS[head][0]["max_steps"]
    assert r1["global_step"] == steps
    assert r1["last_logged_loss"] < 0.67 * r1["first_logged_loss"]
    assert _weights_changed(task_dir / "llm", start)
    assert r2["global_step"] == 2
    assert _weights_changed(start, grpo_out / "model")
    assert r2["first_logged_reward"] is not None and r2["first_logged_reward"] == r2["first_logged_reward"]


def test_first_sft_learns_the_first_identifier(task_dir: Path) -> None:
    """FIRST's SFT (LM + weighted RankNet on the first-identifier logits) ranks held-out synthetic queries far above a
    random order of their 6 candidates (nDCG@10 0.628 in expectation; 0.84 measured), as the FIRST head ranks them."""
    _, sft_out = _sft_once(task_dir, "first")
    opts = {"template": str(task_dir / "first.yaml"), "max_doc_tokens": 40, **HEADS["first"][2]}
    assert mean_ndcg(str(sft_out / "model"), "first", _heldout(task_dir), **opts) > 0.75


_EVALS: dict[tuple[str, str], list[float]] = {}


def _per_query(task_dir: Path, model: Path, head: str) -> list[float]:
    """Per-query nDCG@10 of ``model`` on the 300 held-out queries (cached per model folder)."""
    key = (str(model), head)
    if key not in _EVALS:
        opts = {"template": str(task_dir / f"{head}.yaml"), "max_doc_tokens": 40, **HEADS[head][2]}
        _EVALS[key] = per_query_ndcg(str(model), head, _heldout(task_dir, "heldout-300"), **opts)
    return _EVALS[key]


def _judge(task_dir: Path, head: str, start: Path, trained: Path) -> None:
    """``trained`` beats ``start``: higher mean nDCG@10 on the 300 held-out queries and a paired randomization test on
    the per-query values rejects equal means at ALPHA."""
    before, after = _per_query(task_dir, start, head), _per_query(task_dir, trained, head)
    gain = (sum(after) - sum(before)) / len(before)
    p = randomization_test(after, before)
    print(f"{head} (seed {SEED}): nDCG@10 {sum(before) / len(before):.4f} -> {sum(after) / len(after):.4f} "
          f"(gain {gain:+.4f}, p = {p:.4f})")
    assert gain > 0 and p < ALPHA, f"{head}: gain {gain:+.4f}, p = {p:.4f}"


def _assert_grpo_beats_sft(task_dir: Path, head: str) -> None:
    """GRPO runs its steps, its mean logged reward rises (last third of the steps vs the first third) and the GRPO
    model beats its own SFT start on the 300 fresh held-out queries (``_judge``)."""
    _, r2, start, grpo_out = _sft_then_grpo(task_dir, head)
    assert r2["global_step"] == HEADS[head][1]["max_steps"]
    rewards = r2["logged_rewards"]  # one mean per step (logging_steps=1)
    third = max(1, len(rewards) // 3)
    assert sum(rewards[-third:]) / third > sum(rewards[:third]) / third
    _judge(task_dir, head, start, grpo_out / "model")


@pytest.mark.parametrize("head", sorted(HEADS))
def test_the_judge_rejects_a_noop_grpo(task_dir: Path, head: str, tmp_path: Path) -> None:
    """Mutation check: with GRPO replaced by a no-op (the "trained" model is a copy of its start), the judge fails."""
    import shutil

    _, sft_out = _sft_once(task_dir, head)
    start_in = GRPO_FROM.get(head, ("", ""))[0]
    start = sft_out / start_in if start_in else sft_out / "model"
    noop = tmp_path / "noop-grpo"
    shutil.copytree(start, noop)
    _EVALS[(str(noop), head)] = list(_per_query(task_dir, start, head))  # a copy ranks as its start does
    with pytest.raises(AssertionError):
        _judge(task_dir, head, start, noop)


def test_erank_grpo_beats_its_sft_start(task_dir: Path) -> None:
    """The full claim, in CI, for ERank: GRPO on its pooled listwise-derived reward beats its SFT start on 300 fresh
    held-out synthetic queries (0.6741 -> 0.7526 measured; docs/results.md, "Learning claims")."""
    _assert_grpo_beats_sft(task_dir, "erank")


def test_grouprank_grpo_beats_its_sft_start(task_dir: Path) -> None:
    """The same claim for GroupRank, in CI: GRPO on its group reward, 30 steps on 800 queries the SFT never saw, from
    the SFT run's step-750 checkpoint: 0.8398 -> 0.8681 (measured 2026-12-04; docs/results.md, "Learning claims")."""
    _assert_grpo_beats_sft(task_dir, "grouprank")


def test_first_grpo_beats_its_sft_start(task_dir: Path) -> None:
    """The same claim for FIRST, in CI, with GRPO on FIRST's own ranking (``rollout: plackett-luce``: permutations
    drawn from the first-identifier logits), 60 steps on 800 queries the SFT never saw, from the SFT run's step-200
    checkpoint: 0.8012 -> 0.8103, reward 1.001 -> 1.004 (measured 2026-11-28; docs/results.md, "Learning claims").
    From the converged 300-step SFT GRPO does not gain (0.8092-0.8317 against 0.8279 over 14 settings), and generated
    rollouts do not gain from the checkpoint either (0.7961)."""
    _assert_grpo_beats_sft(task_dir, "first")
