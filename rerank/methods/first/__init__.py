"""FIRST: a listwise ranking from the first generated identifier's logits; SFT adds a ranking loss on those logits,
GRPO may sample its rollouts from them (Plackett-Luce)."""

from rerank.methods.base import GRPODefaults, Method

METHOD = Method(
    name="first",
    kind="reranker",
    package=__name__,
    summary="listwise LLM: identifier logits at the first output position, one forward per window",
    head="rerank.methods.first.head:FirstReranker",
    task="rerank.methods.first.task:FirstTask",
    sft_losses=("lm+ranknet", "lm", "lm+listnet", "lm+lambdarank"),
    grpo=GRPODefaults(num_generations=8, learning_rate=1e-5),
    teacher_labels="rerank.methods.first.teacher:label_rows",
    templates=("first.yaml", "first-compact.yaml"),
    windowed=True,
    pipeline_tag="text-generation",
)
