"""ERank: pointwise 0-10 integer relevance from the answer-token probabilities; SFT on teacher integers, GRPO on
ERank's pooled listwise-derived reward (G=5, lr 1e-6 as the paper)."""

from rerank.methods.base import PROMPT_OPTIONS, GRPODefaults, Method

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
