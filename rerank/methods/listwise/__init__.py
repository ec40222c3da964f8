"""listwise: full-permutation generation over a sliding window (RankGPT / RankZephyr); SFT on the teacher
permutation, GRPO on the ReasonRank-style reward."""

from rerank.methods.base import GRPODefaults, Method

METHOD = Method(
    name="listwise",
    kind="reranker",
    package=__name__,
    summary="listwise LLM: generated permutation [2] > [1] > ... over a sliding window",
    head="rerank.methods.listwise.head:ListwiseReranker",
    task="rerank.methods.listwise.task:ListwiseTask",
    sft_losses=("lm",),
    grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
    templates=("listwise.yaml", "listwise-letters.yaml"),
    windowed=True,
    pipeline_tag="text-generation",
)
