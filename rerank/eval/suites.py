"""Evaluation suites: many datasets, one reranker, one result folder per dataset and a summary (mean over datasets).

* ``beir``: the registered public BEIR test sets (downloaded and verified on first use, see ``rerank.data.registry``).
* ``bright``: the 12 BRIGHT subsets, read from the public dataset's layout (``documents/``, ``long_documents/``,
  ``examples/`` parquet files, as in the ``xlangai/BRIGHT`` hub repository) in a local folder, or from the hub through
  HF ``datasets`` when online. Each subset is converted once into a BEIR folder (cached) whose ``excluded/test.tsv``
  lists every example's ``excluded_ids``; the eval pipeline removes those from the ranking before reranking and
  scoring, as BRIGHT does. With ``long_documents`` the corpus is the long-document config and the gold ids are
  ``gold_ids_long``.
* ``dl``: TREC DL19/DL20 passage and MS MARCO dev in their local reranking form (queries, qrels, candidate pool as
  ``corpus.jsonl`` and the BM25 run ``bm25_top100.trec``): without ``--retriever`` the folder's run is reranked.
  DL judging: graded nDCG, binary measures at relevance >= 2; MS MARCO dev reports RR@10 (MRR@10).

A suite run without ``--datasets`` evaluates the members it finds and names the missing ones (a warning, and
``missing`` in ``summary.json``); a member named in ``--datasets`` must exist. An output folder holds one suite run:
the results of members an earlier suite run wrote there and this one does not include are removed once this run's
first member is written (see :func:`_other_members`). Every member's files are looked for before the reranker loads.

``resume=True`` (``rerank eval --suite ... --resume``) keeps a member whose folder holds a complete run (its
``metrics.json``) recorded with this run's settings (:func:`_kept_members`) and runs the others; a complete run under
other settings is refused before any work. A member that fails names itself and says that ``--resume`` continues
from it; the finished members' results stay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rerank.config import changed_options, to_dict
from rerank.data.datasets import Dataset, cache_root, default_data_root, resolve_dataset
from rerank.data.registry import DATASETS
from rerank.errors import ConfigError, DataFormatError, DatasetNotFoundError, RerankError
from rerank.eval.pipeline import (
    OUTPUT_FILES,
    EvalConfig,
    check_given_reranker,
    check_llm_io,
    described_model,
    load_reranker,
    reranker_pool,
    run_eval,
    template_input,
)
from rerank.heads.base import Reranker
from rerank.parallel import WorkerPool
from rerank.prompts import PromptTemplate
from rerank.utils.files import atomic_write, resolved_path, temp_dir, write_json

__all__ = [
    "BRIGHT_LONG_SUBSETS",
    "BRIGHT_SUBSETS",
    "SUITES",
    "SuiteEntry",
    "bright_dataset",
    "run_suite",
    "suite_entries",
    "summarize",
]

log = logging.getLogger(__name__)

BRIGHT_HUB_ID = "xlangai/BRIGHT"
BRIGHT_SUBSETS: tuple[str, ...] = (
    "biology",
    "earth_science",
    "economics",
    "psychology",
    "robotics",
    "stackoverflow",
    "sustainable_living",
    "leetcode",
    "pony",
    "aops",
    "theoremqa_questions",
    "theoremqa_theorems",
)
# long_documents exists for the StackExchange subsets and pony only (BRIGHT paper, Table 1)
BRIGHT_LONG_SUBSETS: tuple[str, ...] = BRIGHT_SUBSETS[:7] + ("pony",)

_BEIR_SUITE = tuple(n for n, i in DATASETS.items() if i.url and "/" not in n and n not in ("msmarco", "cqadupstack"))
_DL_SUITE = ("dl19-bm25-top100", "dl20-bm25-top100")
# run files looked for, in order, in a reranking-form folder when no retriever is given
RUN_FILES = ("bm25_top100.trec", "run.trec")

SPLIT = "test"  # the split of every suite member but msmarco-dev-bm25-top100 (dev)
SUITES: dict[str, tuple[str, ...]] = {"beir": _BEIR_SUITE, "bright": BRIGHT_SUBSETS, "dl": _DL_SUITE}
# extra registered members a suite accepts by name beyond its default list
_SUITE_EXTRA: dict[str, tuple[str, ...]] = {
    "beir": tuple(n for n in DATASETS if n.startswith("cqadupstack/")),
    "dl": ("msmarco-dev-bm25-top100",),
}


@dataclass(frozen=True)
class SuiteEntry:
    """One dataset of a suite: how to resolve it and which split / first-stage run it is scored with."""

    name: str
    dataset: Dataset
    split: str = "test"
    first_stage: str | None = None


# ---------------------------------------------------------------- BRIGHT


def _bright_source_dir(data_root: str | Path | None) -> Path | None:
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    for name in ("bright", "BRIGHT"):
        if (root / name).is_dir():
            return root / name
    return None


#: one source row: where it comes from (a parquet file, or the hub's config/subset), its 1-based number, its fields
_Row = tuple[str, int, dict[str, Any]]


def _iter_local(source: Path, config: str, subset: str) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    files = sorted((source / config).glob(f"{subset}-*.parquet"))
    if not files:
        raise DatasetNotFoundError(
            f"BRIGHT folder {source}: no {config}/{subset}-*.parquet (expected the xlangai/BRIGHT layout: "
            f"documents/, long_documents/, examples/ with one parquet file set per subset)"
        )
    for f in files:
        for i, row in enumerate(pq.read_table(f).to_pylist(), 1):
            yield str(f), i, row


def _iter_hub(config: str, subset: str) -> Iterator[_Row]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is in the train extra
        raise DatasetNotFoundError(f"loading BRIGHT from the hub needs `datasets` ({e})") from None
    try:
        ds = datasets.load_dataset(BRIGHT_HUB_ID, config, split=subset)
    except Exception as e:  # noqa: BLE001 - offline, unknown split...: say where to put the files instead
        raise DatasetNotFoundError(
            f"BRIGHT {config}/{subset}: could not load {BRIGHT_HUB_ID} from the hub ({type(e).__name__}: {e}). "
            f"Offline, put the dataset's files under <data-root>/bright (documents/, examples/, long_documents/)."
        ) from None
    for i, row in enumerate(ds, 1):
        yield f"{BRIGHT_HUB_ID} {config}/{subset}", i, row


def _bad_row(row: _Row, subset: str, message: str) -> DataFormatError:
    """Malformed BRIGHT data: an error naming the subset and the file (and row) it is in, never a "not found" (a
    suite skips an absent subset only)."""
    return DataFormatError(row[0], None, f"BRIGHT {subset}, row {row[1]}: {message}")


def _field(row: _Row, key: str, subset: str) -> Any:
    fields = row[2]
    if key not in fields or fields[key] is None:
        raise _bad_row(row, subset, f"row without {key!r} (fields: {sorted(fields)})")
    return fields[key]


def bright_dataset(
    subset: str,
    source: str | Path | None = None,
    long_documents: bool = False,
    query_config: str = "examples",
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """One BRIGHT subset as a BEIR folder (converted once and cached), with its excluded ids.

    ``source``: a folder in the hub layout; default ``<data_root>/bright``, else the hub (``xlangai/BRIGHT``).
    ``query_config``: ``examples`` (the original queries) or a reasoning-augmented config such as ``gpt4_reason``.
    """
    if subset not in BRIGHT_SUBSETS:
        raise ConfigError(f"unknown BRIGHT subset {subset!r}; subsets: {', '.join(BRIGHT_SUBSETS)}")
    if long_documents and subset not in BRIGHT_LONG_SUBSETS:
        raise ConfigError(f"BRIGHT {subset!r} has no long_documents; those with: {', '.join(BRIGHT_LONG_SUBSETS)}")
    src = Path(source).expanduser() if source is not None else _bright_source_dir(data_root)
    doc_config = "long_documents" if long_documents else "documents"
    if src is not None:
        stamp_files = sorted(
            str(p) + f":{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for cfg in (doc_config, query_config)
            for p in (src / cfg).glob(f"{subset}-*.parquet")
        )
        stamp = {"source": str(src.resolve()), "files": stamp_files}
    else:
        stamp = {"source": f"hub:{BRIGHT_HUB_ID}"}
    stamp.update(subset=subset, documents=doc_config, queries=query_config, format=1)
    name = f"bright/{subset}" + ("-long" if long_documents else "") + ("" if query_config == "examples" else f"-{query_config}")
    base = Path(cache_dir) if cache_dir is not None else cache_root() / "bright"
    folder = base / name.split("/", 1)[1]
    current = json.loads((folder / "source.json").read_text()) if (folder / "source.json").exists() else None
    if current != stamp or not (folder / "DONE").exists():
        rows_docs = _iter_local(src, doc_config, subset) if src is not None else _iter_hub(doc_config, subset)
        rows_q = list(_iter_local(src, query_config, subset) if src is not None else _iter_hub(query_config, subset))
        _write_bright_folder(folder, rows_docs, rows_q, long_documents, subset)
        write_json(stamp, folder / "source.json")
        (folder / "DONE").write_text("ok\n", encoding="utf-8")
    return Dataset(folder, name=name)


def _write_bright_folder(
    folder: Path, docs: Iterator[_Row], examples: list[_Row], long_documents: bool, subset: str
) -> None:
    gold_key = "gold_ids_long" if long_documents else "gold_ids"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(folder.parent, prefix=".bright-")
    try:
        (tmp / "qrels").mkdir()
        (tmp / "excluded").mkdir()
        doc_ids: set[str] = set()
        docs_from: set[str] = set()
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for row in docs:
                did = str(_field(row, "id", subset))
                if did in doc_ids:
                    raise _bad_row(row, subset, f"duplicate document id {did!r}")
                doc_ids.add(did)
                docs_from.add(row[0])
                f.write(json.dumps({"_id": did, "title": "", "text": str(_field(row, "content", subset))}) + "\n")
        with (
            open(tmp / "queries.jsonl", "w", encoding="utf-8") as fq,
            open(tmp / "qrels" / "test.tsv", "w", encoding="utf-8") as fr,
            open(tmp / "excluded" / "test.tsv", "w", encoding="utf-8") as fx,
        ):
            fr.write("query-id\tcorpus-id\tscore\n")
            for row in examples:
                qid = str(_field(row, "id", subset))
                fq.write(json.dumps({"_id": qid, "text": str(_field(row, "query", subset))}) + "\n")
                gold = [str(g) for g in _field(row, gold_key, subset)]
                unknown = [g for g in gold if g not in doc_ids]
                if unknown:
                    raise _bad_row(row, subset, f"query {qid} has {gold_key} not in the documents "
                                                f"({', '.join(sorted(docs_from)) or 'none'}): {unknown[:3]}")
                fr.writelines(f"{qid}\t{g}\t1\n" for g in dict.fromkeys(gold))
                for x in dict.fromkeys(str(e) for e in (row[2].get("excluded_ids") or [])):
                    if x != "N/A" and x not in gold:
                        fx.write(f"{qid}\t{x}\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- suites


def _find_run_file(ds: Dataset) -> str | None:
    for name in RUN_FILES:
        if (ds.root / name).exists():
            return str(ds.root / name)
    return None


def suite_entries(
    suite: str,
    names: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    bright_source: str | Path | None = None,
    long_documents: bool = False,
    missing: list[str] | None = None,
) -> list[SuiteEntry]:
    """Resolve a suite's datasets; unknown names raise. Without ``names`` (the suite's default list; with
    ``long_documents`` the BRIGHT subsets that have them) a member that is not found is skipped and its name appended
    to ``missing`` (none found at all raises); a member named in ``names`` must be found. A member whose files are
    there but malformed is an error, not a missing member."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; suites: {', '.join(SUITES)}")
    if long_documents and suite != "bright":
        raise ConfigError("--long-documents applies to the bright suite only")
    if bright_source is not None and suite != "bright":
        raise ConfigError(f"--bright-source applies to the bright suite only, not {suite}: drop it")
    allowed = SUITES[suite] + _SUITE_EXTRA.get(suite, ())
    chosen = list(names) if names else list(BRIGHT_LONG_SUBSETS if long_documents else SUITES[suite])
    bad = [n for n in chosen if n not in allowed]
    if bad:
        raise ConfigError(f"suite {suite!r} has no dataset(s) {bad}; its datasets: {', '.join(allowed)}")
    short = [n for n in chosen if long_documents and n not in BRIGHT_LONG_SUBSETS]
    if short:  # before any subset is converted
        raise ConfigError(f"--long-documents: BRIGHT {', '.join(short)} ha{'s' if len(short) == 1 else 've'} no "
                          f"long_documents; those with: {', '.join(BRIGHT_LONG_SUBSETS)} (the default without "
                          "--datasets): drop the others from --datasets")
    out = []
    skipped: list[tuple[str, str]] = []
    for n in chosen:
        try:
            if suite == "bright":
                out.append(SuiteEntry(n, bright_dataset(n, bright_source, long_documents, data_root=data_root)))
                continue
            ds = resolve_dataset(n, data_root)
        except DatasetNotFoundError as e:
            if names:
                raise
            skipped.append((n, str(e)))
            continue
        split = "dev" if n == "msmarco-dev-bm25-top100" else SPLIT
        out.append(SuiteEntry(n, ds, split, _find_run_file(ds) if suite == "dl" else None))
    if not out:
        raise DatasetNotFoundError(f"suite {suite!r}: none of its datasets was found; first: {skipped[0][1]}")
    if missing is not None:
        missing.extend(n for n, _ in skipped)
    return out


