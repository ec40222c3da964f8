"""``rerank rank``: rerank a JSONL of queries with candidate documents, or a first-stage run over a dataset."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rerank.cli.common import (
    add_data_root,
    add_max_queries,
    add_reranker,
    check_distinct_files,
    check_input_file,
    check_llm_flags,
    check_output_file,
    check_reranker_model,
    check_reranker_options,
    method_from_model,
    positive_int,
    reranker_options,
)

if TYPE_CHECKING:
    from rerank.data.datasets import Dataset
    from rerank.heads.base import Reranker, RerankStats
    from rerank.types import Candidate, Document, Query, RankedResult

    #: the documents after the reranked ones, in their input order: id, and the document (None: not in the corpus)
    Tail = list[tuple[str, Document | None]]
    #: a query, the candidates the reranker orders, the tail
    Job = tuple[Query, list[Candidate], Tail]

log = logging.getLogger(__name__)

#: queries per ``rerank_batch`` call
BATCH_QUERIES = 8
#: what the record of a ranking is named: ``OUTPUT`` + this (``ranked.jsonl.meta.json``)
META_SUFFIX = ".meta.json"
#: the ``--input`` / ``--output`` name of standard input / output
STDIO = "-"
#: what ``--input -`` reads
STDIN = "/dev/stdin"


def _check_meta_name(out: Path) -> None:
    """Before any work: the record's name ``OUTPUT.meta.json`` fits the file system (a ranking written without its
    record would be half a result)."""
    from rerank.utils.files import nearest_existing

    try:
        limit = os.pathconf(nearest_existing(out.expanduser().parent), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return
    name = f"{out.name}{META_SUFFIX}"
    if len(os.fsencode(name)) > limit:
        from rerank.errors import ConfigError

        raise ConfigError(f"--output {out.name!r} is too long a name for its record {META_SUFFIX} beside it "
                          f"({len(os.fsencode(name))} bytes, the file system takes {limit}): give a shorter name")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rank", help="rerank candidates and write the ranking (TREC run or JSONL)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help='JSONL of {"query": …, "docs": […]} records (- reads standard input); the '
                     "output keeps their order")
    src.add_argument("--first-stage", metavar="RUN",
                     help="TREC run to rerank (needs --dataset for the texts); the output is in sorted query-id order")
    p.add_argument("--dataset", default=None,
                   help="dataset holding the corpus and queries of --first-stage: a BEIR-layout folder, a dataset "
                   "name under the data root, or irds:ID (an ir_datasets id)")
    add_max_queries(p, "rerank only the first N >= 1 queries: the first N records of --input, or the first N in "
                    "sorted query-id order of --first-stage")
    add_data_root(p)
    add_reranker(p)
    p.add_argument("--top-k", type=positive_int, default=100,
                   help="rerank this many candidates per query (default 100); the rest follow unscored, in their "
                   "input order (the summary line counts them)")
    p.add_argument("--output", required=True,
                   help="output file: NAME.jsonl (JSON lines, one record per query ranking every candidate: id, rank, "
                   "the reranker's score and relevance, text; candidates past --top-k follow with score and "
                   "relevance null) or any other name, such as run.trec or run.txt (a TREC run of the same order, "
                   "scored n for the first of n); add .gz to gzip either. How it was made (reranker, options, "
                   "versions, command, fingerprints of the model and the data read) is written beside it to "
                   f"OUTPUT{META_SUFFIX}. - prints the TREC run on standard output, as does a stream such as "
                   "/dev/stdout or a pipe: no record is written then, and the summary line goes to standard error")
    p.add_argument("--log-llm-io", default=None, metavar="FILE.jsonl",
                   help="append every LLM prompt and raw response, with how it was parsed, to this file (LLM heads)")
    p.set_defaults(func=run)


def output_kind(path: str | Path) -> tuple[str, bool]:
    """``(".trec" or ".jsonl", gzipped)`` for an ``--output`` name: ``.jsonl`` is JSON lines, any other name a TREC
    run (``run.txt``, ``run.trec``, as other tools name runs); ``.gz`` gzips either. ``.json`` (JSON lines meant?)
    and a bare ``.gz`` are one-line errors."""
    from rerank.errors import ConfigError

    name = Path(path).name.lower()
    gzipped = name.endswith(".gz")
    stem = name.removesuffix(".gz")
    if not stem:
        raise ConfigError(f"--output {path}: give the file a name, e.g. ranked.trec.gz")
    if stem.endswith(".json"):
        raise ConfigError(f"--output {path}: name it .jsonl for ranked documents with scores (JSON lines), or "
                          ".trec for a TREC run")
    return (".jsonl" if stem.endswith(".jsonl") else ".trec"), gzipped


@contextlib.contextmanager
def _open_output(path: Path | None, gzipped: bool) -> Iterator[TextIO]:
    """A text file written atomically to ``path`` (None: standard output), gzip-compressed when ``gzipped`` (no name
    or time in the header, so the same ranking gives the same bytes)."""
    from rerank.utils.files import atomic_write

    if path is None:
        yield sys.stdout
        return
    if not gzipped:
        with atomic_write(path) as f:
            yield f
        return
    with atomic_write(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as f:
        yield f


def run(args: argparse.Namespace) -> int:
    from rerank.backends.cache import llm_cache_scope
    from rerank.data.datasets import resolve_dataset
    from rerank.data.io import check_ranked, format_run, read_run
    from rerank.errors import ConfigError
    from rerank.eval.pipeline import check_run_overlap
    from rerank.heads.base import Reranker
    from rerank.types import Candidate
    from rerank.utils.files import is_stream, write_json

    out = Path(args.output)
    # standard output (-), or a device, pipe or FIFO given by name: written through, with no record beside it
    stream = args.output == STDIO or is_stream(out)
    if not stream:
        check_output_file(out)
        _check_meta_name(out)
    if args.log_llm_io is not None:
        check_output_file(args.log_llm_io, "--log-llm-io")
    kind, gzipped = output_kind(out)
    ignored = [o for o, v in (("--dataset", args.dataset), ("--data-root", args.data_root)) if v is not None]
    if args.input and ignored:
        raise ConfigError(f"{' and '.join(ignored)} would be ignored: --input holds the queries and documents itself "
                          f"(they are for --first-stage)")
    if args.first_stage and not args.dataset:
        raise ConfigError("--first-stage needs --dataset (the corpus and queries it refers to)")
    method_from_model(args)
    if args.reranker is None:
        raise ConfigError("rerank rank needs --reranker METHOD, or --model a trained reranker's folder (rerank.json)")
    check_reranker_model(args.reranker, args.model, args.backend)
    options = reranker_options(args)
    check_reranker_options(args.reranker, args.model, options, args.backend)
    check_llm_flags(args.reranker, ["--log-llm-io"] if args.log_llm_io is not None else [])
    if args.input and args.input != STDIO:
        check_input_file(args.input, "--input")
    elif not args.input:
        check_input_file(args.first_stage, "--first-stage")
    check_distinct_files([("--output", None if stream else args.output), ("--log-llm-io", args.log_llm_io)],
                         [("--input", None if args.input == STDIO else args.input),
                          ("--first-stage", args.first_stage)])
    # the input is read (and checked) before the model loads
    ds: Dataset | None = None
    if args.input:
        records = _read_input(STDIN if args.input == STDIO else args.input)
        if args.max_queries is not None:
            records = records[: args.max_queries]
        jobs = [(q, [Candidate(d, s) for d, s in docs[: args.top_k]], [(d.id, d) for d, _ in docs[args.top_k :]])
                for q, docs in records]
        past = [len(docs) - args.top_k for _, docs in records if len(docs) > args.top_k]
    else:
        ds = resolve_dataset(args.dataset, args.data_root)
        run_in = read_run(args.first_stage)
        check_run_overlap(run_in, ds.queries, f"--first-stage {args.first_stage}",
                          f"the {len(ds.queries)} queries of dataset {ds.name}")
        check_ranked(run_in, f"--first-stage {args.first_stage}", args.top_k)
        qids = sorted(q for q in run_in if q in ds.queries)
        if len(qids) < len(run_in):
            unknown = sorted(q for q in run_in if q not in ds.queries)
            log.warning("%d of the %d queries of --first-stage %s are not in dataset %s (e.g. %s): they are skipped",
                        len(unknown), len(run_in), args.first_stage, ds.name, ", ".join(unknown[:3]))
        if args.max_queries is not None:
            qids = qids[: args.max_queries]
        # one checked pass over the corpus holds only the documents the output needs: the reranked candidates, and
        # for JSONL (which carries their text) the rest of each selected query's run
        needed = {d for q in qids for d, _ in (run_in[q] if kind == ".jsonl" else run_in[q][: args.top_k])}
        corpus = ds.documents(needed).docs
        jobs, missing = _first_stage_jobs({q: ds.queries[q] for q in qids}, run_in, corpus, args.top_k)
        past = [len(run_in[q]) - args.top_k for q in qids if len(run_in[q]) > args.top_k]
        if missing:
            log.warning("%d doc ids of --first-stage %s are not in dataset %s's corpus (e.g. %s): they are not "
                        "reranked and follow the reranked ones", sum(map(len, missing.values())), args.first_stage,
                        ds.name, next(iter(missing.values()))[:3])
    with llm_cache_scope(enabled=False, log_path=args.log_llm_io):  # no cache: only the log, when asked for
        reranker = Reranker.load(args.reranker, model=args.model, backend=args.backend, **options)
    rankings = _rerank_jobs(reranker, jobs)
    meta = Path(f"{out}{META_SUFFIX}")
    if not stream:
        meta.unlink(missing_ok=True)  # an earlier ranking's record never sits beside this one
    # in the jobs' order: --input's records, --first-stage's sorted ids
    with _open_output(None if args.output == STDIO else out, gzipped) as f:
        for qid, (res, tail) in rankings.items():
            if kind == ".jsonl":
                f.write(json.dumps({"qid": qid, "query": res.query.text, "ranking": _jsonl_ranking(res, tail)},
                                   ensure_ascii=False) + "\n")
            else:
                f.writelines(format_run({qid: _run_order(res, tail)}, tag=args.reranker))
    if not stream:
        write_json(_record(args, options, reranker, len(rankings), ds), meta)
    shown = "standard output" if args.output == STDIO else out
    print(f"ranked {len(rankings)} quer{'y' if len(rankings) == 1 else 'ies'} with {args.reranker} -> {shown}"
          f"{_stats_note(reranker.stats)}{_unscored_note(past, args.top_k)}",
          file=sys.stderr if stream else sys.stdout)
    return 0


def _unscored_note(past: list[int], top_k: int) -> str:
    """The summary line's count of the candidates past ``--top-k`` (``past``: how many, per query that has any),
    which follow the reranked ones unscored in their input order; ``""`` when there are none."""
    if not past:
        return ""
    many = sum(past)
    return (f"; {many} candidate{'' if many == 1 else 's'} of {len(past)} quer{'y' if len(past) == 1 else 'ies'} "
            f"past --top-k {top_k} not reranked: they follow unscored, in their input order")


def _record(args: argparse.Namespace, options: dict[str, Any], reranker: Reranker, num_queries: int,
            dataset: Dataset | None) -> dict[str, Any]:
    """What ``OUTPUT.meta.json`` holds: the output, the options, the reranker's description, the parse counts and the
    provenance ``rerank eval`` records (:func:`~rerank.eval.pipeline.provenance`: versions, code revision, command,
    threads, device, model fingerprint, and the data read: ``--input``, or ``--first-stage`` with the dataset's corpus
    and queries); secrets and URL credentials redacted."""
    from rerank.config import to_dict
    from rerank.eval.pipeline import data_inputs, file_input, provenance, reranker_record, template_input

    desc = reranker_record(reranker.describe(), args.model, args.backend)
    if dataset is not None:
        data = data_inputs(dataset, None, args.first_stage)
    else:
        data = {"input": entry} if (entry := file_input(args.input)) is not None else {}
    config = {"input": args.input, "first_stage": args.first_stage, "dataset": args.dataset,
              "data_root": args.data_root, "max_queries": args.max_queries, "top_k": args.top_k,
              "reranker": args.reranker, "model": args.model, "backend": args.backend, "reranker_options": options}
    return {"output": str(Path(args.output).resolve()), "num_queries": num_queries, "config": to_dict(config),
            "reranker": desc, "parse": reranker.stats.as_dict(), "provenance": provenance(desc, data, template_input(getattr(reranker, "template", None)))}


def _stats_note(stats: RerankStats) -> str:
    """The summary line's parse counts, only where the head parsed generated text (it recorded outputs: listwise,
    grouprank, erank's reasoning; a head that scores, such as a cross-encoder or yes-no, parses none), and how many
    prompts were fitted to the model's context."""
    parts = []
    if stats.outputs:
        parts.append(f"{stats.outputs} model outputs, {stats.parse_failures} parse failures, {stats.repaired} repaired")
    if stats.fitted_prompts or stats.shortened_passages:  # long_docs passages are cut without a fitted prompt
        parts.append(f"{stats.fitted_prompts} prompts fitted to the context, {stats.shortened_passages} passages "
                     "shortened")
    return f" ({'; '.join(parts)})" if parts else ""


