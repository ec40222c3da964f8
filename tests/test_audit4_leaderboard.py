"""Audit fixes: a leaderboard cell follows a model folder's files in its subfolders (a bi-encoder saved again in place
reruns its cell), and a damaged cached cell is run again with a warning naming the file instead of a traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from rerank.eval.pipeline import EvalConfig


def _board(tmp_path: Path, data: Path, rows: list[dict]) -> list[str | Path]:
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(yaml.safe_dump({"name": "audit4", "published": False, "significance": {"samples": 50},
                                   "columns": [{"label": "tiny", "dataset": str(data), "top_k": 10}], "rows": rows}),
                   encoding="utf-8")
    res = tmp_path / "results"
    return ["leaderboard", "--config", cfg, "--results-dir", res, "--output-md", res / "lb.md"]


def test_a_bi_encoder_saved_again_in_place_reruns_its_cell(tmp_path: Path, tiny_beir_dir: Path, run_cli,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """BiEncoder.save keeps the weights under 0_Transformer/: the second leaderboard reused the first weights' cell
    ("0 cells run, 1 reused") and printed their number."""
    from rerank.retrieval.dense import BiEncoder
    from rerank.testing import tiny_sentence_transformer

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    for seed in (0, 1):
        tiny_sentence_transformer(tmp_path / f"st{seed}", seed=seed)
    BiEncoder.load(str(tmp_path / "st0")).save(model)
    assert (model / "0_Transformer" / "model.safetensors").exists()
    args = _board(tmp_path, tiny_beir_dir, [{"name": "dense", "retriever": "dense",
                                             "retriever_options": {"model": str(model)}}])
    rc, out, err = run_cli(*args)
    assert rc == 0 and "1 cells run, 0 reused" in out, err
    first = (tmp_path / "results" / "dense" / "tiny" / "run.trec").read_text()
    BiEncoder.load(str(tmp_path / "st1")).save(model)  # retrained in place: new weights, same folder
    rc, out, err = run_cli(*args)
    assert rc == 0 and "1 cells run, 0 reused" in out, err
    again = (tmp_path / "results" / "dense" / "tiny" / "run.trec").read_text()
    assert again != first
    rc, out, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "dense", "--model", model,
                           "--retriever-set", "progress=false", "--output", tmp_path / "direct")
    assert rc == 0, err
    assert (tmp_path / "direct" / "run.trec").read_text() == again
    rc, out, _ = run_cli(*args)
    assert rc == 0 and "0 cells run, 1 reused" in out  # unchanged files: the cell is reused


def test_cell_hash_reads_model_subfolders_and_stamps_large_weights_by_size_and_time(
        tmp_path: Path, tiny_beir_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file under a model folder is in the key; a weight file over the size limit is not read (a multi-GB model
    is not hashed on every run): its size and mtime are."""
    import rerank.utils.files as files
    from rerank.eval.leaderboard import _cell_hash

    model = tmp_path / "enc"
    (model / "0_Transformer").mkdir(parents=True)
    (model / "modules.json").write_text("[]")
    (model / "0_Transformer" / "config.json").write_text('{"hidden_size": 8}')
    big = model / "0_Transformer" / "model.safetensors"
    with open(big, "wb") as f:
        f.truncate(files.STAMP_HASH_LIMIT + 1)  # sparse: no disk
    (model / ".git").mkdir()
    cfg = EvalConfig(dataset=str(tiny_beir_dir), retriever="dense", retriever_options={"model": str(model)})
    hashed: list[Path] = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, *a: hashed.append(Path(p)) or real(p, *a))
    before = _cell_hash(cfg, tiny_beir_dir)
    assert big not in hashed and model / "0_Transformer" / "config.json" in hashed
    (model / ".git" / "index").write_text("git's own state")  # hidden: no model loader reads it
    assert _cell_hash(cfg, tiny_beir_dir) == before
    (model / "0_Transformer" / "config.json").write_text('{"hidden_size": 9}')
    changed = _cell_hash(cfg, tiny_beir_dir)
    assert changed != before
    st = big.stat()
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _cell_hash(cfg, tiny_beir_dir) != changed
    (model / "2_Dense").mkdir()
    added = _cell_hash(cfg, tiny_beir_dir)
    (model / "2_Dense" / "config.json").write_text("{}")
    assert _cell_hash(cfg, tiny_beir_dir) != added
    assert big not in hashed


