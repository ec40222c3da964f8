"""The one training vocabulary: the schedule every trainer takes (reranker and retriever alike), in the names of
Hugging Face's ``TrainingArguments`` / TRL, and its mapping onto them; the reranker trainers' shared options.

Checkpoints go to ``OUTPUT/checkpoints/checkpoint-STEP`` every ``save_steps``; restarts (``--resume``,
``--overwrite``, complete checkpoints, the loss over all steps) are :mod:`rerank.trainers.resume`. The final model is
written to ``OUTPUT/model``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from rerank.config import (
    build_error,
    changed_options,
    drop_key,
    option_default,
    override_source,
    plain,
    probe_value,
)
from rerank.errors import ConfigError
from rerank.retrieval.index import RENAMED_ENCODER_KEYS
from rerank.trainers.data import DataConfig

__all__ = [
    "DATA_KEY_HINTS",
    "RENAMED_KEYS",
    "RENAMED_KEY_ALTERNATIVES",
    "RERANKER_KEY_HINTS",
    "RETRIEVER_DATA_KEY_HINTS",
    "RETRIEVER_KEY_HINTS",
    "CommonTrainConfig",
    "LoraOptions",
    "TrainSchedule",
    "check_dev_split",
    "check_field_types",
    "check_negatives_per_positive",
    "check_renamed_keys",
    "check_safetensors",
    "check_train_reads",
    "cpu_only",
    "training_kwargs",
    "trains_lora",
]

log = logging.getLogger(__name__)

#: ``report_to`` integrations -> the packages any one of which it needs (transformers fails on the first step else)
_REPORTERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",), "clearml": ("clearml",), "trackio": ("trackio",),
}

#: the ``report_to`` names transformers knows (its ``INTEGRATION_TO_CALLBACK``, kept here so the config is checked
#: without importing it; tests/test_audit_train_config.py compares them), besides ``all`` and ``none`` given alone
_INTEGRATIONS = frozenset({
    "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow", "mlflow", "neptune",
    "swanlab", "tensorboard", "trackio", "wandb",
})

#: the trainers' former key names -> the key that replaced it
RENAMED_KEYS: dict[str, str] = {
    "lr": "learning_rate",
    "warmup_steps": "warmup_ratio (a fraction of the total steps)",
    "checkpoint_every": "save_steps",
    "eval_every": "eval_steps",
    "keep_checkpoints": "save_total_limit",
    **RENAMED_ENCODER_KEYS,  # the token limits, renamed as in the dense retriever and rerank index
}


@dataclass
class TrainSchedule:
    """The schedule every ``rerank train`` trainer takes: steps, optimiser, checkpoints, evaluation, devices.

    ``batch_size`` is per device (the global batch is batch_size x processes x grad_accum); ``max_steps`` -1 trains
    ``epochs`` epochs (``max_steps`` > 0 sets the schedule and ``epochs`` is not used, as in transformers); ``eval_steps`` 0 evaluates never (no model selection, the last step is kept), else it must
    equal ``save_steps`` so the best checkpoint can be kept; ``use_cpu`` unset = when no GPU is visible.
    """

    renamed_keys: ClassVar[Mapping[str, str]] = RENAMED_KEYS
    #: unknown keys that are another trainer family's name for an option -> (the keys to suggest, why)
    key_hints: ClassVar[Mapping[str, tuple[tuple[str, ...], str]]] = {}

    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_steps: int = 50
    save_total_limit: int | None = 2
    eval_steps: int = 0
    logging_steps: int = 10
    seed: int = 0
    report_to: list[str] | str = field(default_factory=lambda: ["none"])  # one name: a one-element list
    use_cpu: bool | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        if isinstance(self.report_to, str):  # --set report_to=wandb
            self.report_to = [self.report_to]
        for name in ("epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # NaN passes every range check below
                raise ConfigError(f"{name} must be a finite number, got {value}")
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps < 0:
            raise ConfigError(f"eval_steps must be >= 0 (0: no evaluation), got {self.eval_steps}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps must be >= 1 (or -1: train 'epochs' epochs), got {self.max_steps}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0 (0: none), got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range, which transformers' set_seed uses
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be >= 1 or null (keep all), got {self.save_total_limit}")
        if self.eval_steps and self.eval_steps != self.save_steps:
            raise ConfigError(f"eval_steps ({self.eval_steps}) must equal save_steps ({self.save_steps}) so the best "
                              "checkpoint can be kept (or 0: no evaluation)")
        alone = [name for name in self.report_to if name in ("all", "none")]
        if alone and len(self.report_to) > 1:
            raise ConfigError(f"report_to {alone[0]!r} stands alone, not in a list with others: report_to: {alone[0]}, "
                              "or list the integrations")
        unknown = [name for name in self.report_to if name not in _INTEGRATIONS and not alone]
        if unknown:
            raise ConfigError(f"report_to {unknown[0]!r} is not an integration transformers knows; use none, all or "
                              f"some of: {', '.join(sorted(_INTEGRATIONS))}")
        for name in self.report_to:
            needs = _REPORTERS.get(name, ())
            if needs and not any(importlib.util.find_spec(pkg) for pkg in needs):
                raise ConfigError(f"report_to {name!r} needs the package {needs[0]!r}, which is not installed "
                                  f"(pip install {needs[0]}, or report_to: [none])")


#: the field annotations :func:`check_field_types` checks -> (the types a value may have, how the error names them)
_SCALAR_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((numbers.Integral,), "an integer"), "float": ((numbers.Real,), "a number"), "bool": ((bool,), "true or false"),
}


def check_field_types(cfg: Any) -> None:
    """The int, float and bool fields of a config dataclass hold values of their type (a bool is no number): a
    config object built in Python, not read through :func:`~rerank.config.from_dict` (which converts and checks
    them), fails here in one line instead of deep in the trainer (``max_steps=2.5``, ``learning_rate="3e-3"``)."""
    for f in dataclasses.fields(cfg):
        kind, _, rest = str(f.type).partition(" | ")
        if kind not in _SCALAR_TYPES or rest not in ("", "None"):
            continue
        value = getattr(cfg, f.name)
        if value is None and (rest or f.default is None):
            continue
        types, what = _SCALAR_TYPES[kind]
        if not isinstance(value, types) or (kind != "bool" and isinstance(value, bool)):
            raise ConfigError(f"{f.name} must be {what}{' or null' if rest else ''}, got {value!r}")


#: why a key of the block ``data`` given at the top level names ``data.KEY``
_IN_DATA = "the data options are in the block data"
#: the depth and count of mined negatives in the retriever trainers' words and the reranker trainers'
_NEGATIVES_WHY = ("the reranker trainers take data.negatives_per_positive per judged positive; the negatives per "
                  "query are contrastive's hard_negatives, PG-Rank's num_candidates, the judged documents filled up "
                  "with negatives, and ADORE's top_k; STAR draws one per query")
_DEPTH_WHY = ("the depth negatives are drawn from is contrastive's and STAR's negatives_depth, ADORE's top_k; PG-Rank "
              "fills num_candidates from the top of negatives_from; the reranker trainers mine data.beir's BM25 top "
              "data.bm25_depth")

#: keys of the other trainer family (the retriever trainers' ``dataset``, ``hard_negatives``, …, and the head option
#: ``group_size``) given to the reranker trainers -> (the keys to suggest, the first this configuration reads; why).
#: A key is suggested only when this configuration reads it (see :func:`check_renamed_keys`), else the why is shown
#: with the reason it is refused.
RERANKER_KEY_HINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "dataset": (("data.beir",), ("the reranker trainers read a BEIR dataset as data: {beir: NAME}, a file as "
                                 "data: {path: FILE}")),
    **{key: ((f"data.{key}",), _IN_DATA)
       for key in ("beir", "path", "split", "dev_fraction", "qrels_duplicates", "negatives_per_positive",
                   "bm25_depth", "max_candidates", "max_queries", "negatives", "dev_max")},
    "group_size": (("window",), ("the trainers' window is GroupRank's group_size (rerank.json), listwise / FIRST's "
                                 "window")),
    "hard_negatives": (("data.negatives_per_positive",), _NEGATIVES_WHY),
    "negatives_depth": (("data.bm25_depth",), _DEPTH_WHY),
    "num_candidates": (("data.max_candidates",), "PG-Rank's candidates per query are data.max_candidates here"),
    "distill_model": ((), ("contrastive's teacher model; the reranker trainers distil from teacher_scores stored in "
                           "the training rows (the cross-encoder's loss margin-mse or listwise-kl), which a rerank "
                           "data build teacher_labels recipe writes")),
}
#: the same for the block ``data`` of the reranker trainers (keys relative to the block)
DATA_KEY_HINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "dataset": (("beir",), "a BEIR dataset name or folder is data.beir; a file of training rows is data.path"),
    "hard_negatives": (("negatives_per_positive",), _NEGATIVES_WHY),
    "negatives_depth": (("bm25_depth",), _DEPTH_WHY),
    "num_candidates": (("max_candidates",), "PG-Rank's candidates per query are data.max_candidates here"),
}
#: why the retriever trainers take no file of training rows
_BEIR_ONLY_WHY = ("the retriever trainers read only BEIR folders (the key dataset: a folder holding corpus.jsonl, "
                  "queries.jsonl and qrels/SPLIT.tsv); a file of training rows is read by sft and grpo (data.path)")
#: the reranker trainers' names for the retriever trainers' options, given to a retriever trainer at the top level
RETRIEVER_KEY_HINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "data": (("dataset",), ("the retriever trainers take dataset, split, dev_fraction and qrels_duplicates at the top "
                            "level")),
    "beir": (("dataset",), "beir is the reranker trainers' data.beir"),
    "path": ((), _BEIR_ONLY_WHY),
    "negatives_per_positive": (("hard_negatives", "num_candidates", "top_k"), _NEGATIVES_WHY),
    "bm25_depth": (("negatives_depth", "top_k"), _DEPTH_WHY),
    "max_candidates": (("num_candidates",), "PG-Rank's candidates per query are num_candidates"),
    "max_length": (("max_doc_tokens",), ("a bi-encoder encodes queries and documents apart, each cut to its own "
                                         "limit: max_query_tokens and max_doc_tokens")),
}
#: the reranker trainers' keys of the block ``data`` given to a retriever trainer -> (the retriever trainers' keys for
#: the same thing, the first this configuration reads, why); the retriever trainers have no block ``data``
RETRIEVER_DATA_KEY_HINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "beir": (("dataset",), "a BEIR dataset name or folder is the top-level key dataset"),
    "path": ((), _BEIR_ONLY_WHY),
    **{key: ((key,), f"the retriever trainers take {key} at the top level")
       for key in ("split", "dev_fraction", "qrels_duplicates", "seed")},
    "negatives_per_positive": (("hard_negatives", "num_candidates", "top_k"), _NEGATIVES_WHY),
    "bm25_depth": (("negatives_depth", "top_k"), _DEPTH_WHY),
    "max_candidates": (("num_candidates",), "PG-Rank's candidates per query are num_candidates"),
}
#: a former key whose current name the configured head may not read -> (the keys to suggest instead, why)
RENAMED_KEY_ALTERNATIVES: dict[str, tuple[tuple[str, ...], str]] = {
    "doc_max_length": (("max_length",), ("a head with no document limit cuts its whole input, the query and "
                                         "document pair or the prompt, to max_length tokens")),
}
#: a refusal of an option the configuration does not read says to drop it (rerank.config's convention)
_DROP = re.compile(r"\bdrop\b")


def check_renamed_keys(config_class: type, raw: Mapping[str, Any], where: str) -> None:
    """A former key name (``lr``, ``warmup_steps``, ``checkpoint_every``, …) is an error naming the key to use, and so
    is an unknown key that is the other trainer family's name for an option (``key_hints``: the retrievers'
    ``dataset`` in a reranker trainer's config, …; a block ``data`` in a retriever trainer's: each of its keys); each
    names ``where`` (the file) or the ``--set`` override that gave it. A key is suggested only where this
    configuration reads it (the config built with it in place of the unknown key does not refuse it): a key the head
    does not read is named with the reason it is refused, and the next candidate that is read suggested instead."""
    renamed = getattr(config_class, "renamed_keys", {})
    for key in raw:
        if key in renamed:
            _refuse_renamed(config_class, raw, key, renamed[key], where)
    known = _init_fields(config_class)
    data = raw.get("data")
    if "data" not in known and isinstance(data, Mapping):  # a retriever trainer given the reranker trainers' block
        _check_retriever_data_block(config_class, raw, data, known, where)
    blocks = [((), raw, getattr(config_class, "key_hints", {}), config_class.__name__, known)]
    if "data" in known and isinstance(data, Mapping):
        blocks.append((("data",), data, DATA_KEY_HINTS, "DataConfig", _init_fields(DataConfig)))
    for prefix, block, hints, name, fields in blocks:
        for key in block:
            if key in hints and key not in fields:
                uses, why = hints[key]
                source = override_source(block, key) or override_source(raw, "data") or where
                unknown = f"{source}: unknown key {key!r} for {name}"
                use, refused = _first_read(config_class, raw, (*prefix, key), [(prefix, u) for u in uses],
                                           block[key])
                if use is not None:
                    raise ConfigError(f"{unknown}: did you mean {use!r}? ({why})")
                if refused is not None:
                    raise ConfigError(f"{unknown} ({why}); its counterpart here, {refused[0]}, is refused by this "
                                      f"configuration: {refused[1]}")
                raise ConfigError(f"{unknown}: {why}")


def _refuse_renamed(config_class: type, raw: Mapping[str, Any], key: str, renamed: str, where: str) -> None:
    """The error for the former key ``key`` of ``raw``, now ``renamed``: where this configuration refuses the current
    key (the cross-encoder reads no ``max_doc_tokens``), it says why and suggests an alternative it reads."""
    message = f"{override_source(raw, key) or where}: key {key!r} is now {renamed!r} (one vocabulary for every trainer)"
    current = renamed.split(" ")[0]
    if current not in _init_fields(config_class):
        raise ConfigError(message)
    _, refused = _first_read(config_class, raw, (key,), [((), current)], raw[key])
    if refused is None:
        raise ConfigError(message)
    uses, why = RENAMED_KEY_ALTERNATIVES.get(key, ((), ""))
    use, _ = _first_read(config_class, raw, (key,), [((), u) for u in uses], raw[key])
    if use is None:
        raise ConfigError(f"{message}, which this configuration refuses: {refused[1]}")
    raise ConfigError(f"{message}, which this configuration refuses ({refused[1]}): did you mean {use!r}? ({why})")


def _check_retriever_data_block(config_class: type, raw: Mapping[str, Any], data: Mapping[str, Any],
                                known: set[str], where: str) -> None:
    """A block ``data`` given to a retriever trainer (which has none): its first key is an error naming this
    trainer's own key for it that this configuration reads (:data:`RETRIEVER_DATA_KEY_HINTS`), and the override or
    file that gave it."""
    key = next(iter(data), None)
    if key is None:
        return  # an empty block: the hint for the key data names the key dataset
    uses, why = RETRIEVER_DATA_KEY_HINTS.get(key, ((), ""))
    use, refused = _first_read(config_class, raw, ("data",), [((), u) for u in uses if u in known], data[key])
    source = override_source(data, key) or override_source(raw, "data") or where
    unknown = f"{source}: unknown key 'data.{key}' for {config_class.__name__}"
    if use is not None:
        raise ConfigError(f"{unknown}: did you mean {use!r}? ({why})")
    if refused is not None:
        raise ConfigError(f"{unknown}: the retriever trainers have no block data ({why}), and this trainer's "
                          f"{refused[0]} is refused by this configuration: {refused[1]}")
    why = why or "their data options dataset, split, dev_fraction, qrels_duplicates and seed are top-level keys"
    raise ConfigError(f"{unknown}: the retriever trainers have no block data ({why})")


def _init_fields(config_class: type) -> set[str]:
    """The keys a config dataclass takes."""
    return {f.name for f in dataclasses.fields(config_class) if f.init}


def _first_read(config_class: type, raw: Mapping[str, Any], given: tuple[str, ...],
                candidates: list[tuple[tuple[str, ...], str]], value: Any) -> tuple[str | None, tuple[str, str] | None]:
    """The first of ``candidates`` (``(block, key)``: a key, dotted for one in a block, of the block ``block`` of
    ``raw``) that ``config_class`` takes and reads when it replaces the key at ``given`` with ``value``, as the
    candidate is named; and the first one taken but refused (its dotted name, why), for the message."""
    refused = None
    for block, use in candidates:
        target = (*block, *use.split("."))
        if not _takes(config_class, target):
            continue
        why = _refusal(config_class, raw, given, target, value)
        if why is None:
            return use, refused
        refused = refused or (".".join(target), why)
    return None, refused


def _takes(config_class: type, target: tuple[str, ...]) -> bool:
    """Whether ``config_class`` has the key at ``target`` (``data.X``: a key of its block ``data``)."""
    if len(target) == 1:
        return target[0] in _init_fields(config_class)
    return target[0] == "data" and "data" in _init_fields(config_class) and len(target) == 2 and \
        target[1] in _init_fields(DataConfig)


def _refusal(config_class: type, raw: Mapping[str, Any], given: tuple[str, ...], target: tuple[str, ...],
             value: Any) -> str | None:
    """Why ``config_class`` built from ``raw`` with the key at ``given`` replaced by ``target`` refuses ``target`` as
    an option this configuration does not read (the error that says to drop it), or None when it reads it. The key
    is set to ``value``, or to another value where that is its default (a default is never refused); a value out of
    range is the value's fault, not the key's. Keys ``raw``'s class does not take are left out of both builds."""
    base = _known_part(config_class, raw)
    trial = copy.deepcopy(base)
    drop_key(trial, given)
    drop_key(base, given)
    if target[0] == "data" and target[1:] in (("beir",), ("path",)):  # a new source replaces the block
        trial["data"] = {target[1]: value}
    else:
        node = trial
        for part in target[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[target[-1]] = _probe(config_class, target, value)
    error = build_error(config_class, trial)
    if error is None or not _DROP.search(error) or error == build_error(config_class, base):
        return None
    return error


def _known_part(config_class: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of ``raw`` holding only the keys ``config_class`` takes (in its block ``data``, those of
    :class:`DataConfig`)."""
    known = _init_fields(config_class)
    out = {k: plain(v) for k, v in raw.items() if k in known}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items() if k in _init_fields(DataConfig)}
    return out


def _probe(config_class: type, target: tuple[str, ...], value: Any) -> Any:
    """``value``, or a value other than the default of the key at ``target`` where ``value`` is that default."""
    return probe_value(option_default(DataConfig if len(target) == 2 else config_class, target[-1]), value)


@dataclass
class LoraOptions:
    """PEFT LoRA: merged into the saved model (``model/``), the adapter kept beside it in ``adapter/``."""

    enabled: bool = False
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        """Values peft would refuse only after the model loaded (or not at all: a dropout of 1 zeroes every update),
        and LoRA settings given while ``enabled`` is false (nothing reads them: the model is fine-tuned in full)."""
        if not self.enabled:
            changed = changed_options(self, [f.name for f in dataclasses.fields(self) if f.name != "enabled"])
            if changed:
                raise ConfigError(f"lora.{changed[0]} is set but lora.enabled is false (the model is fine-tuned in "
                                  f"full and no LoRA option is read): set lora.enabled: true, or drop lora.{changed[0]}")
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ConfigError("lora.target_modules must be a non-empty list of module names")

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


@dataclass
class CommonTrainConfig(TrainSchedule):
    """Fields shared by ``sft`` and ``grpo``; ``head`` is the reranker method trained (its task: prompts, targets,
    parser, rewards). The method's ``configure_train`` (its descriptor) derives its own defaults first: the
    cross-encoder's unset ``max_query_tokens`` is its inference head's own default and its ``max_length`` 0, the
    model's own as that head takes it. What it leaves unset: ``max_query_tokens`` 32; ``max_length`` 1024 for a method
    trained through its task (the LLM heads), unset (None) for a method whose own ``sft`` reads none.
    ``data.dev_fraction`` unset: 0.1 when ``eval_steps`` > 0 (a dev split to select on), else 0 (every query trains);
    ``data.dev_max`` and (with ``data.path``) ``data.seed`` are then refused: nothing reads them.

    An unset option whose default follows the head or the starting model (these, ``loss``, GRPO's
    ``num_generations``, …) is derived again in a copy made with ``dataclasses.replace``: ``replace(cfg,
    head="first")`` equals the config built with ``head="first"``. A value the user gave is kept, unless it equals the
    one derived before (it then counts as unset)."""

    key_hints: ClassVar[Mapping[str, tuple[tuple[str, ...], str]]] = RERANKER_KEY_HINTS
    #: the trainer this config is for, passed to the method's ``configure_train`` ("" for the shared base alone)
    trainer_name: ClassVar[str] = ""

    model: str = ""
    head: str = ""
    data: DataConfig = field(default_factory=lambda: DataConfig(path="-"))
    template: str = ""
    max_doc_tokens: int = 64
    max_query_tokens: int | None = None
    window: int = 10
    window_order: Literal["shuffled", "first_stage"] = "shuffled"  # see Task.windows
    max_length: int | None = None
    lora: LoraOptions = field(default_factory=LoraOptions)
    #: the options ``__post_init__`` derived (name -> value), kept on the instance under this name so that
    #: ``dataclasses.replace`` passes them to the copy; no option (never read from or written to a config file)
    _derived: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, _derived: dict[str, Any] | None = None) -> None:
        from rerank.methods import all_methods, get_method

        self._forget_derived(_derived)
        super().__post_init__()
        self._own_blocks()
        if not self.head:
            names = ", ".join(sorted(n for n, m in all_methods().items()
                                     if m.kind == "reranker" and m.trains_with(self.trainer_name or "sft")))
            raise ConfigError(f"key 'head' is required: the reranker method to train (one of: {names})")
        self._check_trained(get_method(self.head, kind="reranker"))
        if self.lora.enabled and not trains_lora(self.head):
            raise ConfigError(f"lora is for the LLM heads; {self.head} is fine-tuned in full: drop lora.enabled")
        if self.window is not None and self.window < 2:  # None: GRPO's unset window, resolved by its config
            raise ConfigError(f"window must be >= 2, got {self.window}")
        if not get_method(self.head).windowed:  # against the shared defaults (GRPO's unset window is None)
            changed = [n for n in ("window", "window_order")
                       if getattr(self, n) not in (None, option_default(CommonTrainConfig, n))]
            if changed:
                windowed = ", ".join(n for n, m in all_methods().items() if m.windowed)
                raise ConfigError(f"{changed[0]} is an option of the heads that train on windows ({windowed}), not "
                                  f"{self.head!r}: drop it")
        if self.data.path == "-":
            raise ConfigError("config: the training data is required (key 'data' with 'path' or 'beir')")
        method = get_method(self.head)
        if method.configure_train is not None:
            method.resolve("configure_train")(self, self.trainer_name)
        if self.max_query_tokens is None:
            self._derive("max_query_tokens", 32)
        for name in ("max_doc_tokens", "max_query_tokens"):  # a cut to <= 0 tokens drops the text
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        self._resolve_max_length()
        check_train_reads(self)
        if self.data.dev_fraction is None:
            self.data.dev_fraction = 0.1 if self.eval_steps > 0 else 0.0
            self.data._dev_fraction_default = self.data.dev_fraction  # type: ignore[attr-defined]
        elif self.data.dev_fraction > 0 and self.eval_steps == 0:
            raise ConfigError(f"data.dev_fraction {self.data.dev_fraction} holds queries out for model selection, but "
                              "eval_steps is 0 (no selection, the last step is kept): they would never be used; set "
                              "eval_steps (equal to save_steps) to select on them, or drop data.dev_fraction (or set it "
                              "to 0) to train on every query")
        if self.eval_steps > 0 and self.data.dev_fraction == 0:
            raise ConfigError(f"eval_steps {self.eval_steps} selects the model on the dev split, but "
                              "data.dev_fraction is 0 (no dev split): set data.dev_fraction > 0, or eval_steps: 0 to "
                              "keep the last step")
        if self.data.dev_fraction == 0:
            # with data.beir the seed still draws the mined negatives and shuffles the candidates
            unread = changed_options(self.data, ("dev_max", "seed") if self.data.path else ("dev_max",))
            if unread:
                seed = " (the training seed is the top-level key seed)" if unread[0] == "seed" else ""
                raise ConfigError(f"data.{unread[0]} {getattr(self.data, unread[0])} is read only when a dev split is "
                                  "carved (data.dev_fraction > 0 with eval_steps > 0), and there is none: drop "
                                  f"data.{unread[0]}{seed}")

    def _check_trained(self, method: Any) -> None:
        """The trainer (``trainer_name``) trains the head, checked before any option the head reads or refuses, so
        that a head no option makes trainable is named first."""
        from rerank.methods import method_names

        if not self.trainer_name or method.trains_with(self.trainer_name):
            return
        trained = ", ".join(method_names(trains_with=self.trainer_name))
        if self.trainer_name == "grpo":
            other = "trains with 'sft'" if method.trains_with("sft") else "is trained by neither sft nor grpo"
            raise ConfigError(f"grpo trains the generative LLM heads ({trained}); {self.head!r} {other}")
        raise ConfigError(f"{self.trainer_name} does not train {self.head!r}; it trains: {trained}")

    def _forget_derived(self, derived: dict[str, Any] | None) -> None:
        """Unset again the options that still hold the value an earlier build ``derived`` for them (this config is a
        ``dataclasses.replace`` copy), so that they follow this config's head and model; once per build."""
        if "_derived" in vars(self):
            return
        for name, value in (derived or {}).items():
            if getattr(self, name) == value:
                setattr(self, name, option_default(self, name))
        self._derived: dict[str, Any] = {}

    def _derive(self, name: str, value: Any) -> None:
        """Set the unset option ``name`` to ``value``, its default for this head or starting model."""
        setattr(self, name, value)
        self._derived[name] = value

    def _own_blocks(self) -> None:
        """``data`` and ``lora`` as this config's own objects: a mapping is read as the block's config, and a given
        ``DataConfig`` is copied, so resolving its defaults leaves the caller's as it was (a config reused, or copied by
        ``dataclasses.replace``, resolves them again: a ``dev_fraction`` another config resolved counts as unset)."""
        from rerank.config import from_dict

        for name, cls in (("data", DataConfig), ("lora", LoraOptions)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = from_dict(cls, dict(value), where=name)
            elif not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__} or a mapping of its options, got "
                                f"{type(value).__name__}")
            setattr(self, name, copy.copy(value))
        resolved = getattr(self.data, "_dev_fraction_default", None)
        if resolved is not None and self.data.dev_fraction == resolved:
            self.data.dev_fraction = None

    def _resolve_max_length(self) -> None:
        """``max_length`` of a method trained through its task: the shared LLM trainers (TRL) cut prompt and target to
        it (unset: 1024). A method with its own ``sft`` keeps what its ``configure_train`` made of it (unset: None,
        nothing reads it)."""
        from rerank.methods import get_method

        if get_method(self.head).sft is None:
            if self.max_length is None:
                self._derive("max_length", 1024)
            if self.max_length < 1:
                raise ConfigError(f"max_length must be >= 1 (tokens of prompt and target), got {self.max_length}")


def trains_lora(head: str) -> bool:
    """Whether the trainer of reranker method ``head`` applies ``lora`` (its registry entry's ``lora``: the shared LLM
    trainers pass it to TRL as ``peft_config``; a method's own full fine-tuning does not)."""
    from rerank.methods import get_method

    return get_method(head).lora


#: the size options of :data:`~rerank.methods.base.TRAIN_OPTIONS`, in the order a message lists those a method reads
_BOUNDS = ("max_query_tokens", "max_doc_tokens", "max_length")


def _readers(option: str) -> str:
    """The reranker methods whose ``train_reads`` hold ``option``, for messages."""
    from rerank.methods import all_methods

    return ", ".join(m.name for m in all_methods().values() if m.kind == "reranker" and option in m.train_reads)


def check_train_reads(cfg: CommonTrainConfig) -> None:
    """An option only some methods read (:data:`~rerank.methods.base.TRAIN_OPTIONS`) that the trained method's
    ``train_reads`` does not hold, set to other than its default, is a one-line error naming the option, the head,
    what the head reads instead and what to do (``data.negatives_per_positive``: :func:`check_negatives_per_positive`)."""
    from rerank.methods import get_method
    from rerank.methods.base import TRAIN_OPTIONS

    reads = get_method(cfg.head).train_reads
    fields = {f.name for f in dataclasses.fields(cfg)}
    for name in TRAIN_OPTIONS:
        if name in reads or name not in fields or name in cfg._derived:
            continue
        if getattr(cfg, name) == option_default(cfg, name):
            continue
        bounds = [b for b in _BOUNDS if b in reads]
        if name in _BOUNDS:
            why = (f"its input is bounded by {' and '.join(bounds)}; drop {name}, or set {' / '.join(bounds)}"
                   if bounds else f"nothing bounds its input; drop {name}")
        elif name == "template":
            why = "its training renders no prompt (it reads the texts as they are); drop template"
        else:
            why = f"it is read by {_readers(name) or 'no head'}; drop {name}"
        raise ConfigError(f"{name} is not an option of head {cfg.head!r}: {why}")


def check_negatives_per_positive(cfg: CommonTrainConfig, reads: bool, what: str) -> None:
    """``data.negatives_per_positive`` with ``data.path``: a value other than its default where nothing reads it (the
    examples are used as the file holds them; with ``beir`` it also sets how many negatives are mined) is an error
    naming the losses and the heads (``train_reads``) that read it."""
    data = cfg.data
    if data.path and not reads and data.negatives_per_positive != option_default(data, "negatives_per_positive"):
        heads = _readers("data.negatives_per_positive")
        raise ConfigError(f"data.negatives_per_positive is not read by {what} with data.path (the candidates are used "
                          "as the file lists them; it is read by the losses mnrl and margin-mse"
                          f"{f', by head {heads}' if heads else ''}, and when building from data.beir): drop it")


def check_dev_split(cfg: TrainSchedule, dev: list[Any]) -> None:
    """``eval_steps`` > 0 needs dev rows to select the model on: none (too few examples to carve any) is an error."""
    if cfg.eval_steps > 0 and not dev:
        raise ConfigError(f"eval_steps {cfg.eval_steps} selects the model on the dev split, but the split is empty "
                          "(too few training examples to carve one): add examples, or set eval_steps: 0 to keep the "
                          "last step")


def check_safetensors(path: str | Path, what: str) -> None:
    """A local model folder must hold ``.safetensors`` weights: pickled ones (``pytorch_model.bin``) are never loaded
    (unpickling can run code), so a folder with only those is a one-line :class:`ConfigError`."""
    folder = Path(path)
    if folder.is_dir() and not any(folder.rglob("*.safetensors")):
        raise ConfigError(f"{what} {path} holds no .safetensors weights (a pickled pytorch_model.bin is refused on "
                          "purpose: unpickling it can run code); convert the weights to safetensors: if you trust the "
                          "file, load the folder once with transformers and save_pretrained() it, which writes "
                          "model.safetensors")


def cpu_only(cfg: TrainSchedule) -> bool:
    """``use_cpu`` as configured, or automatically when no CUDA device is visible."""
    if cfg.use_cpu is not None:
        return cfg.use_cpu
    import torch

    return not torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 / AMX, as oneDNN reports it)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_kwargs(cfg: TrainSchedule, output: Path, has_dev: bool) -> dict[str, Any]:
    """TrainingArguments keywords for ``cfg``: schedule, checkpoints, evaluation on dev, devices, reporting."""
    cpu = cpu_only(cfg)
    if cfg.max_steps > 0 and cfg.epochs != option_default(cfg, "epochs"):
        log.warning("max_steps %d sets the schedule; epochs %s is not used", cfg.max_steps, cfg.epochs)
    if cpu and cfg.bf16 and not cpu_has_native_bf16():
        log.warning("bf16 on this CPU (no avx512_bf16 or AMX) emulates bfloat16 arithmetic: training runs many times "
                    "slower than in float32 (a MiniLM cross-encoder: ~10x the CPU time on an AVX2 CPU); "
                    "set bf16: false here")
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
        "max_grad_norm": cfg.max_grad_norm,
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
    # always given: TRL's SFTConfig / GRPOConfig default it to True (transformers 5: gradient_checkpointing is its
    # deprecated alias)
    kw["activation_checkpointing"] = cfg.gradient_checkpointing
    if evaluate:
        kw.update(load_best_model_at_end=True)
    return kw
