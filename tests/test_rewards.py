"""Rewards and ranking losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rerank.eval.metrics import evaluate_run
from rerank.methods.erank.reward import erank_listwise_rewards
from rerank.methods.grouprank.reward import grouprank_reward
from rerank.methods.listwise.reward import permutation_reward, reasonrank_reward
from rerank.trainers.ranking_losses import lambdarank, listnet, weighted_ranknet
from rerank.trainers.rewards import (
    RewardConfig,
    format_validity,
    js_divergence,
    ndcg_at_k,
    rbo,
    recall_at_k,
    reciprocal_rank,
    tie_aware_ndcg_at_k,
    tie_aware_recall_at_k,
)

L3 = math.log2(3)


def test_ndcg_by_hand_and_equal_to_trec_eval() -> None:
    labels = {"a": 0, "b": 2, "c": 1}
    expected = (2 / L3 + 1 / 2) / (2 + 1 / L3)
    assert ndcg_at_k(["a", "b", "c"], labels) == pytest.approx(expected, abs=1e-12)
    assert ndcg_at_k(["b", "c", "a"], labels) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], {"a": 0}) == 0.0
    run = {"q": [("a", 3.0), ("b", 2.0), ("c", 1.0)]}
    trec = evaluate_run(run, {"q": labels}, ["nDCG@10"]).aggregate["nDCG@10"]
    assert ndcg_at_k(["a", "b", "c"], labels) == pytest.approx(trec, abs=1e-9)
    assert ndcg_at_k(["a", "b", "c"], labels, k=1) == 0.0


def test_recall_rr_rbo_format() -> None:
    labels = {"a": 1, "b": 0, "c": 1, "d": 1}
    assert recall_at_k(["b", "a", "x"], labels, k=2) == pytest.approx(1 / 3)
    assert recall_at_k(["a"], {"a": 0}) == 0.0
    assert reciprocal_rank(["b", "c", "a"], {"a": 1, "c": 2}) == 0.5
    assert reciprocal_rank(["b"], {"a": 1}) == 0.0
    assert rbo(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert rbo(["a", "b"], ["c", "d"]) == 0.0
    assert rbo(["a", "b"], ["b", "a"], p=0.5) == pytest.approx(0.5)
    assert format_validity("<think>x</think><answer>3</answer>") == 1.0
    assert format_validity("<answer>3") == 0.0
    assert format_validity("</answer>3<answer>") == 0.0


def test_js_divergence() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([2, 2], [1, 1]) == pytest.approx(0.0)
    assert js_divergence([0, 0], [1, 1]) == pytest.approx(0.0)


def test_erank_listwise_rewards_by_hand() -> None:
    r = erank_listwise_rewards(
        scores=[10, 8, 9, 2, None], labels=[1, 1, 0, 0, 0], reference=[9, 9, 5, 3, 1]
    )
    assert r == pytest.approx([1.0, 1 / 3, -1.0, -0.01, -1.0])
    # no relevant rollout: every negative is pulled toward the reference
    assert erank_listwise_rewards([4, 0], [0, 0], [2, 0]) == pytest.approx([-0.04, 0.0])
    # a negative tied with the lowest positive is not below it
    assert erank_listwise_rewards([5, 5], [1, 0], [5, 5])[1] == -1.0
    cfg = RewardConfig(erank_negative_above_positive_penalty=-3.0, bad_format_penalty=-2.0)
    assert erank_listwise_rewards([1, 9, None], [1, 0, 1], [0, 0, 0], cfg) == pytest.approx([0.5, -3.0, -2.0])


def test_grouprank_reward_by_hand() -> None:
    gold = {"a": 2, "b": 0}
    m = [0.9, 0.1]
    kl_p = 0.8 * math.log2(0.8 / m[0]) + 0.2 * math.log2(0.2 / m[1])
    kl_q = math.log2(1 / m[0])
    js = 0.5 * (kl_p + kl_q)
    assert grouprank_reward({"a": 8, "b": 2}, gold, True) == pytest.approx(1 + 0.2 + 0.1 * (1 - js))
    assert grouprank_reward(None, gold, True) == -0.1
    assert grouprank_reward({"a": 1}, gold, False) == -0.5
    # reversed prediction: nDCG = gain 2 at rank 2 / ideal, recall@10 still 1, JS = 1
    rev = grouprank_reward({"a": 0, "b": 5}, gold, True)
    assert rev == pytest.approx((2 / L3) / 2 + 0.2 + 0.1 * (1 - 1.0))


def test_reasonrank_reward() -> None:
    assert reasonrank_reward(["a", "b"], {"a": 1}, ["a", "b"], 2) == pytest.approx(1.3)
    assert reasonrank_reward(["a"], {"a": 1}, ["a", "b"], 2) == 0.0
    assert reasonrank_reward(["a", "a"], {"a": 1}, ["a", "b"], 2) == 0.0
    assert reasonrank_reward(None, {"a": 1}, ["a", "b"], 2) == -1.0


def test_ranking_losses_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0]])
    ranks = torch.tensor([[1, 2]])
    sp = math.log(1 + math.exp(-1))
    assert weighted_ranknet(logits, ranks).item() == pytest.approx(sp / 3, rel=1e-6)
    delta = (1 - 1 / L3) / (2 + 1 / L3)
    assert lambdarank(logits, ranks).item() == pytest.approx(sp * delta, rel=1e-5)
    p = torch.softmax(torch.tensor([-1.0, -2.0]), 0)
    expected_listnet = -(p * torch.log_softmax(logits[0], 0)).sum().item()
    assert listnet(logits, ranks).item() == pytest.approx(expected_listnet, rel=1e-6)


@pytest.mark.parametrize("loss", [weighted_ranknet, listnet, lambdarank])
def test_losses_prefer_teacher_order_and_respect_mask(loss) -> None:  # noqa: ANN001
    ranks = torch.tensor([[1, 2, 3, 99]])
    mask = torch.tensor([[True, True, True, False]])
    good = torch.tensor([[1.0, 0.5, 0.0, 50.0]], requires_grad=True)
    bad = torch.tensor([[0.0, 0.5, 1.0, -50.0]])
    assert loss(good, ranks, mask) < loss(bad, ranks, mask)
    # the padded candidate's logit gets no gradient
    loss(good, ranks, mask).backward()
    assert good.grad[0, 3].item() == 0.0
    assert good.grad[0, 0].item() < 0  # raising the best candidate lowers the loss


def test_tie_aware_ndcg_and_recall_by_hand() -> None:
    labels = {"a": 2, "b": 1, "c": 0}
    ideal = 2 + 1 / L3
    # no ties: the plain metric
    assert tie_aware_ndcg_at_k({"a": 3, "b": 2, "c": 1}, labels) == pytest.approx(1.0)
    # all tied: mean gain 1 at each of the three positions, whatever order the map lists them in
    flat = (1 + 1 / L3 + 0.5) / ideal
    assert tie_aware_ndcg_at_k({"a": 0, "b": 0, "c": 0}, labels) == pytest.approx(flat)
    assert tie_aware_ndcg_at_k({"c": 0, "b": 0, "a": 0}, labels) == pytest.approx(flat)
    # a tied pair after a clear winner: b first, then the mean of a and c (gain 1) over positions 2 and 3
    assert tie_aware_ndcg_at_k({"b": 5, "a": 1, "c": 1}, labels) == pytest.approx((1 + 1 / L3 + 0.5) / ideal)
    # a tie cut by k=2: 1 of the 2 positions left, so each of a (relevant) and c counts one half
    assert tie_aware_recall_at_k({"b": 5, "a": 1, "c": 1}, labels, k=2) == pytest.approx((1 + 0.5) / 2)
    assert tie_aware_recall_at_k({"b": 5, "a": 1, "c": 1}, labels, k=3) == pytest.approx(1.0)


def test_grouprank_reward_does_not_depend_on_the_order_of_tied_docs() -> None:
    gold = {"a": 0, "b": 2, "c": 0}
    assert grouprank_reward({"a": 0, "b": 0, "c": 0}, gold, True) == pytest.approx(
        grouprank_reward({"c": 0, "b": 0, "a": 0}, gold, True))
    flat = grouprank_reward({"a": 0, "b": 0, "c": 0}, gold, True)
    assert grouprank_reward({"a": 0, "b": 9, "c": 0}, gold, True) > flat


def test_permutation_reward_zero_or_repaired() -> None:
    ids, labels, teacher = ["a", "b", "c"], {"b": 1}, ["b", "a", "c"]
    complete = reasonrank_reward(["b", "a", "c"], labels, teacher, 3)
    assert permutation_reward(["b", "a", "c"], ids, labels, teacher) == pytest.approx(complete)
    assert permutation_reward(["b"], ids, labels, teacher) == 0.0  # ReasonRank: wrong count earns 0
    assert permutation_reward(None, ids, labels, teacher) == -1.0
    cfg = RewardConfig(repair_incomplete=True, missing_penalty=0.3)
    # "b" then the missing a, c in window order: the same ranking as the complete one, less 0.3 x 2/3
    assert permutation_reward(["b"], ids, labels, teacher, cfg) == pytest.approx(complete - 0.2)
    worse = reasonrank_reward(["c", "a", "b"], labels, teacher, 3) - 0.3 / 3
    assert permutation_reward(["c", "a"], ids, labels, teacher, cfg) == pytest.approx(worse)