#: a JSONL row of another of the project's formats, by the field that tells it: what it is
_OTHER_FORMATS = {
    "ranking": "rerank rank's own JSONL output (a 'ranking' field)",
    "candidates": "training data, such as a data recipe's data.jsonl (a 'candidates' field)",
}


def _read_input(path: str) -> list[tuple[Query, list[tuple[Document, float | None]]]]:
    """``--input``'s records; a file of another of the project's JSONL formats (rank's output, training rows) is a
    one-line error naming the fields expected and the format it looks like (neither is read as input)."""
    from rerank.data.io import iter_jsonl, read_query_docs_jsonl
    from rerank.errors import ConfigError, DataFormatError

    try:
        return read_query_docs_jsonl(path)
    except DataFormatError as e:
        if not str(e).endswith("missing required field 'docs'"):
            raise
        row = next((obj for lineno, obj in iter_jsonl(path) if lineno == e.line), {})
        looks = next((what for field, what in _OTHER_FORMATS.items() if field in row), None)
        if looks is None:
            raise
        raise ConfigError(f"{e}: --input takes records {{\"query\": ..., \"docs\": [...]}}, and this looks like "
                          f"{looks}, which rerank rank does not read") from None


def _first_stage_jobs(queries: dict[str, Query], run: dict[str, list[tuple[str, float]]], corpus: dict[str, Document],
                      top_k: int) -> tuple[list[Job], dict[str, list[str]]]:
    """One job per query of ``queries`` with candidates in ``run``: its first ``top_k`` that ``corpus`` holds are
    reranked, those it lacks follow them, then the rest of the run (as ``rerank eval`` orders them; a tail document
    ``corpus`` does not hold is None); also returns the ids missing from the corpus per query. ``corpus`` may hold
    only the run's documents."""
    from rerank.types import Candidate

    jobs: list[Job] = []
    unknown: dict[str, list[str]] = {}
    for qid, query in queries.items():
        if not run.get(qid):
            continue
        head = run[qid][:top_k]
        missing = [d for d, _ in head if d not in corpus]
        if missing:
            unknown[qid] = missing
        tail = [(d, None) for d in missing] + [(d, corpus.get(d)) for d, _ in run[qid][top_k:]]
        jobs.append((query, [Candidate(corpus[d], s) for d, s in head if d in corpus], tail))
    return jobs, unknown


