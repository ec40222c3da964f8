"""``--dataset irds:ID``: any ir_datasets dataset (https://ir-datasets.com), converted once into a cached BEIR folder.

``resolve_dataset("irds:msmarco-passage/trec-dl-2019/judged")`` loads the dataset with ``ir_datasets`` (installed with
``pip install 'rerank[irds]'``; it downloads its source files itself into its own cache, ``$IR_DATASETS_HOME``,
default ``~/.ir_datasets``) and writes ``<data root>/irds/<ID, '/' as '__'>``:

- ``queries.jsonl``: every query's ``default_text()`` (for TREC topics, the title);
- ``qrels/test.tsv``: the judgements, integer grades. The split is always ``test`` (an ir_datasets id names its split
  itself), which is ``rerank eval``'s default ``--split``; elsewhere (training, recipes) pass split ``test``;
- with scoreddocs (the dataset's own first-stage run), the reranking form of ``dl19-bm25-top100``: ``corpus.jsonl``
  holds the documents the scoreddocs name, and ``run.trec`` the scoreddocs (ranked by score, ties as trec_eval orders
  them), which ``rerank eval`` reranks when given no ``--retriever``; without scoreddocs, the whole corpus;
- ``irds.json``: the id, the ir_datasets version, the form and the counts; its presence marks a complete folder.

A document's ``title`` is its ``title`` field (else empty) and its ``text`` its ``text`` field, else its
``default_text()`` less a leading copy of the title when ``default_text()`` is the title, a separator and the rest
(``msmarco-document``'s is ``title body``: the title is not read twice). Query and document ids holding whitespace
are refused (the qrels and TREC run files cannot hold them), as are ir_datasets' failures to download a file or
import an optional package, each as a one-line error. The folder is built beside its final place and renamed into it,
so an interrupted conversion leaves nothing half-written; later calls read it without ir_datasets. Delete the folder to
convert again (a new ir_datasets version).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rerank.data.io import check_ranked, write_jsonl, write_run
from rerank.data.registry import IGNORE_IDENTICAL_IDS, DatasetInfo
from rerank.errors import ConfigError, DatasetNotFoundError
from rerank.types import sort_ranking
from rerank.utils.files import publish_dir, temp_dir, write_json

__all__ = ["MANIFEST", "PREFIX", "SPLIT", "converted_info", "irds_folder", "load_irds"]

log = logging.getLogger(__name__)

PREFIX = "irds:"
#: the file that marks a complete converted folder
MANIFEST = "irds.json"
#: the one qrels split a converted folder holds
SPLIT = "test"
INSTALL = "pip install 'rerank[irds]'"
CATALOGUE = "https://ir-datasets.com"
#: an id holding any of these cannot be written to a qrels or TREC run file (whitespace-separated columns)
_WHITESPACE = re.compile(r"\s")


def irds_folder(dataset_id: str, data_root: Path) -> Path:
    """Where ``irds:dataset_id`` is cached under ``data_root``; an id that could leave that folder is refused."""
    segments = dataset_id.split("/")
    if not dataset_id or any(s in ("", ".", "..") for s in segments) or "\\" in dataset_id or "\0" in dataset_id:
        raise ConfigError(f"dataset {PREFIX}{dataset_id}: not an ir_datasets id (like "
                          f"msmarco-passage/trec-dl-2019/judged; the catalogue: {CATALOGUE})")
    return data_root / "irds" / dataset_id.replace("/", "__")


def converted_info(folder: Path) -> tuple[str, DatasetInfo] | None:
    """The ``irds:ID`` name and judging conventions of a converted folder, None when ``folder`` is not one."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    name = PREFIX + str(manifest["id"])
    parts = str(manifest["id"]).split("/")
    beir_rule = len(parts) > 1 and parts[0] == "beir" and parts[1] in IGNORE_IDENTICAL_IDS  # BEIR's own convention
    return name, DatasetInfo(name=name, splits=(SPLIT,), rel_level=int(manifest.get("rel_level", 1)),
                             ignore_identical_ids=beir_rule,
                             description=f"ir_datasets {manifest['id']}, converted by rerank ({manifest['form']})")


