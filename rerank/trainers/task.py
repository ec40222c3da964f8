"""What the shared SFT / GRPO trainers ask of an LLM method: its training task (``rerank/methods/<name>/task.py``).

A task turns a training example into (a) ``sft_rows``: prompt + target completion rows, (b) ``grpo_rows``: prompts
with the state its reward needs, (c) ``parse(text, row)``: a completion -> scores or a permutation and whether it was
well-formed, and ``rewards(completions, rows)`` for GRPO. Prompts are never rebuilt here: the task holds the
method's own inference head on a :class:`~rerank.heads.llm.PromptOnlyBackend` and renders every prompt with the
head's prompt methods, so what a model trains on is what it is asked at inference (tests/test_prompt_equality.py).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.config import from_dict
from rerank.errors import ConfigError
from rerank.heads.llm import LLMReranker, PromptOnlyBackend
from rerank.prompts import PromptTemplate
from rerank.trainers.rewards import RewardConfig
from rerank.types import Candidate, Document, Query

__all__ = ["Parsed", "PointwiseTask", "Task", "build_task", "check_first_stage_order", "target_scores", "task_rows"]

log = logging.getLogger(__name__)


@dataclass
class Parsed:
    """A parsed completion: per-document scores (aligned with the row's documents) and/or a ranking of local
    indices, and whether the output was well-formed (a malformed one gets the format penalty)."""

    valid: bool
    scores: list[float] | None = None
    order: list[int] | None = None


def target_scores(example: dict[str, Any]) -> list[int]:
    """0-10 targets: teacher scores if present (rounded; the trainer's row validation refuses those outside 0-10, see
    ``Task.teacher_scores_range``), else labels scaled by the example's top grade."""
    if example.get("teacher_scores"):
        bad = [s for s in example["teacher_scores"] if not 0 <= s <= 10]
        if bad:  # rows reach here validated: a score outside 0-10 is a caller's bug, never clipped silently
            raise ValueError(f"qid {example.get('qid')!r}: teacher score {bad[0]} is outside the 0-10 target scale")
        return [round(s) for s in example["teacher_scores"]]
    top = max(example["labels"])
    return [round(10 * g / top) if top > 0 else 0 for g in example["labels"]]


class Task:
    """Shared plumbing: the method's head (prompt rendering), example -> query / candidates, seeded windows.

    Subclasses set ``method`` (the registered method name: :func:`build_task` refuses another) and implement the row
    builders, parser and rewards, and declare in ``reward_fields`` the :class:`RewardConfig` options their reward
    reads (beside the reward code): a GRPO config setting any other is refused, and in ``teacher_scores_range`` the
    scale their SFT targets read.
    """

    method: ClassVar[str] = ""
    reward_fields: ClassVar[frozenset[str]] = frozenset()
    #: the range the SFT targets read ``teacher_scores`` on (ERank / GroupRank: 0-10 via :func:`target_scores`); the
    #: trainer refuses rows outside it before the model loads (None: the task does not read them as targets)
    teacher_scores_range: ClassVar[tuple[int, int] | None] = None
    #: the head option the training ``window`` is (``rerank.json``: listwise / FIRST ``window``, GroupRank
    #: ``group_size``); None: the head trains on no windows
    window_option: ClassVar[str | None] = None
    #: whether the GRPO reward pools the rollouts of one query (ERank): a generation batch must then hold whole queries
    pools_query: ClassVar[bool] = False
    #: the GRPO ``rollout`` values the task draws (``generate``: sampled text; FIRST adds ``plackett-luce``); a GRPO
    #: config with another is refused, and :meth:`grpo_trainer` / :meth:`sample_completions` draw the one configured
    rollouts: ClassVar[tuple[str, ...]] = ("generate",)

    def __init__(self, tokenizer: Any, cfg: Any) -> None:
        from rerank.methods import get_method

        self.tokenizer = tokenizer
        self.cfg = cfg
        head_cls = get_method(self.method).resolve("head")  # the method's own inference head (its descriptor)
        options = self.head_options(cfg)
        head_cfg = from_dict(head_cls.config_class, options, where=f"{self.method} head options")
        self.head: LLMReranker = head_cls(head_cfg, backend=PromptOnlyBackend(tokenizer))  # type: ignore[call-arg]
        self.template: PromptTemplate = self.head.template
        self.reward_config: RewardConfig = getattr(cfg, "rewards", None) or RewardConfig()

    @classmethod
    def head_options(cls, cfg: Any) -> dict[str, Any]:
        """The inference head's options that shape the prompts this task trains on (saved in ``rerank.json``). The
        template: the configured one, else the starting model's own when its ``rerank.json`` records one for this
        method (GRPO from an SFT output keeps the SFT's prompt), else the method's default."""
        from rerank.methods.record import read_record

        out: dict[str, Any] = {"max_doc_tokens": cfg.max_doc_tokens, "max_query_tokens": cfg.max_query_tokens}
        record = read_record(cfg.model) if not cfg.template else None
        if cfg.template:
            out["template"] = cfg.template
        elif record is not None and record.get("method") == cls.method and record.get("options", {}).get("template"):
            out["template"] = record["options"]["template"]
        return out

    def record_options(self) -> dict[str, Any]:
        """The head options a trained model's ``rerank.json`` records: :meth:`head_options` with the template in
        full (so the model's prompts do not depend on the toolkit's shipped files)."""
        return {**self.head_options(self.cfg), "template": self.template.to_dict()}

    @staticmethod
    def query(example: dict[str, Any]) -> Query:
        return Query(str(example["qid"]), example["query"])

    @staticmethod
    def candidates(example: dict[str, Any], idx: list[int]) -> list[Candidate]:
        """The example's candidates ``idx`` (in that order) as the head's input type."""
        out = []
        for j in idx:
            c = example["candidates"][j]
            out.append(Candidate(Document(str(c["id"]), c["text"], c.get("title") or ""), c.get("score")))
        return out

    def windows(self, example: dict[str, Any], size: int) -> list[list[int]]:
        """Candidate indices cut into groups of ``size`` in the configured ``window_order``.

        ``shuffled``: a seeded shuffle per query. ``first_stage``: the order the data lists the candidates (a
        first-stage ranking, as ``rerank data build`` writes it), except that candidates the first stage did not
        return (no ``score``: qrels positives added by ``include_positives``, appended at the end) go to seeded random
        places, so a window's last passage is not a tell; with no scores at all, the data's order as it is
        (:func:`task_rows` refuses data whose every such query lists its positives first)."""
        cands = example["candidates"]
        idx = list(range(len(cands)))
        rng = random.Random(f"{self.cfg.seed}\x00{example['qid']}")
        if self.cfg.window_order == "shuffled":
            rng.shuffle(idx)
        else:
            unscored = [j for j in idx if cands[j].get("score") is None]
            if len(unscored) < len(idx):
                idx = [j for j in idx if cands[j].get("score") is not None]
                for j in unscored:
                    idx.insert(rng.randint(0, len(idx)), j)
        return [idx[i : i + size] for i in range(0, len(idx), size) if len(idx[i : i + size]) >= 2]

    def sft_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def parse(self, text: str, row: dict[str, Any]) -> Parsed:
        raise NotImplementedError

    def rewards(self, completions: list[str], rows: list[dict[str, Any]]) -> list[float]:
        raise NotImplementedError

    def max_completion_tokens(self) -> int:
        """A bound on a well-formed completion's length in tokens (the GRPO generation cap)."""
        raise NotImplementedError

    def check_sft_examples(self, examples: list[dict[str, Any]], source: str) -> None:
        """Refuse (or warn about) examples the task's SFT targets cannot be built from as configured, before the
        model loads (ERank with a reasoning template: rows without a ``reasoning`` text); most tasks need none."""

    def prepare_grpo_rows(self, model: Any, rows: list[dict[str, Any]]) -> None:
        """Fill GRPO row state that needs the starting model (ERank's reference scores); most methods need none."""

    def sft_trainer(self, cfg: Any) -> tuple[type | None, dict[str, Any]]:
        """A TRL ``SFTTrainer`` subclass and its extra keywords when the method's loss needs one (None: TRL's own)."""
        return None, {}

    def grpo_trainer(self, cfg: Any, rows: list[dict[str, Any]]) -> tuple[type | None, dict[str, Any]]:
        """A TRL ``GRPOTrainer`` subclass and its extra keywords for the configured rollouts (None: TRL's own)."""
        return None, {}

    def sample_completions(self, model: Any, row: dict[str, Any], samples: int, generator: Any) -> list[str]:
        """``samples`` completions of ``row``'s prompt drawn by ``model`` as GRPO draws its rollouts (``generate``:
        sampled text at the config's temperature / top_p), seeded from ``generator`` (a torch Generator)."""
        import torch

        tok, cfg = self.tokenizer, self.cfg
        enc = tok([row["prompt"]], return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        ids = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                             num_return_sequences=samples, max_new_tokens=cfg.max_completion_length
                             or self.max_completion_tokens(), pad_token_id=tok.pad_token_id)
        return tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def safe_parse(self, text: str, row: dict[str, Any]) -> Parsed:
        """``parse`` that never raises: anything unexpected is a malformed completion."""
        try:
            return self.parse(text, row)
        except Exception:  # noqa: BLE001 - a completion must never stop a run; it earns the format penalty
            return Parsed(valid=False)


class PointwiseTask(Task):
    """One prompt per (query, document) (ERank, yes-no)."""

    def prompt(self, example: dict[str, Any], j: int) -> str:
        """The head's rendered prompt for the example's ``j``-th candidate."""
        return self.head.pair_prompts(self.query(example), self.candidates(example, [j]))[0]  # type: ignore[attr-defined]


def _labels_first(example: dict[str, Any]) -> bool | None:
    """Whether a query with no first-stage ``score`` lists its candidates best label first (its listed order is then
    the labels', not a first stage's); None when it has a score or a single label value (its order tells nothing)."""
    labels = example["labels"]
    if any(c.get("score") is not None for c in example["candidates"]) or len(set(labels)) < 2:
        return None
    return all(a >= b for a, b in zip(labels, labels[1:]))


def check_first_stage_order(task: Task, examples: list[dict[str, Any]], source: str) -> None:
    """With ``window_order: first_stage``, refuse data whose queries without a first-stage ``score`` all list their
    positives first (converted FlagEmbedding and Tevatron rows always do): every window would then teach the model to
    keep the input order. A query with a score, or whose list has a positive after a non-positive, passes."""
    if getattr(task.cfg, "window_order", "shuffled") != "first_stage":
        return
    said = [(e["qid"], first) for e in examples if (first := _labels_first(e)) is not None]
    if said and all(first for _, first in said):
        raise ConfigError(f"window_order first_stage keeps each query's candidates in the order its row lists them, "
                          f"but each of the {len(said)} queries of {source} with positives and negatives and no "
                          f"first-stage score lists its positives first (e.g. qid {said[0][0]!r}; FlagEmbedding and "
                          "Tevatron rows are converted so: they hold no first-stage order): every window would teach "
                          "the model to keep the input order; use window_order: shuffled (the default), or list each "
                          "query's candidates in its first stage's order with their scores (candidates[].score)")


def task_rows(task: Task, examples: list[dict[str, Any]], kind: str, source: str) -> list[dict[str, Any]]:
    """The ``kind`` (``sft`` / ``grpo``) rows of ``examples``, in their order. Queries that give none (fewer than 2
    candidates for a head that trains on windows) are warned about with the count; none at all is a one-line error
    naming ``source`` (the data option) and why, before the model loads, as is ``window_order: first_stage`` on data
    that holds no first-stage order (:func:`check_first_stage_order`)."""
    check_first_stage_order(task, examples, source)
    build = task.sft_rows if kind == "sft" else task.grpo_rows
    rows: list[dict[str, Any]] = []
    empty = 0
    for e in examples:
        got = build(e)
        empty += not got
        rows += got
    short = sum(1 for e in examples if len(e["candidates"]) < 2)
    if not rows:
        why = (f"each of its {len(examples)} queries has fewer than 2 candidates, and head {task.method} trains on "
               f"windows of 2 to {task.cfg.window} of a query's candidates: give each query at least 2 candidates"
               if examples and short == len(examples) else "every example was skipped by the head's task piece")
        raise ConfigError(f"no {kind.upper()} rows from {source}: {why}")
    if empty:
        reason = " (fewer than 2 candidates: a window needs 2)" if short == empty else ""
        log.warning("%d of %d queries of %s give no %s rows%s and are not trained on", empty, len(examples), source,
                    kind.upper(), reason)
    return rows


def build_task(head: str, tokenizer: Any, cfg: Any) -> Task:
    """The training task of LLM method ``head`` for ``tokenizer``; a method without one raises, listing those with,
    and a task class whose ``method`` is not ``head`` raises naming both (it would train on another method's prompt)."""
    from rerank.methods import get_method, method_names

    method = get_method(head, kind="reranker")
    if method.task is None:
        raise ConfigError(f"method {head!r} has no LLM training task; methods with one: "
                          f"{', '.join(n for n in method_names('reranker') if get_method(n).task)}")
    return method.resolve("task")(tokenizer, cfg)
