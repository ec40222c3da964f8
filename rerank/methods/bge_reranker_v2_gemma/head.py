"""bge-reranker-v2-gemma: the input FlagEmbedding's LLM reranker builds for BAAI/bge-reranker-v2-gemma, scored as it
scores it.

FlagEmbedding feeds ``[bos] + tok("A: " + query) + tok("\\n") + tok("B: " + passage) + tok("\\n") + tok(prompt)`` (bos
only when the tokenizer has one that is not its pad token; no chat template) and takes the raw logit of
``tok("Yes")[0]`` at the last position as the score, its sigmoid as the normalised score. The template lists those
pieces (``pieces``; ``user`` is the same prompt as one text), and the head tokenises each piece apart, so the ids are
FlagEmbedding's even where tokenising the whole text would merge across a piece boundary. FlagEmbedding cuts
passages to 512 tokens and queries to 3/4 of that; ``max_doc_tokens`` / ``max_query_tokens`` default to the same
(they cut the text, the ``A: `` / ``B: `` labels come on top). ``prompt`` replaces the Yes/No question, as
FlagEmbedding's ``prompt`` argument does. The raw logit needs a backend that gives one (transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.errors import ConfigError
from rerank.heads.base import RerankerConfig
from rerank.heads.pointwise import PointwiseConfig, PointwiseLLMReranker
from rerank.types import Candidate, Query

__all__ = ["BGEGemmaConfig", "BGEGemmaReranker"]


@dataclass
class BGEGemmaConfig(PointwiseConfig):
    """Pointwise options with FlagEmbedding's lengths, plus ``prompt`` ('' = the template's Yes/No question)."""

    max_doc_tokens: int = 512
    max_query_tokens: int = 384
    prompt: str = ""


class BGEGemmaReranker(PointwiseLLMReranker):
    """Score = the raw logit of ``Yes`` after bge-reranker-v2-gemma's A/B prompt; relevance = its sigmoid."""

    method = "bge-reranker-v2-gemma"
    config_class: ClassVar[type[RerankerConfig]] = BGEGemmaConfig
    template_texts = ("prompt",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.override_template_field("prompt", self.config.prompt)  # type: ignore[attr-defined]
        pieces = self.template.extra.get("pieces")
        if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
            raise ConfigError(f"{self.method}: template {self.template.source} needs `pieces`, a list of texts")
        probe = {"query": "Q", "document": "D"}
        if "".join(self._pieces(**probe)) != self.template.messages(**probe)[-1]["content"]:
            raise ConfigError(f"{self.method}: template {self.template.source}: `pieces` must join to `user`")
        if not self.backend.gives_logits:
            raise ConfigError(f"{self.method} scores by the raw 'Yes' logit, which the {self.backend.name} backend "
                              "does not give; use --backend transformers")

    def _pieces(self, query: str, document: str) -> list[str]:
        return [self.template.render_text(p, query=query, document=document)
                for p in self.template.extra["pieces"]]

    def _bos(self) -> list[int]:
        bos, pad = self.tokenizer.bos_token_id, self.tokenizer.pad_token_id
        return [int(bos)] if bos is not None and bos != pad else []

    def _render_pair(self, query: str, documents: list[str]) -> str:
        """The prompt as text: the bos token (if any) and the template's ``user``."""
        bos = self.tokenizer.bos_token if self._bos() else ""
        return bos + self.template.messages(query=query, document=documents[0])[-1]["content"]

    def pair_token_ids(self, query: str, documents: list[str]) -> list[int]:  # type: ignore[override]
        """bos, then each piece tokenised on its own."""
        return self._bos() + [t for piece in self._pieces(query, documents[0]) for t in self.encode(piece)]

    def yes_token_id(self) -> int:
        """The first token of the positive word on its own (``tok("Yes")[0]``, as FlagEmbedding reads it)."""
        return self.tokenizer.encode(str(self.template.extra.get("positive", "Yes")), add_special_tokens=False)[0]

    def score_passages(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        yes = self.yes_token_id()
        prompts = [ids for _, ids in self.flat_inputs(queries, candidate_lists)]
        flat: list[float] = []
        for idx in self.chunks(len(prompts)):
            flat.extend(row[0] for row in self.backend.next_token_logits([prompts[i] for i in idx], [yes]))
        return self.split(flat, candidate_lists)
