"""Human-readable ``report.md`` for one evaluation."""

from __future__ import annotations

from typing import Any

__all__ = ["render_report", "summary_line"]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for the end of a CLI run."""
    m = metrics["metrics"]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in list(m.items())[:4])
    n = metrics["num_queries"]
    return f"{metrics['dataset']}/{metrics['split']} ({n} quer{'y' if n == 1 else 'ies'}): {shown}"


def _rerank_setting(config: dict[str, Any]) -> list[str]:
    """How the reranker was applied (``--top-k``, ``--interpolate``): two runs of one model that differ there must not
    read the same."""
    lines = []
    if config.get("top_k") is not None:
        lines.append(f"- reranked: each query's first-stage top {config['top_k']} (`--top-k`); the rest follow in "
                     "first-stage order")
    alpha = config.get("interpolate")
    if alpha is not None:
        lines.append(f"- order: {alpha:g} × the reranker's scores + {1 - alpha:g} × the first stage's, each min-max "
                     f"normalised per query (`--interpolate {alpha:g}`)")
    else:
        lines.append("- order: the reranker's scores alone")
    return lines


def _which_queries(metrics: dict[str, Any]) -> str:
    """Which judged queries the mean is over: all of the split's, or its first N by id under ``--max-queries N``."""
    cap = (metrics.get("config") or {}).get("max_queries")
    n = metrics["num_queries"]
    if cap is None:
        return "all judged queries"
    if n < cap:
        return f"all judged queries: the split has fewer than --max-queries {cap}"
    return f"the first {n} judged queries of the split, by query id (--max-queries {cap})"


def _first_stage(fs: dict[str, Any]) -> str:
    """The first stage, with a given run's path, or a retriever's depth and BM25's k1 and b as it resolved them."""
    line = f"- first stage: `{fs.get('name')}`" + (f" ({fs['path']})" if fs.get("path") else "")
    details = []
    if fs.get("retrieval_depth") is not None:
        details.append(f"top {fs['retrieval_depth']} per query")
    config = fs.get("config") or {}
    if fs.get("name") == "bm25" and "k1" in config and "b" in config:
        details.append(f"k1 {config['k1']:g}, b {config['b']:g}")
    return line + (f" ({'; '.join(details)})" if details else "")


def _short(fingerprint: str) -> str:
    """A fingerprint cut for a line of text: its kind and the first 12 hex digits (``sha256:0123456789ab``)."""
    kind, _, value = fingerprint.partition(":")
    return f"{kind}:{value[:12]}" if value and "," not in value else fingerprint


def _provenance(metrics: dict[str, Any]) -> list[str]:
    """When, where, with which versions, code, threads and command the run was computed, and the fingerprints of
    its model and data files (``metrics.json``'s ``provenance``), where recorded."""
    p = metrics.get("provenance")
    if not p:
        return []
    versions = ", ".join(f"{name} {p[name]}" for name in ("rerank", "torch", "transformers") if p.get(name))
    code = f" (git {p['git_hash']})" if p.get("git_hash") else ""
    dtype = f"; dtype {p['resolved_dtype']}" if p.get("resolved_dtype") else ""
    device = f"; device {p['device']}" if p.get("device") else ""
    threads = p.get("threads") or {}
    torch_threads = f"torch {threads['torch']}, " if threads.get("torch") is not None else ""
    thread_text = (f"; threads: {torch_threads}OMP_NUM_THREADS {threads.get('OMP_NUM_THREADS') or 'unset'}"
                   if threads else "")
    lines = [f"- computed: {p['date']} on {p['machine']}; Python {p['python']}, {versions}{code}{dtype}{device}"
             f"{thread_text}"]
    if p.get("command"):
        lines.append(f"- command: `{' '.join(p['command'])}`")
    files = [f"model {_short(m['fingerprint'])}" if m.get("fingerprint") else f"model {m['model']} (hub revision "
             f"{m.get('hub_revision') or 'not in the local cache'})"
             for m in (p.get("model_inputs") or {}).values()]
    files += [f"{name} {_short(entry['fingerprint'])}" for name, entry in (p.get("data_inputs") or {}).items()]
    if files:
        lines.append(f"- fingerprints: {', '.join(files)}")
    return lines


def _reranker(rr: dict[str, Any] | None) -> str:
    """The reranker line: method, model and backend; a remote reranker's server, whose own model and backend ranked."""
    if not rr:
        return "- reranker: none"
    if rr.get("method") == "remote":
        model = f"model `{rr['model']}` asked of it" if rr.get("model") else "its own model and backend"
        return f"- reranker: `remote`, the rerank server at `{rr.get('base_url')}` ({model})"
    return f"- reranker: `{rr['method']}` model `{rr.get('model')}` backend `{rr.get('backend_name')}`"


def render_report(metrics: dict[str, Any]) -> str:
    """Markdown: setup, aggregate metrics, conventions, timing and parse statistics (those of generated text only
    where the head parsed some: a cross-encoder or yes-no has none to show)."""
    fs = metrics["first_stage"]
    rr = metrics.get("reranker")
    reranker = _reranker(rr)
    lines = [
        f"# {metrics['dataset']} ({metrics['split']})",
        "",
        _first_stage(fs),
        reranker,
        *(_rerank_setting(metrics.get("config") or {}) if rr else []),
        (f"- queries: {metrics['num_queries']} (mean over {_which_queries(metrics)}; "
         f"{len(metrics['missing_queries'])} absent from the run count as 0)"),
        f"- relevance level for binary measures: >= {metrics['rel_level']} (nDCG uses graded judgements)",
        *_provenance(metrics),
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics["metrics"].items()]
    lines += ["", "## Timing", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_s')} | {v:.2f} |" for k, v in metrics["timing_s"].items()]
    p = metrics.get("parse") or {}
    if p.get("outputs"):  # only a head that parsed generated text has any
        lines += ["", "## Model outputs", "",
                  f"{p['outputs']} outputs, {p['parse_failures']} failed to parse, {p['repaired']} repaired."]
    if p.get("fitted_prompts") or p.get("shortened_passages"):  # long_docs passages are cut without a fitted prompt
        if not p.get("outputs"):
            lines += ["", "## Prompts"]
        fitted = (f"{p['fitted_prompts']} prompts were fitted to the model's context: {p['shortened_passages']} "
                  f"passages cut below max_doc_tokens, {p['shortened_queries']} queries below max_query_tokens.")
        lines += ["", fitted]
    tied = metrics.get("unranked_queries") or {}
    if tied.get("count"):
        lines += ["", (f"The reranker scored every candidate the same in {tied['count']} of {tied['of']} queries: "
                       "their order, and their metrics, are the first stage's.")]
    unk = metrics.get("unknown_doc_ids", {})
    if unk.get("count"):
        lines += ["", f"{unk['count']} doc ids in the first-stage run are not in the corpus (not reranked)."]
    lines += [
        "",
        "Ties are broken by doc id as trec_eval does; metrics computed with ir-measures (pytrec_eval).",
        "",
    ]
    return "\n".join(lines)
