"""ERank: pointwise 0-10 integer relevance from the answer-token probabilities; SFT on teacher integers, GRPO on
ERank's pooled listwise-derived reward (G=5, lr 1e-6 as the paper)."""

from dataclasses import dataclass

from rerank.errors import ConfigError
from rerank.methods.base import PROMPT_OPTIONS, GRPODefaults, Method
from rerank.trainers.rewards import check_penalties

METHOD = Method(
    name="erank",
    kind="reranker",
    package=__name__,
    summary="pointwise LLM: 0-10 integer relevance read from the answer-token probabilities",
    head="rerank.methods.erank.head:ERankReranker",
    task="rerank.methods.erank.task:ERankTask",
    sft_losses=("lm",),
    train_reads=(*PROMPT_OPTIONS, "reasoning", "erank_reference"),
    grpo=GRPODefaults(num_generations=5, learning_rate=1e-6),
    teacher_labels="rerank.methods.erank.teacher:label_rows",
    teacher_options=("score_map",),
    templates=("erank.yaml", "erank_reasoning.yaml"),
    pipeline_tag="text-generation",
)


@dataclass
class ERankRewardOptions:
    """ERank's own ``rewards`` options (ERank, 2025): the reward of a negative scored at or above the lowest-scored
    positive, and the scale a negative's distance to its reference score is divided by (0-10 scores)."""

    erank_negative_above_positive_penalty: float = -1.0
    erank_scale: float = 10.0

    def __post_init__(self) -> None:
        check_penalties(self, "erank_negative_above_positive_penalty")
        if self.erank_scale <= 0:
            raise ConfigError(f"rewards.erank_scale (ERank divides a score distance by it) must be > 0, got "
                              f"{self.erank_scale}")


#: the ``rewards`` options only ERank's reward reads, joined to the shared ones in ``rerank.trainers.rewards``
REWARD_OPTIONS = ERankRewardOptions
