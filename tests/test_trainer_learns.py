"""Proof that the shared trainer learns: SFT then GRPO of tiny LLM heads on the synthetic key-word task.

Every claim here is judged on held-out queries by the leaderboard's paired randomization test on per-query values
(p < ALPHA) together with a positive mean gain, never by one mean. ``RERANK_LEARN_SEED`` (default 0) seeds the tiny
model, the data and the trainers; CI runs seed 0, and docs/results.md ("Learning claims") gives every claim's figures
on seeds 0, 1 and 2. Recipes were chosen on a dev split (synthetic seed 1000 * seed + 5), not on the held-out queries.

- ERank's SFT and FIRST's SFT rank 300 held-out queries better than the random tiny model they start from
  (nDCG@10 of the inference head, as ``rerank eval`` ranks): holds on seeds 0, 1 and 2.
- FIRST's GRPO (Plackett-Luce rollouts of its own first-identifier logits, lr 1e-4) raises what GRPO maximises, the
  expected ranking reward of its rollouts (32 per query), on the 300 held-out queries over its start: holds on seeds
  0, 1 and 2 (p < 0.01); on seed 1, whose SFT checkpoint had barely learnt the first identifier, the gain is small
  (+0.005). It does not robustly raise the argmax ranking's nDCG@10, and ERank's GRPO raises neither on every seed: only GRPO's
  mechanics are asserted for ERank.
- GroupRank learns only past a long SFT (1,000 steps, ~20 CPU-minutes per seed): its mechanics are tested in
  tests/test_trainer_runs.py; this module makes no GroupRank learning claim.

Mutation checks (``test_the_judge_rejects_a_noop``) show each judge fails when the training step is replaced by a
no-op (the "trained" model is a copy of its start). Short test templates keep prompts small so the tiny models learn
within the CI budget (the template is an ordinary config option).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from rerank.data.io import write_jsonl
from rerank.eval.leaderboard import randomization_test
from rerank.testing import synthetic_ranking_examples, tiny_llm
from rerank.trainers import grpo, sft
from rerank.trainers.evaluate import per_query_ndcg, per_query_reward

# FIRST's SFT (300 steps x 16) and GRPO (60 steps x 64) take several minutes on one CI core, beyond the project's
# 900 s per-test guard against hangs.
pytestmark = pytest.mark.timeout(1800)

SEED = int(os.environ.get("RERANK_LEARN_SEED", "0"))
ALPHA = 0.05
# rollouts per held-out query for the expected-reward judge, on common random numbers (more than training's
# num_generations: the judge estimates each query's expected reward, and 8 left seed 1's gain within the noise)
REWARD_SAMPLES = 32

TEMPLATES = {
    "erank": (
        'name: erank-tiny\nuser: "Q: {{ query }}\\nD: {{ document }}\\nScore 0-10:"\n'
        'assistant_prefix: "<answer>"\nanswer_open: "<answer>"\nanswer_close: "</answer>"\n'
    ),
    "first": (
        'name: first-tiny\nidentifiers: letters\nassistant_prefix: "["\n'
        'user: "Q: {{ query }}\\n{% for p in passages %}[{{ p.id }}] {{ p.text }}\\n{% endfor %}Rank {{ num }}:"\n'
    ),
}

HEADS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]] = {
    # head: (sft overrides, grpo overrides, head options for evaluation, number of training queries).
    # ERank: 100 SFT steps learn the format but not robustly relevance (seed 2 ranked below the random model); 300 steps
    # (two epochs) did on a dev split on seeds 0-2. GRPO takes several whole queries per step (batch 120 = 4 queries x 6
    # documents x G=5) for its pooled reward.
    "erank": (
        {"learning_rate": 3e-3, "max_steps": 300, "batch_size": 8},
        {"learning_rate": 3e-5, "max_steps": 30, "batch_size": 120, "num_generations": 5, "temperature": 1.0},
        {"scoring": "expectation"},
        200,
    ),
    # FIRST sees one prompt per query, 2,500 queries. Its first-identifier choice is learnt only past a sharp
    # transition (benchmarks/first_token_probe.py): 300 steps x 16 with the RankNet term x50 cross it; FIRST's
    # default x10, or 300 x 8, stay near a random order, the permutation's LM loss drowning the first-identifier
    # signal. GRPO samples its own ranking (rollout plackett-luce) on 800 queries the SFT never saw, from the SFT's
    # step-200 checkpoint (GRPO_FROM).
    "first": (
        {"learning_rate": 1e-3, "max_steps": 300, "batch_size": 16, "window": 6, "ranking_weight": 50.0,
         "save_steps": 100},
        {"learning_rate": 1e-4, "max_steps": 60, "batch_size": 64, "num_generations": 8, "window": 6,
         "temperature": 1.0, "rollout": "plackett-luce"},
        {"window": 6, "stride": 3},
        2500,
    ),
}

# head: (the GRPO start inside the SFT output folder, the GRPO training file); default: the SFT model, the SFT's data.
GRPO_FROM: dict[str, tuple[str, str]] = {"first": ("checkpoints/checkpoint-200", "grpo-fresh")}


def make_task_dir(d: Path, seed: int = SEED) -> Path:
    """The synthetic task of ``seed`` in ``d``: the random tiny LLM, training, GRPO and held-out queries, templates."""
    tiny_llm(d / "llm", seed=seed)
    base = 1000 * seed
    for n in sorted({cfg[3] for cfg in HEADS.values()}):
        write_jsonl(synthetic_ranking_examples(n, num_candidates=6, seed=base + 1), d / f"train-{n}.jsonl")
    write_jsonl(synthetic_ranking_examples(300, num_candidates=6, seed=base + 3), d / "heldout-300.jsonl")
    write_jsonl(synthetic_ranking_examples(800, num_candidates=6, seed=base + 4), d / "grpo-fresh.jsonl")
    for name, text in TEMPLATES.items():
        (d / f"{name}.yaml").write_text(text)
    return d


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task_dir(tmp_path_factory.mktemp("learn"))


def _heldout(d: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (d / "heldout-300.jsonl").read_text().splitlines()]


def _weights_changed(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return any(not (wa[k] == wb[k]).all() for k in wa)


def _common(task_dir: Path, head: str) -> dict[str, Any]:
    n_train = HEADS[head][3]
    return {"head": head, "template": str(task_dir / f"{head}.yaml"), "max_doc_tokens": 40,
            "data": {"path": str(task_dir / f"train-{n_train}.jsonl"), "dev_fraction": 0.0}, "save_steps": 1000,
            "logging_steps": 5, "seed": SEED}


def sft_once(task_dir: Path, head: str) -> tuple[dict, Path]:
    """The head's SFT from the random tiny model, trained once per task folder and reused by every test."""
    sft_out = task_dir / f"{head}-sft"
    if not (sft_out / "result.json").exists():
        r1 = sft({**_common(task_dir, head), **HEADS[head][0], "model": str(task_dir / "llm")}, sft_out)
        (sft_out / "result.json").write_text(json.dumps(r1))
    return json.loads((sft_out / "result.json").read_text()), sft_out


