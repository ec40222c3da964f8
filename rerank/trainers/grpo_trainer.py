"""``rerank train grpo``: GRPO on ranking rewards for the LLM heads, on TRL's ``GRPOTrainer``.

The method's task turns each training example into prompts (ERank and yes-no: one per document; listwise, FIRST
and GroupRank: one per window / group) plus the state the reward needs, and scores completions with the method's
reward (``rerank/methods/<name>/reward.py``); a completion that cannot be parsed earns the format penalty, never an
exception. Prompts longer than ``max_length`` tokens are dropped before the model loads (a warning gives the count; none
left is an error), as SFT drops its too-long examples.
Defaults are the papers': ERank (2025) G=5, β=0.001, lr 1e-6, clip 0.2; GroupRank (AQ-MedAI, 2025) 8 rollouts,
lr 1e-5, β=0.001, temperature 1.0. ERank's reward pools the rollouts of one query, so prompts are kept query-major
(queries shuffled once with the seed, ``shuffle_dataset`` off) and a generation batch holds whole queries when
``batch_size`` is a multiple of (documents per query × G), checked before the model loads
(:func:`check_whole_queries`). Unset ``max_doc_tokens``, ``max_query_tokens`` and ``window`` take the starting model's
(its ``rerank.json``, same head), as the template does: GRPO from an SFT model keeps the SFT's prompt.
``num_iterations`` (μ, default 1) optimisation steps reuse each generation batch; the ratio against the generating
policy, clipped to 1 ± ``epsilon``, differs from 1 only when μ > 1 (with μ = 1 every step is on-policy and ``epsilon``
has nothing to clip). ERank's reference score t (for negatives below every positive) is the starting (SFT) model's
greedy answer (``erank_reference: model``) or 0 (``zero``). Model selection: highest mean dev reward every
``eval_steps`` (0 = keep the last step). FIRST may take ``rollout: plackett-luce``: rollouts drawn from its
first-identifier logits instead of generated text (:class:`rerank.methods.first.training.PlackettLuceGRPOTrainer`).
``extra_rewards`` adds a user's reward functions (``"module:function"``), each times its weight, to the method's reward
(TRL's ``reward_funcs`` / ``reward_weights``; :func:`extra_reward_function` says what each is called with).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from rerank.config import changed_options, option_default
from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext
from rerank.trainers.common import (
    CommonTrainConfig,
    check_dev_split,
    check_negatives_per_positive,
    cpu_only,
    training_kwargs,
)
from rerank.trainers.data import load_training_data
from rerank.trainers.rewards import ExtraReward, RewardConfig, extra_reward_callable, resolve_extra_rewards
from rerank.trainers.sft_trainer import (
    data_source,
    load_causal_lm,
    load_tokenizer,
    save_final,
    selection_metrics,
    warn_other_head,
)

__all__ = ["GRPOTrainConfig", "GRPOTrainer", "check_reward_options", "check_whole_queries", "extra_reward_function",
           "fit_prompts", "reward_context", "reward_function"]

log = logging.getLogger(__name__)

#: the ``rewards`` options a Plackett-Luce rollout never reaches: it is always a complete, readable permutation, so the
#: incomplete-permutation and unreadable-output branches of the permutation reward never run
PLACKETT_LUCE_UNREAD = ("repair_incomplete", "missing_penalty", "wrong_count_reward", "bad_format_penalty")


@dataclass
class GRPOTrainConfig(CommonTrainConfig):
    """GRPO options; ``num_generations`` 0 and ``learning_rate`` unset take the method's GRPO defaults (its
    descriptor's ``grpo``: ERank G=5, lr 1e-6; GroupRank, and the others, 8 rollouts, lr 1e-5)."""

    trainer_name: ClassVar[str] = "grpo"

    learning_rate: float | None = None  # type: ignore[assignment]
    # unset: the starting model's own (its rerank.json, same head), else the shared defaults (64 tokens, window 10)
    max_doc_tokens: int | None = None  # type: ignore[assignment]
    window: int | None = None  # type: ignore[assignment]
    num_generations: int = 0
    beta: float = 0.001
    epsilon: float = 0.2
    num_iterations: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    max_completion_length: int = 0
    rewards: RewardConfig = field(default_factory=RewardConfig)
    extra_rewards: list[ExtraReward] = field(default_factory=list)
    erank_reference: Literal["model", "zero"] = "model"
    rollout: Literal["generate", "plackett-luce"] = "generate"
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    log_completions: bool = False

    def __post_init__(self, _derived: dict[str, Any] | None = None) -> None:
        from rerank.methods import all_methods, get_method

        self._forget_derived(_derived)
        self._inherit_head_options()
        super().__post_init__(_derived)
        if self.window is None:  # a head that trains on no windows: the shared default, never read
            self._derive("window", int(option_default(CommonTrainConfig, "window")))
        method = get_method(self.head)
        assert method.grpo is not None  # the shared config checked that grpo trains the head
        if not self.num_generations:
            self._derive("num_generations", method.grpo.num_generations)
        if self.learning_rate is None:
            self._derive("learning_rate", method.grpo.learning_rate)
        rollouts = method.resolve("task").rollouts
        if self.rollout not in rollouts:
            drawn = [m.name for m in all_methods().values() if m.trains_with("grpo")
                     and self.rollout in m.resolve("task").rollouts]
            raise ConfigError(f"rollout {self.rollout!r} is not drawn by the task of head {self.head!r} (it draws "
                              f"{', '.join(rollouts)}; {self.rollout} is drawn by {', '.join(drawn) or 'no head'}): "
                              "drop rollout, or train one of those heads")
        if self.rollout == "plackett-luce":
            if self.use_vllm:
                raise ConfigError("rollout 'plackett-luce' scores prompts with the training model; use_vllm does not apply")
            if self.top_p != option_default(self, "top_p"):
                raise ConfigError("top_p is not read by rollout 'plackett-luce' (it samples the whole ranking from the "
                                  "first-identifier logits / temperature): drop top_p, or set temperature")
            if self.max_completion_length != option_default(self, "max_completion_length"):
                raise ConfigError("max_completion_length is not read by rollout 'plackett-luce' (each rollout is a "
                                  "whole permutation of the window, never generated or cut): drop it")
            dead = changed_options(self.rewards, PLACKETT_LUCE_UNREAD)
            if dead:
                raise ConfigError(f"rewards.{dead[0]} is not read with rollout 'plackett-luce' (each rollout is a "
                                  "complete, readable permutation of the window: no id is missing, repeated or "
                                  f"unreadable): drop rewards.{dead[0]}")
        if not self.use_vllm and self.vllm_mode != option_default(self, "vllm_mode"):
            raise ConfigError("vllm_mode is an option of use_vllm: true (with use_vllm false transformers generates): "
                              "set use_vllm: true, or drop vllm_mode")
        check_reward_options(self.head, self.rewards)
        self.extra_rewards = resolve_extra_rewards(self.extra_rewards)
        if not self.rewards.repair_incomplete and changed_options(self.rewards, ("missing_penalty",)):
            raise ConfigError(f"rewards.missing_penalty {self.rewards.missing_penalty} is read only with "
                              "rewards.repair_incomplete: true (without it an incomplete permutation earns "
                              "rewards.wrong_count_reward): set rewards.repair_incomplete: true, or drop "
                              "rewards.missing_penalty")
        check_negatives_per_positive(self, False, "grpo")
        if self.num_iterations < 1:
            raise ConfigError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if not 0 < self.epsilon < 1:
            raise ConfigError(f"epsilon (the clip range) must be in (0, 1), got {self.epsilon}")
        if self.num_iterations == 1 and self.epsilon != option_default(self, "epsilon"):
            raise ConfigError(f"epsilon {self.epsilon} clips the ratio to the generating policy, which is 1 with "
                              "num_iterations 1 (every step on-policy): set num_iterations > 1, or drop epsilon")
        if self.beta < 0:
            raise ConfigError(f"beta (the KL coefficient) must be >= 0 (0: no KL term), got {self.beta}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_completion_length < 0:
            raise ConfigError(f"max_completion_length must be >= 1 (tokens), or 0 for the head's bound; got "
                              f"{self.max_completion_length}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2 (GRPO compares rollouts of one prompt)")
        if self.batch_size % self.num_generations:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                              f"({self.num_generations})")

    def _inherit_head_options(self) -> None:
        """Unset prompt options (``max_doc_tokens``, ``max_query_tokens``, the window / group size) take the values
        the starting model's ``rerank.json`` records when it was trained as this head (GRPO from an SFT model keeps
        the SFT's prompt; the template is inherited by the task, :meth:`Task.head_options`), else the defaults; a set
        value that differs from the recorded one is logged once (a template compared by its content,
        :meth:`PromptTemplate.sha256`, not its name), and so is a model recorded as another head (whose options are
        then not used)."""
        from rerank.methods import get_method
        from rerank.methods.record import read_record

        if not self.head:  # required: the shared config's check says so
            return
        method = get_method(self.head)
        record = read_record(self.model) if self.model else None
        recorded = record.get("options", {}) if record is not None and record.get("method") == self.head else {}
        warn_other_head(self.trainer_name, self.model, record, self.head)
        names = {"max_doc_tokens": "max_doc_tokens", "max_query_tokens": "max_query_tokens"}
        window_option = getattr(method.resolve("task"), "window_option", None) if method.task else None
        if window_option:
            names["window"] = window_option
        differ = []
        for name, key in names.items():
            mine, theirs = getattr(self, name), recorded.get(key)
            if mine is None:
                if isinstance(theirs, int) and not isinstance(theirs, bool):
                    self._derive(name, theirs)
                elif name != "max_query_tokens":  # resolved by the head (CommonTrainConfig)
                    self._derive(name, option_default(CommonTrainConfig, name))
            elif theirs is not None and mine != theirs:
                differ.append(f"{name} {mine} (it was trained with {key} {theirs})")
        if self.template and isinstance(recorded.get("template"), dict):
            from rerank.prompts import load_template

            def loaded(spec: Any) -> Any:  # None: unreadable
                try:
                    return load_template(spec)
                except ConfigError:  # the given one is refused with the head's own message when the task loads it
                    return None

            given, trained = loaded(self.template), loaded(recorded["template"])
            if given is not None and (trained is None or given.sha256() != trained.sha256()):  # sha256: content only
                name = recorded["template"].get("name")
                same = given.name == name  # then only the content tells them apart
                note = " differs in content from the one it was trained with (same name)" if same else ""
                differ.append(f"template {self.template} (it was trained with template {name!r}){note}")
        if differ:
            log.warning("grpo: %s: the prompts differ from those the starting model %s was trained on (its "
                        "rerank.json); unset, each is the model's own", "; ".join(differ), self.model)


