"""``rerank eval``: retrieve (or read a run), optionally rerank, score, and write a result folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from rerank.cli.common import (
    add_allow_duplicates,
    add_dataset,
    add_reranker,
    check_cache_writable,
    check_input_file,
    check_llm_flags,
    check_output_dir,
    check_output_file,
    check_reranker_model,
    check_reranker_options,
    method_from_model,
    positive_int,
    reranker_options,
    warn_unused_rel_level,
)
from rerank.config import apply_overrides, load_yaml, option_default
from rerank.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a first stage (and reranker) on a dataset")
    which = p.add_mutually_exclusive_group(required=True)
    add_dataset(p, required=False, group=which)
    which.add_argument("--suite", choices=("beir", "bright", "dl"), help="evaluate on every dataset of a suite")
    p.add_argument("--datasets", default=None,
                   help="with --suite: comma-separated members, each required (default: the suite's members that are "
                        "found; the missing ones are named and skipped)")
    p.add_argument("--bright-source", default=None, help="with --suite bright: folder in the xlangai/BRIGHT layout")
    p.add_argument("--long-documents", action="store_true", help="with --suite bright: the long-document corpus")
    p.add_argument("--resume", action="store_true",
                   help="with --suite: keep each member whose folder in --output holds a complete run with these "
                        "settings and run the rest (one under other settings is refused)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--retriever", help="first-stage retriever (e.g. bm25, pyserini); without it or --first-stage, "
                                         "the dataset folder's own run (bm25_top100.trec or run.trec; an irds: "
                                         "dataset's scoreddocs are its run.trec) is the first stage")
    src.add_argument("--first-stage", metavar="RUN", help="rerank this TREC run instead of retrieving")
    p.add_argument("--retriever-config", default=None, help="YAML file of retriever options (e.g. k1, b, stemmer)")
    p.add_argument("--retriever-set", action="append", default=[], metavar="KEY=VALUE", help="override one retriever option")
    p.add_argument("--index", default=None, help="saved dense index folder (from rerank index) for --retriever dense/hybrid")
    add_reranker(p, "model name or path: the reranker's (a trained reranker's folder needs no --reranker) or, "
                    "without a reranker, the dense or hybrid --retriever's (a trained retriever's folder needs no "
                    "--retriever)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="with a reranker: rerank this many first-stage candidates (default 100)")
    p.add_argument("--depth", type=positive_int, default=None,
                   help="with --retriever: how many documents it retrieves per query (default 1000)")
    p.add_argument("-m", "--measure", action="append", default=None,
                   help="measure, ir-measures (nDCG@10) or trec_eval (ndcg_cut_10) name (repeatable)")
    p.add_argument("--rel-level", type=positive_int, default=None,
                   help="min grade counted relevant for binary measures; with none among -m (nDCG alone) it "
                   "changes nothing, and a warning says so")
    p.add_argument("--no-llm-cache", action="store_true",
                   help="LLM heads: call the LLM for every prompt (default: answers are cached by model, prompt "
                        "and options)")
    p.add_argument("--log-llm-io", default=None, metavar="FILE.jsonl",
                   help="LLM heads: append every LLM prompt and raw response (and whether it was cached) to this file")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="reranking processes, each with its own copy of the reranker and cores/N threads (with GPUs: "
                        "one per GPU); the run and scores are those of one process (default 1; a --suite starts them "
                        "once and shares them over its datasets)")
    p.add_argument("--interpolate", type=float, default=None, metavar="ALPHA",
                   help="order the reranked top-k by ALPHA x the reranker's scores + (1 - ALPHA) x the first stage's, "
                        "each min-max normalised per query; ALPHA in [0, 1], with --reranker (default: the "
                        "reranker's order alone)")
    add_allow_duplicates(p)
    p.add_argument("--output", required=True,
                   help="result folder (run.trec, metrics.json, report.md, …; files of an earlier run there are "
                   "replaced or removed; with --suite one sub-folder per dataset)")
    # unset (None) until run(): an option given without the thing it configures is refused, even at its default
    p.set_defaults(func=run, backend=None, split=None)


def _retriever_takes_model(name: str) -> bool | None:
    """Whether the registered retriever ``name`` takes a ``model`` option: its config dataclass (the ``config``
    argument of its ``__init__``) has a ``model`` field. None when that cannot be told (no such annotation)."""
    import dataclasses

    from rerank.retrieval.base import retriever_config_class

    config_class = retriever_config_class(name)  # an unknown name raises listing the known ones
    if config_class is None:
        return None
    return "model" in {f.name for f in dataclasses.fields(config_class)}


def _model_without_reranker(args: argparse.Namespace) -> str:
    """Why ``--model`` without ``--reranker`` (and not a trained model folder) cannot be what the user meant, or ""
    when it is the dense first stage's model."""
    fix = "--model needs --reranker METHOD (or a trained reranker folder with rerank.json)"
    if args.first_stage is not None:
        return f"{fix}; a --first-stage run takes no model"
    if args.retriever is None:
        return f"{fix}; without --retriever the dataset folder's own run is read, and it takes no model"
    if _retriever_takes_model(args.retriever) is False:
        return f"{fix}; {args.retriever} takes no model"
    return ""


