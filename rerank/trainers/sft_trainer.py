"""``rerank train sft``: supervised training of any head on the one training schema, on TRL's ``SFTTrainer``.

LLM heads train on prompt-completion pairs (the head's task piece renders the prompt with its template and the
target: ERank ``<answer>s</answer>``, listwise/FIRST the teacher permutation, GroupRank the JSON score map, yes-no
yes/no) with the loss on the completion only. FIRST adds a ranking loss on the first-identifier logits
(``loss: lm+ranknet``, see :mod:`rerank.trainers.first`). The cross-encoder trains through sentence-transformers'
``CrossEncoderTrainer`` (``loss: bce | listnet | lambdaloss | mnrl``). LoRA (``lora.enabled``) is merged into the saved
weights by default, with the adapter kept in ``OUTPUT/adapter``. Model selection: lowest dev loss (LLM heads) or
best dev nDCG@10 (cross-encoder), evaluated every ``eval_steps`` (0 = no selection, the last step is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext
from rerank.trainers.common import CommonTrainConfig, resume_arg, training_kwargs
from rerank.trainers.data import load_training_data

__all__ = ["LM_LOSSES", "SFTTrainConfig", "SFTTrainer", "load_causal_lm", "save_final"]

LM_LOSSES = ("lm", "lm+ranknet", "lm+listnet", "lm+lambdarank")


@dataclass
class SFTTrainConfig(CommonTrainConfig):
    """SFT options. ``loss``: LLM heads ``lm`` (FIRST also ``lm+ranknet|lm+listnet|lm+lambdarank``); cross-encoder
    ``bce|listnet|lambdaloss|mnrl``. ``ranking_weight`` scales FIRST's ranking loss (default ×10 RankNet, ×0.1 ListNet,
    ×1 LambdaRank, as rank_llm's training script). ``in_batch_negatives``: for ``mnrl``, how many other rows'
    documents each positive is also scored against (unset: sentence-transformers' default 4; each costs one more
    forward pass per row, so it sets the cross-encoder's training time with the hard negatives)."""

    loss: str = ""
    ranking_weight: float | None = None
    in_batch_negatives: int | None = None
    reasoning: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.loss:
            self.loss = {"cross-encoder": "bce", "first": "lm+ranknet"}.get(self.head, "lm")
        if self.head == "cross-encoder":
            from rerank.trainers.cross_encoder import CE_LOSSES

            if self.loss not in CE_LOSSES:
                raise ConfigError(f"loss for the cross-encoder must be one of {list(CE_LOSSES)}, got {self.loss!r}")
            if self.loss == "mnrl" and self.data.negatives_per_positive < 1:
                raise ConfigError("loss 'mnrl' needs data.negatives_per_positive >= 1 (hard negatives in each row)")
        if self.in_batch_negatives is not None and (self.head, self.loss) != ("cross-encoder", "mnrl"):
            raise ConfigError("in_batch_negatives is an option of the cross-encoder's loss 'mnrl' only")
        if (self.head, self.loss) == ("cross-encoder", "mnrl"):
            self.in_batch_negatives = 4 if self.in_batch_negatives is None else self.in_batch_negatives
            if self.in_batch_negatives < 0:
                raise ConfigError(f"in_batch_negatives must be >= 0, got {self.in_batch_negatives}")
        if self.head == "cross-encoder":
            return
        if self.loss not in LM_LOSSES:
            raise ConfigError(f"loss must be one of {list(LM_LOSSES)}, got {self.loss!r}")
        elif self.loss != "lm" and self.head != "first":
            raise ConfigError(f"loss {self.loss!r} reads first-identifier logits: only head 'first' has them")


def load_causal_lm(path: str, cpu: bool) -> tuple[Any, Any]:
    """The model and tokenizer of a starting point (safetensors, no remote code; float32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank.models import resolve_model_path

    path = resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if cpu else "auto",
                                                 trust_remote_code=False, use_safetensors=True)
    return model, tok


def save_final(trainer: Any, cfg: CommonTrainConfig, output: Path) -> None:
    """Write the complete model to ``output``: LoRA merged (adapter kept in ``adapter/``) or the full weights."""
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    model = trainer.model
    tok = trainer.processing_class
    if cfg.lora.enabled:
        model.save_pretrained(str(output / "adapter"), safe_serialization=True)
        if cfg.lora.merge:
            model = model.merge_and_unload()
        else:
            return
    model.save_pretrained(str(output), safe_serialization=True)
    tok.save_pretrained(str(output))


def sft_dataset(task: Any, examples: list[dict[str, Any]]) -> Any:
    """The prompt-completion dataset of ``examples`` (columns the trainer's collator or loss need are kept)."""
    import datasets

    rows = [row for e in examples for row in task.sft_rows(e)]
    if not rows:
        raise ConfigError("no SFT rows: every example was skipped by the head's task piece")
    return datasets.Dataset.from_list(rows)


class SFTTrainer:
    """The registered ``sft`` trainer."""

    config_class = SFTTrainConfig

    def train(self, config: SFTTrainConfig, ctx: TrainContext) -> dict[str, Any]:
        train, dev = load_training_data(config.data, ctx.data_root)
        if config.head == "cross-encoder":
            from rerank.trainers.cross_encoder import train_cross_encoder

            return train_cross_encoder(config, config.loss, train, dev, ctx.output, ctx.resume)
        return _train_lm(config, train, dev, ctx)


def _train_lm(cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
              ctx: TrainContext) -> dict[str, Any]:
    from trl import SFTConfig

    from rerank.trainers.common import cpu_only
    from rerank.trainers.first import RankingSFTTrainer
    from rerank.trainers.tasks import build_task

    model, tok = load_causal_lm(cfg.model, cpu_only(cfg))
    task = build_task(cfg.head, tok, cfg)
    train_ds = sft_dataset(task, train)
    dev_ds = sft_dataset(task, dev) if dev and cfg.eval_steps > 0 else None
    kw = training_kwargs(cfg, ctx.output, has_dev=dev_ds is not None)
    if dev_ds is not None:
        kw.update(metric_for_best_model="eval_loss", greater_is_better=False)
    ranking = cfg.loss != "lm"
    args = SFTConfig(**kw, max_length=cfg.max_length, completion_only_loss=True, packing=False,
                     dataset_num_proc=None, remove_unused_columns=not ranking)
    trainer_cls: Any
    extra: dict[str, Any] = {}
    if ranking:
        trainer_cls = RankingSFTTrainer
        extra = {"ranking_loss": cfg.loss.split("+", 1)[1], "ranking_weight": cfg.ranking_weight,
                 "identifier_token_ids": task.identifier_token_ids()}
    else:
        from trl import SFTTrainer as TRLSFTTrainer

        trainer_cls = TRLSFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                          processing_class=tok, peft_config=cfg.lora.peft_config() if cfg.lora.enabled else None,
                          **extra)
    result = trainer.train(resume_from_checkpoint=resume_arg(ctx.output, ctx.resume))
    save_final(trainer, cfg, ctx.output)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
            "logged_losses": losses, "best_checkpoint": trainer.state.best_model_checkpoint,
            "selected_by": "dev loss" if dev_ds is not None else "last step"}

