"""Audit 2 (examples): the chain scripts' argument, option and resume checks, data builds kept only while their
inputs are unchanged and hashed independently of path spelling, the leaderboard's skip note. Every script here runs
on stub data in a second or two (no data build, no training)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rerank.config import to_dict
from rerank.data.io import write_run
from rerank.data_recipes.base import build
from rerank.errors import ConfigError

CE_TRAIN = "configs/distill/ce-train.yaml"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "RERANK_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    if "RERANK_DATA" not in extra:
        env.pop("RERANK_DATA", None)
    return env


def _sh(script: Path, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _finished_run(repo_root: Path, out: Path, data_path: str, *overrides: str) -> None:
    """A stand-in finished ``sft`` run of ce-train.yaml: OUT/model and the record ``rerank train`` writes."""
    from rerank.trainers.base import get_trainer, load_train_config

    cfg = load_train_config(get_trainer("sft").config_class, repo_root / CE_TRAIN, [f"data.path={data_path}",
                                                                                   *overrides])
    (out / "model").mkdir(parents=True)
    (out / "rerank_train.json").write_text(json.dumps({"trainer": "sft", "config": to_dict(cfg)}))


def test_train_stage_refuses_a_finished_model_trained_with_other_options(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ce"
    _finished_run(repo_root, out, "ce/data/ce-train.jsonl", "max_steps=4")
    stage = repo_root / "examples" / "train-stage.sh"
    env = _env(tmp_path, RERANK_DATA=str(tmp_path))
    r = _sh(stage, "sft", str(repo_root / CE_TRAIN), "ce", "--set", "data.path=ce/data/ce-train.jsonl",
            "--set", "max_steps=4", "--set", "learning_rate=1e-3", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "training is done" not in r.stdout
    assert r.stderr.startswith("error: ce/model was trained with other options") and "learning_rate: 8e-05 -> 0.001" \
        in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_stage_keeps_a_finished_model_of_the_same_options_spelt_otherwise(repo_root: Path,
                                                                                tmp_path: Path) -> None:
    _finished_run(repo_root, tmp_path / "ce", "ce/data/ce-train.jsonl", "max_steps=4")
    stage = repo_root / "examples" / "train-stage.sh"
    env = _env(tmp_path, RERANK_DATA=str(tmp_path))
    r = _sh(stage, "sft", str(repo_root / CE_TRAIN), "./ce", "--set", f"data.path={tmp_path}/ce/data/ce-train.jsonl",
            "--set", "max_steps=4", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "training is done" in r.stdout, r.stderr


def test_train_stage_keeps_a_run_resumed_to_the_requested_length(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ce"
    _finished_run(repo_root, out, "d.jsonl", "max_steps=4")  # the record keeps the first run's length
    (out / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-8" / "trainer_state.json").write_text(json.dumps({"max_steps": 8}))
    r = _sh(repo_root / "examples" / "train-stage.sh", "sft", str(repo_root / CE_TRAIN), "ce", "--set",
            "data.path=d.jsonl", "--set", "max_steps=8", cwd=tmp_path, env=_env(tmp_path))
    assert r.returncode == 0 and "training is done" in r.stdout, r.stderr


def test_chains_check_training_options_before_any_data_build(repo_root: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, RERANK_DATA=str(tmp_path))  # an empty root: a data build would fail on it
    r = _sh(repo_root / "examples" / "distill-cross-encoder.sh", "out", "--set", "bogus_key=1", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "unknown key 'bogus_key' for SFTTrainConfig" in r.stderr
    assert not (tmp_path / "out").exists()


def test_smollm2_chain_checks_the_grpo_options_before_any_data_build(repo_root: Path, tmp_path: Path) -> None:
    r = _sh(repo_root / "examples" / "distill-smollm2.sh", "smo", "--sft", "max_steps=2", "--grpo", "max_step=1",
            cwd=tmp_path, env=_env(tmp_path, RERANK_DATA=str(tmp_path)))
    assert r.returncode == 2 and "unknown key 'max_step' for GRPOTrainConfig" in r.stderr
    assert not (tmp_path / "smo").exists()


@pytest.mark.parametrize("script", ["distill-cross-encoder.sh", "distill-smollm2.sh", "distill-data.sh",
                                    "train-stage.sh"])
def test_scripts_help_exits_0_and_a_dash_out_is_refused(repo_root: Path, tmp_path: Path, script: str) -> None:
    path = repo_root / "examples" / script
    for flag in ("--help", "-h"):
        r = _sh(path, flag, cwd=tmp_path, env=_env(tmp_path))
        assert r.returncode == 0 and r.stdout.startswith(f"usage: examples/{script}"), (flag, r.stderr)
    if script.startswith("distill-") and script != "distill-data.sh":
        r = _sh(path, "-o", cwd=tmp_path, env=_env(tmp_path))
        assert r.returncode == 2 and "starts with '-'" in r.stderr and not (tmp_path / "-o").exists()


def test_default_data_root_is_beside_the_repository(repo_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "repo" / "examples"
    copy.mkdir(parents=True)
    shutil.copy(repo_root / "examples" / "distill-data.sh", copy)
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    r = _sh(copy / "distill-data.sh", "d", "ce", "x.yaml", cwd=elsewhere, env=_env(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: data root {tmp_path}/repo/../shared/data does not exist: set RERANK_DATA to "
                                "the folder holding scifact and dl19-bm25-top100")


def _part(data: Path, name: str, rows: list[str], created: str) -> None:
    (data / name).mkdir(parents=True, exist_ok=True)
    (data / name / "data.jsonl").write_text("".join(json.dumps({"qid": q, "query": q}) + "\n" for q in rows))
    (data / name / "manifest.json").write_text(json.dumps({"recipe_hash": "h", "created": created,
                                                           "counts": {"rows": len(rows)}}))


def test_the_training_file_is_joined_again_when_a_part_was_rebuilt(repo_root: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a `rerank` that builds nothing: the parts are stubs
    bin_dir.mkdir()
    (bin_dir / "rerank").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "rerank").chmod(0o755)
    env = _env(tmp_path, RERANK_DATA=str(tmp_path))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    data = tmp_path / "data"
    for name in ("scifact-train", "ict-scifact", "ict-dl19"):
        _part(data, f"ce-{name}", [f"{name}-1", f"{name}-2"], "t1")
    script = repo_root / "examples" / "distill-data.sh"
    r = _sh(script, str(data), "ce", "labels.yaml", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    train = data / "ce-train.jsonl"
    assert len(train.read_text().splitlines()) == 6 and "joined" in r.stdout
    r = _sh(script, str(data), "ce", "labels.yaml", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "joined" not in r.stdout  # nothing rebuilt: the join is kept
    _part(data, "ce-ict-dl19", ["only"], "t2")  # a part rebuilt from other data
    r = _sh(script, str(data), "ce", "labels.yaml", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["qid"] for x in train.read_text().splitlines()][-2:] == ["ict-scifact-2", "dl19-only"]


def _synth(dataset: Path) -> dict:
    return {"recipe": "query_synthesis", "source": {"dataset": str(dataset)}, "generator": {"kind": "sentence"},
            "max_docs": 6, "min_doc_chars": 10, "min_query_words": 2}


def test_a_finished_build_is_not_kept_when_its_inputs_changed(tiny_beir_dir: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(tiny_beir_dir, ds)
    out = tmp_path / "q"
    first = build(_synth(ds), out, progress=False)
    assert "corpus" in first["inputs"]
    assert build(_synth(ds), out, resume=True, progress=False) == first
    with open(ds / "corpus.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "new", "title": "", "text": "another document entirely"}) + "\n")
    with pytest.raises(ConfigError, match=rf"^{out}: cannot resume: corpus {ds}/corpus.jsonl changed since the "
                                          r"finished build was made, so its \d+ rows were built from other data"):
        build(_synth(ds), out, resume=True, progress=False)
    # a manifest of an older rerank (no recorded inputs) is checked on its corpus hash
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["inputs"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="cannot resume: corpus"):
        build(_synth(ds), out, resume=True, progress=False)


def test_recipe_hash_does_not_depend_on_path_spelling(tiny_beir_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    build(_synth(tiny_beir_dir), tmp_path / "OUT" / "ict", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "OUT" / "ict" / "data.jsonl").read_text().splitlines()]
    docs = [json.loads(x)["_id"] for x in (tiny_beir_dir / "corpus.jsonl").read_text().splitlines()[:4]]
    write_run({r["qid"]: [(d, 10.0 - i) for i, d in enumerate(docs)] for r in rows}, tmp_path / "run.trec")

    def labels(queries: str, run: str) -> dict:
        return {"recipe": "teacher_labels", "mode": "first_stage", "candidates": 2,
                "source": {"dataset": str(tiny_beir_dir), "queries": queries}, "first_stage": {"run": run}}

    made = build(labels("OUT/ict/data.jsonl", "run.trec"), tmp_path / "OUT" / "lab", progress=False)
    again = build(labels("./OUT/ict/data.jsonl", f"{tmp_path}/run.trec"), "./OUT/lab", resume=True, progress=False)
    assert again["recipe_hash"] == made["recipe_hash"]
    shutil.copytree(tmp_path / "OUT", tmp_path / "OUT2")  # a copied OUT resumes too
    moved = build(labels("OUT2/ict/data.jsonl", "run.trec"), tmp_path / "OUT2" / "lab", resume=True, progress=False)
    assert moved["recipe_hash"] == made["recipe_hash"]
    with open(tmp_path / "OUT2" / "ict" / "data.jsonl", "a", encoding="utf-8") as f:  # other queries: not kept
        f.write((tmp_path / "OUT2" / "ict" / "data.jsonl").read_text().splitlines()[0].replace('"synth-', '"x-') + "\n")
    with pytest.raises(ConfigError, match="OUT2/lab: cannot resume: source.queries OUT2/ict/data.jsonl changed since "
                                          "the finished build was made"):
        build(labels("OUT2/ict/data.jsonl", "run.trec"), tmp_path / "OUT2" / "lab", resume=True, progress=False)


def test_build_takes_a_recipe_path_or_name(tiny_beir_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_synth(tiny_beir_dir)))
    assert build(path, tmp_path / "a", progress=False)["recipe"] == "query_synthesis"
    assert build(str(path), tmp_path / "b", data_root=tmp_path, progress=False)["recipe"] == "query_synthesis"
    with pytest.raises(ConfigError, match="no such file and no shipped recipe"):
        build("no-such-recipe", tmp_path / "c")
    with pytest.raises(TypeError, match="recipe must be a mapping"):
        build(3, tmp_path / "d")  # type: ignore[arg-type]


def test_a_recipe_does_not_read_the_test_split(tiny_beir_dir: Path, tmp_path: Path) -> None:
    recipe = {"recipe": "hard_negatives", "source": {"dataset": str(tiny_beir_dir), "split": "test"},
              "first_stage": {"retriever": "bm25", "depth": 20}, "window": [2, 10], "num_negatives": 3}
    with pytest.raises(ConfigError, match="source.split test is the evaluation split of .*: set source.split to a "
                                          "training split"):
        build(recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_skipped_leaderboard_row_keeps_its_note(tiny_beir_dir: Path, tmp_path: Path) -> None:
    from rerank.eval.leaderboard import run_leaderboard

    shutil.copytree(tiny_beir_dir, tmp_path / "data" / "tiny")
    cfg = {"name": "t", "columns": [{"label": "tiny", "dataset": "tiny", "top_k": 5}],
           "rows": [{"name": "bm25", "retriever": "bm25"},
                    {"name": "trained", "retriever": "bm25", "reranker": "cross-encoder", "model": "m",
                     "requires": [str(tmp_path / "absent")], "note": "train it first: examples/x.sh OUT"}]}
    (tmp_path / "lb.yaml").write_text(yaml.safe_dump(cfg))
    report = run_leaderboard(tmp_path / "lb.yaml", data_root=tmp_path / "data", results_dir=tmp_path / "res",
                             only_cached=True, progress=False)
    assert (f"row 'trained' skipped: required path(s) absent: {tmp_path / 'absent'} (train it first: examples/x.sh "
            "OUT)") in report["notes"]
