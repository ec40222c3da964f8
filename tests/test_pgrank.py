"""PG-Rank's estimator against the exact gradient of expected nDCG on 4 documents (all 24 permutations)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rerank.methods.pgrank.loss import ndcg_of_rankings, pgrank_loss
from rerank.trainers.plackett_luce import gumbel_topk_sample, plackett_luce_log_prob

SCORES = [0.3, -0.2, 1.1, 0.0]
LABELS = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
PERMS = torch.tensor(list(itertools.permutations(range(4)))).unsqueeze(0)  # (1, 24, 4)


def exact_grad(temperature: float, k: int = 4) -> torch.Tensor:
    s = torch.tensor([SCORES], dtype=torch.float64, requires_grad=True)
    p = plackett_luce_log_prob(s, PERMS, temperature).exp()
    expected = (p * ndcg_of_rankings(PERMS, LABELS, k).double()).sum()
    expected.backward()
    return s.grad[0].float()


def test_plackett_luce_probabilities_sum_to_one() -> None:
    s = torch.tensor([SCORES])
    assert plackett_luce_log_prob(s, PERMS).exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    prefixes = torch.tensor(list(itertools.permutations(range(4), 2))).unsqueeze(0)
    assert plackett_luce_log_prob(s, prefixes, 0.7).exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    # by hand: P([2,0,3,1]) = e^1.1/Z * e^.3/(Z-e^1.1) * e^0/(e^0+e^-.2) * 1
    z = sum(math.exp(x) for x in SCORES)
    by_hand = math.exp(1.1) / z * math.exp(0.3) / (z - math.exp(1.1)) * 1.0 / (1.0 + math.exp(-0.2))
    got = plackett_luce_log_prob(s, torch.tensor([[[2, 0, 3, 1]]])).exp().item()
    assert got == pytest.approx(by_hand, rel=1e-5)
    steps = plackett_luce_log_prob(s, torch.tensor([[[2, 0, 3, 1]]]), per_step=True).exp()[0, 0].tolist()
    assert steps == pytest.approx([math.exp(1.1) / z, math.exp(0.3) / (z - math.exp(1.1)),
                                   1.0 / (1.0 + math.exp(-0.2)), 1.0], rel=1e-5)


def test_gumbel_topk_samples_follow_plackett_luce() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([SCORES])
    draws = gumbel_topk_sample(s, 40000, temperature=0.8, generator=g)[0]
    probs = plackett_luce_log_prob(s, PERMS, 0.8).exp()[0]
    counts = torch.zeros(24)
    index = {tuple(p.tolist()): i for i, p in enumerate(PERMS[0])}
    for row in draws.tolist():
        counts[index[tuple(row)]] += 1
    assert torch.allclose(counts / 40000, probs, atol=0.01)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_estimator_matches_exact_gradient(temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.tensor([SCORES], requires_grad=True)
    loss, _ = pgrank_loss(s, LABELS, num_samples=60000, k=4, temperature=temperature, generator=g)
    loss.backward()
    estimate = -s.grad[0]
    exact = exact_grad(temperature)
    assert exact.abs().max() > 0.02  # the test has signal
    assert torch.allclose(estimate, exact, atol=0.004), (estimate, exact)


def test_sampling_at_another_temperature_is_biased() -> None:
    """The pitfall: Gumbel noise at T=0.1 but log-probabilities at T=1 gives a gradient far from the exact one."""
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([SCORES], requires_grad=True)
    rankings = gumbel_topk_sample(s, 60000, temperature=0.1, generator=g)
    u = ndcg_of_rankings(rankings, LABELS, 4)
    adv = u - (u.sum(-1, keepdim=True) - u) / (u.shape[-1] - 1)
    (-(adv * plackett_luce_log_prob(s, rankings, 1.0)).mean()).backward()
    assert (-s.grad[0] - exact_grad(1.0)).abs().max() > 0.02


def test_needs_two_samples_and_masks_padding() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        pgrank_loss(torch.zeros(1, 3), torch.zeros(1, 3), num_samples=1)
    mask = torch.tensor([[True, True, False]])
    draws = gumbel_topk_sample(torch.zeros(1, 3), 100, k=2, mask=mask, generator=torch.Generator().manual_seed(0))
    assert set(draws.flatten().tolist()) == {0, 1}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_masked_log_prob_is_finite_and_equals_the_unpadded_one(k: int) -> None:
    """Padding (a corpus smaller than num_candidates): masked placements contribute 0, so the log-probability, the
    logged loss and the gradient are those of the unpadded list."""
    s = torch.tensor([[0.3, -0.2, 1.1, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False, False]])
    rankings = gumbel_topk_sample(s, 16, k, 0.7, torch.Generator().manual_seed(3), mask)
    padded = plackett_luce_log_prob(s, rankings, 0.7, mask)
    assert torch.isfinite(padded).all()
    short = s[:, :3].detach().clone().requires_grad_(True)
    plain = plackett_luce_log_prob(short, rankings[..., : min(k, 3)], 0.7)
    torch.testing.assert_close(padded, plain)
    steps = plackett_luce_log_prob(s, rankings, 0.7, mask, per_step=True)
    assert torch.isfinite(steps).all() and (steps[..., 3:] == 0).all()
    padded.sum().backward()
    plain.sum().backward()
    torch.testing.assert_close(s.grad[:, :3], short.grad)
    assert (s.grad[:, 3:] == 0).all()
    labels = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0]])
    loss, _ = pgrank_loss(s, labels, num_samples=8, k=k, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
