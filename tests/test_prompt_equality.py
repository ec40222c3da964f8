"""Training prompts are inference prompts: for every LLM method, each SFT and GRPO row the training task builds holds,
token for token, the prompt the method's inference head sends to its backend for the same query and documents.

The inference side runs the head's public ``rerank`` on a backend that records the token ids it is given; the
training side is the task's rows tokenised as TRL tokenises a prompt (no special tokens added). Queries and documents
are long enough to be truncated and carry titles, so the truncation and title formatting are compared too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from rerank.backends.base import Backend, GenerationConfig
from rerank.config import from_dict
from rerank.heads.registry import get_reranker_class
from rerank.methods import get_method, method_names
from rerank.testing import build_tokenizer, synthetic_ranking_examples
from rerank.trainers.grpo_trainer import GRPOTrainConfig
from rerank.trainers.sft_trainer import SFTTrainConfig
from rerank.trainers.task import build_task
from rerank.types import Candidate, Query

LLM_METHODS = [n for n in method_names("reranker") if get_method(n).task is not None]
WINDOW = 4
LONG_TAIL = " and further words that are cut off by the token limit before the prompt is rendered" * 3


class RecordingBackend(Backend):
    """Records the token-id prompts of each call; log-probs 0, generations empty (the heads cope with both)."""

    name = "recording"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self._tokenizer = tokenizer
        self.prompts: list[list[list[int]]] = []

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> list[list[float]]:
        self.prompts.append([list(p) for p in prompts])
        return [[0.0] * len(token_ids) for _ in prompts]

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> list[str]:
        self.prompts.append([list(p) for p in prompts])
        return ["" for _ in prompts]


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def _example() -> dict[str, Any]:
    ex = synthetic_ranking_examples(1, num_candidates=WINDOW, seed=11)[0]
    ex["query"] += LONG_TAIL
    for j, c in enumerate(ex["candidates"]):
        c["title"] = f"title {j}" if j % 2 == 0 else ""
        c["text"] += LONG_TAIL
    return ex


def _configs(method: str, **extra: Any) -> list[Any]:
    base = {"model": "m", "head": method, "data": {"path": "x"}, "max_doc_tokens": 12, "max_query_tokens": 6,
            **({"window": WINDOW} if get_method(method).windowed else {}), **extra}
    out = [from_dict(SFTTrainConfig, base)]
    if get_method(method).grpo is not None and "reasoning" not in extra:
        out.append(from_dict(GRPOTrainConfig, {**base, "batch_size": 8, "num_generations": 4}))
    return out


def _inference_prompts(task: Any, tok: Any, query: Query, docs: list[Candidate]) -> list[list[int]]:
    """The prompts the inference head, configured as training configured it, sends for ``query`` and ``docs``."""
    head_cls = get_reranker_class(task.method)
    options = dict(task.head_options(task.cfg))
    if task.method == "grouprank":
        options["repeats"] = 1
    backend = RecordingBackend(tok)
    head = head_cls(from_dict(head_cls.config_class, options), backend=backend)
    head.rerank_batch([query], [docs])
    return backend.prompts[0]  # the first backend call holds the prompts as rendered (later ones extend them)


def _window_docs(task: Any, example: dict[str, Any], window: list[int], query: Query) -> list[Candidate]:
    """The documents to give the head so its (only) window or group lists ``window``'s candidates in that order."""
    cands = task.candidates(example, window)
    if task.method != "grouprank":
        return cands
    group = task.head.groups(query, len(cands))[0]  # the head's own seeded shuffle (first grouping): undo it
    docs: list[Candidate | None] = [None] * len(cands)
    for k, j in enumerate(group):
        docs[j] = cands[k]
    return docs  # type: ignore[return-value]


@pytest.mark.parametrize("variant", [*LLM_METHODS, "erank-reasoning"])
def test_training_prompts_are_the_inference_prompts(tok: Any, variant: str) -> None:
    method, extra = ("erank", {"reasoning": True}) if variant == "erank-reasoning" else (variant, {})
    example = _example()
    query = Query(example["qid"], example["query"])
    for cfg in _configs(method, **extra):
        task = build_task(method, tok, cfg)
        windowed = get_method(method).windowed
        for kind in ("sft", "grpo"):
            rows = task.sft_rows(example) if kind == "sft" else task.grpo_rows(example)
            trained = [tok.encode(r["prompt"], add_special_tokens=False) for r in rows]
            if windowed:
                (window,) = task.windows(example, WINDOW)
                served = _inference_prompts(task, tok, query, _window_docs(task, example, window, query))
            else:
                served = _inference_prompts(task, tok, query, task.candidates(example, list(range(WINDOW))))
            assert len(trained) == (1 if windowed else WINDOW), (variant, kind)
            assert trained == served, (variant, type(cfg).__name__, kind)
            if method == "first" and kind == "sft":
                assert [r["rank_prompt_ids"] for r in rows] == served
            text = tok.decode(served[0])
            assert "cut off" not in text and "title" in text  # truncated, titles included
            assert text.endswith(task.template.assistant_prefix)


def test_every_llm_method_is_covered() -> None:
    """The methods with an LLM training task are exactly the generative heads (a new one joins this test by itself)."""
    assert set(LLM_METHODS) == {"yes-no", "erank", "listwise", "first", "grouprank", "qwen3-reranker"}