def summarize(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean of every measure measured on all the datasets (each dataset weighs the same, as the papers report);
    ``not_in_mean`` lists the measures some datasets lack (another name, such as ``RR@10`` beside ``RR(rel=2)@10``)."""
    measures = list(dict.fromkeys(m for d in per_dataset.values() for m in d["metrics"]))
    common = [m for m in measures if all(m in d["metrics"] for d in per_dataset.values())]
    mean = {m: sum(d["metrics"][m] for d in per_dataset.values()) / len(per_dataset) for m in common}
    return {
        "datasets": {n: {"metrics": d["metrics"], "num_queries": d["num_queries"]} for n, d in per_dataset.items()},
        "mean": mean,
        "not_in_mean": [m for m in measures if m not in mean],
        "num_datasets": len(per_dataset),
    }


def _render_summary(suite: str, summary: dict[str, Any]) -> str:
    """The summary table: every measure of any dataset (the mean's first), ``—`` where a dataset or the mean has
    none, and a line naming the measures left out of the mean."""
    others = list(summary.get("not_in_mean", []))
    measures = list(summary["mean"]) + others
    lines = [f"# Suite `{suite}`", "", "| dataset | queries | " + " | ".join(measures) + " |",
             "|---|---|" + "---|" * len(measures)]
    for n, d in summary["datasets"].items():
        lines.append(f"| {n} | {d['num_queries']} | "
                     + " | ".join(f"{d['metrics'][m]:.4f}" if m in d["metrics"] else "—" for m in measures) + " |")
    lines.append(f"| **mean ({summary['num_datasets']} datasets)** | | "
                 + " | ".join(f"**{summary['mean'][m]:.4f}**" if m in summary["mean"] else "—" for m in measures)
                 + " |")
    lines += ["", "The mean weighs every dataset equally (macro average over datasets)."
              + (f" Not in the mean (not measured on every dataset): {', '.join(others)}." if others else ""), ""]
    return "\n".join(lines)


def _member_folder(name: str) -> str:
    return name.replace("/", "__")


def _other_members(out: Path, suite: str, entries: Sequence[SuiteEntry]) -> tuple[list[str], bool]:
    """Results in ``out`` of suite members this run does not include (an earlier run of more members, or of another
    suite) would sit beside this run's with a complete-looking ``metrics.json``: their folders, and whether ``out``
    holds an earlier suite run's ``summary.json``. Without one, not knowing where they come from, the run is refused
    here, before any work; with one, :func:`_clear_other_members` removes them once this run has written a result."""
    summary_file = out / "summary.json"
    earlier = False
    if summary_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(summary_file.read_text(encoding="utf-8"))
            earlier = isinstance(data, dict) and "suite" in data
    names = {n for members in SUITES.values() for n in members} | {n for x in _SUITE_EXTRA.values() for n in x}
    ours = {_member_folder(e.name) for e in entries}
    others = sorted(f for f in {_member_folder(n) for n in names} - ours
                    if any((out / f / name).is_file() for name in OUTPUT_FILES))
    if others and not earlier:
        raise ConfigError(f"--output {out} holds results of {', '.join(others)} (e.g. {out / others[0]}/metrics.json) "
                          f"that this {suite} suite run does not include, and no summary.json of an earlier suite "
                          "run: give another --output folder, or move those folders away")
    return others, earlier


def _clear_other_members(out: Path, suite: str, others: Sequence[str], earlier: bool) -> None:
    """Remove the eval files of ``others`` (:func:`_other_members`; logged; files eval does not write are kept, as
    ``rerank eval`` keeps them) and an earlier run's ``summary.json`` / ``summary.md`` (written again, last, once every
    member is done). Called once this run's first member is written (when ``resume`` keeps every member: before its
    summary is written): a run that fails before (the reranker does not load, the first member it runs fails) leaves
    the earlier run as it was, members kept by ``resume`` included."""
    for f in others:
        (out / f / "metrics.json").unlink(missing_ok=True)  # first: no complete-looking result is left half-removed
        for name in OUTPUT_FILES:
            (out / f / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept when it holds files of the user's
            (out / f).rmdir()
    if others:
        log.warning("suite %s: removed the results of %s from %s (an earlier suite run's; this run does not include "
                    "them)", suite, ", ".join(others), out)
    if earlier:
        (out / "summary.json").unlink(missing_ok=True)
        (out / "summary.md").unlink(missing_ok=True)


def _check_members(entries: Sequence[SuiteEntry], base: EvalConfig) -> None:
    """Before the reranker loads and the first member runs: every member has its queries, its split's qrels, its
    corpus and, without a retriever, its own first-stage run (the files' contents are read when its turn comes)."""
    for e in entries:
        if base.retriever is None and e.first_stage is None:
            raise ConfigError(f"{e.name}: no first-stage run in {e.dataset.root} ({', '.join(RUN_FILES)}); "
                              f"give --retriever")
        try:
            e.dataset.queries_path  # noqa: B018 - raises when absent
            e.dataset.qrels_path(e.split)
            e.dataset.corpus_path  # noqa: B018
        except FileNotFoundError as err:
            raise ConfigError(f"suite member {e.name}: {err}") from None


#: EvalConfig fields ``--resume`` does not compare (data_root acts through the dataset folder, compared resolved)
# none changes results: where they go, how work is spread (workers) or logged, the LLM cache (it replays same answers)
_NOT_SETTINGS = ("output", "data_root", "workers", "log_llm_io", "llm_cache")


def _member_config(base: EvalConfig, e: SuiteEntry, out: Path) -> EvalConfig:
    """The config member ``e`` is evaluated with: its dataset folder, split, first-stage run and result folder."""
    first_stage = e.first_stage if base.retriever is None else None
    return replace(base, dataset=str(e.dataset.root), split=e.split, first_stage=first_stage,
                   output=str(out / _member_folder(e.name)))


def _settings(config: dict[str, Any], dataset_root: str) -> dict[str, Any]:
    """A member's config as ``metrics.json`` records it, as ``--resume`` compares it: without :data:`_NOT_SETTINGS`,
    the dataset as its resolved folder, a folder's own run as its path in that folder, and model and index paths
    resolved (:func:`~rerank.utils.files.resolved_path`), however each was spelt, and the reranker and retriever
    options under the token limits' current names (a member run before ``doc_max_length`` became ``max_doc_tokens``)."""
    from rerank.retrieval.index import upgrade_encoder_keys

    out = {k: v for k, v in config.items() if k not in _NOT_SETTINGS}
    out["dataset"] = dataset_root
    if config.get("first_stage") is not None and config.get("dataset"):
        out["first_stage"] = os.path.relpath(config["first_stage"], config["dataset"])
    out["model"] = resolved_path(config.get("model"))
    if isinstance(config.get("retriever_options"), dict):
        out["retriever_options"] = {k: resolved_path(v) if k in ("model", "index") else v
                                    for k, v in upgrade_encoder_keys(config["retriever_options"]).items()}
    if isinstance(config.get("reranker_options"), dict):
        out["reranker_options"] = upgrade_encoder_keys(config["reranker_options"])
    return out


def _ranker(desc: dict[str, Any] | None, model: str | None = None) -> dict[str, Any] | None:
    """What identifies a reranker in its description (``metrics.json``'s ``reranker``): method, model, typed config
    (not its counters, the token limits under their current names); ``model`` stands in where the description names
    none."""
    from rerank.retrieval.index import upgrade_encoder_keys

    if desc is None:
        return None
    own = described_model(desc)[0]
    config = desc.get("config")
    return json.loads(json.dumps({"method": desc.get("method"), "model": own if own is not None else model,
                                  "config": upgrade_encoder_keys(config) if isinstance(config, dict) else config}))


def _complete_run(folder: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of a complete run in a member's folder (written last, so its presence marks one), or None
    (none there, or one that does not parse as a run's: the member is run again, which replaces it)."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("%s does not parse (%s): that member is run again", path, e)
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("config", "metrics")) \
            or "num_queries" not in data:
        log.warning("%s is not a rerank eval result (no config, metrics, num_queries): that member is run again", path)
        return None
    return data


def _kept_members(out: Path, entries: Sequence[SuiteEntry], base: EvalConfig,
                  reranker: Reranker | None) -> dict[str, dict[str, Any]]:
    """``--resume``: the recorded ``metrics.json`` of every member whose folder holds a complete run with this run's
    settings (its EvalConfig but :data:`_NOT_SETTINGS`, the reranker and retriever options as the typed configs they
    build (:func:`_option_differences`), a given reranker's method, model and config, and the content of the prompt
    template the reranker renders where that can be told without loading it (:func:`_template_difference`)) and
    whose inputs (:func:`_member_inputs`) were not modified after it. A complete run under other settings or on
    modified inputs is a :class:`ConfigError` naming the members and what differs; before any work."""
    from rerank.trainers.resume import config_differences  # imports transformers: only when resuming

    given = None
    if reranker is not None:
        given = _ranker(reranker.describe(), base.model)
    template = getattr(reranker, "template", None) if reranker is not None else reranker_template(base)
    told = reranker is not None or template is not None  # else the head's template shows only once it loads
    kept: dict[str, dict[str, Any]] = {}
    differ: dict[str, list[str]] = {}
    for e in entries:
        recorded = _complete_run(out / _member_folder(e.name))
        if recorded is None:
            continue
        cfg = _member_config(base, e, out)
        old = _settings(recorded["config"], str(recorded.get("dataset_root") or recorded["config"].get("dataset")))
        new = _settings(json.loads(json.dumps(to_dict(cfg))), str(e.dataset.root.resolve()))
        diffs = _option_differences(old, new, base, reranker, template is not None) + config_differences(old, new, cfg)
        if reranker is not None or base.reranker is None:  # else the config names the reranker it loads
            was = _ranker(recorded.get("reranker"))
            if was is None or given is None:
                if was != given:
                    diffs.append(f"reranker: {_ranker_name(was)} -> {_ranker_name(given)}")
            else:
                diffs += config_differences(was, given, None, ("reranker",))
        if told:
            diffs += _template_difference(recorded, reranker if reranker is not None else template)
        changed = _changed_since(_member_inputs(e, cfg), out / _member_folder(e.name) / "metrics.json")
        if changed is not None:
            diffs.append(f"{changed} was modified after that run")
        if diffs:
            differ[e.name] = diffs
        else:
            kept[e.name] = recorded
    if differ:
        name, diffs = next(iter(differ.items()))
        also = f" (and so do {', '.join(list(differ)[1:])})" if len(differ) > 1 else ""
        raise ConfigError(f"--resume: {out / _member_folder(name)} holds a complete run of {name} under other settings "
                          f"(recorded -> this run: {'; '.join(diffs[:3])}{'; …' if len(diffs) > 3 else ''}){also}: "
                          "drop --resume to evaluate every member again, give another --output, or remove those "
                          "member folders to evaluate only them again")
    return kept


def _option_differences(old: dict[str, Any], new: dict[str, Any], base: EvalConfig,
                        reranker: Reranker | None, template_by_content: bool = False) -> list[str]:
    """``name.key: old -> new`` for each reranker or retriever option whose value differs between a member's recorded
    settings and this run's, each side read as the typed config it builds (:func:`_typed_options`), so an option
    given at its default (or a trained model's value) is the option left out; ``absent`` shows a side that does not
    give it. Both blocks are taken out of ``old`` and ``new`` (what :func:`config_differences` compares).
    ``template_by_content``: the reranker's ``template`` option is not compared (its content is:
    :func:`_template_difference`), so a template named, given by path or left to the head's default is one template."""
    out = []
    for name in ("reranker_options", "retriever_options"):
        if not (isinstance(old.get(name), dict) and isinstance(new.get(name), dict)):
            continue  # a record without the block: config_differences compares it with the field's default
        was, now = old.pop(name), new.pop(name)
        typed = _typed_options(name, base, reranker)
        if typed is not None:
            try:
                was_typed, now_typed = typed(was), typed(now)
            except (RerankError, TypeError, ValueError):  # a record no config builds now: compared as given
                typed = None
        if typed is None:
            was_typed, now_typed = was, now
        if name == "reranker_options" and template_by_content:
            was_typed, now_typed, was, now = ({k: v for k, v in d.items() if k != "template"} if isinstance(d, dict)
                                              else d for d in (was_typed, now_typed, was, now))
        out += _differing((name,), was_typed, now_typed, was, now, _result_neutral(name, base))
    return out


def _typed_options(name: str, base: EvalConfig,
                   reranker: Reranker | None) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """How ``base``'s ``name`` block (``reranker_options`` or ``retriever_options``) becomes the config the reranker
    or retriever builds from it, every field filled (over a trained model folder's recorded options, as
    :meth:`Reranker.load` layers them); None when no typed config can be told (an unknown name, a class without one)."""
    from rerank.config import from_dict

    trained: dict[str, Any] = {}
    try:
        if name == "retriever_options":
            from rerank.retrieval.base import retriever_config_class

            config_class = retriever_config_class(base.retriever) if base.retriever is not None else None
        elif reranker is not None:
            config_class = type(reranker).config_class
        else:
            config_class, trained = _reranker_config(base)
    except RerankError:
        return None
    if config_class is None:
        return None

    def typed(options: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(to_dict(from_dict(config_class, {**trained, **options}, where=name))))
        if name == "retriever_options":
            out = {k: resolved_path(v) if k in ("model", "index") else v for k, v in out.items()}
        return out
    return typed


def _reranker_config(base: EvalConfig) -> tuple[type | None, dict[str, Any]]:
    """The typed config class of the reranker ``base`` loads and the options its trained model folder records
    (:func:`_reranker_class`)."""
    cls, trained = _reranker_class(base)
    return (None if cls is None else cls.config_class), trained


def _reranker_class(base: EvalConfig) -> tuple[type[Reranker] | None, dict[str, Any]]:
    """The reranker class ``base`` loads and the options its trained model folder records (as :meth:`Reranker.load`
    finds them: ``--reranker`` a registered method or a trained folder, ``--model`` a folder)."""
    from rerank.heads.registry import available_rerankers, get_reranker_class, recorded_reranker_class
    from rerank.methods.record import read_record

    method, model = base.reranker, base.model
    if method is None:
        return None, {}
    if model is None and method not in available_rerankers() and read_record(method):  # a trained folder, as load
        method, model = None, method
    record = read_record(model)
    trained: dict[str, Any] = {}
    from_record = False  # a name a model folder records is looked up as a plain name, never imported as module:Class
    if record is not None and record.get("kind") == "reranker":
        from_record = method is None
        method, trained = method or record.get("method"), dict(record.get("options") or {})
    if not isinstance(method, str):
        return None, {}
    return (recorded_reranker_class(method, model) if from_record else get_reranker_class(method)), trained


def reranker_template(base: EvalConfig) -> PromptTemplate | None:
    """The prompt template the reranker of ``base`` renders, found as its head finds it but without loading a model:
    the ``template`` option (over a trained model folder's recorded one), else the head's default for these options,
    with the options standing in for template fields (``template_texts``, e.g. ``instruction``) applied. None without
    a reranker, for a head whose config takes no template (a head without prompts, or a user head that sets its own
    when it loads), and where the head's default cannot be told without loading it
    (:meth:`~rerank.heads.base.Reranker.configured_template`)."""
    from rerank.config import from_dict

    cls, trained = _reranker_class(base)
    config_class = getattr(cls, "config_class", None)
    if cls is None or not dataclasses.is_dataclass(config_class) \
            or "template" not in {f.name for f in dataclasses.fields(config_class)}:
        return None
    return cls.configured_template(from_dict(config_class, {**trained, **base.reranker_options},
                                             where=f"{base.reranker} options"))


def _result_neutral(name: str, base: EvalConfig) -> set[tuple[str, ...]]:
    """Option paths within ``name`` that cannot change a result, so ``--resume`` does not compare them: the
    retriever's progress-bar switch (:data:`~rerank.retrieval.base.PROGRESS_OPTIONS`) and the LLM backend's options
    its cached answers are not keyed by (``cache_ignored_options``: the openai backend's timeout, retries, ...)."""
    if name == "retriever_options":
        from rerank.retrieval.base import PROGRESS_OPTIONS

        key = PROGRESS_OPTIONS.get(base.retriever or "")
        return {(key,)} if key else set()
    from rerank.backends.registry import available_backends, backend_class

    if base.backend not in available_backends():
        return set()
    return {("backend_options", k) for k in getattr(backend_class(base.backend), "cache_ignored_options", ())}


_ABSENT = object()


def _differing(path: tuple[str, ...], old: Any, new: Any, old_given: Any, new_given: Any,
               neutral: set[tuple[str, ...]]) -> list[str]:
    """``a.b: old -> new`` for each value that differs between typed ``old`` and ``new`` (nested mappings key by key,
    a key on one side only included), ``absent`` where the side as given (``*_given``) lacks the key."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if (*path[1:], key) in neutral:
                continue
            sub = [x.get(key, _ABSENT) if isinstance(x, dict) else _ABSENT for x in (old, new, old_given, new_given)]
            out += _differing((*path, str(key)), *sub, neutral)
        return out
    if old == new:
        return []
    shown = ["absent" if value is _ABSENT or given is _ABSENT else json.dumps(value)
             for value, given in ((old, old_given), (new, new_given))]
    return [f"{'.'.join(path)}: {shown[0]} -> {shown[1]}"]


def _template_difference(recorded: dict[str, Any], source: Reranker | PromptTemplate | None) -> list[str]:
    """``template: old -> new`` when a member's recorded prompt template (its ``provenance.template_input``) is not, by
    content (:meth:`~rerank.prompts.PromptTemplate.sha256`), the one this run renders: ``source``, the template found
    from the options (:func:`reranker_template`) or a given reranker (its own). A record without one differs from a
    template: it was written before rerank recorded it, so its content cannot be told. A template found from the
    options is not compared with a record whose head's probe did not tell its template (``probe: differs``, a head
    that sets its own template when it loads): what the options tell is not what that head renders."""
    was = (recorded.get("provenance") or {}).get("template_input")
    if isinstance(source, PromptTemplate) and isinstance(was, dict) and was.get("probe") == "differs":
        return []
    now = template_input(source if isinstance(source, PromptTemplate) else getattr(source, "template", None))
    was_print = was.get("fingerprint") if isinstance(was, dict) else None
    if was_print == (now or {}).get("fingerprint"):
        return []
    shown = now["fingerprint"][:19] if now else "none"
    if was_print is None:
        return [f"template: not recorded -> {shown} (a run before rerank recorded its template)"]
    return [f"template: {str(was_print)[:19]} -> {shown} (its content differs)"]


def _member_inputs(e: SuiteEntry, cfg: EvalConfig) -> list[Path]:
    """The files and folders a member's result was computed from, that a path names here: its dataset's corpus,
    queries, qrels and first-stage run, the reranker's model and the retriever's model or index. The prompt template
    is compared by content (:func:`_template_difference`), not by its file's time."""
    paths = [e.dataset.corpus_path, e.dataset.qrels_path(e.split)]  # both checked present (_check_members)
    with contextlib.suppress(FileNotFoundError):
        paths.append(e.dataset.queries_path)
    named = [cfg.first_stage, cfg.model, *(cfg.retriever_options.get(k) for k in ("model", "index"))]
    return paths + [Path(os.path.expanduser(p)) for p in named if isinstance(p, str) and p]


def _changed_since(paths: Sequence[Path], result: Path) -> str | None:
    """The first of ``paths`` (a file, or a file under a folder) modified after ``result`` was written, or None: a
    model trained again in place, or a dataset file replaced, since a member was evaluated."""
    written = result.stat().st_mtime_ns
    for path in paths:
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
        for f in files:
            if f.stat().st_mtime_ns > written:
                return str(f)
    return None


def _ranker_name(ranker: dict[str, Any] | None) -> str:
    """A reranker's identity (:func:`_ranker`) in a message: its method and model, or ``none``."""
    return "none" if ranker is None else f"{ranker['method']} ({ranker['model']})"


def _log_kept(suite: str, entries: Sequence[SuiteEntry], kept: dict[str, dict[str, Any]], out: Path) -> None:
    """One line: which members ``--resume`` keeps and which it runs."""
    rest = [e.name for e in entries if e.name not in kept]
    if not kept:
        log.info("suite %s: --resume: no member folder in %s holds a complete run with these settings; running all "
                 "%d members", suite, out, len(entries))
        return
    log.info("suite %s: --resume keeps %d of %d members (complete runs with these settings in %s: %s); %s", suite,
             len(kept), len(entries), out, ", ".join(kept), f"running {', '.join(rest)}" if rest else "none to run")


def _member_failed(err: BaseException, suite: str, name: str, out: Path, finished: Sequence[str]) -> None:
    """Say which member failed and that ``--resume`` continues from it: in a :class:`RerankError`'s own one-line
    message (the CLI prints it), else in a log line, the exception going on as it is. Finished members' results stay."""
    done = (f"the results of the {len(finished)} finished member{'s' if len(finished) > 1 else ''} stay in {out}"
            if finished else "no member has finished")
    hint = f"rerun with --resume to continue from {name} ({done})"
    if isinstance(err, RerankError) and len(err.args) == 1:
        err.args = (f"suite {suite}: {name} failed: {err.args[0]}; {hint}",)
    else:
        log.error("suite %s: %s did not finish (%s); %s", suite, name, type(err).__name__, hint)


def run_suite(
    suite: str,
    base: EvalConfig,
    output: str | Path,
    names: Sequence[str] | None = None,
    reranker: Reranker | None = None,
    bright_source: str | Path | None = None,
    long_documents: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Evaluate ``base`` (retriever / reranker settings) on every dataset of ``suite``; writes ``summary.json/.md``.

    The reranker is loaded once for every dataset as ``rerank eval`` loads it (its LLM calls cached and logged as
    ``base`` says; with ``base.workers`` > 1 in that many processes); each dataset's ``metrics.json`` counts that
    dataset's outputs, forward passes and cache hits only. Each dataset is scored on its own split, so ``base.split``
    must be left at its default.

    ``resume``: keep each member whose folder in ``output`` holds a complete run with these settings (its recorded
    metrics join the summary; a complete run under other settings is refused before any work) and run the others;
    the reranker loads only when one is left to run."""
    if base.first_stage is not None:
        raise ConfigError("a suite takes --retriever (or, for dl, each folder's own run), not one --first-stage file")
    if changed_options(base, ("split",)):  # each member is scored on its own split
        raise ConfigError(f"split {base.split!r} does not apply to a suite: it scores each dataset on its own split "
                          f"(test; msmarco-dev-bm25-top100: dev); drop split")
    if base.retriever is None and base.retriever_options:
        raise ConfigError("retriever options configure a retriever: without one a suite reranks each dataset "
                          "folder's own run; give --retriever or drop them")
    check_given_reranker(base, reranker)
    check_llm_io(base, reranker)  # before the reranker loads
    missing: list[str] = []
    entries = suite_entries(suite, names, base.data_root, bright_source, long_documents, missing)
    if missing:
        log.warning("suite %s: %s not found under the data root, skipped (name them with --datasets to require them)",
                    suite, ", ".join(missing))
    _check_members(entries, base)
    out = Path(output)
    others, earlier = _other_members(out, suite, entries)  # refused before any work
    kept = _kept_members(out, entries, base, reranker) if resume else {}
    if resume:
        _log_kept(suite, entries, kept, out)
    results: dict[str, dict[str, Any]] = {}
    cleared = False
    with contextlib.ExitStack() as stack:
        shared: Reranker | WorkerPool | None = reranker
        if reranker is None and base.reranker is not None and len(kept) < len(entries):  # loaded once, as eval does
            shared = stack.enter_context(reranker_pool(base)) if base.workers > 1 else load_reranker(base)
        for e in entries:
            if e.name in kept:
                results[e.name] = kept[e.name]
                continue
            log.info("suite %s: %s", suite, e.name)
            try:
                results[e.name] = run_eval(_member_config(base, e, out), reranker=shared, progress=progress)
            except BaseException as err:
                _member_failed(err, suite, e.name, out, list(results))
                raise
            if not cleared:  # this run has written a result: the earlier run's other members go
                _clear_other_members(out, suite, others, earlier)
                cleared = True
    if not cleared:  # every member kept: the summary is this run's first result
        _clear_other_members(out, suite, others, earlier)
    summary = {"suite": suite, **summarize(results), "missing": missing}
    write_json(summary, out / "summary.json")
    with atomic_write(out / "summary.md") as f:
        f.write(_render_summary(suite, summary))
    return summary