def _rerank_jobs(reranker: Reranker, jobs: list[Job]) -> dict[str, tuple[RankedResult, Tail]]:
    """Each job's candidates reranked, ``BATCH_QUERIES`` queries per call, keyed by query id with the job's tail; the
    per-call warnings (outputs that failed to parse, prompts fitted) are held back: the summary line has the totals."""
    from tqdm.auto import tqdm

    from rerank.heads.base import CallWarnings

    rankings: dict[str, tuple[RankedResult, Tail]] = {}
    with reranker.warning_policy(CallWarnings(hold=True)), tqdm(total=len(jobs), desc="rerank", unit="q") as bar:
        for start in range(0, len(jobs), BATCH_QUERIES):
            chunk = jobs[start : start + BATCH_QUERIES]
            results = reranker.rerank_batch([q for q, _, _ in chunk], [c for _, c, _ in chunk])
            for (q, _, tail), res in zip(chunk, results, strict=True):
                rankings[q.id] = (res, tail)
            bar.update(len(chunk))
    return rankings


def _run_order(res: RankedResult, tail: Tail) -> list[tuple[str, float]]:
    """The TREC run of one query: the reranked documents, then the tail; scored n for the first of n."""
    order = res.doc_ids + [d for d, _ in tail]
    return [(d, float(len(order) - i)) for i, d in enumerate(order)]


def _jsonl_ranking(res: RankedResult, tail: Tail) -> list[dict[str, Any]]:
    """The JSONL ranking of one query, the same documents in the same order as :func:`_run_order`: the reranked ones
    with the reranker's score and relevance (and the head's metadata), then the tail with both null (not scored)."""
    ranked = [{"id": r.doc.id, "score": r.score, "relevance": r.relevance, "rank": r.rank, "text": r.doc.text,
               **({"metadata": r.metadata} if r.metadata else {})} for r in res.results]
    return ranked + [{"id": d, "score": None, "relevance": None, "rank": len(ranked) + i,
                      "text": doc.text if doc is not None else None} for i, (d, doc) in enumerate(tail, 1)]
