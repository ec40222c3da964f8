"""cross-encoder: a sequence-classification relevance model over (query, document) pairs; SFT through
sentence-transformers' ``CrossEncoderTrainer`` (``bce | listnet | lambdaloss | mnrl``, and ``margin-mse | listwise-kl`` distilling
teacher scores)."""

from rerank.methods.base import Method

METHOD = Method(
    name="cross-encoder",
    kind="reranker",
    package=__name__,
    summary="AutoModelForSequenceClassification logit over (query, document) pairs",
    head="rerank.methods.cross_encoder.head:CrossEncoderReranker",
    sft="rerank.methods.cross_encoder.train:train_cross_encoder",
    configure_train="rerank.methods.cross_encoder.training:configure_train",
    # no prompt: the pair is cut to max_length, the query first to max_query_tokens
    train_reads=("max_query_tokens", "max_length"),
    lora=False,
    sft_losses=("bce", "listnet", "lambdaloss", "mnrl", "margin-mse", "listwise-kl"),
    pipeline_tag="text-ranking",
    library_name="sentence-transformers",
)
