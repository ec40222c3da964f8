"""duot5: pairwise seq2seq (Pradeep et al., 2021): p_ij = P("true") for ``Query: q Document0: d_i Document1: d_j
Relevant:`` over every ordered pair of the list's top ``top_k``; s_i = sum over j != i of p_ij + (1 - p_ji)."""

from rerank.methods.base import Method

METHOD = Method(
    name="duot5",
    kind="reranker",
    package=__name__,
    summary="seq2seq (T5) pairwise over the top-k: sym-sum of P(d_i more relevant than d_j)",
    sft="rerank.methods.duot5.train:train_duot5",
    lora=False,
    sft_losses=("ce",),
    train_reads=("template", "max_doc_tokens", "max_query_tokens", "data.negatives_per_positive"),
    head="rerank.methods.duot5.head:DuoT5Reranker",
    templates=("duot5.yaml",),
    pipeline_tag="text-ranking",
)
