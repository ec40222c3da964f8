"""Query synthesis for unlabeled corpora: an LLM (any registered backend) writes a query per document, or
(``generator.kind: sentence``) one of the document's sentences is the query.

Documents are sampled (seeded) from the corpus of ``source.dataset``. A document (title and text) enters the prompt as
the heads give user text: its special-token strings and chat-template turn markers neutralised
(:func:`rerank.heads.text.neutralise`), then cut to ``max_doc_tokens``, so corpus text never adds a control token or a
turn to the prompt. Each generated query is cleaned (first line, quotes and a leading ``Query:`` removed), then
de-duplicated: exact duplicates after normalisation and near-duplicates whose word-set Jaccard similarity with an
already kept query reaches ``dedup_jaccard`` are dropped. With ``consistency_k`` a query is kept only when the first
stage ranks its source document within its top k (the round-trip consistency filter of Promptagator and InPars: a
query that does not find its own document is more likely noise than a hard query). Each kept query becomes a row with
its source document as the positive (label 1) and, when a first stage is given, negatives from its ranks
``negative_window`` for that query (the source document excluded; label 0). A document whose query is dropped gives no
row and is recorded with the reason its drop is counted under (``empty_or_short``, ``duplicate``, ``near_duplicate``,
``inconsistent``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from rerank.config import changed_options, to_dict
from rerank.data.datasets import resolve_dataset
from rerank.data_recipes.base import FirstStageSpec, Recipe, file_input, path_inputs, unit_rng
from rerank.trainers.data import has_content
from rerank.types import Document, Query, sort_ranking

__all__ = ["CorpusSource", "QuerySynthesisRecipe", "clean_query", "normalise", "pick_sentence"]


@dataclass
class GeneratorSpec:
    """The LLM: a model on a registered backend, a prompt template, decoding options. ``kind: sentence`` needs no
    model: the query is one sentence of the document (4-40 words) drawn with the seed, the inverse cloze task of
    Lee et al. (2019) with the sentence left in the document."""

    kind: Literal["llm", "sentence"] = "llm"
    model: str | None = None
    backend: str = "transformers"
    backend_options: dict[str, Any] = field(default_factory=dict)
    template: str = "query_synthesis"
    max_new_tokens: int = 32
    temperature: float = 0.0
    max_doc_tokens: int = 256

    def __post_init__(self) -> None:
        if self.kind == "sentence":  # the query is a sentence of the document: no model is loaded or prompted
            changed = changed_options(self, [f.name for f in fields(self) if f.name != "kind"])
            if changed:
                raise ValueError(f"{', '.join(changed)} {'apply' if len(changed) > 1 else 'applies'} to kind: llm; "
                                 "kind: sentence uses no model: drop "
                                 f"{'them' if len(changed) > 1 else 'it'} or set kind: llm")
        for name in ("max_new_tokens", "max_doc_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def recorded(self) -> dict[str, Any]:
        """The options this kind reads, for the manifest: ``kind: sentence`` reads none but its kind (no model)."""
        return {"kind": self.kind} if self.kind == "sentence" else to_dict(self)

    def check(self) -> None:
        """Before the build starts: the generator's model can be loaded here (a served one, openai, is not checked)."""
        if self.kind == "llm" and self.model and self.backend != "openai":
            from rerank.models import check_model_path

            check_model_path(self.model, "generator model")


@dataclass
class CorpusSource:
    """Where query synthesis samples its documents: the corpus of ``dataset`` (a registered name or a BEIR folder);
    the dataset's queries and qrels are never read."""

    dataset: str


