"""Audit s43/repro findings 1 (eval part), 3, 4, 5 and 6: what ``rerank eval``, ``rerank evaluate``, ``rerank rank``
and the leaderboard record of how a result was produced.

``metrics.json`` records the command line (secrets redacted), the code revision, the threads and device, a stamp of
the reranker's model files and the fingerprints of the data files read; the reranker's description is redacted as
the config is; a ``remote`` reranker is recorded as the server it is. ``rerank evaluate --json`` names its files with
their sha256; ``rerank rank`` writes ``OUTPUT.meta.json``; the leaderboard records when and with which versions each
cell was computed and names the cells computed under other versions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import rerank.eval.pipeline as pipeline
from rerank import __version__
from rerank.data.io import read_run, write_jsonl, write_qrels, write_run
from rerank.eval.pipeline import EvalConfig, run_eval
from rerank.heads.registry import register_reranker
from rerank.utils.files import hash_obj, path_stamp, sha256_file
from tests.serve_support import LongestFirst

register_reranker(LongestFirst.method, LongestFirst)

SECRET = "sk-FAKESECRET123"


def test_command_line_redacts_secret_options_and_url_passwords() -> None:
    argv = ["rerank", "eval", "--reranker-set", f"api_key={SECRET}", f"--reranker-set=backend_options.api_key={SECRET}",
            "--base-url", f"http://u:{SECRET}@127.0.0.1:9/v1", "--retriever-set", "k1=0.9", "--top-k", "5"]
    assert pipeline.command_line(argv) == [
        "rerank", "eval", "--reranker-set", "api_key=<redacted>", "--reranker-set=backend_options.api_key=<redacted>",
        "--base-url", "http://u:<redacted>@127.0.0.1:9/v1", "--retriever-set", "k1=0.9", "--top-k", "5"]


def test_eval_records_command_revision_threads_device_and_fingerprints(
        tiny_beir_dir: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics.json had no argv, code revision, thread count, model content stamp or data hashes (finding 3)."""
    import torch

    import rerank.trainers.base

    model = tmp_path / "ce"
    shutil.copytree(tiny_bert_dir, model)
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr("sys.argv", ["rerank", "eval", "--reranker-set", f"api_key={SECRET}"])
    monkeypatch.setattr(rerank.trainers.base, "git_hash", lambda: "0123abc-dirty")  # training's helper, reused
    pipeline._code_revision.cache_clear()
    out = tmp_path / "out"
    try:
        run_eval(EvalConfig(dataset=str(tiny_beir_dir), retriever="bm25", reranker="cross-encoder", model=str(model),
                            top_k=3, depth=5, max_queries=3, rel_level=1, output=str(out)), progress=False)
    finally:
        pipeline._code_revision.cache_clear()
    text = (out / "metrics.json").read_text()
    assert SECRET not in text
    p = json.loads(text)["provenance"]
    assert p["command"] == ["rerank", "eval", "--reranker-set", "api_key=<redacted>"]
    assert p["git_hash"] == "0123abc-dirty"
    assert p["threads"] == {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": "3"} and p["device"] == "cpu"
    assert p["model_inputs"]["model"] == {"model": str(model), "path": str(model.resolve()),
                                          "fingerprint": f"stamp:{hash_obj(path_stamp(model))}"}
    data = p["data_inputs"]
    assert set(data) == {"corpus", "queries", "qrels"}
    for name, path in (("corpus", "corpus.jsonl"), ("queries", "queries.jsonl"), ("qrels", "qrels/test.tsv")):
        assert data[name] == {"path": str((tiny_beir_dir / path).resolve()),
                              "fingerprint": f"sha256:{sha256_file(tiny_beir_dir / path)}"}
    report = (out / "report.md").read_text()
    assert "(git 0123abc-dirty); device cpu; threads: torch" in report and ", OMP_NUM_THREADS 3\n" in report
    assert "- command: `rerank eval --reranker-set api_key=<redacted>`" in report
    assert f"- fingerprints: model {p['model_inputs']['model']['fingerprint'][:18]}, corpus sha256:" in report
    before = p["model_inputs"]["model"]["fingerprint"]
    (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text() + " ")
    assert pipeline.model_input(str(model))["fingerprint"] != before  # a changed file changes the stamp


def test_a_model_stamp_does_not_read_large_weights_and_a_hub_id_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights over 16 MiB are stamped by size and time (as leaderboard cells are keyed), not read on every run."""
    import rerank.utils.files

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(17 << 20)
    read: list[str] = []
    real = rerank.utils.files.sha256_file
    monkeypatch.setattr(rerank.utils.files, "sha256_file", lambda p, *a: read.append(Path(p).name) or real(p, *a))
    assert pipeline.model_input(str(model))["fingerprint"].startswith("stamp:") and read == ["config.json"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "no-such-org/no-such-model"
    assert pipeline.model_input(hub_id) == {"model": hub_id, "hub_revision": None}


def test_a_large_corpus_not_hashed_by_the_first_stage_is_stamped_by_size_and_time(
        tiny_ds: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A given run, its queries and qrels are read whole and hashed whole; a corpus over the limit is not read again."""
    monkeypatch.setattr(pipeline, "STAMP_HASH_LIMIT", 10)
    run = tmp_path / "first.trec"
    write_run({"q1": [("d2", 2.0), ("d1", 1.0)]}, run)
    m = run_eval(EvalConfig(dataset=str(tiny_ds.root), first_stage=str(run), reranker=LongestFirst.method,
                            top_k=2, rel_level=1), progress=False)
    data = m["provenance"]["data_inputs"]
    st = tiny_ds.corpus_path.stat()
    assert data["corpus"]["fingerprint"] == f"size:{st.st_size},mtime_ns:{st.st_mtime_ns}"
    assert data["first_stage"] == {"path": str(run.resolve()), "fingerprint": f"sha256:{sha256_file(run)}"}
    assert data["qrels"]["fingerprint"] == f"sha256:{sha256_file(tiny_ds.root / 'qrels' / 'test.tsv')}"


class Described(LongestFirst):
    """A reranker whose description carries a URL password and an API key (as a backend's may)."""

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "backend": {"backend": "openai", "base_url": f"http://u:{SECRET}@h:1/v1",
                                                   "api_key": SECRET, "model": "served"}}


