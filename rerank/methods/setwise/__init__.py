"""setwise: the model sees a set of c passages labelled A, B, C, ... and the label with the highest log-probability
at the first answer position is the set's most relevant passage; heapsort or bubble sort over such sets gives the
top-k (Zhuang et al., SIGIR 2024; ielab/llm-rankers)."""

from rerank.methods.base import Method

METHOD = Method(
    name="setwise",
    kind="reranker",
    package=__name__,
    summary="sets of c passages, best one by label log-probs; heapsort / bubble sort to the top-k",
    head="rerank.methods.setwise.head:SetwiseReranker",
    templates=("setwise.yaml", "setwise-unprefixed.yaml"),
    pipeline_tag="text-generation",
)
