"""``rerank train grpo``: GRPO on ranking rewards for the LLM heads, on TRL's ``GRPOTrainer``.

The method's task turns each training example into prompts (ERank and yes-no: one per document; listwise, FIRST
and GroupRank: one per window / group) plus the state the reward needs, and scores completions with the method's
reward (``rerank/methods/<name>/reward.py``); a completion that cannot be parsed earns the format penalty, never an
exception. Prompts longer than ``max_length`` tokens are dropped before the model loads (a warning gives the count; none
left is an error), as SFT drops its too-long examples.
Defaults follow ANCHORS.md: ERank G=5, β=0.001, lr 1e-6, clip 0.2; GroupRank 8 rollouts, lr 1e-5, β=0.001,
temperature 1.0. ERank's reward pools the rollouts of one query, so prompts are kept query-major (queries shuffled
once with the seed, ``shuffle_dataset`` off) and a generation batch holds whole queries when ``batch_size`` is a
multiple of (documents per query × G). ``num_iterations`` (μ, default 1)
optimisation steps reuse each generation batch; the ratio against the generating policy, clipped to 1 ± ``epsilon``,
differs from 1 only when μ > 1 (with μ = 1 every step is on-policy and ``epsilon`` has nothing to clip). ERank's
reference score t (for negatives below every positive) is the
starting (SFT) model's greedy answer (``erank_reference: model``) or 0 (``zero``). Model selection: highest mean dev
reward every ``eval_steps`` (0 = keep the last step). FIRST may take ``rollout: plackett-luce``: rollouts drawn from its
first-identifier logits instead of generated text (:class:`rerank.methods.first.training.PlackettLuceGRPOTrainer`).
"""

from __future__ import annotations

import importlib.util
import logging
import random
from dataclasses import dataclass, field, fields
from typing import Any, Literal

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
from rerank.trainers.rewards import RewardConfig
from rerank.trainers.sft_trainer import load_causal_lm, load_tokenizer, save_final, selection_metrics

__all__ = ["GRPOTrainConfig", "GRPOTrainer", "check_reward_options", "fit_prompts", "reward_function"]

log = logging.getLogger(__name__)


@dataclass
class GRPOTrainConfig(CommonTrainConfig):
    """GRPO options; ``num_generations`` 0 and ``learning_rate`` unset take the method's GRPO defaults (its
    descriptor's ``grpo``: ERank G=5, lr 1e-6; GroupRank, and the others, 8 rollouts, lr 1e-5)."""

    learning_rate: float | None = None  # type: ignore[assignment]
    num_generations: int = 0
    beta: float = 0.001
    epsilon: float = 0.2
    num_iterations: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    max_completion_length: int = 0
    rewards: RewardConfig = field(default_factory=RewardConfig)
    erank_reference: Literal["model", "zero"] = "model"
    rollout: Literal["generate", "plackett-luce"] = "generate"
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    log_completions: bool = False

    def __post_init__(self) -> None:
        from rerank.methods import get_method, method_names

        super().__post_init__()
        method = get_method(self.head)
        if method.grpo is None or not method.trains_with("grpo"):
            raise ConfigError(f"grpo trains the generative LLM heads ({', '.join(method_names(trains_with='grpo'))}); "
                              f"{self.head!r} trains with 'sft'")
        self.num_generations = self.num_generations or method.grpo.num_generations
        if self.learning_rate is None:
            self.learning_rate = method.grpo.learning_rate
        if self.erank_reference != "model" and self.head != "erank":
            raise ConfigError("erank_reference is an option of head 'erank' only")
        if self.rollout == "plackett-luce":
            if self.head != "first":
                raise ConfigError("rollout 'plackett-luce' samples FIRST's first-identifier ranking; it needs head 'first'")
            if self.use_vllm:
                raise ConfigError("rollout 'plackett-luce' scores prompts with the training model; use_vllm does not apply")
            if self.top_p != option_default(self, "top_p"):
                raise ConfigError("top_p is not read by rollout 'plackett-luce' (it samples the whole ranking from the "
                                  "first-identifier logits / temperature): drop top_p, or set temperature")
            if self.max_completion_length != option_default(self, "max_completion_length"):
                raise ConfigError("max_completion_length is not read by rollout 'plackett-luce' (each rollout is a "
                                  "whole permutation of the window, never generated or cut): drop it")
        if not self.use_vllm and self.vllm_mode != option_default(self, "vllm_mode"):
            raise ConfigError("vllm_mode is an option of use_vllm: true (with use_vllm false transformers generates): "
                              "set use_vllm: true, or drop vllm_mode")
        check_reward_options(self.head, self.rewards)
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


def check_reward_options(head: str, rewards: RewardConfig) -> None:
    """A ``rewards`` option the head's reward does not read (its task's ``reward_fields``, declared beside the reward
    code), set to other than its default, is an error listing the options that head does read."""
    from rerank.methods import get_method, resolve

    read = resolve(get_method(head).task).reward_fields  # type: ignore[arg-type]
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
    """A TRL reward function: rebuilds each completion's row from the dataset columns and asks the task."""

    def ranking_reward(prompts: list[str], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rows = [{k: kwargs[k][i] for k in columns} for i in range(len(texts))]
        try:
            return [float(r) for r in task.rewards(texts, rows)]
        except Exception:  # noqa: BLE001 - never stop a run on a reward bug in one batch: penalise and go on
            return [float(task.failure_reward())] * len(texts)

    return ranking_reward


def grpo_rows(task: Any, examples: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Prompt rows, query-major, queries in a seeded order (so one query's rows stay together)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [row for i in order for row in task.grpo_rows(examples[i])]


class GRPOTrainer:
    """The registered ``grpo`` trainer."""

    config_class = GRPOTrainConfig

    def build(self, config: GRPOTrainConfig, ctx: TrainContext) -> Any:
        """The configured TRL trainer (rows, rewards and rollouts wired), ready to ``train``."""
        import datasets
        from trl import GRPOConfig
        from trl import GRPOTrainer as TRLGRPOTrainer

        from rerank.trainers.task import build_task

        if config.use_vllm and importlib.util.find_spec("vllm") is None:  # before any data or model work
            raise ConfigError("use_vllm needs vLLM in this environment (pip install vllm, on a CUDA machine); "
                              "leave it false to generate with transformers")
        train, dev = load_training_data(config.data, ctx.data_root)
        check_dev_split(config, dev)
        tok = load_tokenizer(config.model)
        task = build_task(config.head, tok, config)
        rows = fit_prompts(grpo_rows(task, train, config.seed), tok, config.max_length, "training")
        dev_rows = grpo_rows(task, dev, config.seed) if dev and config.eval_steps > 0 else []
        dev_rows = fit_prompts(dev_rows, tok, config.max_length, "dev")
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
        )
        tok.padding_side = "left"
        trainer_class, extra = task.grpo_trainer(config, rows + dev_rows)
        trainer = (trainer_class or TRLGRPOTrainer)(
            **extra,
            model=model,
            reward_funcs=[reward_function(task, columns)],
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