def test_the_rerankers_description_is_redacted_as_the_config_is(tiny_ds: Any, tmp_path: Path) -> None:
    """The description was written as describe() returned it (finding 1: a base_url password in metrics.json)."""
    out = tmp_path / "out"
    m = run_eval(EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", top_k=2, rel_level=1, output=str(out)),
                 reranker=Described(), progress=False)
    text = (out / "metrics.json").read_text()
    assert SECRET not in text and SECRET not in (out / "report.md").read_text()
    backend = m["reranker"]["backend"]
    assert backend["api_key"] == "<redacted>" and backend["base_url"] == "http://u:<redacted>@h:1/v1"
    assert "model_inputs" not in m["provenance"]  # a served model's files are the server's


def _scripted_server(request: httpx.Request) -> httpx.Response:
    """A rerank server answering every request, longest document first."""
    docs = json.loads(request.content)["documents"]
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    return httpx.Response(200, json={"results": [{"index": i, "relevance_score": 1.0 / (r + 1)}
                                                 for r, i in enumerate(order)]})


def test_a_remote_reranker_is_recorded_as_the_server_it_is(tiny_ds: Any, tmp_path: Path) -> None:
    """It was recorded as backend "transformers" with model null, its base_url password in plain text (finding 5)."""
    from rerank.client import RemoteReranker, RemoteRerankerConfig

    url = f"http://u:{SECRET}@127.0.0.1:9"
    rr = RemoteReranker(RemoteRerankerConfig(base_url=url))
    rr._client = httpx.Client(base_url=url, transport=httpx.MockTransport(_scripted_server))
    out = tmp_path / "out"
    try:
        m = run_eval(EvalConfig(dataset=str(tiny_ds.root), retriever="bm25", top_k=3, rel_level=1,
                                output=str(out)), reranker=rr, progress=False)
    finally:
        rr.close()
    assert SECRET not in (out / "metrics.json").read_text()
    r = m["reranker"]
    assert (r["method"], r["model"], r["backend_name"]) == ("remote", None, None)
    assert r["base_url"] == "http://u:<redacted>@127.0.0.1:9" and "model_inputs" not in m["provenance"]
    assert ("- reranker: `remote`, the rerank server at `http://u:<redacted>@127.0.0.1:9` (its own model and backend)"
            in (out / "report.md").read_text())