def check_reward_options(head: str, rewards: RewardConfig) -> None:
    """A ``rewards`` option the head's reward does not read (its task's ``reward_fields``, declared beside the reward
    code), set to other than its default, is an error listing the options that head does read."""
    from rerank.methods import get_method

    read = get_method(head).resolve("task").reward_fields
    unread = changed_options(rewards, [f.name for f in fields(rewards) if f.name not in read])
    if unread:
        raise ConfigError(f"rewards.{unread[0]} is not read by the reward of head {head!r} (it reads "
                          f"{', '.join(sorted(read))}): drop rewards.{unread[0]}")


def fit_prompts(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, split: str) -> list[dict[str, Any]]:
    """The rows whose prompt fits ``max_length`` tokens (counted as TRL tokenises a prompt); a query with a longer
    prompt is dropped whole (rows of one ``qid`` share a batch and their rewards pool over the query, as ERank's do),
    with a warning giving the counts (as SFT drops its too-long examples); none left is an error."""
    if not rows:
        return rows
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in rows])["input_ids"]]
    keys = [r.get("qid", i) for i, r in enumerate(rows)]  # rows without a query id stand alone
    too_long = {k for k, n in zip(keys, lengths, strict=True) if n > max_length}
    kept = [r for r, k in zip(rows, keys, strict=True) if k not in too_long]
    if not kept:
        raise ConfigError(f"every {split} prompt is longer than max_length={max_length} tokens (the longest has "
                          f"{max(lengths)}): raise max_length, or lower max_doc_tokens / max_query_tokens / the window")
    if len(kept) < len(rows):
        log.warning("%d of %d %s prompts are longer than max_length=%d tokens: %d queries (%d prompts) were dropped",
                    sum(n > max_length for n in lengths), len(rows), split, max_length, len(too_long),
                    len(rows) - len(kept))
    return kept


