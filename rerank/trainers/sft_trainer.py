"""``rerank train sft``: supervised training of any head on the one training schema, on TRL's ``SFTTrainer``.

LLM heads train on prompt-completion pairs (the method's task renders the prompt with the method's own inference head
and gives the target: ERank ``<answer>s</answer>``, listwise/FIRST the teacher permutation, GroupRank the JSON score
map, yes-no yes/no) with the loss on the completion only. FIRST adds a ranking loss on the first-identifier logits
(``loss: lm+ranknet``, see :mod:`rerank.methods.first.training`). A method with its own SFT (the cross-encoder,
through sentence-transformers' ``CrossEncoderTrainer``, ``loss: bce | listnet | lambdaloss | mnrl``) runs that.
LoRA (``lora.enabled``) is merged into the saved weights by default, with the adapter kept in ``OUTPUT/adapter``; the
model goes to ``OUTPUT/model`` with its ``rerank.json`` and model card. Model selection: lowest dev loss (LLM heads) or
best dev nDCG@10 (cross-encoder), evaluated every ``eval_steps`` (0 = no selection, the last step is kept).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rerank.errors import ConfigError
from rerank.trainers.base import TrainContext
from rerank.trainers.common import (
    CommonTrainConfig,
    check_dev_split,
    check_negatives_per_positive,
    training_kwargs,
)
from rerank.trainers.data import load_training_data, teacher_scale

log = logging.getLogger(__name__)

__all__ = ["SFTTrainConfig", "SFTTrainer", "data_source", "load_causal_lm", "load_tokenizer", "save_final",
           "warn_other_head"]

#: (trainer, starting model, its recorded head, the head trained) already warned of: a config is built more than once
#: a run
_WARNED_HEADS: set[tuple[str, str, str, str]] = set()


def warn_other_head(trainer: str, model: str, record: dict[str, Any] | None, head: str) -> None:
    """Log once when the starting ``model``'s ``record`` (its ``rerank.json``) names a head other than ``head``: the
    prompt options it records are then not used by ``trainer`` (SFT and GRPO inherit them for the same head only)."""
    recorded = record.get("method") if record is not None else None
    if recorded is None or recorded == head:
        return
    key = (trainer, os.path.realpath(os.path.expanduser(model)), str(recorded), head)
    if key in _WARNED_HEADS:
        return
    _WARNED_HEADS.add(key)
    log.warning("%s: the starting model %s was trained as head %r (its rerank.json), not %r: the prompt options it "
                "records (template, max_doc_tokens, max_query_tokens, window) are not used; %s trains the %s head "
                "on its own defaults and the options set here", trainer, model, recorded, head, trainer.upper(), head)


@dataclass
class SFTTrainConfig(CommonTrainConfig):
    """SFT options. ``loss``: one of the method's SFT losses (its first the default): LLM heads ``lm`` (FIRST also
    ``lm+ranknet|lm+listnet|lm+lambdarank``, default ``lm+ranknet``); cross-encoder ``bce|listnet|lambdaloss|mnrl``.
    ``ranking_weight`` scales FIRST's ranking loss (default ×10 RankNet, ×0.1 ListNet, ×1 LambdaRank, as rank_llm's
    training script). ``in_batch_negatives``: for ``mnrl``, how many other rows' documents each positive is also
    scored against (unset: sentence-transformers' default 4; each costs one more forward pass per row, so it sets the
    cross-encoder's training time with the hard negatives). ``reasoning``: ERank's reasoning targets.
    The cross-encoder's distillation losses (``margin-mse``, ``listwise-kl``) learn from the rows' ``teacher_scores``:
    targets = teacher score / ``distill_temperature`` + ``positive_bonus`` for a judged positive (label >= 1);
    ``group_size`` (``listwise-kl``): candidates per query, judged positives kept and the rest drawn with the seed
    (0 = all); ``margin-mse`` pairs each query's best candidate with ``data.negatives_per_positive`` others."""

    trainer_name: ClassVar[str] = "sft"

    loss: str = ""
    ranking_weight: float | None = None
    in_batch_negatives: int | None = None
    reasoning: bool = False
    group_size: int | None = None
    distill_temperature: float | None = None
    positive_bonus: float | None = None

    def __post_init__(self, _derived: dict[str, Any] | None = None) -> None:
        from rerank.methods import get_method

        from rerank.methods.record import read_record

        super().__post_init__(_derived)
        if self.model:
            warn_other_head(self.trainer_name, self.model, read_record(self.model), self.head)
        method = get_method(self.head)
        if not self.loss:
            self._derive("loss", method.sft_losses[0])
        if self.loss not in method.sft_losses:
            raise ConfigError(f"loss for {self.head} must be one of {list(method.sft_losses)}, got {self.loss!r}")
        if self.loss == "mnrl" and self.data.negatives_per_positive < 1:
            raise ConfigError("loss 'mnrl' needs data.negatives_per_positive >= 1 (hard negatives in each row)")
        if self.in_batch_negatives is not None and self.loss != "mnrl":
            raise ConfigError("in_batch_negatives is an option of the cross-encoder's loss 'mnrl' only")
        if self.loss == "mnrl":
            if self.in_batch_negatives is None:
                self._derive("in_batch_negatives", 4)
            if self.in_batch_negatives < 0:
                raise ConfigError(f"in_batch_negatives must be >= 0, got {self.in_batch_negatives}")
        distill = {"group_size": self.group_size, "distill_temperature": self.distill_temperature,
                   "positive_bonus": self.positive_bonus}
        if self.loss not in ("margin-mse", "listwise-kl"):
            given = [k for k, v in distill.items() if v is not None]
            if given:
                window = getattr(method.resolve("task"), "window_option", None) if method.task else None
                hint = (f" (head {self.head}'s group size is the key window)" if given[0] == "group_size"
                        and window == "group_size" else "")
                raise ConfigError(f"{given[0]} is an option of the cross-encoder's distillation losses "
                                  f"(margin-mse, listwise-kl), not of loss {self.loss!r}{hint}")
        else:
            for name, value in (("group_size", 0), ("distill_temperature", 1.0), ("positive_bonus", 0.0)):
                if getattr(self, name) is None:
                    self._derive(name, value)
            if self.group_size < 0 or self.group_size == 1:
                raise ConfigError(f"group_size must be 0 (all candidates) or >= 2, got {self.group_size}")
            if self.distill_temperature <= 0:
                raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
            if self.group_size and self.loss != "listwise-kl":
                raise ConfigError("group_size is an option of loss 'listwise-kl'")
            if self.loss == "margin-mse" and self.data.negatives_per_positive < 1:
                raise ConfigError("loss 'margin-mse' needs data.negatives_per_positive >= 1 (documents per row)")
        if self.ranking_weight is not None and not self.loss.startswith("lm+"):
            raise ConfigError(f"ranking_weight scales a ranking loss (lm+ranknet|listnet|lambdarank), "
                              f"not {self.loss!r}")
        if self.reasoning and self.template:
            from rerank.prompts import load_template

            if not load_template(self.template).extra.get("think_close"):
                raise ConfigError(f"reasoning: true trains <think>…</think> targets, but template {self.template!r} "
                                  "closes no reasoning (no think_close): drop template (reasoning: true takes "
                                  "erank_reasoning), or give a template with think_close")
        # with data.path read by the contrastive / margin losses' rows (the cross-encoder's) and by the methods whose
        # train_reads hold it (duoT5's pairs)
        reads = "data.negatives_per_positive" in method.train_reads or self.loss in ("mnrl", "margin-mse")
        check_negatives_per_positive(self, reads, f"head {self.head!r} with loss {self.loss!r}")


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a starting point (no remote code; its EOS pads when it has no pad token)."""
    from rerank.backends.util import load_tokenizer as load_checked
    from rerank.models import resolve_model_path

    tok = load_checked(resolve_model_path(path), "model", trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, cpu: bool, tokenizer: Any = None) -> tuple[Any, Any]:
    """The model and tokenizer of a starting point (safetensors, no remote code; float32 on CPU); ``tokenizer``: one
    already loaded with :func:`load_tokenizer` (so a trainer can check its prompts before the model loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rerank.models import resolve_model_path

    tok = tokenizer if tokenizer is not None else load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=torch.float32 if cpu else "auto",
                                                 trust_remote_code=False, use_safetensors=True)
    return model, tok


def save_final(trainer: Any, cfg: CommonTrainConfig, output: Path, trainer_name: str, options: dict[str, Any],
               metrics: dict[str, Any] | None = None, note: str = "") -> None:
    """Write the final model to ``OUTPUT/model`` (LoRA merged, its adapter kept beside it in ``OUTPUT/adapter``, naming
    a local base model by its absolute path) with its ``rerank.json`` and model card; checkpoints stay in
    ``OUTPUT/checkpoints``, never in the model folder."""
    from rerank.trainers.artifacts import write_model_artifacts
    from rerank.utils.files import staged_dir

    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    model = trainer.model
    tok = trainer.processing_class
    if cfg.lora.enabled:
        _absolute_base(model)
        with staged_dir(output / "adapter") as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
        model = model.merge_and_unload()
    with staged_dir(output / "model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        write_model_artifacts(tmp, method=cfg.head, trainer=trainer_name, config=cfg, options=options,
                              metrics=metrics, metrics_note=note)


def _absolute_base(model: Any) -> None:
    """Name a local base model in ``model``'s PEFT configs by its absolute path, so that the saved adapter loads from
    any folder (a path relative to where training ran did not); a hub id stays as it is."""
    for peft_config in (getattr(model, "peft_config", None) or {}).values():
        base = getattr(peft_config, "base_model_name_or_path", None)
        if base and Path(base).is_dir():
            peft_config.base_model_name_or_path = str(Path(base).resolve())


def _check_fits(kept: Any, given: int, cfg: Any) -> None:
    """TRL drops the examples whose target ``max_length`` cuts off entirely: none left is an error saying why (not
    torch's "num_samples=0"), some dropped a warning with the count."""
    left = len(kept) if kept is not None else given
    if left == 0:
        raise ConfigError(f"every training example is longer than max_length={cfg.max_length} tokens (prompt and "
                          "target): raise max_length, or lower max_doc_tokens / the window")
    if left < given:
        log.warning("%d of %d training examples are longer than max_length=%d tokens and were dropped", given - left,
                    given, cfg.max_length)


def selection_metrics(trainer: Any, name: str, dev_size: int) -> tuple[dict[str, Any] | None, str]:
    """The model-card entry of a run that selected its checkpoint on dev (None when it did not evaluate)."""
    if trainer.state.best_metric is None:
        return None, ""
    return ({name: float(trainer.state.best_metric), "selected step": trainer.state.best_global_step},
            (f"Measured by the trainer on its dev split ({dev_size} rows carved from the training data with the seed), "
             "for model selection; the model is the checkpoint with the best value."))


def sft_dataset(task: Any, examples: list[dict[str, Any]], source: str = "the training data") -> Any:
    """The prompt-completion dataset of ``examples`` (columns the trainer's collator or loss need are kept); none is
    an error naming ``source`` (the data option) and why."""
    import datasets

    from rerank.trainers.task import task_rows

    return datasets.Dataset.from_list(task_rows(task, examples, "sft", source))


def data_source(data: Any) -> str:
    """How a message names the training data a config's ``data`` block reads."""
    return f"data.path {data.path}" if data.path else f"data.beir {data.beir} (split {data.split})"


class SFTTrainer:
    """The registered ``sft`` trainer."""

    config_class = SFTTrainConfig

    def train(self, config: SFTTrainConfig, ctx: TrainContext) -> dict[str, Any]:
        from transformers import set_seed

        from rerank.methods import get_method

        # ERank / GroupRank read teacher_scores as 0-10 targets: rows on another scale fail here, naming their line
        train, dev = load_training_data(config.data, ctx.data_root, teacher_scale(config.head))
        check_dev_split(config, dev)
        # seeded before any model is built: a new head, or LoRA's adapter weights, are drawn from the RNG
        set_seed(config.seed)
        method = get_method(config.head)
        if method.sft is not None:
            summary = method.resolve("sft")(config, train, dev, ctx)
            _check_recorded_method(ctx.output / "model", config.head, method.sft)
            return summary
        return _train_lm(config, train, dev, ctx)


def _check_recorded_method(model_dir: Path, head: str, sft: str) -> None:
    """A method's own ``sft`` function records the method it trained (``cfg.head``) in ``rerank.json``: another name
    (a literal kept in a copied ``train.py``) would load the model as that method, so it is a one-line error."""
    from rerank.methods.record import read_record

    record = read_record(model_dir)
    recorded = record.get("method") if record is not None else None
    if recorded is not None and recorded != head:
        raise ConfigError(f"{model_dir}/rerank.json records method {recorded!r}, but the model was trained as "
                          f"{head!r} by {sft}: pass cfg.head (not a method name) as the method it writes, then "
                          "train again")


def _train_lm(cfg: SFTTrainConfig, train: list[dict[str, Any]], dev: list[dict[str, Any]],
              ctx: TrainContext) -> dict[str, Any]:
    from trl import SFTConfig
    from trl import SFTTrainer as TRLSFTTrainer

    from rerank.trainers.common import cpu_only
    from rerank.trainers.task import build_task

    tok = load_tokenizer(cfg.model)  # the rows are built (and an empty set refused) before the model loads
    task = build_task(cfg.head, tok, cfg)
    where = data_source(cfg.data)
    task.check_sft_examples(train + dev, where)
    train_ds = sft_dataset(task, train, where)
    dev_ds = sft_dataset(task, dev, f"the dev split of {where}") if dev and cfg.eval_steps > 0 else None
    model, tok = load_causal_lm(cfg.model, cpu_only(cfg), tok)
    kw = training_kwargs(cfg, ctx.output, has_dev=dev_ds is not None)
    if dev_ds is not None:
        kw.update(metric_for_best_model="eval_loss", greater_is_better=False)
    trainer_cls, extra = task.sft_trainer(cfg)
    args = SFTConfig(**kw, max_length=cfg.max_length, completion_only_loss=True, packing=False,
                     dataset_num_proc=None, remove_unused_columns=trainer_cls is None)
    trainer = (trainer_cls or TRLSFTTrainer)(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                          processing_class=tok, peft_config=cfg.lora.peft_config() if cfg.lora.enabled else None,
                          **extra)
    _check_fits(trainer.train_dataset, len(train_ds), cfg)
    from rerank.trainers.resume import fit, resume_arg

    result = fit(trainer, resume_arg(ctx.output, ctx.resume))
    metrics, note = selection_metrics(trainer, "dev loss", len(dev_ds) if dev_ds is not None else 0)
    save_final(trainer, cfg, ctx.output, "sft", task.record_options(), metrics, note)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "first_logged_loss": losses[0] if losses else None, "last_logged_loss": losses[-1] if losses else None,
            "logged_losses": losses, "best_checkpoint": trainer.state.best_model_checkpoint,
            "selected_by": "dev loss" if dev_ds is not None else "last step"}