def grpo_start(task_dir: Path, head: str) -> Path:
    """The model GRPO starts from: the SFT model, or the SFT run's checkpoint named in GRPO_FROM."""
    sft_out = sft_once(task_dir, head)[1]
    start_in = GRPO_FROM.get(head, ("", ""))[0]
    return sft_out / start_in if start_in else sft_out / "model"


def grpo_once(task_dir: Path, head: str, steps: int | None = None) -> tuple[dict, Path]:
    """GRPO from the head's GRPO start (trained once per task folder and step count); its result and model folder."""
    over = dict(HEADS[head][1], **({"max_steps": steps} if steps else {}))
    start = grpo_start(task_dir, head)
    common = _common(task_dir, head)
    data_name = GRPO_FROM.get(head, ("", ""))[1]
    if data_name:
        common["data"] = {"path": str(task_dir / f"{data_name}.jsonl"), "dev_fraction": 0.0}
    out = task_dir / f"{head}-grpo-{over['max_steps']}"
    if not (out / "result.json").exists():
        r2 = grpo({**common, **over, "model": str(start), "logging_steps": 1}, out)
        (out / "result.json").write_text(json.dumps(r2))
    return json.loads((out / "result.json").read_text()), out / "model"


_VALUES: dict[tuple[str, str, str], list[float]] = {}


