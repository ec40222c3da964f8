"""GroupRank: groupwise 0-10 JSON scores over shuffled groups, repeated and fused with the first stage; SFT on
teacher scores, GRPO on the group reward (8 rollouts, lr 1e-5 as the paper)."""

from dataclasses import dataclass

from rerank.methods.base import GRPODefaults, Method
from rerank.trainers.rewards import check_penalties, check_weights

METHOD = Method(
    name="grouprank",
    kind="reranker",
    package=__name__,
    summary="groupwise LLM: JSON 0-10 scores per group, repeated shuffles, fused with the first stage",
    head="rerank.methods.grouprank.head:GroupRankReranker",
    task="rerank.methods.grouprank.task:GroupRankTask",
    sft_losses=("lm",),
    grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
    teacher_labels="rerank.methods.grouprank.teacher:label_rows",
    teacher_roles=("pointwise_teacher", "listwise_teacher"),
    teacher_options=("group_size", "seed"),
    templates=("grouprank.yaml",),
    windowed=True,
    pipeline_tag="text-generation",
)


@dataclass
class GroupRankRewardOptions:
    """GroupRank's own ``rewards`` options (AQ-MedAI, 2025): the weight of 1 - JS(predicted, gold scores), and the
    rewards of an answer whose JSON cannot be read or whose tags are wrong."""

    js_weight: float = 0.1
    invalid_json_penalty: float = -0.1
    bad_tags_penalty: float = -0.5

    def __post_init__(self) -> None:
        check_weights(self, "js_weight")
        check_penalties(self, "invalid_json_penalty", "bad_tags_penalty")


#: the ``rewards`` options only GroupRank's reward reads, joined to the shared ones in ``rerank.trainers.rewards``
REWARD_OPTIONS = GroupRankRewardOptions
