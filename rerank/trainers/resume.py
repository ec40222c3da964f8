"""Restarts of ``rerank train``: what a run folder may hold before a run, which checkpoint a resume takes, and the
training loss over every step of a resumed run. Every trainer (sft, grpo, the retrievers) goes through these.

* A folder holding a trained model (``model/``, ``adapter/``) or checkpoints is continued (``--resume``), replaced
  (``--overwrite``: the run's own files are removed, nothing else) or refused, before any file is written.
* ``--resume`` takes the newest *complete* checkpoint: a save cut short (a killed process, a full disk) leaves a
  partial one, which is skipped with a warning naming what it lacks, and removed (the resumed run writes it again).
* The summary's ``train_loss`` is the mean over all steps of the run: the running sum travels in each checkpoint's
  ``trainer_state.json`` (:class:`LossLedger`).
* The prompt template is compared by content: a run records the template it trains on, whatever gives it (the
  ``template`` option, the starting model's ``rerank.json``, the head's default), in full and as a versioned sha256
  (:data:`TEMPLATE_COPY_KEY`, :data:`TEMPLATE_KEY`, :data:`TEMPLATE_HASH_VERSION_KEY` in ``rerank_train.json``), so a
  template edited between runs is a change of config, and a refused ``--resume`` writes the run's own template to
  :data:`TEMPLATE_PIN` to be given again.
* The training data is compared by content: a run records the sha256 of each file it trains on (``data.path``, the
  corpus, queries and qrels a BEIR dataset resolves to, a ``negatives_file``; :data:`DATA_KEY`), as ``rerank data
  build`` records its inputs, so a file rewritten between runs refuses ``--resume`` and ``--check``, naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from rerank.config import from_dict, option_default, to_dict
from rerank.errors import ConfigError, RerankError
from rerank.utils.files import atomic_write, path_stamp

if TYPE_CHECKING:
    from rerank.prompts import PromptTemplate

__all__ = [
    "DATA_KEY",
    "DATA_OPTIONS",
    "INPUT_OPTIONS",
    "RUN_FILES",
    "TEMPLATE_COPY_KEY",
    "TEMPLATE_HASH_VERSION",
    "TEMPLATE_HASH_VERSION_KEY",
    "TEMPLATE_KEY",
    "TEMPLATE_PIN",
    "LossLedger",
    "check_overwrite_inputs",
    "check_run",
    "check_same_run",
    "checkpoint_problems",
    "config_differences",
    "data_changes",
    "data_inputs",
    "data_record",
    "fit",
    "input_paths",
    "last_checkpoint",
    "main_process",
    "prepare_output",
    "record_differences",
    "resume_arg",
    "run_differences",
    "run_template",
    "template_digest",
    "template_record",
]

log = logging.getLogger(__name__)

# what ``rerank train`` writes into OUTPUT (the retrievers' data files included); ``--overwrite`` removes these, with
# the hidden staging leftovers of a write cut short (``.model.XXXX``), and nothing else
RUN_FILES = ("model", "adapter", "checkpoints", "rerank_train.json", "train_log.jsonl", "train_summary.json",
             "queries.json", "negatives.json", "index")

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def main_process() -> bool:
    """True on the one process (rank 0) that removes files; every process of a ``torchrun`` run checks the same."""
    return int(os.environ.get("RANK", "0")) == 0


def _checkpoints(output: Path) -> list[tuple[int, Path]]:
    """The ``checkpoint-N`` folders under ``OUTPUT/checkpoints``, newest (highest N) first."""
    found = []
    for path in (output / "checkpoints").glob("checkpoint-*"):
        m = _CHECKPOINT.fullmatch(path.name)
        if m and path.is_dir():
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` is not whole, or None: its header must parse and the file must have the
    8 + header + data bytes the header promises."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                return f"{path.name} is cut short (no whole header)"
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"{path.name} is unreadable ({type(e).__name__})"
    if size != 8 + n + end:
        return f"{path.name} has {size} bytes, its header promises {8 + n + end}"
    return None


def _archive_problem(path: Path) -> str | None:
    """Why the ``torch.save`` file ``path`` (a zip archive) is not whole, or None: its central directory must be at
    the end (a write cut short leaves none) and name members that lie within the file."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            if any(i.header_offset + i.compress_size > size for i in z.infolist()):
                return f"{path.name} is cut short"
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"{path.name} is not a whole archive ({type(e).__name__})"
    return None