def load_irds(dataset_id: str, data_root: Path, convert: bool = True) -> tuple[Path, str, DatasetInfo]:
    """The cached folder of ``irds:dataset_id`` (converted now when absent and ``convert``), its name and info."""
    folder = irds_folder(dataset_id, data_root)
    if folder.is_dir():
        found = converted_info(folder)
        if found is None:
            raise DatasetNotFoundError(f"{folder} exists but holds no {MANIFEST} (not a converted {PREFIX} dataset): "
                                       f"remove it to convert {PREFIX}{dataset_id} there")
        return folder, *found
    if not convert:
        raise DatasetNotFoundError(f"dataset {PREFIX}{dataset_id} is not converted yet (no {folder}), and downloads "
                                   "are off: resolve it with downloads on once")
    _convert(_load(dataset_id), dataset_id, folder)
    found = converted_info(folder)
    assert found is not None  # _convert published it
    return folder, *found


def _load(dataset_id: str) -> Any:
    """The ir_datasets dataset ``dataset_id``, checked to have what an evaluation needs; one-line errors otherwise."""
    try:
        import ir_datasets
    except ImportError:
        raise ConfigError(f"dataset {PREFIX}{dataset_id} needs ir_datasets: {INSTALL}") from None
    try:
        with _irds_errors(dataset_id):
            ds = ir_datasets.load(dataset_id)
    except KeyError:
        raise DatasetNotFoundError(f"dataset {PREFIX}{dataset_id}: ir_datasets has no dataset {dataset_id!r}; "
                                   f"the ids are listed at {CATALOGUE}") from None
    with _irds_errors(dataset_id):
        missing = [what for what, has in (("queries", ds.has_queries()), ("qrels", ds.has_qrels()),
                                          ("documents", ds.has_docs())) if not has]
    if missing:
        raise ConfigError(f"dataset {PREFIX}{dataset_id} has no {' and no '.join(missing)}: an evaluation needs "
                          f"queries, qrels and documents; pick an id that has them ({CATALOGUE})")
    return ds