def reward_function(task: Any, columns: list[str]) -> Any:
    """A TRL reward function: rebuilds each completion's row from the dataset columns and asks the task. A completion
    that cannot be parsed earns the format penalty inside the task's reward; an exception from the reward code itself
    (a bug, or ``rewards`` options it cannot compute with) stops the run, naming the head and the exception, never
    turned into a penalty for every rollout (which trains nothing and looks like a run)."""

    def ranking_reward(prompts: list[str], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rows = [{k: kwargs[k][i] for k in columns} for i in range(len(texts))]
        try:
            return [float(r) for r in task.rewards(texts, rows)]
        except Exception as e:
            raise RuntimeError(f"the GRPO reward of head {task.method!r} raised {type(e).__name__}: {e} (the reward "
                               "code or its rewards options, not a completion: an unreadable completion earns the "
                               "format penalty)") from e

    return ranking_reward


#: the row columns that give an ``extra_rewards`` function its ``queries``, ``doc_ids`` and ``labels``
#: (:func:`reward_context`), added to the rows only when the config has extra rewards
CONTEXT_COLUMNS = {"reward_query": "queries", "reward_doc_ids": "doc_ids", "reward_labels": "labels"}


def reward_context(task: Any, example: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Add to each of ``example``'s GRPO ``rows`` the query text, the ids of the documents its prompt shows (in the
    prompt's order) and their labels (:data:`CONTEXT_COLUMNS`): a pointwise task's rows are the example's candidates in
    order, a window task's rows name theirs (``ids``); a task whose rows do neither is a one-line error."""
    from rerank.trainers.task import PointwiseTask

    ids = [str(c["id"]) for c in example["candidates"]]
    grade = {d: float(g) for d, g in zip(ids, example["labels"], strict=True)}
    pointwise = isinstance(task, PointwiseTask)
    if (pointwise and len(rows) != len(ids)) or (not pointwise and any("ids" not in r for r in rows)):
        raise ConfigError(f"extra_rewards: the GRPO rows of head {task.method!r} do not say which documents their "
                          "prompts show (one row a candidate, or an 'ids' column), so an extra reward cannot be given "
                          "doc_ids and labels: drop extra_rewards")
    for j, r in enumerate(rows):
        docs = [ids[j]] if pointwise else [str(d) for d in r["ids"]]
        r.update(reward_query=str(example["query"]), reward_doc_ids=docs, reward_labels=[grade[d] for d in docs])


class _ContextRows:
    """``task`` whose ``grpo_rows`` also carry the extra rewards' context (:func:`reward_context`)."""

    def __init__(self, task: Any) -> None:
        self._task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def grpo_rows(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        rows = self._task.grpo_rows(example)
        reward_context(self._task, example, rows)
        return rows


def grpo_rows(task: Any, examples: list[dict[str, Any]], seed: int, source: str = "the training data",
              context: bool = False) -> list[dict[str, Any]]:
    """Prompt rows, query-major, queries in a seeded order (so one query's rows stay together); none is a one-line
    error naming ``source`` (:func:`rerank.trainers.task.task_rows`). ``context``: each row also carries what an
    ``extra_rewards`` function is given (:func:`reward_context`)."""
    from rerank.trainers.task import task_rows

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return task_rows(_ContextRows(task) if context else task, [examples[i] for i in order], "grpo", source)


def extra_reward_function(task: Any, columns: list[str], entry: ExtraReward, index: int) -> Any:
    """A TRL reward function calling the user's ``extra_rewards[index]`` function (``entry``) as documented, once a
    reward batch, every argument by keyword: ``fn(*, completions, prompts, queries, doc_ids, labels, parsed, step)
    -> list[float]`` (checked with the config), every argument a list aligned with ``completions`` (``parsed``: the
    head's reading of each completion,
    :class:`rerank.trainers.task.Parsed`) but ``step``, the trainer's global step. It raising, or returning other than
    one finite number a completion, stops the run with a one-line ``ConfigError`` naming the function and the step.
    Its ``__name__`` is the function's path, the name TRL logs its mean under (``rewards/<path>/mean``)."""
    fn = extra_reward_callable(entry, f"extra_rewards[{index}].function")

    def reward(prompts: list[str], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rows = [{k: kwargs[k][i] for k in columns} for i in range(len(texts))]
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0)
        where = f"extra_rewards[{index}] {entry.function} at step {step}"
        given = {name: [r[column] for r in rows] for column, name in CONTEXT_COLUMNS.items()}
        texts_of_prompts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        try:
            out = fn(completions=texts, prompts=texts_of_prompts, **given,
                     parsed=[task.safe_parse(t, r) for t, r in zip(texts, rows, strict=True)], step=step)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"{where} raised {type(e).__name__}: {first}") from e
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError):
            raise ConfigError(f"{where} returned {type(out).__name__} {str(out)[:80]!r}: it must return a list of "
                              f"{len(texts)} numbers, one a completion") from None
        if len(values) != len(texts):
            raise ConfigError(f"{where} returned {len(values)} rewards for {len(texts)} completions: it must return "
                              "one a completion")
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise ConfigError(f"{where} returned {values[bad]} for completion {bad}: every reward must be a finite "
                              "number")
        return values

    reward.__name__ = entry.function
    return reward


def check_whole_queries(rows: list[dict[str, Any]], prompts_per_batch: int, num_generations: int, head: str,
                        batch: str) -> None:
    """A reward that pools a query's rollouts (ERank) must see the query whole: the query-major ``rows`` are cut into
    batches of ``prompts_per_batch`` prompts (each with ``num_generations`` rollouts; ``batch`` says which option sets
    it). With one number of prompts per query, a cut query is an error saying which ``batch_size`` works; with
    numbers that vary (no batch size keeps every query whole) a warning gives the count of cut queries."""
    runs: list[int] = []
    last = object()
    for r in rows:
        if r.get("qid") != last:
            runs.append(0)
            last = r.get("qid")
        runs[-1] += 1
    cut, start = 0, 0
    for n in runs:
        cut += start // prompts_per_batch != (start + n - 1) // prompts_per_batch
        start += n
    if not cut:
        return
    sizes = sorted(set(runs))
    if len(sizes) == 1:
        n = sizes[0]
        raise ConfigError(f"head {head}'s GRPO reward pools the rollouts of a query's {n} prompts, but {batch} puts "
                          f"{prompts_per_batch} prompts ({prompts_per_batch * num_generations} rollouts at "
                          f"num_generations {num_generations}) in a reward batch, which cuts {cut} of {len(runs)} "
                          f"queries: set batch_size to a multiple of {n} x {num_generations} = {n * num_generations}")
    log.warning("head %s's GRPO reward pools the rollouts of a query, but the queries have %d to %d prompts, so no "
                "batch size keeps each whole: %d of %d queries are cut by %s (%d prompts a reward batch), and their "
                "reward sees part of the query", head, sizes[0], sizes[-1], cut, len(runs), batch, prompts_per_batch)


class GRPOTrainer:
    """The registered ``grpo`` trainer."""

    config_class = GRPOTrainConfig

    def check_inputs(self, config: GRPOTrainConfig, data_root: str | None) -> None:
        """What the run needs of this environment beyond its files (``rerank train grpo --check`` runs it too):
        vLLM for ``use_vllm``."""
        if config.use_vllm and importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm needs vLLM in this environment (pip install vllm, on a CUDA machine); "
                              "leave it false to generate with transformers")

    def build(self, config: GRPOTrainConfig, ctx: TrainContext) -> Any:
        """The configured TRL trainer (rows, rewards and rollouts wired), ready to ``train``."""
        import datasets
        from trl import GRPOConfig
        from trl import GRPOTrainer as TRLGRPOTrainer

        from rerank.trainers.task import build_task

        self.check_inputs(config, ctx.data_root)  # before any data or model work
        train, dev = load_training_data(config.data, ctx.data_root)
        check_dev_split(config, dev)
        tok = load_tokenizer(config.model)
        task = build_task(config.head, tok, config)
        where = data_source(config.data)
        context = bool(config.extra_rewards)
        rows = fit_prompts(grpo_rows(task, train, config.seed, where, context), tok, config.max_length, "training")
        dev_rows = (grpo_rows(task, dev, config.seed, f"the dev split of {where}", context)
                    if dev and config.eval_steps > 0 else [])
        dev_rows = fit_prompts(dev_rows, tok, config.max_length, "dev")
        if task.pools_query:
            g = config.num_generations
            check_whole_queries(rows, config.batch_size * config.grad_accum // g, g, config.head,
                                f"batch_size {config.batch_size} x grad_accum {config.grad_accum}")
            if dev_rows:
                check_whole_queries(dev_rows, config.batch_size // g, g, config.head,
                                    f"batch_size {config.batch_size} (the dev batch)")
        model, tok = load_causal_lm(config.model, cpu_only(config), tokenizer=tok)
        task.prepare_grpo_rows(model, rows + dev_rows)
        columns = [k for k in rows[0] if k != "prompt"]
        kw = training_kwargs(config, ctx.output, has_dev=bool(dev_rows))
        if dev_rows:
            kw.update(metric_for_best_model="eval_reward", greater_is_better=True)
        args = GRPOConfig(
            **kw,
            num_generations=config.num_generations,
            beta=config.beta,
            epsilon=config.epsilon,
            num_iterations=config.num_iterations,
            temperature=config.temperature,
            top_p=config.top_p,
            loss_type=config.loss_type,
            max_completion_length=config.max_completion_length or task.max_completion_tokens(),
            shuffle_dataset=False,
            remove_unused_columns=False,
            use_vllm=config.use_vllm,
            vllm_mode=config.vllm_mode,
            log_completions=config.log_completions,
            reward_weights=[1.0, *(e.weight for e in config.extra_rewards)] if config.extra_rewards else None,
        )
        tok.padding_side = "left"
        trainer_class, extra = task.grpo_trainer(config, rows + dev_rows)
        trainer = (trainer_class or TRLGRPOTrainer)(
            **extra,
            model=model,
            reward_funcs=[reward_function(task, columns), *(extra_reward_function(task, columns, e, i)
                                                            for i, e in enumerate(config.extra_rewards))],
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            eval_dataset=datasets.Dataset.from_list(dev_rows) if dev_rows else None,
            processing_class=tok,
            peft_config=config.lora.peft_config() if config.lora.enabled else None,
        )
        self.task = task
        return trainer

    def train(self, config: GRPOTrainConfig, ctx: TrainContext) -> dict[str, Any]:
        trainer = self.build(config, ctx)
        from rerank.trainers.resume import fit, resume_arg

        result = fit(trainer, resume_arg(ctx.output, ctx.resume))
        dev = trainer.eval_dataset
        metrics, note = selection_metrics(trainer, "dev mean reward", len(dev) if dev is not None else 0)
        save_final(trainer, config, ctx.output, "grpo", self.task.record_options(), metrics, note)
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        return {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
                "first_logged_reward": rewards[0] if rewards else None,
                "last_logged_reward": rewards[-1] if rewards else None, "logged_rewards": rewards,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "selected_by": "dev reward" if trainer.eval_dataset is not None else "last step"}