def per_query(task_dir: Path, model: Path, head: str, what: str) -> list[float]:
    """Per-query values of ``model`` on held-out queries (cached per model folder): ``ndcg``, the inference head's
    nDCG@10 on all 300; ``reward``, the expected GRPO reward of REWARD_SAMPLES rollouts on each of the 300, on common
    random numbers and with row state from the head's GRPO start (so a model and its start are scored alike)."""
    key = (str(model), head, what)
    if key not in _VALUES:
        if what == "ndcg":
            opts = {"template": str(task_dir / f"{head}.yaml"), "max_doc_tokens": 40, **HEADS[head][2]}
            _VALUES[key] = per_query_ndcg(str(model), head, _heldout(task_dir), **opts)
        else:
            cfg = {**_common(task_dir, head), **HEADS[head][1]}
            _VALUES[key] = per_query_reward(str(model), cfg, _heldout(task_dir), samples=REWARD_SAMPLES, seed=SEED,
                                            reference_model=str(grpo_start(task_dir, head)))
    return _VALUES[key]


def judge(before: list[float], after: list[float], label: str) -> tuple[float, float]:
    """``after`` beats ``before``: a positive mean gain and a paired randomization test rejecting equal means at
    ALPHA. Returns (gain, p)."""
    gain = (sum(after) - sum(before)) / len(before)
    p = randomization_test(after, before)
    print(f"{label} (seed {SEED}): {sum(before) / len(before):.4f} -> {sum(after) / len(after):.4f} "
          f"(gain {gain:+.4f}, p = {p:.4f})")
    assert gain > 0 and p < ALPHA, f"{label}: gain {gain:+.4f}, p = {p:.4f}"
    return gain, p


@pytest.mark.parametrize("head", sorted(HEADS))
def test_sft_lowers_loss_and_grpo_updates(task_dir: Path, head: str) -> None:
    """SFT lowers the loss by a third, runs the configured steps and changes the weights; GRPO from the head's GRPO
    start runs its steps on finite rewards and changes the weights."""
    r1, _ = sft_once(task_dir, head)
    r2, grpo_model = grpo_once(task_dir, head, steps=2)
    start = grpo_start(task_dir, head)
    assert r1["global_step"] == HEADS[head][0]["max_steps"]
    assert r1["last_logged_loss"] < 0.67 * r1["first_logged_loss"]
    assert _weights_changed(task_dir / "llm", start)
    assert r2["global_step"] == 2
    assert _weights_changed(start, grpo_model)
    assert r2["first_logged_reward"] is not None and r2["first_logged_reward"] == r2["first_logged_reward"]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_sft_beats_the_random_model(task_dir: Path, head: str) -> None:
    """The head's SFT ranks the 300 held-out queries better than the random tiny model it started from."""
    sft_model = sft_once(task_dir, head)[1] / "model"
    judge(per_query(task_dir, task_dir / "llm", head, "ndcg"), per_query(task_dir, sft_model, head, "ndcg"),
          f"{head} SFT nDCG@10")


def test_first_grpo_raises_its_expected_reward(task_dir: Path) -> None:
    """FIRST's GRPO (60 steps of Plackett-Luce rollouts on queries the SFT never saw) raises the expected ranking
    reward of its rollouts on held-out queries over its start, the SFT's step-200 checkpoint."""
    r2, grpo_model = grpo_once(task_dir, "first")
    assert r2["global_step"] == HEADS["first"][1]["max_steps"]
    start = grpo_start(task_dir, "first")
    judge(per_query(task_dir, start, "first", "reward"), per_query(task_dir, grpo_model, "first", "reward"),
          "first GRPO expected reward")


@pytest.mark.parametrize("claim", ["erank-sft", "first-sft", "first-grpo"])
def test_the_judge_rejects_a_noop(task_dir: Path, claim: str, tmp_path: Path) -> None:
    """Mutation check: with the training step replaced by a no-op (the "trained" model is a copy of its start, scored
    afresh), the claim's judge fails."""
    head, stage = claim.split("-")
    start = task_dir / "llm" if stage == "sft" else grpo_start(task_dir, head)
    what = "ndcg" if stage == "sft" else "reward"
    noop = tmp_path / "noop"
    shutil.copytree(start, noop)
    with pytest.raises(AssertionError):
        judge(per_query(task_dir, start, head, what), per_query(task_dir, noop, head, what), f"no-op {claim}")
