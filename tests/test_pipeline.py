"""The eval pipeline and `rerank rank` with a reranker: order of the final run, scores, parse stats, CLI files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank.cli import main
from rerank.data.io import read_run, write_jsonl, write_qrels, write_run
from rerank.errors import ConfigError, DataFormatError
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import register_reranker
from rerank.types import Candidate, Query


class LengthReranker(Reranker):
    """Scores a document by its text length (longest first): deterministic and unlike any first-stage order."""

    method = "test-length"
    config_class = RerankerConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        self.stats.record(failed=len(candidates) == 3, example="three docs")
        return [float(len(c.doc.text)) for c in candidates]


register_reranker("test-length", LengthReranker)


class NaNReranker(LengthReranker):
    """Scores the longest document NaN (what a float16 overflow gives)."""

    method = "test-nan"

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        scores = super().score_candidates(query, candidates)
        return [float("nan") if s == max(scores) else s for s in scores]


register_reranker("test-nan", NaNReranker)


@pytest.fixture()
def beir(tmp_path: Path) -> Path:
    root = tmp_path / "mini"
    docs = [{"_id": f"d{i}", "title": "", "text": "x" * (i + 1)} for i in range(8)]
    write_jsonl(docs, root / "corpus.jsonl")
    write_jsonl([{"_id": "q1", "text": "one"}, {"_id": "q2", "text": "two"}, {"_id": "q3", "text": "three"}],
                root / "queries.jsonl")
    write_qrels({"q1": {"d7": 1}, "q2": {"d0": 2}, "q3": {"d1": 1}}, root / "qrels" / "test.tsv", beir=True)
    # first stage: shortest first, so the reranker reverses the head of each list
    write_run({"q1": [(f"d{i}", 10.0 - i) for i in range(8)], "q2": [(f"d{i}", 10.0 - i) for i in range(8)]},
              root / "run.trec")
    return root


def test_reranked_run_keeps_tail_and_counts_missing_queries(beir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    metrics = run_eval(
        EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec"), reranker="test-length", top_k=3,
                   output=str(out)),
        progress=False,
    )
    run = read_run(out / "run.trec")
    # top-3 of the first stage (d0,d1,d2) reversed by length, then d3..d7 in first-stage order
    assert [d for d, _ in run["q1"]] == ["d2", "d1", "d0", "d3", "d4", "d5", "d6", "d7"]
    assert metrics["missing_queries"] == ["q3"]
    assert metrics["num_queries"] == 3
    assert metrics["per_query"]["q3"]["nDCG@10"] == 0.0
    assert metrics["parse"]["outputs"] == 2 and metrics["parse"]["parse_failures"] == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == metrics["metrics"]
    assert saved["reranker"]["method"] == "test-length"
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert scores[0]["qid"] == "q1" and scores[0]["scores"][0] == ["d2", 3.0]
    assert "test-length" in (out / "report.md").read_text()


def test_max_queries_and_unknown_reranker(beir: Path, tmp_path: Path) -> None:
    m = run_eval(EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec"), max_queries=1), progress=False)
    assert list(m["per_query"]) == ["q1"] and m["num_queries"] == 1
    with pytest.raises(ConfigError, match="known rerankers: .*test-length"):
        run_eval(EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec"), reranker="nope"), progress=False)


def test_unknown_doc_ids_are_reported(beir: Path, tmp_path: Path) -> None:
    write_run({"q1": [("ghost", 11.0)] + [(f"d{i}", 10.0 - i) for i in range(8)]}, tmp_path / "r.trec")
    m = run_eval(EvalConfig(dataset=str(beir), first_stage=str(tmp_path / "r.trec"), reranker="test-length", top_k=4),
                 progress=False)
    assert m["unknown_doc_ids"]["count"] == 1
    assert m["unknown_doc_ids"]["examples"] == {"q1": ["ghost"]}


def test_rank_cli_reports_unknown_doc_ids(beir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_run({"q1": [("ghost", 11.0)] + [(f"d{i}", 10.0 - i) for i in range(8)]}, tmp_path / "r.trec")
    assert main(["rank", "--reranker", "test-length", "--first-stage", str(tmp_path / "r.trec"), "--dataset",
                 str(beir), "--top-k", "4", "--output", str(tmp_path / "o.trec")]) == 0
    assert "1 doc ids of --first-stage" in caplog.text and "'ghost'" in caplog.text


def test_qrels_naming_no_corpus_document_is_an_error(beir: Path, tmp_path: Path) -> None:
    """Qrels whose ids match no corpus document (another id field, a prefix) made every measure a silent 0."""
    write_qrels({"q1": {"D7": 1}, "q2": {"D0": 2}}, beir / "qrels" / "test.tsv", beir=True)
    for cfg in (EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec")),
                EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec"), reranker="test-length", top_k=3)):
        with pytest.raises(DataFormatError, match=r"none of the 2 documents it judges \(e.g. \['D0', 'D7'\]\) is in "
                                                  r"corpus.jsonl"):
            run_eval(cfg, progress=False)
    write_qrels({"q1": {"d7": 1}, "q2": {"D0": 2}}, beir / "qrels" / "test.tsv", beir=True)  # one real id: a score
    write_run({"q1": [("d0", 1.0)], "q2": [("d1", 1.0)]}, tmp_path / "r.trec")
    m = run_eval(EvalConfig(dataset=str(beir), first_stage=str(tmp_path / "r.trec")), progress=False)
    assert m["metrics"]["nDCG@10"] == 0.0


def test_a_grade_trec_eval_cannot_hold_fails_before_retrieval(beir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grade above the evaluated bound used to fail in the metrics, after retrieval and reranking had run."""
    import rerank.eval.pipeline as pipeline

    write_qrels({"q1": {"d0": 2_000_000}}, beir / "qrels" / "test.tsv", beir=True)
    monkeypatch.setattr(pipeline, "build_retriever", lambda *a, **k: pytest.fail("retrieval ran"))
    with pytest.raises(ConfigError, match="query 'q1', document 'd0': relevance grade 2000000 is above 1,000,000"):
        run_eval(EvalConfig(dataset=str(beir), retriever="bm25"), progress=False)


