"""GroupRank (AQ-MedAI, 2025; inference as in AQ-MedAI/Diver): groupwise 0-10 scoring, repeated and fused.

Candidates are shuffled (seeded by ``seed`` and the query text) into groups of ``group_size``; the model writes
``<reason>…</reason><answer>{"[1]": 5, …}</answer>`` for each group. The grouping is repeated ``repeats`` times with
new shuffles and each document's scores are averaged, then divided by 10. The output is read after the template's
assistant prefix (a prefix ending in ``<reason>`` opens the reasoning), and the answer read is the model's final one:
the last ``<answer>`` after the reasoning closes (an ``<answer>`` inside ``<reason>``, e.g. quoted from a passage, is
ignored; several answers, or an unclosed ``<reason>``, count as repairs). An ``<answer>`` written before ``<reason>``
opens is the model's answer in the wrong order, not a quotation: without an answer after the reasoning (closed or
not) the head reads it (a repair), as a parser that takes any ``<answer>`` would; with one, it is ignored. The GRPO
reward (:mod:`rerank.methods.grouprank.task`) reads the same text and takes only the paper's order, the reasoning
closed by ``</reason>`` then one ``<answer>…</answer>``: an answer before the reasoning, closed or not, or with no
reasoning at all gets the bad-tags penalty, as low as any output without the tags; reasoning that quotes ``<reason>``
does not. The JSON is parsed leniently (single quotes, trailing commas, missing braces or tags, out-of-range scores
clipped, ids missing from the answer scored 0; a score that is not a finite number — NaN, Infinity, ``true`` — and an
id repeated after its first score are dropped, that id scoring 0); an answer with no usable score scores every
document of its group 0. Both cases are counted in ``stats``.

With ``constrained: true`` generation is restricted to the template's answer format (:func:`grouprank_grammar`:
``<reason>`` free text without ``<answer>`` ``</reason>``, then ``<answer>`` and a JSON object with the keys
``"[1]"``..``"[n]"`` in order and integer scores 0-10), and the reasoning is closed early enough for the answer to fit
``max_new_tokens``; every output then parses without repair.

Final score = ``fusion_weight`` · rerank + (1 − ``fusion_weight``) · retriever, the retriever score min-max
normalised per query as hybrid interpolation does (``+inf`` -> 1, ``-inf`` -> 0; the rerank score is already on
[0, 1]). ``fusion_weight: 1.0`` disables fusion; so does a query with documents without first-stage scores (logged
once per query, and a warning once per call when ``fusion_weight`` was set: the setting is not applied there).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rerank.backends.base import Backend, GenerationConfig
from rerank.backends.grammar import Exact, FreeText, Grammar, OneOf
from rerank.config import changed_options
from rerank.errors import ConfigError
from rerank.heads.llm import LLMHeadConfig, LLMReranker, passage_texts
from rerank.types import Candidate, Query
from rerank.utils.scores import minmax_normalize

__all__ = ["GroupRankConfig", "GroupRankReranker", "GroupScores", "grouprank_grammar", "minmax", "parse_group_scores"]

log = logging.getLogger(__name__)


@dataclass
class GroupRankConfig(LLMHeadConfig):
    """GroupRank options; greedy by default (the paper samples with temperature 0.3, top_p 0.8). ``constrained``:
    generate only answers in the template's format (transformers, vllm or llamacpp backend)."""

    group_size: int = 10
    repeats: int = 2
    seed: int = 0
    fusion_weight: float = 0.6
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    constrained: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 1 or self.repeats < 1 or self.max_new_tokens < 1:
            raise ConfigError("group_size, repeats and max_new_tokens must be >= 1")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ConfigError(f"fusion_weight must be in [0, 1], got {self.fusion_weight}")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass
class GroupScores:
    """Scores (0-10) for the ``n`` documents of one group, and what parsing had to fix."""

    scores: list[float]
    failed: bool = False
    fixes: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return not self.failed and bool(self.fixes)