@dataclass
class QuerySynthesisConfig:
    source: CorpusSource
    generator: GeneratorSpec
    max_docs: int = 100
    min_doc_chars: int = 50
    dedup_jaccard: float = 0.8
    min_query_words: int = 2
    first_stage: FirstStageSpec | None = None
    negative_window: list[int] = field(default_factory=lambda: [1, 30])
    num_negatives: int = 7
    consistency_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("max_docs", 1), ("min_doc_chars", 0), ("min_query_words", 1), ("num_negatives", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0 < self.dedup_jaccard <= 1:
            raise ValueError("dedup_jaccard must be in (0, 1]")
        if self.first_stage is not None and self.first_stage.retriever is None:
            raise ValueError("query synthesis needs a first_stage retriever, not a run (a run cannot know synthetic "
                             "queries)")
        if self.consistency_k is not None:
            if self.first_stage is None:
                raise ValueError("consistency_k needs a first_stage retriever to find each query's source document")
            if not 1 <= self.consistency_k <= self.first_stage.depth:
                raise ValueError(f"consistency_k must be in [1, first_stage depth {self.first_stage.depth}], "
                                 f"got {self.consistency_k}")
        if len(self.negative_window) != 2 or not 1 <= self.negative_window[0] <= self.negative_window[1]:
            raise ValueError(f"negative_window must be [start, end] 1-based ranks, got {self.negative_window}")
        depth = self.first_stage.depth if self.first_stage is not None else None
        if depth is not None and self.negative_window[1] > depth and changed_options(self, ("negative_window",)):
            raise ValueError(f"negative_window {self.negative_window} ends past first_stage depth {depth} (the first "
                             f"stage ranks only {depth} documents per query): end the window at {depth} or below, or "
                             f"raise first_stage depth to {self.negative_window[1]}")
        if self.first_stage is None:  # negatives are drawn from the first stage's ranking of each query
            changed = changed_options(self, ("negative_window", "num_negatives"))
            if changed:
                raise ValueError(f"{' and '.join(changed)} {'need' if len(changed) > 1 else 'needs'} a first_stage "
                                 "retriever (negatives come from its ranking): add first_stage or drop "
                                 f"{'them' if len(changed) > 1 else 'it'}")


_LABEL = re.compile(r"^(?:(?:the\s+)?(?:search\s+)?(?:query|question)(?:\s+is)?\s*:|\d+[.)]\s)\s*", re.IGNORECASE)


def clean_query(text: str) -> str:
    """First non-empty line, without the labels small models put before it (``Query:``, ``Question:``, ``The
    question is:``, a list number ``1.``) or surrounding quotes."""
    line = next((x.strip() for x in text.strip().splitlines() if x.strip()), "")
    while (bare := _LABEL.sub("", line, count=1).strip().strip("\"'`“”").strip()) != line:
        line = bare
    return line


def pick_sentence(text: str, rng: Any, min_words: int = 4, max_words: int = 40) -> str:
    """A sentence of ``text`` with ``min_words``-``max_words`` words, drawn with ``rng`` ('' when there is none)."""
    sentences = [x.strip() for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
    fit = [x for x in sentences if min_words <= len(x.split()) <= max_words]
    return rng.choice(fit) if fit else ""


def normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


class QuerySynthesisRecipe(Recipe):
    """Synthetic (query, positive document, negatives) rows from an unlabeled corpus."""

    kind = "query_synthesis"
    config_class = QuerySynthesisConfig

    def __init__(self, config: QuerySynthesisConfig, data_root: str | None = None, backend: Any = None) -> None:
        super().__init__(config, data_root)
        self.dataset = resolve_dataset(config.source.dataset, data_root)
        self._backend = backend
        self._template = None
        self._retriever = None
        self.kept: list[set[str]] = []
        self.kept_norm: set[str] = set()
        self.dropped = {"empty_or_short": 0, "duplicate": 0, "near_duplicate": 0}
        if config.consistency_k is not None:
            self.dropped["inconsistent"] = 0
        self._unit_dropped: dict[str, str] = {}

    @property
    def backend(self) -> Any:
        if self._backend is None:
            from rerank.backends.registry import build_backend

            g = self.config.generator
            self._backend = build_backend(g.backend, g.model, **g.backend_options)
        return self._backend

    def units(self) -> list[str]:
        docs = [d.id for d in self.dataset.corpus.values()
                if len(d.full_text()) >= self.config.min_doc_chars and has_content(d.text, d.title or "")]
        rng = unit_rng(self.config.seed, "sample")
        return sorted(rng.sample(docs, min(self.config.max_docs, len(docs))))

    def restore(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._keep(row["query"])

    def unit_stats(self, unit: str) -> dict[str, int]:
        """What ``unit`` added to ``dropped_queries`` (kept with its rows, so a resumed build can add it back)."""
        why = self._unit_dropped.pop(unit, None)
        return {why: 1} if why is not None else {}

    def restore_stats(self, stats: Iterable[Mapping[str, int]]) -> None:
        """Add back the drops of the units an interrupted build finished (:meth:`unit_stats`)."""
        for s in stats:
            for why, n in s.items():
                self.dropped[why] = self.dropped.get(why, 0) + int(n)

    def _drop(self, unit: str, why: str) -> list[dict[str, Any]]:
        self.dropped[why] += 1
        self._unit_dropped[unit] = why
        return self.skip(unit, why)

    def skip_reasons(self) -> dict[str, str]:
        """Why a document gives no row (:meth:`Recipe.skip_reasons`): its query was dropped, by the reason the
        manifest's ``dropped_queries`` counts."""
        cfg = self.config
        return {**super().skip_reasons(),
                "empty_or_short": f"gave a query of fewer than {cfg.min_query_words} words",
                "duplicate": "gave a query already kept (after normalisation)",
                "near_duplicate": f"gave a near duplicate of a kept query (word-set Jaccard >= {cfg.dedup_jaccard})",
                "inconsistent": f"gave a query whose first stage does not rank the document in its top "
                                f"{cfg.consistency_k}"}

    def units_name(self, count: int) -> str:
        """The sampled documents as the warning about those without a row names them (:meth:`Recipe.units_name`)."""
        return f"the {count} documents sampled from dataset {self.dataset.name}"

    def _keep(self, q: str) -> None:
        self.kept_norm.add(normalise(q))
        self.kept.append(set(normalise(q).split()))

    def _duplicate(self, q: str) -> str | None:
        n = normalise(q)
        if len(n.split()) < self.config.min_query_words:
            return "empty_or_short"
        if n in self.kept_norm:
            return "duplicate"
        words = set(n.split())
        for other in self.kept:
            if len(words & other) / len(words | other) >= self.config.dedup_jaccard:
                return "near_duplicate"
        return None

    def _generate(self, doc: Document) -> str:
        from rerank.backends.base import GenerationConfig
        from rerank.heads.text import neutralise
        from rerank.prompts import load_template

        g = self.config.generator
        if g.kind == "sentence":
            return pick_sentence(doc.text, unit_rng(self.config.seed, doc.id))
        if self._template is None:
            self._template = load_template(g.template)
        tok = self.backend.tokenizer
        text = neutralise(doc.full_text(), tok)  # corpus text is data: never a special token or a chat-turn marker
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) > g.max_doc_tokens:
            text = tok.decode(ids[: g.max_doc_tokens], skip_special_tokens=True)
        messages = self._template.messages(document=text)
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tok.encode(prompt + self._template.assistant_prefix, add_special_tokens=False)
        gen = GenerationConfig(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                               seed=self.config.seed)
        return self.backend.generate([prompt_ids], gen)[0]

    def rows_for(self, unit: str) -> list[dict[str, Any]]:
        doc = self.dataset.corpus[unit]
        q = clean_query(self._generate(doc))
        why = self._duplicate(q)
        if why is not None:
            return self._drop(unit, why)
        qid = f"synth-{unit}"
        ranked = self._first_stage(qid, q)
        k = self.config.consistency_k
        if k is not None and unit not in [d for d, _ in ranked[:k]]:
            return self._drop(unit, "inconsistent")
        self._keep(q)
        cands = [{"id": doc.id, "text": doc.text, **({"title": doc.title} if doc.title else {})}]
        labels = [1]
        if self.config.first_stage is not None:
            lo, hi = self.config.negative_window
            corpus = self.dataset.corpus
            negs = [(d, s) for d, s in ranked[lo - 1 : hi]
                    if d != unit and has_content(corpus[d].text, corpus[d].title or "")][: self.config.num_negatives]
            for d, s in negs:
                nd = self.dataset.corpus[d]
                cands.append({"id": nd.id, "text": nd.text, **({"title": nd.title} if nd.title else {}),
                              "score": float(s)})
                labels.append(0)
        return [{"qid": qid, "query": q, "candidates": cands, "labels": labels}]

    def _first_stage(self, qid: str, q: str) -> list[tuple[str, float]]:
        """The first stage's ranking for the synthetic query, best first ([] without a first stage)."""
        fs = self.config.first_stage
        if fs is None:
            return []
        if self._retriever is None:
            from rerank.retrieval.base import build_retriever

            self._retriever = build_retriever(fs.retriever, self.dataset, **fs.options)
        return sort_ranking(self._retriever.retrieve({qid: Query(qid, q)}, k=fs.depth).get(qid, []))

    @classmethod
    def former_views(cls, view: dict[str, Any]) -> list[dict[str, Any]]:
        """The recipe as rerank hashed it when query synthesis took a top-level ``dataset`` (before
        ``source.dataset``), so a build started then resumes."""
        old = {key: value for key, value in view.items() if key != "source"}
        return [{**old, "dataset": view["source"]["dataset"]}]

    @classmethod
    def record(cls, config: QuerySynthesisConfig) -> dict[str, Any]:
        """The config without the options its settings do not read: the LLM's with ``kind: sentence``, the negatives'
        without a ``first_stage``."""
        out = to_dict(config)
        out["generator"] = config.generator.recorded()
        if config.first_stage is None:
            del out["negative_window"], out["num_negatives"]
        return out

    def inputs(self) -> dict[str, dict[str, str]]:
        """What the rows are read from (:meth:`Recipe.inputs`): the corpus (the manifest's sha256), the local models
        and files the options name (the generator's model, a template file, a first-stage model or index)."""
        ds = self.dataset
        return {"corpus": file_input(ds.corpus_path, ds.corpus_hash), **path_inputs(self.config, skip=("source",))}

    def empty_reason(self) -> str:
        """Why no document gave a row: the generated queries dropped, by reason (counts)."""
        dropped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in self.dropped.items() if n)
        return f"every generated query was dropped ({dropped})" if dropped else ""

    def source(self) -> dict[str, Any]:
        g = self.config.generator
        llm = {"model": g.model, "backend": g.backend, "template": g.template} if g.kind == "llm" else {}
        return {"dataset": self.dataset.name, "root": str(self.dataset.root),
                "corpus_sha256": self.dataset.corpus_hash,
                "generator": {"kind": g.kind, **llm},
                **({"consistency_k": self.config.consistency_k} if self.config.consistency_k else {}),
                "dropped_queries": dict(self.dropped)}

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