def test_rank_cli_jsonl_and_trec(beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in.jsonl"
    write_jsonl([{"query": {"id": "a", "text": "hi"}, "docs": ["bb", "a", {"id": "z", "text": "cccc"}]}], inp)
    assert main(["rank", "--reranker", "test-length", "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 0
    rec = json.loads((tmp_path / "o.jsonl").read_text())
    assert [d["id"] for d in rec["ranking"]] == ["z", "d0", "d1"]
    assert main(["rank", "--reranker", "test-length", "--first-stage", str(beir / "run.trec"), "--dataset", str(beir),
                 "--top-k", "2", "--output", str(tmp_path / "o.trec")]) == 0
    assert [d for d, _ in read_run(tmp_path / "o.trec")["q2"]][:3] == ["d1", "d0", "d2"]
    assert main(["rank", "--reranker", "nope", "--input", str(inp), "--output", str(tmp_path / "x.trec")]) == 2
    assert "unknown reranker 'nope'" in capsys.readouterr().err


def test_retriever_run_is_written_once(tiny_beir_dir: Path, tmp_path: Path) -> None:
    """Without a reranker run.trec is the retriever's run and no copy is written; with one, first_stage.trec keeps
    the retriever's order beside the reranked run.trec (and a later plain run removes it)."""
    out = tmp_path / "out"
    common = dict(dataset=str(tiny_beir_dir), retriever="bm25", retriever_options={"show_progress": False}, top_k=3,
                  depth=10, output=str(out))
    run_eval(EvalConfig(**common, reranker="test-length"), progress=False)
    first, reranked = read_run(out / "first_stage.trec"), read_run(out / "run.trec")
    assert first.keys() == reranked.keys() and first != reranked
    assert all({d for d, _ in first[q]} == {d for d, _ in reranked[q]} for q in first)
    run_eval(EvalConfig(**common), progress=False)
    assert not (out / "first_stage.trec").exists() and not (out / "scores.jsonl").exists()
    assert read_run(out / "run.trec") == first


@pytest.mark.parametrize(("batch_queries", "calls"), [(8, 2), (1, 4)])
def test_eval_runs_window_heads_in_lockstep(beir: Path, tmp_path: Path, batch_queries: int, calls: int) -> None:
    """``rerank eval`` gives the head ``batch_queries`` queries at once, so a window head advances their sliding windows
    together: FIRST makes one backend call per sliding step for the whole chunk."""
    from rerank.backends.scripted import ScriptedBackend
    from rerank.heads.sliding_window import SlidingWindowConfig
    from rerank.methods.first.head import FirstReranker
    from rerank.testing import build_tokenizer

    backend = ScriptedBackend(build_tokenizer(), logprobs_fn=lambda p, ids: [float(-i) for i in range(len(ids))])
    head = FirstReranker(SlidingWindowConfig(window=4, stride=2), backend=backend)
    run_eval(EvalConfig(dataset=str(beir), first_stage=str(beir / "run.trec"), top_k=6, batch_queries=batch_queries,
                        output=str(tmp_path / "out")), reranker=head, progress=False)
    # q1 and q2 (q3 has no run): top-6 in windows [2,6) then [0,4), two sliding steps each
    assert len(backend.log) == 4 and backend.calls["next_token_logprobs"] == calls


def test_interpolate_orders_the_top_k_by_both_scores(beir: Path, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    """alpha x minmax(reranker) + (1 - alpha) x minmax(first stage) over the top 4; alpha 1 is the reranker's order,
    0 the first stage's; 0.4 here is neither (d0..d3: first stage 1, .989, .978, 0; lengths 0, 1/3, 2/3, 1)."""
    write_run({"q1": [("d0", 10.0), ("d1", 9.9), ("d2", 9.8), ("d3", 1.0), ("d4", 0.5)]}, tmp_path / "fs.trec")

    def order(alpha: float | None) -> list[str]:
        out = tmp_path / f"out-{alpha}"
        run_eval(EvalConfig(dataset=str(beir), first_stage=str(tmp_path / "fs.trec"), reranker="test-length",
                            top_k=4, interpolate=alpha, output=str(out)), progress=False)
        return [d for d, _ in read_run(out / "run.trec")["q1"]]

    assert order(None) == ["d3", "d2", "d1", "d0", "d4"]
    assert order(1.0) == ["d3", "d2", "d1", "d0", "d4"]
    assert order(0.0) == ["d0", "d1", "d2", "d3", "d4"]
    assert order(0.4) == ["d2", "d1", "d0", "d3", "d4"]
    out = tmp_path / "out-0.4"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["interpolate"] == 0.4
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert dict(next(r["scores"] for r in rows if r["qid"] == "q1")) == {"d0": 1.0, "d1": 2.0, "d2": 3.0, "d3": 4.0}

    code, _, err = run_cli("eval", "--dataset", str(beir), "--first-stage", str(tmp_path / "fs.trec"),
                           "--reranker", "test-length", "--top-k", "4", "--interpolate", "0.4",
                           "--output", str(tmp_path / "cli"))
    assert code == 0, err
    assert [d for d, _ in read_run(tmp_path / "cli" / "run.trec")["q1"]] == ["d2", "d1", "d0", "d3", "d4"]
    for bad, message in ((["--reranker", "test-length", "--interpolate", "1.5"], "interpolate must be a number"),
                         (["--interpolate", "0.5"], "interpolate weighs a reranker's scores")):
        code, _, err = run_cli("eval", "--dataset", str(beir), "--first-stage", str(tmp_path / "fs.trec"), *bad,
                               "--output", str(tmp_path / "bad"))
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_nan_reranker_scores_are_an_error_not_an_arbitrary_order(beir: Path, tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    rc, _, err = run_cli("eval", "--dataset", beir, "--first-stage", beir / "run.trec", "--reranker", "test-nan",
                         "--top-k", "3", "--output", tmp_path / "nan")
    assert rc == 2 and "Traceback" not in err and err.count("error:") == 1, err  # (and the progress bar)
    assert "scored 1 of 3 documents of query 'q1' NaN (e.g. 'd2')" in err and "dtype=float32" in err
    assert not (tmp_path / "nan" / "run.trec").exists()