def test_evaluate_json_names_its_files_with_their_sha256(tmp_path: Path, run_cli: Any) -> None:
    """`rerank evaluate --json` printed only metrics and query counts (finding 4)."""
    run, qrels = tmp_path / "run.trec", tmp_path / "qrels.tsv"
    write_run({"q1": [("d1", 2.0), ("d2", 1.0)]}, run)
    write_qrels({"q1": {"d1": 1}}, qrels, beir=True)
    rc, out, err = run_cli("evaluate", "--run", run, "--qrels", qrels, "--json", "-m", "nDCG@10")
    assert rc == 0, err
    got = json.loads(out)
    assert got["metrics"] == {"nDCG@10": 1.0} and got["num_queries"] == 1 and got["rel_level"] == 1
    p = got["provenance"]
    assert p["rerank"] == __version__ and "git_hash" in p and p["command"]
    assert p["data_inputs"] == {"run": {"path": str(run.resolve()), "fingerprint": f"sha256:{sha256_file(run)}"},
                                "qrels": {"path": str(qrels.resolve()), "fingerprint": f"sha256:{sha256_file(qrels)}"}}


def test_rank_writes_its_record_beside_the_output(tiny_ds: Any, tmp_path: Path, run_cli: Any) -> None:
    """`rerank rank` wrote the rankings and nothing about how it ran (finding 4)."""
    inp = tmp_path / "in.jsonl"
    docs = [{"id": "a", "text": "x"}, {"id": "b", "text": "xx"}]
    write_jsonl([{"query": {"id": "q1", "text": "rain"}, "docs": docs}], inp)
    out = tmp_path / "ranked.jsonl"
    rc, _, err = run_cli("rank", "--reranker", LongestFirst.method, "--input", inp, "--output", out, "--top-k", "2")
    assert rc == 0, err
    rec = json.loads((tmp_path / "ranked.jsonl.meta.json").read_text())
    assert rec["output"] == str(out.resolve()) and rec["num_queries"] == 1
    assert rec["config"]["top_k"] == 2 and rec["reranker"]["method"] == LongestFirst.method
    p = rec["provenance"]
    assert p["rerank"] == __version__ and "git_hash" in p and "threads" in p and p["command"]
    assert p["data_inputs"] == {"input": {"path": str(inp.resolve()), "fingerprint": f"sha256:{sha256_file(inp)}"}}

    run = tmp_path / "first.trec"
    write_run({"q1": [("d2", 2.0), ("d1", 1.0)]}, run)
    trec = tmp_path / "ranked.trec"
    rc, _, err = run_cli("rank", "--reranker", LongestFirst.method, "--first-stage", run, "--dataset", tiny_ds.root,
                         "--output", trec)
    assert rc == 0, err
    assert list(read_run(trec)) == ["q1"]
    data = json.loads((tmp_path / "ranked.trec.meta.json").read_text())["provenance"]["data_inputs"]
    assert set(data) == {"corpus", "queries", "first_stage"}
    assert data["first_stage"]["fingerprint"] == f"sha256:{sha256_file(run)}"


