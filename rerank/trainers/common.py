"""Options every reranker trainer shares (schedule, checkpoints, LoRA, devices) and their mapping to TrainingArguments.

Checkpoints go to ``OUTPUT/checkpoints/checkpoint-STEP`` every ``save_steps``; ``--resume`` continues from the last
one (the HF Trainer restores optimizer, scheduler, RNG and the data position, so the data order matches an
uninterrupted run). The final model is written to ``OUTPUT`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rerank.errors import ConfigError
from rerank.trainers.data import DataConfig

__all__ = ["HEADS", "CommonTrainConfig", "LoraOptions", "cpu_only", "last_checkpoint", "training_kwargs"]

HEADS = ("erank", "yes-no", "listwise", "first", "grouprank", "cross-encoder")


@dataclass
class LoraOptions:
    """PEFT LoRA; merged into the saved weights by default, the adapter kept beside them in ``adapter/``."""

    enabled: bool = False
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = True

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


@dataclass
class CommonTrainConfig:
    """Fields shared by ``sft`` and ``grpo``; ``head`` picks the task pieces (prompt, target, parser)."""

    model: str = ""
    head: Literal["erank", "yes-no", "listwise", "first", "grouprank", "cross-encoder"] = "erank"
    data: DataConfig = field(default_factory=lambda: DataConfig(path="-"))
    template: str = ""
    max_doc_tokens: int = 64
    max_query_tokens: int = 32
    window: int = 10
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_length: int = 1024
    lora: LoraOptions = field(default_factory=LoraOptions)
    save_steps: int = 50
    save_total_limit: int | None = 2
    eval_steps: int = 0
    logging_steps: int = 10
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["none"])
    use_cpu: bool | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.save_steps < 1 or self.window < 2:
            raise ConfigError("batch_size, grad_accum, save_steps >= 1 and window >= 2 required")
        if self.data.path == "-":
            raise ConfigError("config: the training data is required (key 'data' with 'path' or 'beir')")


def cpu_only(cfg: CommonTrainConfig) -> bool:
    """``use_cpu`` as configured, or automatically when no CUDA device is visible."""
    if cfg.use_cpu is not None:
        return cfg.use_cpu
    import torch

    return not torch.cuda.is_available()


def training_kwargs(cfg: CommonTrainConfig, output: Path, has_dev: bool) -> dict[str, Any]:
    """TrainingArguments keywords for ``cfg``: schedule, checkpoints, evaluation on dev, devices, reporting."""
    cpu = cpu_only(cfg)
    evaluate = has_dev and cfg.eval_steps > 0
    kw: dict[str, Any] = {
        "output_dir": str(output / "checkpoints"),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "warmup_steps": cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps in transformers 5
        "weight_decay": cfg.weight_decay,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "logging_steps": cfg.logging_steps,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": list(cfg.report_to),
        "use_cpu": cpu,
        "bf16": cfg.bf16,  # on CPU: torch's bfloat16 autocast (fast where the CPU has avx512_bf16 / AMX)
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": cfg.eval_steps if evaluate else None,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    if cfg.gradient_checkpointing:
        kw["gradient_checkpointing"] = True
    if evaluate:
        if cfg.eval_steps != cfg.save_steps:
            raise ConfigError("eval_steps must equal save_steps so the best checkpoint can be kept")
        kw.update(load_best_model_at_end=True)
    return kw


def last_checkpoint(output: Path) -> str | None:
    """The newest ``checkpoint-N`` under ``OUTPUT/checkpoints`` (None when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    d = output / "checkpoints"
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def resume_arg(output: Path, resume: bool) -> str | None:
    """The checkpoint to resume from; ``--resume`` without a checkpoint is an error, not a silent fresh start."""
    if not resume:
        return None
    ckpt = last_checkpoint(output)
    if ckpt is None:
        raise ConfigError(f"--resume: no checkpoint under {output / 'checkpoints'}")
    return ckpt