_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_REASON_OPEN, _REASON_CLOSE = "<reason>", "</reason>"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*(?:```|$)", re.DOTALL)
_PAIR = re.compile(r"""["']?\[?\s*(\d+)\s*\]?["']?\s*:\s*["']?(-?\d+(?:\.\d+)?)""")


def _loads(text: str) -> list[tuple[str, Any]] | None:
    """The key-value pairs of a JSON object in ``text``, in order and with repeated keys kept (``json.loads`` would
    keep only a key's last value), or None when ``text`` is not a JSON object."""
    objects: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)  # the outermost object closes last
        return dict(pairs)

    try:
        obj = json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError:
        return None
    return objects[-1] if isinstance(obj, dict) else None


def _score(value: Any) -> float | None:
    """A finite number (or numeric string) as a float; None for anything else: a bool (JSON ``true`` is not 1), NaN,
    infinity, text or a nested value."""
    if isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def parse_group_scores(text: str, n: int, max_score: float = 10.0, answer_first: bool = False) -> GroupScores:
    """Read the ``<answer>`` JSON of one group of ``n`` documents leniently; see the module docstring.
    ``answer_first``: read an ``<answer>`` written before ``<reason>`` when none follows the reasoning (the head does;
    the GRPO reward refuses that order before it parses: :mod:`rerank.methods.grouprank.task`)."""
    fixes: list[str] = []
    close, opening = text.rfind(_REASON_CLOSE), text.find(_REASON_OPEN)
    if close >= 0:
        final = text[close + len(_REASON_CLOSE) :]
        before = text[:opening] if 0 <= opening < close else ""  # text ahead of the reasoning
        if _ANSWER.search(text[len(before) : close]) is not None:
            fixes.append("<answer> inside <reason> ignored")
    else:  # no reasoning, or reasoning never closed: an answer after ``<reason>`` is read (a repair)
        final = text[opening:] if opening >= 0 else text
        before = text[:opening] if opening >= 0 else ""
    region, answers = final, list(_ANSWER.finditer(final))
    early = list(_ANSWER.finditer(before))
    if early and answers:
        fixes.append("<answer> before <reason> ignored, the one after it read")
    elif early and answer_first:
        region, answers = before, early
        fixes.append("<answer> before <reason> read (none after it)")
    elif early:
        fixes.append("<answer> before <reason> ignored")
    if close < 0 <= opening and answers:
        fixes.append("unclosed <reason>")
    if not answers:
        body = final
        fixes.append("no <answer> tag")
    else:
        m = answers[-1]
        body = m.group(1)
        if len(answers) > 1:
            fixes.append(f"{len(answers)} <answer> blocks, the last read")
        if "</answer>" not in region[m.start() :]:
            fixes.append("unclosed <answer>")
    fence = _FENCE.search(body)
    if fence is not None:
        body = fence.group(1)
    start = body.find("{")
    obj_text = body[start:] if start >= 0 else "{" + body
    if start < 0:
        fixes.append("missing '{'")
    end = obj_text.rfind("}")
    if end < 0:
        obj_text += "}"
        fixes.append("missing '}'")
    else:
        obj_text = obj_text[: end + 1]
    obj = _loads(obj_text)
    if obj is None:
        fixed = re.sub(r",\s*}", "}", obj_text.replace("'", '"'))
        obj = _loads(fixed)
        if obj is not None:
            fixes.append("quotes/trailing comma")
    if obj is None:
        pairs = _PAIR.findall(obj_text)
        if pairs:
            fixes.append("invalid JSON, pairs read by pattern")
        obj = list(pairs)
    scores: list[float | None] = [None] * n
    for key, value in obj:
        km = re.fullmatch(r"\s*\[?\s*(\d+)\s*\]?\s*", str(key))
        v = _score(value)
        if v is None:
            fixes.append(f"non-numeric or non-finite score {value!r}")
            continue
        if km is None or not 1 <= int(km.group(1)) <= n:
            fixes.append(f"unknown id {key!r}")
            continue
        i = int(km.group(1)) - 1
        if scores[i] is not None:
            fixes.append(f"duplicate id {key!r}")
            continue
        if not 0.0 <= v <= max_score:
            fixes.append(f"score {v} clipped")
            v = min(max(v, 0.0), max_score)
        scores[i] = v
    if all(s is None for s in scores):
        return GroupScores([0.0] * n, failed=True, fixes=fixes)
    missing = sum(s is None for s in scores)
    if missing:
        fixes.append(f"{missing} ids missing, scored 0")
    return GroupScores([0.0 if s is None else s for s in scores], fixes=fixes)


def grouprank_grammar(n: int, prefix: str = "", max_score: int = 10) -> Grammar:
    """The answer language of a group of ``n``: ``<reason>…</reason>`` (no ``<answer>`` inside), ``<answer>`` and
    ``{"[1]": s, …, "[n]": s}`` with integers 0..``max_score``, ``</answer>``; a newline is optional between the tags
    and around the JSON (as the template's example writes it). ``prefix``: what the prompt already ends with."""
    scores = OneOf(tuple(str(v) for v in range(max_score + 1)))
    newline = OneOf(("\n", ""))
    segs: list[Any] = [Exact("<reason>"), FreeText("</reason>", ("<answer>",)), newline, Exact("<answer>"), newline]
    for k in range(n):
        segs += [Exact(("{" if k == 0 else ", ") + f'"[{k + 1}]": '), scores]
    segs += [Exact("}"), newline, Exact("</answer>")]
    return Grammar(tuple(segs), prefix)


def minmax(values: list[float]) -> list[float]:
    """Min-max normalise to [0, 1] as hybrid interpolation does (:func:`~rerank.utils.scores.minmax_normalize`:
    ``+inf`` -> 1, ``-inf`` -> 0, finite scores in order between), so an infinite first-stage score cannot make the
    fusion NaN; a constant list maps to zeros (it carries no ordering)."""
    if not values or all(v == values[0] for v in values):
        return [0.0] * len(values)
    norm = minmax_normalize([(str(i), v) for i, v in enumerate(values)])
    return [norm[str(i)] for i in range(len(values))]


class GroupRankReranker(LLMReranker):
    """Groupwise scoring of shuffled groups, averaged over repeated groupings, fused with the retriever score."""

    method = "grouprank"
    config_class: ClassVar[type] = GroupRankConfig
    shrink_options = ("group_size", "max_new_tokens")

    def __init__(
        self,
        config: GroupRankConfig | None = None,
        backend: Backend | None = None,
        model: str | None = None,
        backend_name: str = "transformers",
    ) -> None:
        super().__init__(config, backend=backend, model=model, backend_name=backend_name)

    def groups(self, query: Query, n: int) -> list[list[int]]:
        """The ``repeats`` groupings of candidate indices, seeded by ``seed`` and the query text only (not its id, which
        a string query gets from its batch position): a query ranks the same alone, anywhere in a batch, or from the
        CLI, and in every process (``random.Random`` seeds a string through SHA-512, not the salted ``hash``)."""
        cfg: GroupRankConfig = self.config  # type: ignore[assignment]
        rng = random.Random(f"{cfg.seed}\x00{query.text}")
        out: list[list[int]] = []
        for _ in range(cfg.repeats):
            order = list(range(n))
            rng.shuffle(order)
            out.extend(order[i : i + cfg.group_size] for i in range(0, n, cfg.group_size))
        return out

    def _prompt(self, query: str, texts: list[str]) -> str:
        """The rendered prompt of one group from the already truncated query and passage texts."""
        passages = [{"id": str(i + 1), "text": t} for i, t in enumerate(texts)]
        messages = self.template.messages(query=query, num=len(texts), passages=passages)
        return self.render(messages, self.template.assistant_prefix)

    def group_inputs(self, query: str, texts: list[str]) -> tuple[str, list[int]]:
        """The group prompt (text, token ids) from the prepared query and passage texts, fitted to the context less
        the generation budget (``max_new_tokens``)."""
        return self.fit(query, texts, self._prompt, self.config.max_new_tokens)  # type: ignore[attr-defined]

    def group_prompt(self, query: Query, candidates: list[Candidate]) -> str:
        """The rendered prompt of one group holding ``candidates`` in this order (query and passages prepared and
        fitted as :meth:`rerank_scores` does): what the head scores and what training trains on."""
        cfg: GroupRankConfig = self.config  # type: ignore[assignment]
        return self.group_inputs(self.prepare(query.text, cfg.max_query_tokens),
                                 passage_texts(self, candidates, cfg.max_doc_tokens))[0]

    def rerank_scores(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Average group score / 10 per document, before fusion."""
        cfg: GroupRankConfig = self.config  # type: ignore[assignment]
        jobs: list[tuple[int, list[int], list[int]]] = []  # (query index, group's candidate indices, prompt)
        for qi, (q, cands) in enumerate(zip(queries, candidate_lists, strict=True)):
            qtext = self.prepare(q.text, cfg.max_query_tokens)
            texts = passage_texts(self, cands, cfg.max_doc_tokens)
            for group in self.groups(q, len(cands)):
                jobs.append((qi, group, self.group_inputs(qtext, [texts[j] for j in group])[1]))
        sums = [[0.0] * len(c) for c in candidate_lists]
        counts = [[0] * len(c) for c in candidate_lists]
        by_size: dict[int, list[tuple[int, list[int], list[int]]]] = {}  # groups of one size share a grammar
        for job in jobs:
            by_size.setdefault(len(job[1]), []).append(job)
        size = max(1, cfg.batch_size)
        for n, members in by_size.items():
            gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                   seed=cfg.seed,
                                   constraint=grouprank_grammar(n, self.template.assistant_prefix)
                                   if cfg.constrained else None)
            for b in range(0, len(members), size):
                chunk = members[b : b + size]
                outputs = self.backend.generate([p for _, _, p in chunk], gen)
                for (qi, group, _), text in zip(chunk, outputs, strict=True):
                    full = self.template.assistant_prefix + text
                    parsed = parse_group_scores(full, len(group), answer_first=True)
                    fixes = [*parsed.fixes, "no score read: the group scores 0"] if parsed.failed else parsed.fixes
                    self.record_output(text, failed=parsed.failed, fixes=fixes, example=full)
                    for j, s in zip(group, parsed.scores, strict=True):
                        sums[qi][j] += s
                        counts[qi][j] += 1
        return [[s / c / 10.0 for s, c in zip(ss, cc, strict=True)] for ss, cc in zip(sums, counts, strict=True)]

    def score_batch(self, queries: list[Query], candidate_lists: list[list[Candidate]]) -> list[list[float]]:
        """Group scores, fused with the first-stage scores by ``fusion_weight`` where every document of the query has
        one; a ``fusion_weight`` the user set that some query cannot apply is a warning (once per call)."""
        cfg: GroupRankConfig = self.config  # type: ignore[assignment]
        w = cfg.fusion_weight
        out = []
        unfused, unscored = 0, 0
        for q, cands, rr in zip(queries, candidate_lists, self.rerank_scores(queries, candidate_lists), strict=True):
            if w >= 1.0:
                out.append(rr)
                continue
            missing = sum(c.score is None for c in cands)
            if missing:
                log.info("grouprank: query %s has documents without first-stage scores; fusion disabled", q.id)
                unfused, unscored = unfused + 1, unscored + missing
                out.append(rr)
                continue
            ret = minmax([float(c.score) for c in cands])  # type: ignore[arg-type]
            out.append([w * r + (1.0 - w) * s for r, s in zip(rr, ret, strict=True)])
        if unfused and changed_options(cfg, ("fusion_weight",)):
            log.warning("grouprank: fusion_weight=%s is not applied to %d of %d queries: %d of their documents have no "
                        "first-stage score, so those queries are ranked by the group scores alone; give every "
                        "document a score (a Candidate with score, or a run) or drop fusion_weight",
                        w, unfused, len(queries), unscored)
        return out

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return self.score_batch([query], [candidates])[0]

    def relevance(self, scores: Sequence[float]) -> list[float]:
        """Scores are group scores / 10, possibly fused with min-max retriever scores: already in [0, 1]."""
        return [min(max(float(s), 0.0), 1.0) for s in scores]
