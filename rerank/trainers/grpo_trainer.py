"""``rerank train grpo``: GRPO on ranking rewards for the LLM heads, on TRL's ``GRPOTrainer``.

The head's task piece turns each training example into prompts (ERank and yes-no: one per document; listwise, FIRST
and GroupRank: one per window / group) plus the state the reward needs, and scores completions through
:mod:`rerank.trainers.rewards`; a completion that cannot be parsed earns the format penalty, never an exception.
Defaults follow ANCHORS.md: ERank G=5, β=0.001, lr 1e-6, clip 0.2; GroupRank 8 rollouts, lr 1e-5, β=0.001,
temperature 1.0. ERank's reward pools the rollouts of one query, so prompts are kept query-major (queries shuffled
once with the seed, ``shuffle_dataset`` off) and a generation batch holds whole queries when ``batch_size`` is a
multiple of (documents per query × G). ERank's reference score t (for negatives below every positive) is the
starting (SFT) model's greedy answer (``erank_reference: model``) or 0 (``zero``). Model selection: highest mean dev
reward every ``eval_steps`` (0 = keep the last step). FIRST may take ``rollout: plackett-luce``: rollouts drawn from its
first-identifier logits instead of generated text (:class:`rerank.trainers.first.PlackettLuceGRPOTrainer`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext
from rerank.trainers.common import CommonTrainConfig, cpu_only, resume_arg, training_kwargs
from rerank.trainers.data import load_training_data
from rerank.trainers.rewards import RewardConfig
from rerank.trainers.sft_trainer import load_causal_lm, save_final

__all__ = ["HEAD_DEFAULTS", "GRPOTrainConfig", "GRPOTrainer", "reward_function"]

# (num_generations, learning_rate) per head; ERank and GroupRank from their papers, the others GroupRank's.
HEAD_DEFAULTS: dict[str, tuple[int, float]] = {
    "erank": (5, 1e-6),
    "grouprank": (8, 1e-5),
    "first": (8, 1e-5),
    "listwise": (8, 1e-5),
    "yes-no": (8, 1e-5),
}


@dataclass
class GRPOTrainConfig(CommonTrainConfig):
    """GRPO options; ``num_generations`` 0 and ``learning_rate`` unset take the head's defaults (HEAD_DEFAULTS)."""

    learning_rate: float | None = None  # type: ignore[assignment]
    num_generations: int = 0
    beta: float = 0.001
    epsilon: float = 0.2
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
        super().__post_init__()
        if self.head == "cross-encoder":
            raise ConfigError("grpo trains generative LLM heads; the cross-encoder trains with 'sft'")
        g, lr = HEAD_DEFAULTS[self.head]
        self.num_generations = self.num_generations or g
        if self.learning_rate is None:
            self.learning_rate = lr
        if self.rollout == "plackett-luce":
            if self.head != "first":
                raise ConfigError("rollout 'plackett-luce' samples FIRST's first-identifier ranking; it needs head 'first'")
            if self.use_vllm:
                raise ConfigError("rollout 'plackett-luce' scores prompts with the training model; use_vllm does not apply")
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


def erank_references(model: Any, tok: Any, task: Any, rows: list[dict[str, Any]], batch: int = 16) -> None:
    """Fill each row's ``reference`` with the starting model's greedy 0-10 answer (0 when it is malformed)."""
    import torch

    tok.padding_side = "left"
    model.eval()
    cap = task.max_completion_tokens()
    for b in range(0, len(rows), batch):
        chunk = rows[b : b + batch]
        enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc.to(model.device), max_new_tokens=cap, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, t in zip(chunk, texts, strict=True):
            p = task.safe_parse(t, r)
            r["reference"] = p.scores[0] if p.valid and p.scores else 0.0
    model.train()


class GRPOTrainer:
    """The registered ``grpo`` trainer."""

    config_class = GRPOTrainConfig

    def build(self, config: GRPOTrainConfig, ctx: TrainContext) -> Any:
        """The configured TRL trainer (rows, rewards and rollouts wired), ready to ``train``."""
        import datasets
        from trl import GRPOConfig
        from trl import GRPOTrainer as TRLGRPOTrainer

        from rerank.trainers.tasks import build_task

        train, dev = load_training_data(config.data, ctx.data_root)
        model, tok = load_causal_lm(config.model, cpu_only(config))
        task = build_task(config.head, tok, config)
        rows = grpo_rows(task, train, config.seed)
        dev_rows = grpo_rows(task, dev, config.seed) if dev and config.eval_steps > 0 else []
        if config.head == "erank" and config.erank_reference == "model":
            erank_references(model, tok, task, rows + dev_rows)
        columns = [k for k in rows[0] if k != "prompt"]
        kw = training_kwargs(config, ctx.output, has_dev=bool(dev_rows))
        if dev_rows:
            kw.update(metric_for_best_model="eval_reward", greater_is_better=True)
        args = GRPOConfig(
            **kw,
            num_generations=config.num_generations,
            beta=config.beta,
            epsilon=config.epsilon,
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
        trainer_class: Any = TRLGRPOTrainer
        extra: dict[str, Any] = {}
        if config.rollout == "plackett-luce":
            from rerank.trainers.first import PlackettLuceGRPOTrainer

            trainer_class = PlackettLuceGRPOTrainer
            extra = {"identifier_token_ids": task.identifier_token_ids(), "scheme": task.scheme,
                     "window_sizes": {r["prompt"]: len(r["ids"]) for r in rows + dev_rows}}
        trainer = trainer_class(
            **extra,
            model=model,
            reward_funcs=[reward_function(task, columns)],
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            eval_dataset=datasets.Dataset.from_list(dev_rows) if dev_rows else None,
            processing_class=tok,
            peft_config=config.lora.peft_config() if config.lora.enabled else None,
        )
        return trainer

    def train(self, config: GRPOTrainConfig, ctx: TrainContext) -> dict[str, Any]:
        trainer = self.build(config, ctx)
        result = trainer.train(resume_from_checkpoint=resume_arg(ctx.output, ctx.resume))
        save_final(trainer, config, ctx.output)
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        return {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
                "first_logged_reward": rewards[0] if rewards else None,
                "last_logged_reward": rewards[-1] if rewards else None, "logged_rewards": rewards,
                "best_checkpoint": trainer.state.best_model_checkpoint,
                "selected_by": "dev reward" if trainer.eval_dataset is not None else "last step"}