DAMAGE = {
    "garbage cell.json": ("cell.json", lambda p: p.write_text("{oops"), "not valid JSON"),
    "cell.json a list": ("cell.json", lambda p: p.write_text("[]"), "holds a JSON list"),
    "hash not a string": ("cell.json", lambda p: p.write_text('{"hash": 1}'), "'hash' is not a JSON string"),
    "empty metrics.json": ("metrics.json", lambda p: p.write_text(""), "not valid JSON"),
    "metrics.json without per_query": (
        "metrics.json", lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                           if k != "per_query"})), "no 'per_query'"),
    "per_query entries not objects": (
        "metrics.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "per_query": {"q1": 1}})),
        "'per_query' entry is not a JSON object"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_cached_cell_runs_again_with_a_warning_naming_the_file(
        case: str, tmp_path: Path, tiny_beir_dir: Path, run_cli, caplog: pytest.LogCaptureFixture) -> None:
    """A garbage cell.json or an empty metrics.json gave 'Expecting value…' naming no file, a metrics.json without
    per_query a KeyError traceback: a cell is derived from its inputs, so it runs again."""
    args = _board(tmp_path, tiny_beir_dir, [{"name": "BM25", "retriever": "bm25"}])
    rc, out, err = run_cli(*args)
    assert rc == 0 and "1 cells run" in out, err
    cell = tmp_path / "results" / "BM25" / "tiny"
    want = json.loads((tmp_path / "results" / "leaderboard.json").read_text())["rows"][0]["columns"]
    name, damage, why = DAMAGE[case]
    damage(cell / name)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank.eval.leaderboard"):
        rc, out, err = run_cli(*args)
    assert rc == 0 and "1 cells run, 0 reused" in out and "Traceback" not in err, err
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(cell / name) in warned[0] and why in warned[0], warned
    assert "\n" not in warned[0] and "running cell 'BM25' x 'tiny' again" in warned[0]
    assert json.loads((tmp_path / "results" / "leaderboard.json").read_text())["rows"][0]["columns"] == want
    rc, out, _ = run_cli(*args)
    assert rc == 0 and "0 cells run, 1 reused" in out  # the cell was written whole again


def test_only_cached_lists_a_damaged_cell_as_not_run(tmp_path: Path, tiny_beir_dir: Path, run_cli) -> None:
    args = _board(tmp_path, tiny_beir_dir, [{"name": "BM25", "retriever": "bm25"}])
    assert run_cli(*args)[0] == 0
    (tmp_path / "results" / "BM25" / "tiny" / "metrics.json").write_text("")
    rc, out, err = run_cli(*args, "--only-cached")
    assert rc == 0 and "0 cells run, 0 reused" in out and "'BM25' x 'tiny' not run" in out, err


def test_a_cell_of_another_config_is_not_called_damaged(tmp_path: Path, tiny_beir_dir: Path, run_cli,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Another hash is a plain miss: no warning, even when that cell's metrics.json is damaged too."""
    args = _board(tmp_path, tiny_beir_dir, [{"name": "BM25", "retriever": "bm25"}])
    assert run_cli(*args)[0] == 0
    cell = tmp_path / "results" / "BM25" / "tiny"
    saved = json.loads((cell / "cell.json").read_text())
    (cell / "cell.json").write_text(json.dumps({**saved, "hash": "0" * 16}))
    (cell / "metrics.json").write_text("")
    with caplog.at_level(logging.WARNING, logger="rerank.eval.leaderboard"):
        rc, out, err = run_cli(*args)
    assert rc == 0 and "1 cells run" in out, err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_copied_model_folder_keeps_the_shape_of_its_stamp(tmp_path: Path) -> None:
    """path_stamp: relative paths under the folder, content hashes of small files, nothing for an absent path."""
    from rerank.utils.files import path_stamp

    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "sub" / "w.bin").write_bytes(b"0123456789ab")
    (tmp_path / "m" / "c.json").write_text("{}")
    shutil.copytree(tmp_path / "m", tmp_path / "n")
    stamp = path_stamp(tmp_path / "m")
    assert [s[0] for s in stamp] == ["c.json", "sub/w.bin"] and stamp == path_stamp(tmp_path / "n")
    assert path_stamp(tmp_path / "m", recursive=False) == stamp[:1]
    assert path_stamp(tmp_path / "m", hash_limit=4)[1][:2] == ["sub/w.bin", 12]
    assert path_stamp(tmp_path / "absent") == []
