"""listwise: full-permutation generation over a sliding window (RankGPT / RankZephyr); SFT on the teacher
permutation, GRPO on the ReasonRank-style reward."""

from dataclasses import dataclass

from rerank.errors import ConfigError
from rerank.methods.base import GRPODefaults, Method
from rerank.trainers.rewards import check_weights

METHOD = Method(
    name="listwise",
    kind="reranker",
    package=__name__,
    summary="listwise LLM: generated permutation [2] > [1] > ... over a sliding window",
    head="rerank.methods.listwise.head:ListwiseReranker",
    task="rerank.methods.listwise.task:ListwiseTask",
    sft_losses=("lm",),
    grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
    templates=("listwise.yaml", "listwise-letters.yaml", "listwise-compact.yaml", "listwise-letters-compact.yaml"),
    windowed=True,
    pipeline_tag="text-generation",
)


@dataclass
class PermutationRewardOptions:
    """The permutation reward's own ``rewards`` options (ReasonRank, 2025; read by listwise and FIRST, whose GRPO uses
    this package's reward): the weight and persistence of RBO against the teacher ranking, the reward of a permutation
    with ids missing or repeated, and with ``repair_incomplete`` the repaired ranking's reward minus
    ``missing_penalty`` x the missing fraction instead."""

    rbo_weight: float = 0.1
    rbo_p: float = 0.9
    wrong_count_reward: float = 0.0
    repair_incomplete: bool = False
    missing_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_weights(self, "rbo_weight")
        if not 0 < self.rbo_p < 1:
            raise ConfigError(f"rewards.rbo_p (RBO's persistence) must be in (0, 1), got {self.rbo_p}")
        if self.missing_penalty < 0:
            raise ConfigError(f"rewards.missing_penalty (subtracted per missing id) must be >= 0, got "
                              f"{self.missing_penalty}")


#: the ``rewards`` options only the permutation reward reads, joined to the shared ones in ``rerank.trainers.rewards``
REWARD_OPTIONS = PermutationRewardOptions
