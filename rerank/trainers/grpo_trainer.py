"""``rerank train grpo``: GRPO on ranking rewards for the LLM heads, on TRL's ``GRPOTrainer``.

The method's task turns each training example into prompts (ERank and yes-no: one per document; listwise, FIRST
and GroupRank: one per window / group) plus the state the reward needs, and scores completions with the method's
reward (``rerank/methods/<name>/reward.py``); a completion that cannot be parsed earns the format penalty, never an
exception.
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
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext
from rerank.trainers.common import CommonTrainConfig, check_dev_split, cpu_only, training_kwargs
from rerank.trainers.data import load_training_data
from rerank.trainers.rewards import RewardConfig
from rerank.trainers.sft_trainer import load_causal_lm, save_final, selection_metrics

__all__ = ["GRPOTrainConfig", "GRPOTrainer", "reward_function"]


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
        if self.num_iterations < 1:
            raise ConfigError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if not 0 < self.epsilon < 1:
            raise ConfigError(f"epsilon (the clip range) must be in (0, 1), got {self.epsilon}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2 (GRPO compares rollouts of one prompt)")
        if self.batch_size % self.num_generations:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                              f"({self.num_generations})")


def reward_function(task: Any, columns: list[str]) -> Any:
    """A TRL reward function: rebuilds each completion's row from the dataset columns and asks the task."""

    def ranking_reward(prompts: list[str], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rows = [{k: kwargs[k][i] for k in columns} for i in range(len(texts))]
        try:
            return [float(r) for r in task.rewards(texts, rows)]
        except Exception:  # noqa: BLE001 - never stop a run on a reward bug in one batch: penalise and go on
            return [float(task.reward_config.bad_format_penalty)] * len(texts)

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
        model, tok = load_causal_lm(config.model, cpu_only(config))
        task = build_task(config.head, tok, config)
        rows = grpo_rows(task, train, config.seed)
        dev_rows = grpo_rows(task, dev, config.seed) if dev and config.eval_steps > 0 else []
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