def _given(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """Those of ``flags`` (flag -> dest) given on the command line: unset options are None, False or []."""
    return [flag for flag, dest in flags.items() if getattr(args, dest) not in (None, False, [])]


#: the options that configure a reranker (flag -> argparse dest)
RERANKER_FLAGS = {
    "--backend": "backend", "--base-url": "base_url", "--reranker-config": "reranker_config",
    "--reranker-set": "reranker_set", "--allow-new-head": "allow_new_head", "--top-k": "top_k",
    "--workers": "workers", "--no-llm-cache": "no_llm_cache", "--log-llm-io": "log_llm_io",
}
#: the options that configure a --retriever first stage (flag -> argparse dest)
RETRIEVER_FLAGS = {"--retriever-config": "retriever_config", "--retriever-set": "retriever_set", "--depth": "depth"}


def check_unused_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, an option that this command would accept and then ignore: reranker options without a
    reranker, retriever options without ``--retriever``, ``--split`` with ``--suite``."""
    from rerank.eval.pipeline import EvalConfig

    if args.interpolate is not None and not 0.0 <= args.interpolate <= 1.0:
        raise ConfigError(f"--interpolate must be a number in [0, 1], got {args.interpolate}")
    if args.reranker is None and args.interpolate is not None:
        raise ConfigError("--interpolate weighs a reranker's scores against the first stage's, and no reranker is "
                          "given: add --reranker METHOD --model MODEL, or drop --interpolate")
    if args.reranker is None:
        given = _given(args, RERANKER_FLAGS)
        if given:
            them = "it" if len(given) == 1 else "them"
            raise ConfigError(f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} a reranker and none is "
                              f"given: add --reranker METHOD --model MODEL (or a trained reranker folder as --model), "
                              f"or drop {them}")
    if args.retriever is None:
        given = _given(args, RETRIEVER_FLAGS)
        if given:
            if args.first_stage is not None:
                why = f"--first-stage {args.first_stage} is read as it is, nothing is retrieved"
            elif args.suite is not None:
                why = f"--suite {args.suite} without --retriever reranks each dataset folder's own run"
            else:
                why = "they configure the --retriever first stage"
            raise ConfigError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --retriever NAME: {why}; "
                              "drop " + ("it" if len(given) == 1 else "them"))
    top_k = args.top_k or option_default(EvalConfig, "top_k")
    if args.reranker is not None and args.depth is not None and args.depth < top_k:
        raise ConfigError(f"--depth {args.depth} is below --top-k {top_k}: the reranker reranks the "
                          f"first --top-k of the --depth retrieved; give --top-k {args.depth} or a larger --depth")
    if args.suite is not None and args.split is not None:
        raise ConfigError(f"--split does not apply to --suite: the suite scores each dataset on its own split (test; "
                          f"msmarco-dev-bm25-top100: dev); drop --split {args.split}")


#: the built-in retrievers that keep an index or embeddings in the cache folder
CACHING_RETRIEVERS = ("bm25", "pyserini", "dense", "hybrid")


def uses_cache(args: argparse.Namespace, ropts: dict, options: dict) -> bool:
    """Whether this eval writes into the cache folder: a BM25 index or dense embeddings (not a dense search of a
    saved ``--index``, nor ``cache=false``), an LLM head's answers (unless ``--no-llm-cache``), what the head itself
    saves there with its ``options`` (the bi-encoder's corpus embeddings), the BRIGHT suite's converted datasets."""
    from rerank.backends.cache import uses_llm_backend
    from rerank.heads.registry import get_reranker_class

    if args.suite == "bright":
        return True
    if args.retriever in CACHING_RETRIEVERS and not (
            args.retriever == "dense" and (args.index is not None or ropts.get("cache", True) is False)):
        return True
    if args.reranker is None:
        return False
    return get_reranker_class(args.reranker).writes_cache(options) or (
        not args.no_llm_cache and uses_llm_backend(args.reranker))


def run(args: argparse.Namespace) -> int:
    from rerank.eval.metrics import DEFAULT_MEASURES
    from rerank.eval.pipeline import EvalConfig, run_eval
    from rerank.eval.report import summary_line

    check_output_dir(args.output)
    if args.log_llm_io is not None:
        check_output_file(args.log_llm_io, "--log-llm-io")
    record = method_from_model(args)
    if record is not None and record.get("kind") == "retriever" and args.retriever is None and args.first_stage is None:
        args.retriever = "dense"  # a trained retriever folder is the dense first stage's model
    check_unused_options(args)
    warn_unused_rel_level(tuple(args.measure) if args.measure else DEFAULT_MEASURES, args.rel_level)
    for option, path in (("--first-stage", args.first_stage), ("--retriever-config", args.retriever_config)):
        if path is not None:
            check_input_file(path, option)
    ropts = apply_overrides(load_yaml(args.retriever_config) if args.retriever_config else {}, args.retriever_set,
                            flag="--retriever-set")
    backend = args.backend or option_default(EvalConfig, "backend")
    model = args.model
    if args.index is not None:
        if args.retriever not in ("dense", "hybrid"):
            raise ConfigError(f"--index needs --retriever dense or hybrid"
                              f"{'' if args.retriever is None else f' (--retriever {args.retriever} builds its own)'}")
        if "index" in ropts and str(ropts["index"]) != args.index:
            raise ConfigError(f"--index {args.index} conflicts with retriever option index={ropts['index']}")
        ropts["index"] = args.index
    if args.retriever == "hybrid":  # each side retrieves at least the retrieval depth: a lower depth changes nothing
        from rerank.retrieval.hybrid import check_depth

        check_depth(ropts.get("depth"), args.depth or option_default(EvalConfig, "depth"))  # --depth >= --top-k
    if args.reranker is None and model is not None:
        problem = _model_without_reranker(args)
        if problem:
            raise ConfigError(problem)
    if args.retriever is not None and args.reranker is None and model is not None:
        if "model" in ropts and ropts["model"] != model:
            raise ConfigError(f"--model {model} conflicts with retriever option model={ropts['model']}")
        ropts["model"], model = model, None  # without a reranker, --model is the retriever's model
    if args.suite is None and (args.datasets or args.bright_source or args.long_documents):
        raise ConfigError("--datasets, --bright-source and --long-documents need --suite")
    if args.suite is None and args.resume:
        raise ConfigError("--resume needs --suite: it keeps a suite's finished members; one dataset's eval has no "
                          "parts to keep (rerun it): drop --resume")
    check_reranker_model(args.reranker, model, backend)
    options = reranker_options(args)
    if args.reranker is not None:
        check_reranker_options(args.reranker, model, options, backend)
        check_llm_flags(args.reranker, _given(args, {"--no-llm-cache": "no_llm_cache", "--log-llm-io": "log_llm_io"}))
    if ropts.get("model"):
        from rerank.models import check_model_path

        check_model_path(str(ropts["model"]), "the retriever's model")
    if args.index is not None and not Path(args.index).is_dir():
        raise ConfigError(f"--index {args.index} is not a folder; build one with `rerank index`")
    if uses_cache(args, ropts, options):
        check_cache_writable()
    cfg = EvalConfig(
        dataset=args.dataset or "",
        output=args.output,
        data_root=args.data_root,
        retriever=args.retriever,
        retriever_options=ropts,
        first_stage=args.first_stage,
        reranker=args.reranker,
        model=model,
        backend=backend,
        reranker_options=options,
        max_queries=args.max_queries,
        measures=tuple(args.measure) if args.measure else DEFAULT_MEASURES,
        rel_level=args.rel_level,
        qrels_duplicates=args.allow_duplicates or "error",
        llm_cache=not args.no_llm_cache,
        log_llm_io=args.log_llm_io,
        interpolate=args.interpolate,
        # unset on the command line: EvalConfig's own defaults
        **{k: v for k, v in (("split", args.split), ("top_k", args.top_k), ("depth", args.depth),
                             ("workers", args.workers)) if v is not None},
    )
    if args.suite is not None:
        from rerank.eval.suites import run_suite

        names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
        summary = run_suite(args.suite, cfg, args.output, names, bright_source=args.bright_source,
                            long_documents=args.long_documents, resume=args.resume)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in list(summary["mean"].items())[:4])
        skipped = f"; not found, skipped: {', '.join(summary['missing'])}" if summary["missing"] else ""
        print(f"suite {args.suite} ({summary['num_datasets']} datasets) mean: {shown}{skipped} -> "
              f"{Path(args.output) / 'summary.json'}")
        return 0
    metrics = run_eval(cfg)
    print(summary_line(metrics) + f" -> {Path(args.output) / 'metrics.json'}")
    return 0