def checkpoint_problems(ckpt: Path) -> list[str]:
    """What ``ckpt`` (``OUTPUT/checkpoints/checkpoint-N``) lacks to resume from; empty when it is complete.

    Complete: ``trainer_state.json`` (the trainer writes it last) parses with ``global_step`` N; every weights file
    (``*.safetensors`` anywhere in the folder, and every shard an index names) has a whole header and the size it
    promises; ``optimizer.pt`` and ``scheduler.pt`` are whole archives; the RNG state is there and whole.
    """
    problems: list[str] = []
    m = _CHECKPOINT.fullmatch(ckpt.name)
    step = int(m.group(1)) if m else None
    try:
        recorded = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
        if recorded != step:
            problems.append(f"trainer_state.json records step {recorded}")
    except FileNotFoundError:
        problems.append("no trainer_state.json")
    except (OSError, ValueError, AttributeError):
        problems.append("trainer_state.json does not parse")
    weights = sorted(ckpt.rglob("*.safetensors"))
    for index in sorted(ckpt.rglob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            problems.append(f"{index.name} does not parse")
            continue
        missing = sorted(s for s in shards if not (index.parent / s).is_file())
        problems += [f"no shard {s} (named by {index.name})" for s in missing]
    if not weights:
        problems.append("no weights (*.safetensors)")
    problems += [p for w in weights if (p := _safetensors_problem(w))]
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (ckpt / name).is_file():
            problems.append(f"no {name}")
        elif p := _archive_problem(ckpt / name):
            problems.append(p)
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not rng:
        problems.append("no RNG state (rng_state.pth)")
    problems += [p for r in rng if (p := _archive_problem(r))]
    return problems


def last_checkpoint(output: Path, drop_partial: bool = False) -> str | None:
    """The newest complete ``checkpoint-N`` under ``OUTPUT/checkpoints`` (None when there is none). A newer partial one
    is skipped with a warning naming what it lacks; ``drop_partial`` also removes it when an older complete one is
    found (the run resumed from that one writes it again, and a stale half folder would confuse the trainer's
    rotation of old checkpoints)."""
    partial: list[tuple[Path, list[str]]] = []
    found = None
    for _step, ckpt in _checkpoints(output):
        problems = checkpoint_problems(ckpt)
        if not problems:
            found = ckpt
            break
        partial.append((ckpt, problems))
    remove = drop_partial and found is not None and main_process()
    for ckpt, problems in partial:
        log.warning("%s is incomplete (%s): %s", ckpt, "; ".join(problems),
                    f"removed, resuming from {found.name}" if remove and found else "skipped")
        if remove:
            shutil.rmtree(ckpt, ignore_errors=True)
    return str(found) if found is not None else None


def resume_arg(output: Path, resume: bool, drop_partial: bool = True) -> str | None:
    """The checkpoint to resume from: the newest complete one. ``--resume`` without a complete checkpoint is an error,
    not a silent fresh start, and a fresh run into a folder holding checkpoints is refused, not mixed with them.
    ``drop_partial``: remove a newer partial checkpoint (:func:`last_checkpoint`); false for a check that writes
    nothing."""
    if not resume:
        found = _checkpoints(output)
        if found:
            raise ConfigError(f"{output} already holds checkpoints ({found[0][1].name}); pass --resume to continue "
                              f"that run, --overwrite to replace it, or use a new --output")
        return None
    ckpt = last_checkpoint(output, drop_partial=drop_partial)
    if ckpt is None:
        found = _checkpoints(output)
        what = f"none of {', '.join(p.name for _, p in found)} is complete" if found else "none found"
        raise ConfigError(f"--resume: no checkpoint to resume from under {output / 'checkpoints'} ({what})")
    return ckpt


#: options a resumed run may change: they say how long to train, what to log and how much memory a step takes
#: (``gradient_checkpointing`` recomputes activations in the backward pass), not what the weights learn from
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "save_total_limit", "logging_steps", "report_to",
                               "gradient_checkpointing"})
_NO_DEFAULT = object()


def resumable_changes(diffs: list[str], record: dict[str, Any], config: Any) -> list[str]:
    """Those of ``diffs`` (``key: old -> new``) a resume may make: :data:`RESUMABLE_CHANGES`, and a ``use_cpu`` that
    keeps the device type the run last trained on (``null -> true`` on a machine without a GPU: null meant the CPU
    there already)."""
    allowed = [d for d in diffs if d.split(":", 1)[0] in RESUMABLE_CHANGES]
    if any(d.split(":", 1)[0] == "use_cpu" for d in diffs):
        from rerank.trainers.base import machine_record

        sessions = [record, *[r for r in record.get("resumed") or [] if isinstance(r, dict)]]
        last = next((s["device"] for s in reversed(sessions) if isinstance(s.get("device"), dict)), {})
        if last.get("type") is not None and last.get("type") == machine_record(config)["device"]["type"]:
            allowed += [d for d in diffs if d.split(":", 1)[0] == "use_cpu"]
    return allowed