def _convert(ds: Any, dataset_id: str, folder: Path) -> None:
    """Write ``ds`` as a BEIR folder in a temporary sibling of ``folder`` and rename it into place."""
    import ir_datasets

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(folder.parent, prefix=f".{folder.name}.")
    except OSError as e:
        root = folder.parent.parent
        raise ConfigError(f"dataset {PREFIX}{dataset_id} is converted under the data root {root}, and {folder.parent} "
                          f"cannot be written there ({_one_line(e)}): choose another data root with --data-root or "
                          "RERANK_DATA") from None
    try:
        log.info("converting ir_datasets %s into %s (once; ir_datasets downloads its files into $IR_DATASETS_HOME)",
                 dataset_id, folder)
        counts = {"queries": write_jsonl((
            {"_id": _checked_id(dataset_id, "query", q.query_id), "text": q.default_text()}
            for q in _guarded(dataset_id, ds.queries_iter)), tmp / "queries.jsonl")}
        (tmp / "qrels").mkdir()
        counts["qrels"] = _write_lines(tmp / "qrels" / f"{SPLIT}.tsv", (
            f"{_checked_id(dataset_id, 'query', r.query_id)}\t{_checked_id(dataset_id, 'doc', r.doc_id)}\t"
            f"{int(r.relevance)}" for r in _guarded(dataset_id, ds.qrels_iter)), "query-id\tcorpus-id\tscore")
        extra: dict[str, Any] = {}
        with _irds_errors(dataset_id):
            has_scoreddocs = ds.has_scoreddocs()
        if has_scoreddocs:
            form = "reranking"
            run_counts, extra["scoreddocs_ranked"] = _write_reranking_form(ds, dataset_id, tmp)
            counts.update(run_counts)
        else:
            form = "full corpus"
            counts["docs"] = write_jsonl((
                _doc_record(d) for d in _checked_docs(dataset_id, _guarded(dataset_id, ds.docs_iter))),
                tmp / "corpus.jsonl")
        write_json({"id": dataset_id, "ir_datasets_version": ir_datasets.__version__, "form": form, "split": SPLIT,
                    "rel_level": _rel_level(ds, dataset_id), "counts": counts, **extra}, tmp / MANIFEST)
        if not publish_dir(tmp, folder, MANIFEST):
            log.info("%s was converted meanwhile by another process: using that copy", folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_reranking_form(ds: Any, dataset_id: str, tmp: Path) -> tuple[dict[str, int], bool]:
    """``run.trec`` from the scoreddocs and ``corpus.jsonl`` with the documents it names; their counts, and whether
    the scoreddocs rank (False: every query's scores are equal, as MS MARCO's top-1000 files give none)."""
    run: dict[str, dict[str, float]] = {}
    n = repeated = 0
    for sd in _guarded(dataset_id, ds.scoreddocs_iter):
        n += 1
        ranking = run.setdefault(_checked_id(dataset_id, "query", sd.query_id), {})
        _checked_id(dataset_id, "doc", sd.doc_id)
        if sd.doc_id in ranking:
            repeated += 1
            ranking[sd.doc_id] = max(ranking[sd.doc_id], float(sd.score))
        else:
            ranking[sd.doc_id] = float(sd.score)
    if repeated:
        log.warning("%s: %d scoreddocs name a document already listed for their query; each is kept once, with its "
                    "highest score", dataset_id, repeated)
    ranked = {q: sort_ranking(list(r.items())) for q, r in run.items()}
    deepest = max(map(len, ranked.values()), default=0)
    scored = check_ranked(ranked, f"{dataset_id}'s run.trec (its scoreddocs)",
                          cut=f"they carry no scores, so rerank all of each query's up to {deepest} candidates "
                          f"(--top-k {deepest})")
    write_run(ranked, tmp / "run.trec", tag="irds")
    wanted = {d for r in run.values() for d in r}
    docs = _get_docs(ds, wanted, dataset_id)
    absent = sorted(wanted - docs.keys())
    if absent:
        log.warning("%s: %d of the %d documents its scoreddocs name are not in its documents (e.g. %s): they stay in "
                    "run.trec, and rerank eval counts them as unknown doc ids", dataset_id, len(absent), len(wanted),
                    ", ".join(absent[:3]))
    written = write_jsonl((_doc_record(docs[d]) for d in sorted(docs)), tmp / "corpus.jsonl")
    counts = {"scoreddocs": n - repeated, "run_queries": len(run), "docs": written, "docs_missing": len(absent)}
    return counts, scored


def _get_docs(ds: Any, doc_ids: set[str], dataset_id: str) -> dict[str, Any]:
    """The documents of ``doc_ids`` that ``ds`` has: looked up in its docs store, else by one pass over its docs."""
    try:
        with _irds_errors(dataset_id):
            store = ds.docs_store()
    except (AttributeError, NotImplementedError):
        return {d.doc_id: d for d in _guarded(dataset_id, ds.docs_iter) if d.doc_id in doc_ids}
    with _irds_errors(dataset_id):
        return store.get_many(doc_ids)


def _doc_record(doc: Any) -> dict[str, str]:
    """A document as a BEIR corpus record: ``title`` field, and ``text`` field else ``default_text()``, less the title
    where ``default_text()`` is the title, a separator and the rest (a text merely starting as its title keeps it)."""
    fields = getattr(doc, "_fields", ())
    title = doc.title if "title" in fields and isinstance(doc.title, str) else ""
    if "text" in fields and isinstance(doc.text, str):
        text = doc.text
    else:
        text = doc.default_text()
        if title and text.startswith(title):
            rest = text[len(title):]
            if hasattr(doc, "_replace"):  # a NamedTuple: the title is in default_text when it changes without it
                leading = rest.strip() == doc._replace(title="").default_text().strip()
            else:
                leading = not rest or rest[0].isspace()
            if leading:
                text = rest.strip()
    return {"_id": doc.doc_id, "title": title, "text": text}


def _checked_id(dataset_id: str, kind: str, item_id: str) -> str:
    """``item_id``, a ``kind`` (query or doc) id of the dataset, refused when it holds whitespace (a space, tab or
    newline), which the qrels and TREC run files, whitespace-separated, cannot hold."""
    if _WHITESPACE.search(item_id):
        raise ConfigError(f"dataset {PREFIX}{dataset_id}: {kind} id {item_id!r} holds whitespace, which qrels and TREC "
                          "run files cannot hold: rerank cannot convert this dataset")
    return item_id


def _checked_docs(dataset_id: str, docs: Iterable[Any]) -> Iterator[Any]:
    """``docs``, each doc id checked by :func:`_checked_id`."""
    for doc in docs:
        _checked_id(dataset_id, "doc", doc.doc_id)
        yield doc


def _one_line(error: BaseException) -> str:
    """An exception's message on one line: ir_datasets' 'All download sources failed' lists each source's error."""
    args = error.args
    if isinstance(error, RuntimeError) and len(args) == 2 and isinstance(args[1], list):
        causes = "; ".join(str(e) for _, e in (x for x in args[1] if isinstance(x, tuple) and len(x) == 2))
        text = f"{args[0]}: {causes}" if causes else str(args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def _irds_errors(dataset_id: str) -> Iterator[None]:
    """Turn what ir_datasets raises while loading a dataset's files into one-line errors: a package it lacks
    (ImportError, naming what to install) and a file it cannot download or read (RuntimeError, OSError)."""
    try:
        yield
    except ImportError as e:
        package = re.search(r"requires ([\w.-]+)", str(e))
        install = f"pip install {package.group(1).rstrip('.')}" if package else "install the package it names"
        raise ConfigError(f"dataset {PREFIX}{dataset_id}: ir_datasets needs an optional package to read it "
                          f"({_one_line(e)}): {install}") from None
    except (RuntimeError, OSError) as e:
        if isinstance(e, (DatasetNotFoundError, NotImplementedError, RecursionError)):  # ours, or not a file's
            raise
        raise DatasetNotFoundError(
            f"dataset {PREFIX}{dataset_id}: ir_datasets could not download or read its files ({_one_line(e)}). Check "
            f"the network, or place the files by hand where ir_datasets looks for them, under $IR_DATASETS_HOME "
            f"(now {_irds_home()}; the dataset's page at {CATALOGUE} lists each file and where it goes)") from None


def _irds_home() -> str:
    """Where ir_datasets keeps its files: ``$IR_DATASETS_HOME``, default ``~/.ir_datasets``."""
    return os.environ.get("IR_DATASETS_HOME") or str(Path("~/.ir_datasets").expanduser())


def _guarded(dataset_id: str, items: Any) -> Iterator[Any]:
    """Iterate ``items()`` (an ir_datasets iterator method), its calls under :func:`_irds_errors`: only what
    ir_datasets raises is translated, not what the loop body does with each item."""
    with _irds_errors(dataset_id):
        it = iter(items())
    while True:
        with _irds_errors(dataset_id):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def _write_lines(path: Path, lines: Iterable[str], header: str | None = None) -> int:
    """Write ``lines`` (and a ``header`` first) to ``path``; how many lines, the header not counted."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        if header is not None:
            f.write(header + "\n")
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def _rel_level(ds: Any, dataset_id: str) -> int:
    """The grade binary measures count as relevant: N when every binary official measure of the dataset (RR, AP, P,
    R, Bpref, …: :data:`~rerank.eval.metrics.BINARY_MEASURES`, by ir-measures' name, aliases such as ``MRR`` too, or
    any naming ``rel=``) names the same ``rel=N`` (TREC DL's ``RR(rel=2)``, ``AP(rel=2)``, as ``dl19-bm25-top100`` is
    judged), else 1 (one without ``rel=`` counts from 1); nDCG's graded gain needs no level."""
    import ir_measures

    from rerank.eval.metrics import BINARY_MEASURES

    try:
        with _irds_errors(dataset_id):
            measures = ds.documentation().get("official_measures") or []
    except (AttributeError, KeyError, OSError):
        return 1
    levels: dict[str, int] = {}
    for measure in map(str, measures):
        try:
            m = ir_measures.parse_measure(measure.strip())
        except (ValueError, NameError, SyntaxError, TypeError):
            continue
        rel = m.params.get("rel")
        if isinstance(rel, int) or m.NAME in BINARY_MEASURES:
            levels[measure] = rel if isinstance(rel, int) else 1
    if len(set(levels.values())) > 1:
        log.warning("%s: its official binary measures name different relevance levels (%s): binary measures count "
                    "grades >= 1 (--rel-level N sets another)", dataset_id,
                    ", ".join(f"{m} at {n}" for m, n in levels.items()))
        return 1
    return next(iter(levels.values()), 1)
