"""qwen3-reranker: the yes-no head with Qwen3-Reranker's own prompt (system text, ``<Instruct>`` / ``<Query>`` /
``<Document>``, the empty think block) and an ``instruction`` option; score = log P(yes) - log P(no), whose sigmoid
is the model card's P(yes)."""

from rerank.methods.base import GRPODefaults, Method

METHOD = Method(
    name="qwen3-reranker",
    kind="reranker",
    package=__name__,
    summary="Qwen3-Reranker's yes/no prompt with an instruction; P(yes) from the yes/no logits",
    head="rerank.methods.qwen3_reranker.head:Qwen3Reranker",
    task="rerank.methods.qwen3_reranker.task:Qwen3RerankerTask",
    sft_losses=("lm",),
    grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
    templates=("qwen3_reranker.yaml",),
    pipeline_tag="text-ranking",
)