def _default_at(config: Any, path: list[str]) -> Any:
    """The dataclass default of the option at ``path`` in ``config`` (as its record writes it), or ``_NO_DEFAULT``."""
    value = config
    for i, key in enumerate(path):
        names = {f.name for f in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else set()
        if key not in names:
            return _NO_DEFAULT
        if i == len(path) - 1:
            default = option_default(value, key)
            if default is dataclasses.MISSING:
                return _NO_DEFAULT
            return json.loads(json.dumps(to_dict(default) if dataclasses.is_dataclass(default) else default))
        value = getattr(value, key)
    return _NO_DEFAULT


def config_differences(old: Any, new: Any, config: Any, path: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every option whose value differs between the run's recorded config and ``new`` (both
    JSON-like). An option the record lacks (added since) counts as its default; one the config lacks (removed since)
    is no longer an option and is skipped."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            if key not in new:
                continue
            sub = (*path, str(key))
            if key not in old:
                default = _default_at(config, list(sub))
                if default is _NO_DEFAULT or default != new[key]:
                    out.append(f"{'.'.join(sub)}: absent -> {json.dumps(new[key])}")
            else:
                out += config_differences(old[key], new[key], config, sub)
        return out
    return [] if old == new else [f"{'.'.join(path)}: {json.dumps(old)} -> {json.dumps(new)}"]


def check_same_run(output: Path, trainer: str, config: Any, data_root: str | None = None,
                   write_template: bool = False) -> dict[str, Any] | None:
    """``--resume`` continues the run recorded in ``OUTPUT/rerank_train.json``: another trainer or another value of
    an option that shapes the weights is refused, naming what differs (weights trained under two configs would be
    neither run's); the options of :data:`RESUMABLE_CHANGES` (how long, what to log, the memory a step takes) and
    a ``use_cpu`` that keeps the device (:func:`resumable_changes`) may change, with a warning.
    A refused template names how to give the run's own again; ``write_template`` (a resume, not a check) writes it
    to ``OUTPUT/``:data:`TEMPLATE_PIN` first (:func:`_template_pin`).
    Training data whose content changed since the run started (:func:`data_changes`, datasets resolved under
    ``data_root``) is refused, naming each file. Returns the record (None when the folder has none)."""
    path = output / "rerank_train.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: {path} does not parse ({e}); resume needs the run's record") from None
    if not isinstance(record, dict) or "trainer" not in record or "config" not in record:
        log.warning("%s names no trainer and config: --resume cannot check it continues the same run", path)
        return None
    if record["trainer"] != trainer:
        raise ConfigError(f"--resume: {output} holds a {record.get('trainer')!r} run, not {trainer!r}; resume it with "
                          f"`rerank train {record.get('trainer')}`, or start again with --overwrite")
    diffs = record_differences(record, config, path)
    allowed = resumable_changes(diffs, record, config)
    diffs = [d for d in diffs if d not in allowed]
    if diffs:
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        pin = _template_pin(output, record, diffs, write_template)
        raise ConfigError(f"--resume: the config differs from the run's ({path.name}): {'; '.join(diffs[:4])}{more}; "
                          f"resume with the run's config{pin}, or start again with --overwrite")
    changed = data_changes(record, config, data_root, path)
    if changed:
        raise ConfigError(f"--resume: cannot resume: {_changed_data(changed)} changed since the run in {output} "
                          "started, so its checkpoints were trained on other data; restore the data it started with, "
                          "or start again with --overwrite (or choose another --output)")
    check_not_shorter(output, config, "--resume")
    if allowed:
        longer = any(d.split(":", 1)[0] in ("max_steps", "epochs") for d in allowed)
        log.warning("--resume with %s%s", "; ".join(allowed),
                    " (the learning-rate schedule follows the new length from the resumed step on)" if longer else "")
    return record


def check_not_shorter(output: Path, config: Any, where: str) -> None:
    """A run whose newest checkpoint already trained past the ``max_steps`` (or, with ``max_steps`` unset, the
    ``epochs``) of ``config`` cannot be cut back to it: resuming would train nothing and keep the longer model as the
    shorter one. A finished run (``model/``) trained the length its checkpoints planned, even where model selection
    kept only an earlier, better checkpoint. Refused in one line naming both lengths."""
    newest = _newest_state(output)
    if newest is None:
        return
    ckpt, state = newest
    max_steps = getattr(config, "max_steps", 0) or 0
    done_steps, done_epochs = state.get("global_step"), state.get("epoch")
    finished = (output / "model").is_dir()
    if finished:  # a finished run trained the length it planned, whichever checkpoint it kept
        planned_steps, planned_epochs = state.get("max_steps"), state.get("num_train_epochs")
        if isinstance(planned_steps, int) and isinstance(done_steps, int) and planned_steps > done_steps:
            done_steps = planned_steps
        if isinstance(planned_epochs, (int, float)) and isinstance(done_epochs, (int, float)) \
                and planned_epochs > done_epochs:
            done_epochs = planned_epochs
    if max_steps > 0 and isinstance(done_steps, int) and done_steps > max_steps:
        asked, done = f"max_steps {max_steps}", f"{done_steps} steps"
    elif max_steps <= 0 and isinstance(done_epochs, (int, float)) \
            and done_epochs > (getattr(config, "epochs", None) or math.inf) + 1e-6:
        asked, done = f"epochs {config.epochs}", f"{done_epochs:g} epochs"
    else:
        return
    at = f"{ckpt.name}, then finished" if finished else ckpt.name
    raise ConfigError(f"{where}: {output} already trained {done} ({at}), more than the {asked} asked: a run "
                      f"cannot be shortened; ask for at least that, write to another --output, or start again "
                      f"with --overwrite")