def test_leaderboard_records_each_cells_computation_and_names_other_versions(
        tiny_beir_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reused cells were stamped with this run's date and machine only (finding 6)."""
    from rerank.eval.leaderboard import run_leaderboard

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(tiny_beir_dir, data / "tiny")
    cfg = {"name": "prov", "published": False, "columns": [{"label": "tiny", "dataset": "tiny", "max_queries": 3}],
           "rows": [{"name": "BM25", "retriever": "bm25"}, {"name": "BM25 b", "retriever": "bm25",
                                                              "retriever_options": {"b": 0.5}}]}
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    results = tmp_path / "results"
    first = run_leaderboard(path, data_root=data, results_dir=results, progress=False)
    cell = first["cells"]["BM25"]["tiny"]
    assert cell["reused"] is False and cell["computed"]["rerank"] == __version__
    assert cell["computed"]["torch"] == first["versions"]["torch"] and cell["computed"]["date"]
    assert not any("other versions" in n for n in first["notes"])

    metrics_file = results / "BM25" / "tiny" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["provenance"]["torch"] = "0.0-old"
    metrics["provenance"]["date"] = "2020-01-02T03:04:05Z"
    metrics_file.write_text(json.dumps(metrics))
    second = run_leaderboard(path, data_root=data, results_dir=results, progress=False)
    assert second["cells"]["BM25"]["tiny"]["computed"]["torch"] == "0.0-old"
    md = Path(second["markdown"]).read_text()
    now = second["versions"]
    note = (f"cells computed under other versions than this run's (rerank {now['rerank']}, torch {now['torch']}, "
            f"transformers {now['transformers']}): 'BM25' x 'tiny' (torch 0.0-old)")
    assert note in second["notes"] and note in md
    assert "2 of 2 cells were reused from earlier runs, computed 2020-01-02T03:04:05Z to " in md


def test_a_remote_rows_backend_is_not_the_config_default() -> None:
    """A `remote` row showed backend `transformers` (finding 5): the server's backend is not known here."""
    from rerank.config import from_dict
    from rerank.eval.leaderboard import LeaderboardConfig, _assemble, render_markdown

    cfg = from_dict(LeaderboardConfig, {"name": "t", "published": False, "columns": [{"label": "a", "dataset": "a"}],
                                        "rows": [{"name": "R", "retriever": "bm25", "reranker": "remote"}]})
    cell = {"value": 0.5, "per_query": {"q1": 0.5}, "num_queries": 1, "seconds": 1.0, "queries_per_s": 1.0,
            "parse": None, "reused": False, "dir": "d", "load_avg_1min": None, "workers": 1}
    report = _assemble(cfg, {"R": {"a": cell}}, [])
    assert report["rows"][0]["backend"] is None
    assert "| 1 | R | bm25 | remote | — |" in render_markdown(report, "lb.yaml", None)


def test_rank_refuses_an_output_name_too_long_for_its_record(tmp_path: Path, run_cli) -> None:
    """A 222-character output name was ranked into, then its OUTPUT.meta.json failed (name too long), leaving a
    ranking without its record (review s43/reviewH)."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "docs": ["a", "b"]}\n')
    out = tmp_path / ("r" * 240 + ".jsonl")  # fits; with .meta.json (256 bytes) it does not
    rc, _, err = run_cli("rank", "--reranker", "cross-encoder", "--model", "m", "--input", source, "--output", out)
    assert rc == 2 and "too long a name for its record .meta.json" in err and not out.exists()


def test_the_git_hash_is_rerank_s_own_checkout_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rerank installed inside another project's repository recorded that project's commit (review s43/reviewH)."""
    import subprocess

    from rerank.trainers import base

    project = tmp_path / "project"
    installed = project / ".venv" / "lib" / "site-packages" / "rerank" / "trainers" / "base.py"
    installed.parent.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    own = base.git_hash()
    assert own is None or len(own.removesuffix("-dirty")) == 40
    monkeypatch.setattr(base, "__file__", str(installed))
    assert base.git_hash() is None
