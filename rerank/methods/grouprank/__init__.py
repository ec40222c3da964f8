"""GroupRank: groupwise 0-10 JSON scores over shuffled groups, repeated and fused with the first stage; SFT on
teacher scores, GRPO on the group reward (8 rollouts, lr 1e-5 as the paper)."""

from rerank.methods.base import GRPODefaults, Method

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