def _newest_state(output: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under ``output`` whose ``trainer_state.json`` reads, with that state (None: none, or
    a state that is not a mapping)."""
    for _step, ckpt in _checkpoints(output):
        try:
            state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return (ckpt, state) if isinstance(state, dict) else None
    return None


#: the config options that name files or folders a run reads (the starting model, the data, a retriever's index,
#: teacher or negatives file): ``--overwrite`` never removes one of them
INPUT_OPTIONS = ("model", "data.path", "data.beir", "dataset", "index", "distill_model", "negatives_file")


def _current_names(recorded: Any, config: Any) -> Any:
    """A recorded config (a mapping) with each key of a former name (``renamed_keys`` of ``config``'s class, former ->
    current, where the current name is one of its options) under its current name, in place in the order; a current
    name also recorded keeps its value. Anything else is returned as it is."""
    renamed = getattr(config, "renamed_keys", {})
    if not isinstance(recorded, dict) or not renamed or not dataclasses.is_dataclass(config):
        return recorded
    names = {f.name for f in dataclasses.fields(config)}
    out: dict[str, Any] = {}
    for key, value in recorded.items():
        now = renamed.get(key)
        if now not in names:
            out[key] = value
        elif now not in recorded:
            out[now] = value
    return out


def run_differences(recorded: Any, config: Any) -> list[str]:
    """:func:`config_differences` between a run's recorded config (``rerank_train.json``'s ``config``) and ``config``.
    An input path (:data:`INPUT_OPTIONS`) spelt another way that names the same file or folder here (``./OUT/x`` and
    an absolute ``OUT/x``, ``~``) is no difference. A key the record holds under a former name (the config class's
    ``renamed_keys``: a run started before ``query_max_length`` became ``max_query_tokens``) is compared under its
    current one."""
    new = json.loads(json.dumps(to_dict(config)))
    recorded = _current_names(recorded, config)
    for name in INPUT_OPTIONS:
        *parents, last = name.split(".")
        old_at, new_at = recorded, new
        for part in parents:
            old_at = old_at.get(part) if isinstance(old_at, dict) else None
            new_at = new_at.get(part) if isinstance(new_at, dict) else None
        if not (isinstance(old_at, dict) and isinstance(new_at, dict)):
            continue
        was, now = old_at.get(last), new_at.get(last)
        if isinstance(was, str) and isinstance(now, str) and was != now and \
                os.path.realpath(os.path.expanduser(was)) == os.path.realpath(os.path.expanduser(now)):
            new_at[last] = was
    return config_differences(recorded, new, config)


#: the ``rerank_train.json`` key holding the sha256 of the run's prompt template (:func:`template_digest`)
TEMPLATE_KEY = "template_sha256"
#: the key naming the formula of that hash; a hash without it was written by the first formula (version 1)
TEMPLATE_HASH_VERSION_KEY = "template_hash_version"
#: the formula :func:`template_digest` computes: 1 also hashed the template's ``name``, 2 leaves it out
TEMPLATE_HASH_VERSION = 2
#: the key holding the run's prompt template in full (:meth:`~rerank.prompts.PromptTemplate.to_dict`)
TEMPLATE_COPY_KEY = "template"
#: the file in OUTPUT a refused ``--resume`` writes the run's own template to (from :data:`TEMPLATE_COPY_KEY`)
TEMPLATE_PIN = "template-at-start.yaml"


def run_template(config: Any) -> tuple[PromptTemplate, str] | None:
    """The prompt template a run of ``config`` trains on, whatever gives it, and where it comes from (for messages):
    the ``template`` option (a shipped name or a file), else the starting model's own when its ``rerank.json`` records
    one for this head (:meth:`~rerank.trainers.task.Task.head_options`), else the head's default, with the head's
    options that stand in for template fields (``template_texts``) applied, as the head builds it. None for a config
    without a ``template`` option (the retrievers) and a head without prompts whose option is unset."""
    used = _run_template(config)
    return None if used is None else used[:2]


def _run_template(config: Any) -> tuple[PromptTemplate, str, str] | None:
    """:func:`run_template` and what gives the template: ``option``, ``model`` (the starting model's ``rerank.json``)
    or ``default`` (the head's)."""
    from rerank.methods import all_methods
    from rerank.prompts import load_template

    if not dataclasses.is_dataclass(config) or "template" not in {f.name for f in dataclasses.fields(config)}:
        return None
    spec = config.template
    method = all_methods().get(str(getattr(config, "head", "") or ""))
    if method is None or not method.templates:
        return (load_template(spec), str(spec), "option") if spec else None
    head_cls = method.resolve("head")
    if method.task is not None and method.sft is None:  # trained through its task: the task's head options
        options = method.resolve("task").head_options(config)
    else:
        options = {"template": spec} if spec else {}
    template = head_cls.configured_template(from_dict(head_cls.config_class, options,
                                                      where=f"{method.name} head options"))
    if spec:
        return template, str(spec), "option"
    if isinstance(options.get("template"), dict):
        return template, f"the template {Path(str(config.model)) / 'rerank.json'} records", "model"
    return template, f"the {method.name} head's default template {template.name!r}", "default"


def template_digest(template: PromptTemplate | str | None, version: int = TEMPLATE_HASH_VERSION) -> str | None:
    """The sha256 of what of a prompt template shapes the prompts and their answers: its texts and fields as
    ``rerank.json`` records them (:meth:`~rerank.prompts.PromptTemplate.to_dict`) without ``name``, which only labels
    it (a file's name when the template sets none); ``version`` 1 (:data:`TEMPLATE_HASH_VERSION`) with it. A shipped
    name or a file is loaded first. None for no template."""
    if not template:
        return None
    if isinstance(template, str):
        from rerank.prompts import load_template

        template = load_template(template)
    if version != 1:
        return template.sha256()
    text = json.dumps(template.to_dict(), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def template_record(config: Any) -> dict[str, Any]:
    """What a run's ``rerank_train.json`` records of the template it trains on (:func:`run_template`): its hash
    (:data:`TEMPLATE_KEY`), the hash's formula (:data:`TEMPLATE_HASH_VERSION_KEY`) and the template in full
    (:data:`TEMPLATE_COPY_KEY`); nothing for a run without a template."""
    used = run_template(config)
    if used is None:
        return {}
    copy = json.loads(json.dumps(used[0].to_dict(), ensure_ascii=False, default=str))
    return {TEMPLATE_KEY: template_digest(used[0]), TEMPLATE_HASH_VERSION_KEY: TEMPLATE_HASH_VERSION,
            TEMPLATE_COPY_KEY: copy}


def _template_change(record: dict[str, Any], config: Any, used: tuple[PromptTemplate, str, str]) -> str | None:
    """Why the template ``used`` (:func:`_run_template` of ``config``) is not the one a run's ``record`` hashed, or
    None when it is. The hash is compared by the formula the record names (:data:`TEMPLATE_HASH_VERSION_KEY`): a
    hash without one is version 1's, written by either unversioned formula (of the ``template`` option's template,
    then of the template trained on), both with its ``name``; a formula this rerank does not know compares the
    recorded template (:data:`TEMPLATE_COPY_KEY`) by content."""
    from rerank import __version__
    from rerank.prompts import load_template

    template, source, kind = used
    digest = str(record[TEMPLATE_KEY])
    version = record.get(TEMPLATE_HASH_VERSION_KEY, 1)
    copy = record.get(TEMPLATE_COPY_KEY)
    how = ""
    if version == TEMPLATE_HASH_VERSION:
        current = template_digest(template)
        same = current == digest
    elif version == 1:
        current = template_digest(template, 1)
        spec = getattr(config, "template", "")
        same = digest in {current, template_digest(load_template(spec), 1) if spec else None}
        how = ", by the hash formula of the rerank that started the run, which also hashed the template's name"
    elif isinstance(copy, dict):
        digest, current = str(template_digest(load_template(copy))), template_digest(template)
        same = current == digest
    else:
        return (f"template: the run's record hashes its template by formula {version!r}, which rerank {__version__} "
                f"does not know: check or resume it with the rerank that started it ({record.get('rerank_version')})")
    if same:
        return None
    if kind == "default":
        started = record.get("rerank_version")
        by = f"rerank {started} started the run; this is {__version__}" if started and started != __version__ \
            else "the run started"
        how += f": the head's default template changed since {by}"
    elif kind == "model":
        how += ": the starting model's recorded template changed since the run was started"
    return (f"template: {source} is not the template the run trained on (its content differs: sha256 "
            f"{digest[:12]} -> {str(current)[:12]}{how})")


def _template_pin(output: Path, record: dict[str, Any], diffs: list[str], write: bool) -> str:
    """How to give a refused run its own template again, for the error naming ``diffs``: when the template differs
    and the record holds it in full (:data:`TEMPLATE_COPY_KEY`), ``write`` puts it in ``OUTPUT/``:data:`TEMPLATE_PIN`
    (atomically) and the advice names the ``--set`` that passes it; a check that writes nothing names it when it is
    there with that content, else where the record keeps it. Empty otherwise."""
    import yaml

    copy = record.get(TEMPLATE_COPY_KEY)
    if not isinstance(copy, dict) or not any(d.split(":", 1)[0] == "template" for d in diffs):
        return ""
    pin = output / TEMPLATE_PIN
    text = yaml.safe_dump(copy, sort_keys=False, allow_unicode=True)
    if write and main_process():
        with atomic_write(pin) as f:
            f.write(text)
    elif not write:
        try:
            held = pin.read_text(encoding="utf-8")
        except OSError:
            held = None
        if held != text:
            return (f" and --set template=FILE, FILE a YAML file of the template the run started with (its record's "
                    f"{TEMPLATE_COPY_KEY!r}; a --resume without --check writes it to {pin})")
    what = "just written there" if write else "there"
    return f" and --set template={pin} (the template the run started with, {what} from its record)"


def record_differences(record: dict[str, Any], config: Any, where: Path | str = "rerank_train.json") -> list[str]:
    """:func:`run_differences` between a run's record (``rerank_train.json``, at ``where``) and ``config``, with the
    template the run trains on (:func:`run_template`: the option's, the starting model's recorded one or the head's
    default) compared by content where the record holds its hash (:data:`TEMPLATE_KEY`, by the formula it names:
    :func:`_template_change`): an edited file, starting model's prompt or head default is a change, the same template
    under another path or file name is none. A record without a hash (written before rerank recorded it) compares
    the ``template`` option only, as then, and says so."""
    recorded = record.get("config", {})
    diffs = run_differences(recorded, config)
    used = _run_template(config)
    if used is None:
        return diffs
    digest = record.get(TEMPLATE_KEY)
    if not isinstance(digest, str):
        was = recorded.get("template") if isinstance(recorded, dict) else None
        if isinstance(was, str) and was:
            log.warning("%s records no hash of the template %s (a run started by an older rerank): the template is "
                        "compared by its path only, not by its content", where, was)
        else:
            log.warning("%s records no hash of the template the run trained on (a run started by an older rerank): "
                        "%s is not compared with it", where, used[1])
        return diffs
    diffs = [d for d in diffs if d.split(":", 1)[0] != "template"]
    change = _template_change(record, config, used)
    return diffs if change is None else [*diffs, change]


#: the ``rerank_train.json`` key holding the fingerprints of the files a run trains on (:func:`data_inputs`)
DATA_KEY = "data_inputs"
#: the options naming what a run trains on: a file (or HF dataset folder) of rows, a BEIR dataset, mined negatives
DATA_OPTIONS = ("data.path", "data.beir", "dataset", "negatives_file")


def _option_value(config: Any, name: str) -> str | None:
    """The non-empty path or text the dotted option ``name`` of ``config`` holds, or None."""
    value: Any = config
    for part in name.split("."):
        value = getattr(value, part, None)
    return str(value) if isinstance(value, (str, Path)) and str(value) else None


def _data_sources(config: Any, data_root: str | None, download: bool) -> dict[str, list[tuple[str, Path]]]:
    """By option of :data:`DATA_OPTIONS` that ``config`` sets and that names data here: (name, file or folder) of what
    the run reads. ``data.path`` and ``negatives_file`` as given; ``data.beir`` and ``dataset`` as the trainers resolve
    them (a folder, or a registered name under ``data_root``, fetched when ``download``): the corpus, queries and the
    qrels of the split trained on. An option whose data is not found here is left out."""
    from rerank.data.datasets import resolve_dataset

    out: dict[str, list[tuple[str, Path]]] = {}
    for option in DATA_OPTIONS:
        value = _option_value(config, option)
        if value is None:
            continue
        if option in ("data.path", "negatives_file"):
            path = Path(value).expanduser()
            if path.exists():
                out[option] = [(option, path)]
            continue
        split = getattr(config.data if option == "data.beir" else config, "split", "train")
        try:
            ds = resolve_dataset(value, data_root, download=download)
            out[option] = [(f"{option} corpus", ds.corpus_path), (f"{option} queries", ds.queries_path),
                           (f"{option} qrels", ds.qrels_path(split))]
        except (RerankError, OSError, ValueError):  # not there: the trainer names what is missing
            continue
    return out


def data_inputs(config: Any, data_root: str | None = None,
                download: bool = False) -> tuple[dict[str, dict[str, str]], set[str]]:
    """Fingerprints of the files a run of ``config`` trains on (:func:`_data_sources`), by name, as ``rerank data
    build`` records its inputs (``{"path", "fingerprint": "sha256:…"}``; each file of a folder under ``OPTION FILE``),
    and the options whose data was found here."""
    sources = _data_sources(config, data_root, download)
    entries: dict[str, dict[str, str]] = {}
    for found in sources.values():
        for name, path in found:
            for rel, digest in path_stamp(path, hash_limit=None):
                key, file = (f"{name} {rel}", path / rel) if path.is_dir() else (name, path)
                entries[key] = {"path": str(file), "fingerprint": f"sha256:{digest}"}
    return entries, set(sources)


def data_record(config: Any, data_root: str | None = None) -> dict[str, Any]:
    """What a starting run's ``rerank_train.json`` records of the data it trains on: :func:`data_inputs` under
    :data:`DATA_KEY`, a registered dataset fetched first as the trainer would."""
    return {DATA_KEY: data_inputs(config, data_root, download=True)[0]}


def data_changes(record: dict[str, Any], config: Any, data_root: str | None = None,
                 where: Path | str = "rerank_train.json") -> list[str]:
    """``OPTION PATH`` of each file the run of ``config`` trains on whose content differs from the fingerprint the
    run's record (``rerank_train.json``, at ``where``) holds under :data:`DATA_KEY` (a file added to or gone from a
    folder of rows counts). An option whose data is not found here is not compared (training then says it is
    missing); a record without fingerprints (a run started by an older rerank) compares nothing, with a warning."""
    old = record.get(DATA_KEY)
    if not isinstance(old, dict):
        sources = _data_sources(config, data_root, download=False)
        if sources:
            what = ", ".join(f"{o} {_option_value(config, o)}" for o in DATA_OPTIONS if o in sources)
            log.warning("%s records no fingerprint of the data the run trained on (a run started by an older "
                        "rerank): %s is not compared with it", where, what)
        return []
    new, found = data_inputs(config, data_root)
    recorded = {name.split(" ", 1)[0] for name in old}
    changed: list[str] = []
    for name in sorted(set(old) | set(new)):
        option = name.split(" ", 1)[0]
        if option not in found or option not in recorded:
            continue
        was, now = old.get(name), new.get(name, {})
        was = was if isinstance(was, dict) else {}
        if was.get("fingerprint") != now.get("fingerprint"):
            changed.append(f"{option} {now.get('path') or was.get('path')}")
    return changed


def _changed_data(changed: list[str]) -> str:
    """The files of :func:`data_changes` for a message: the first four, and how many more."""
    more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
    return ", ".join(changed[:4]) + more


def input_paths(config: Any, data_root: str | None = None) -> list[tuple[str, Path]]:
    """(option, path) of every file or folder ``config`` reads that exists here (:data:`INPUT_OPTIONS`; a dataset
    name also under ``data_root``)."""
    out: list[tuple[str, Path]] = []
    for name in INPUT_OPTIONS:
        value = _option_value(config, name)
        if value is None:
            continue
        places = [Path(value).expanduser()]
        if name in ("dataset", "data.beir") and data_root:
            places.append(Path(data_root).expanduser() / str(value))
        out += [(name, p) for p in places if p.exists() or p.is_symlink()]
    return out


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, as written (absolute) or with links resolved."""
    pairs = [(Path(os.path.abspath(path)), Path(os.path.abspath(folder)))]
    if not folder.is_symlink():  # removing a link leaves its target alone: only a real folder's content is lost
        pairs.append((path.resolve(), folder.resolve()))
    return any(p == f or f in p.parents for p, f in pairs)


def _removed(output: Path) -> list[Path]:
    """What ``--overwrite`` removes from ``output``: the :data:`RUN_FILES` and their staging leftovers."""
    return [path for name in RUN_FILES for path in [output / name, *output.glob(f".{name}.*")]
            if path.exists() or path.is_symlink()]


def check_overwrite_inputs(output: Path, inputs: list[tuple[str, Path]]) -> None:
    """``--overwrite`` would remove a file the run reads (its starting model, its data, …): a one-line error naming
    both paths, before anything is removed."""
    for path in _removed(output):
        for name, given in inputs:
            if _inside(given, path):
                raise ConfigError(f"--overwrite would remove {path}, which holds the run's {name} {given}: write the "
                                  f"run to a new --output, or move {given} out of {output} first")


def prepare_output(output: Path, resume: bool, overwrite: bool, inputs: list[tuple[str, Path]] | None = None,
                   dry_run: bool = False) -> None:
    """Check the run folder before anything is written or loaded: a folder holding a trained model or checkpoints is
    continued (``resume``, which needs a complete checkpoint), replaced (``overwrite``: the files of
    :data:`RUN_FILES` removed, nothing else, and refused when one of them holds one of ``inputs``, the (option, path)
    of what the run reads: :func:`input_paths`) or refused. ``dry_run``: the same checks, nothing removed."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run in --output, or replace it")
    if overwrite:
        check_overwrite_inputs(output, inputs or [])
        if main_process() and not dry_run:
            for path in _removed(output):  # the files check_overwrite_inputs looked at, and no others
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        return
    if resume:
        resume_arg(output, True, drop_partial=not dry_run)
        if main_process() and not dry_run:  # staged model folders a killed save left: the resumed run writes its own
            for name in ("model", "adapter"):
                for path in output.glob(f".{name}.*"):
                    shutil.rmtree(path, ignore_errors=True)
        return
    held = [name + "/" for name in ("model", "adapter") if (output / name).is_dir()]
    held += [f"checkpoints/{p.name}" for _, p in _checkpoints(output)[:1]]
    if held:
        raise ConfigError(f"{output} already holds a training run ({', '.join(held)}); pass --resume to continue it, "
                          f"--overwrite to replace it, or use a new --output")


def _trained_length(output: Path, config: Any) -> bool:
    """Whether the newest checkpoint under ``output`` (its ``trainer_state.json``) ran to the ``max_steps`` (or, with
    ``max_steps`` unset, the ``epochs``) of ``config``: a resumed run keeps its first record, so the checkpoint tells
    how long the model trained."""
    newest = _newest_state(output)
    if newest is None:
        return False
    state = newest[1]
    max_steps = getattr(config, "max_steps", 0) or 0
    if max_steps > 0:
        return state.get("max_steps") == max_steps
    return state.get("num_train_epochs") == getattr(config, "epochs", None)


def _resumable(output: Path, trainer: str, config: Any, data_root: str | None) -> tuple[str, str]:
    """``--resume``'s checks of ``output`` (:func:`prepare_output`'s complete checkpoint, nothing removed, then
    :func:`check_same_run`) and the line naming the checkpoint it continues from."""
    ckpt = resume_arg(output, True, drop_partial=False)
    check_same_run(output, trainer, config, data_root)
    return "resume", f"{output}: --resume continues the run from {Path(str(ckpt)).name}"


def check_run(output: Path, trainer: str, config: Any, resume: bool = False, overwrite: bool = False,
              inputs: list[tuple[str, Path]] | None = None, data_root: str | None = None) -> tuple[str, str]:
    """What ``rerank train`` would do with the run folder ``output`` (``rerank train --check``), writing and removing
    nothing: ``(state, line)``, state ``train``, ``done`` or ``resume`` (continue with ``--resume``); a run it would
    refuse raises a one-line :class:`ConfigError`.

    With ``resume`` or ``overwrite``: that run's own checks (:func:`prepare_output`, :func:`check_same_run`). Without:
    a finished model (``model/``) is ``done`` when its record names this config (:func:`record_differences`, the
    template by content) and data (:func:`data_changes`, datasets resolved under ``data_root``; one without a record
    is kept as it is), ``resume`` when only a longer ``max_steps`` or ``epochs`` is asked for, refused when other
    options or the data differ; an interrupted run (checkpoints, no model) is ``resume``; an empty folder is
    ``train``.
    """
    if overwrite:
        prepare_output(output, False, True, inputs, dry_run=True)
        held = [p.name for p in _removed(output)]
        return "train", (f"{output}: --overwrite replaces the run there ({', '.join(held)}) and trains from the start"
                         if held else f"{output}: no run there yet: training starts from the beginning")
    if resume:
        return _resumable(output, trainer, config, data_root)
    model = output / "model"
    if not model.is_dir():
        if not _checkpoints(output):
            prepare_output(output, False, False, inputs, dry_run=True)  # refuses an adapter/ without its model
            return "train", f"{output}: no run there yet: training starts from the beginning"
        return _resumable(output, trainer, config, data_root)
    path = output / "rerank_train.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or "trainer" not in record or "config" not in record:
        return "done", f"{model} exists (no run record in {path} to compare with): training is done"
    if record["trainer"] != trainer:
        raise ConfigError(f"{model} is a {record['trainer']!r} run, not {trainer!r}: write to another --output")
    diffs = record_differences(record, config, path)
    allowed = resumable_changes(diffs, record, config)
    other = [d for d in diffs if d not in allowed]
    if other:
        more = f" (and {len(other) - 4} more)" if len(other) > 4 else ""
        pin = _template_pin(output, record, other, write=False)
        raise ConfigError(f"{model} was trained with other options ({path}): {'; '.join(other[:4])}{more}: rerun "
                          f"with those{pin}, write to another --output, or remove {model}, {output / 'checkpoints'} "
                          f"and {path} to train it again")
    changed = data_changes(record, config, data_root, path)
    if changed:
        raise ConfigError(f"{model} was trained on other data: {_changed_data(changed)} changed since the run started "
                          f"({path}); restore the data it started with, write to another --output, or train it again "
                          "with --overwrite")
    check_not_shorter(output, config, "--check")
    longer = [d for d in diffs if d.split(":", 1)[0] in ("max_steps", "epochs")]
    if not longer or _trained_length(output, config):
        return "done", f"{model} exists: training is done"
    if not _checkpoints(output):
        raise ConfigError(f"{model} was trained with {'; '.join(longer)} and keeps no checkpoint to continue from: "
                          f"write to another --output, or remove {model} and {path} to train it again")
    return _resumable(output, trainer, config, data_root)


class LossLedger(TrainerCallback, ExportableState):
    """Keeps the sum of the training loss over every step in each checkpoint's ``trainer_state.json``, so a resumed
    run reports the mean over all its steps, not only the resumed ones.

    The sum is the steps before this session (restored from the checkpoint) plus the trainer's own running total of
    this session (``Trainer._total_loss_scalar``, which transformers divides by this session's steps for the
    ``train_loss`` it logs); a checkpoint step is also a logging step, so no loss accumulated between two logs is left
    out of a checkpoint.

    A resumed run also takes up what the checkpoint would otherwise override: ``logging_steps`` as now configured
    (transformers restores the checkpoint's), and the learning rate of the schedule now configured at the resumed
    step (the optimizer's restored rate is the old schedule's: 0 at the end of a finished run, for a lengthened one).
    """

    def __init__(self, trainer: Any = None) -> None:
        self.trainer = trainer
        self.first_step = 0  # the first step the sum covers (> 0: resumed from a checkpoint without a ledger)
        self.before = 0.0  # the loss summed over the steps before this session

    def state(self) -> dict[str, Any]:
        total = self.before + float(getattr(self.trainer, "_total_loss_scalar", 0.0))
        return {"args": {}, "attributes": {"loss_sum": total, "first_step": self.first_step}}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.global_step:
            return
        if hasattr(state, "compute_steps"):
            state.compute_steps(args, state.max_steps)  # logging_steps as configured now, not the checkpoint's
        _schedule_rate(kwargs.get("optimizer"), kwargs.get("lr_scheduler"))
        kept = (state.stateful_callbacks or {}).get(type(self).__name__)
        if not isinstance(kept, dict):
            log.warning("the checkpoint holds no loss sum (written by an older rerank): train_loss covers the steps "
                        "after step %d only", state.global_step)
            self.first_step = state.global_step
            return
        self.before = float(kept["attributes"]["loss_sum"])
        self.first_step = int(kept["attributes"]["first_step"])

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:
            control.should_log = True

    def mean(self) -> float:
        """The mean training loss over the steps the sum covers (every step of the run)."""
        steps = self.trainer.state.global_step - self.first_step
        return (self.before + float(self.trainer._total_loss_scalar)) / max(steps, 1)


def _schedule_rate(optimizer: Any, scheduler: Any) -> None:
    """Set each parameter group's learning rate to what ``scheduler`` (a ``LambdaLR``, as transformers' schedules
    are, built for the length now configured) gives at its restored step; other schedulers are left as restored."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if optimizer is None or not lambdas or len(lambdas) != len(optimizer.param_groups):
        return
    rates = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def fit(trainer: Any, checkpoint: str | None) -> Any:
    """``trainer.train()`` from ``checkpoint`` (None: from the start) with a :class:`LossLedger`; the result's
    ``training_loss`` (and ``metrics['train_loss']``) is the mean over every step of the run, resumed or not.
    A checkpoint at ``max_steps`` (a run killed while writing its final model) is loaded, not trained on:
    transformers would run one step past the end when ``max_steps`` falls inside an epoch."""
    ledger = LossLedger(trainer)
    trainer.add_callback(ledger)
    if checkpoint is not None and 0 < trainer.args.max_steps <= _checkpoint_step(checkpoint):
        return _finished(trainer, checkpoint, ledger)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    loss = ledger.mean()
    return result._replace(training_loss=loss, metrics={**(result.metrics or {}), "train_loss": loss})


def _checkpoint_step(checkpoint: str) -> int:
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


def _finished(trainer: Any, checkpoint: str, ledger: LossLedger) -> Any:
    """The end of a run whose last checkpoint is its last step: its weights and state, the best checkpoint where
    the run selects one (as the trainer's own end of training does), and the loss over every step."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer._load_from_checkpoint(checkpoint)
    trainer._total_loss_scalar = 0.0
    ledger.on_train_begin(trainer.args, trainer.state, trainer.control)
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
        trainer._load_best_model()
    log.info("%s is the run's last step (%d): nothing left to train", Path(checkpoint).name, trainer.state.global_step)
    loss = ledger.mean()
    return TrainOutput(trainer.state.global_step, loss, {"train_loss": loss})
