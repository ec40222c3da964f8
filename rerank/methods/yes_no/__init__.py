"""yes-no: pointwise relevance = log P(yes) - log P(no) at the answer position; SFT on yes/no targets, GRPO on the
right-word reward."""

from rerank.methods.base import GRPODefaults, Method

METHOD = Method(
    name="yes-no",
    kind="reranker",
    package=__name__,
    summary="pointwise LLM: log P(yes) - log P(no) at the answer position",
    head="rerank.methods.yes_no.head:YesNoReranker",
    task="rerank.methods.yes_no.task:YesNoTask",
    sft_losses=("lm",),
    grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
    templates=("yes_no.yaml",),
    pipeline_tag="text-generation",
)
