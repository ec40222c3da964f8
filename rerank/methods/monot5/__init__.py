"""monot5: pointwise seq2seq relevance (Nogueira et al., 2020): the encoder reads ``Query: q Document: d
Relevant:``; score = log P("true") over {"true", "false"} at the first decoder step."""

from rerank.methods.base import Method

METHOD = Method(
    name="monot5",
    kind="reranker",
    package=__name__,
    summary='seq2seq (T5) pointwise: log P("true") vs "false" at the first decoder step',
    sft="rerank.methods.monot5.train:train_monot5",
    lora=False,
    sft_losses=("ce",),
    # the query and each document are cut to max_query_tokens / max_doc_tokens: no max_length
    train_reads=("template", "max_doc_tokens", "max_query_tokens"),
    head="rerank.methods.monot5.head:MonoT5Reranker",
    templates=("monot5.yaml",),
    pipeline_tag="text-ranking",
)
