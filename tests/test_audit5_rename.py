"""Leftovers of the token-limit rename (``query_max_length`` / ``doc_max_length`` -> ``max_query_tokens`` /
``max_doc_tokens``): a training run or an eval suite started under the former names resumes with the same values
under the new ones (and is refused, naming the values, when they are left out); the former names give the one-line
"is now" error in every place an option is read (``--reranker-set``, ``--retriever-set`` naming the override, hybrid,
leaderboard rows, ``BiEncoder.load``, ``EncoderSettings``, ``DenseConfig``); and ``--model OUTPUT/adapter`` without
``--reranker`` names the merged model. Old-style records are built here by writing the former keys, as the code before
the rename wrote them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.config import apply_overrides, override_source, to_dict
from rerank.errors import ConfigError
from rerank.trainers.base import build_train_config, get_trainer
from rerank.trainers.resume import check_run, check_same_run
from tests.test_suites import _dl_folder

OLD_NEW = [("query_max_length", "max_query_tokens"), ("doc_max_length", "max_doc_tokens")]
IS_NOW = "is now '{}' (one name for the token limits everywhere)"


def _former(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` as the code before the rename wrote it: the former key names, in place."""
    back = {new: old for old, new in OLD_NEW}
    return {back.get(k, k): v for k, v in block.items()}


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------ F1: --resume / --check of a run recorded under the former names
def _contrastive(**over: Any) -> Any:
    return build_train_config(get_trainer("contrastive").config_class,
                              {"model": "m", "dataset": "d", "max_steps": 4, "save_steps": 2, **over})


def _old_run(out: Path, finished: bool = False) -> None:
    """A contrastive run started before the rename with limits 8 / 24: its record under the former names, and a
    trained model (``finished``) or nothing else (an interrupted run is checked by :func:`check_same_run`)."""
    out.mkdir(parents=True)
    config = _former(json.loads(json.dumps(to_dict(_contrastive(max_query_tokens=8, max_doc_tokens=24)))))
    assert config["query_max_length"] == 8 and "max_query_tokens" not in config
    (out / "rerank_train.json").write_text(json.dumps({"trainer": "contrastive", "config": config}))
    if finished:
        (out / "model").mkdir()


def test_a_run_recorded_under_the_former_names_resumes_with_the_same_values(tmp_path: Path) -> None:
    _old_run(tmp_path / "run")
    assert check_same_run(tmp_path / "run", "contrastive", _contrastive(max_query_tokens=8, max_doc_tokens=24))


def test_a_run_recorded_under_the_former_names_is_compared_with_the_defaults_when_they_are_left_out(
        tmp_path: Path) -> None:
    """It resumed silently with the defaults 64 / 256 (the rest of the run trained under other truncation)."""
    _old_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"max_doc_tokens: 24 -> 256; max_query_tokens: 8 -> 64"):
        check_same_run(tmp_path / "run", "contrastive", _contrastive())
    with pytest.raises(ConfigError, match=r"max_doc_tokens: 24 -> 30"):
        check_same_run(tmp_path / "run", "contrastive", _contrastive(max_query_tokens=8, max_doc_tokens=30))


def test_a_finished_run_recorded_under_the_former_names_is_done_with_the_same_values(tmp_path: Path) -> None:
    _old_run(tmp_path / "run", finished=True)
    state, _ = check_run(tmp_path / "run", "contrastive", _contrastive(max_query_tokens=8, max_doc_tokens=24))
    assert state == "done"
    with pytest.raises(ConfigError, match=r"was trained with other options .*max_doc_tokens: 24 -> 256"):
        check_run(tmp_path / "run", "contrastive", _contrastive())


def test_train_check_resume_of_a_run_recorded_under_the_former_names(tmp_path: Path, run_cli: Any, tiny_st_dir: Path,
                                                                     tiny_beir_dir: Path) -> None:
    import shutil

    from train_support import make_checkpoint

    out = tmp_path / "run"
    _old_run(out)
    make_checkpoint(out, 2)
    shutil.copytree(tiny_beir_dir, tmp_path / "data" / "d")  # --check reads the dataset and the model's limits too
    base = ["train", "contrastive", "--set", f"model={tiny_st_dir}", "--set", "dataset=d", "--set", "max_steps=4",
            "--set", "save_steps=2", "--set", "batch_size=2", "--data-root", tmp_path / "data", "--output", out,
            "--check", "--resume"]
    record = json.loads((out / "rerank_train.json").read_text())
    record["config"]["model"] = str(tiny_st_dir)
    record["config"]["batch_size"] = 2
    (out / "rerank_train.json").write_text(json.dumps(record))
    rc, stdout, err = run_cli(*base, "--set", "max_query_tokens=8", "--set", "max_doc_tokens=24")
    assert rc == 0 and stdout.endswith("state: resume\n"), err
    rc, _, err = run_cli(*base)
    assert rc == 2 and "max_doc_tokens: 24 -> 256; max_query_tokens: 8 -> 64" in _error_line(err)


# --------------------------------------------------------------- F2: eval --suite --resume of members run under them
@pytest.fixture()
def dl_data(tmp_path: Path) -> Path:
    for name in ("dl19-bm25-top100", "dl20-bm25-top100"):
        _dl_folder(tmp_path / "data", name)
    return tmp_path / "data"


def _as_before_the_rename(out: Path) -> None:
    """Rewrite each member's ``metrics.json`` as the code before the rename wrote it: the reranker options and the
    reranker's described config and encoder settings under the former names."""
    for metrics in out.glob("*/metrics.json"):
        data = json.loads(metrics.read_text())
        data["config"]["reranker_options"] = _former(data["config"]["reranker_options"])
        data["reranker"]["config"] = _former(data["reranker"]["config"])
        data["reranker"]["encoder"] = _former(data["reranker"]["encoder"])
        metrics.write_text(json.dumps(data))
        assert "doc_max_length" in metrics.read_text() and "max_doc_tokens" not in metrics.read_text()


def test_a_suite_run_with_reranker_set_under_the_former_name_resumes(dl_data: Path, tiny_st_dir: Path,
                                                                      tmp_path: Path, run_cli: Any) -> None:
    out = tmp_path / "o"
    args = ["eval", "--suite", "dl", "--data-root", dl_data, "--reranker", "bi-encoder", "--model", tiny_st_dir,
            "--output", out]
    rc, _, err = run_cli(*args, "--reranker-set", "max_doc_tokens=20")
    assert rc == 0, err
    _as_before_the_rename(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    rc, _, err = run_cli(*args, "--reranker-set", "max_doc_tokens=20", "--resume")
    assert rc == 0, err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")} == stamps  # both kept, none run again
    rc, _, err = run_cli(*args, "--resume")  # the option left out: the kept members' 20 would be mixed with others
    assert rc == 2 and "reranker_options.max_doc_tokens: 20 -> absent" in _error_line(err)


def test_a_suite_with_a_loaded_bi_encoder_recorded_under_the_former_names_resumes(dl_data: Path, tiny_st_dir: Path,
                                                                                   tmp_path: Path) -> None:
    from rerank.eval.pipeline import EvalConfig
    from rerank.eval.suites import run_suite
    from rerank.heads.base import Reranker

    out = tmp_path / "o"
    cfg = EvalConfig(dataset="", data_root=str(dl_data))
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu")
    run_suite("dl", cfg, out, reranker=head, progress=False)
    _as_before_the_rename(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    run_suite("dl", cfg, out, reranker=head, progress=False, resume=True)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")} == stamps
    other = Reranker.load("bi-encoder", model=str(tiny_st_dir), device="cpu", max_doc_tokens=7)
    with pytest.raises(ConfigError, match=r"reranker\.config\.max_doc_tokens: null -> 7"):
        run_suite("dl", cfg, out, reranker=other, progress=False, resume=True)


# -------------------------------------------------------------- the former names: "is now" wherever options are read
@pytest.mark.parametrize(("old", "new"), OLD_NEW)
def test_the_python_api_refuses_a_former_name_in_one_line(old: str, new: str, tiny_st_dir: Path) -> None:
    from rerank.methods.bi_encoder.head import BiEncoderConfig
    from rerank.retrieval.dense import BiEncoder, DenseConfig, EncoderSettings
    from rerank.retrieval.hybrid import HybridConfig

    for make, where in ((lambda **kw: BiEncoder.load(tiny_st_dir, device="cpu", **kw), "BiEncoder.load"),
                        (EncoderSettings, "EncoderSettings"), (DenseConfig, "DenseConfig"),
                        (HybridConfig, "HybridConfig"), (BiEncoderConfig, "BiEncoderConfig")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(f'{where}: key {old!r} ' + IS_NOW.format(new))}$"):
            make(**{old: 5})
    assert getattr(EncoderSettings(**{new: 5}), new) == 5 and getattr(DenseConfig(**{new: 5}), new) == 5
    assert getattr(BiEncoder.load(tiny_st_dir, device="cpu", **{new: 5}).settings, new) == 5
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):  # any other unknown name: as before
        DenseConfig(nope=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("retriever", ["dense", "hybrid"])
def test_retriever_set_with_a_former_name_names_the_override(retriever: str, tiny_st_dir: Path, tiny_beir_dir: Path,
                                                             tmp_path: Path, run_cli: Any) -> None:
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", retriever, "--retriever-set",
                         f"model={tiny_st_dir}", "--retriever-set", "doc_max_length=20", "--output", tmp_path / "e")
    assert rc == 2
    line = _error_line(err)
    assert f"error: --retriever-set doc_max_length=20: key 'doc_max_length' {IS_NOW.format('max_doc_tokens')}" in line
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_reranker_set_with_a_former_name_says_what_it_is_now(tiny_st_dir: Path, tiny_beir_dir: Path,
                                                             tmp_path: Path, run_cli: Any) -> None:
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "bm25", "--reranker", "bi-encoder",
                         "--model", tiny_st_dir, "--reranker-set", "query_max_length=9", "--output", tmp_path / "e")
    assert rc == 2
    assert (f"error: --reranker-set query_max_length=9: key 'query_max_length' "
            f"{IS_NOW.format('max_query_tokens')}") in _error_line(err)


def test_progress_options_keeps_the_record_of_the_overrides() -> None:
    from rerank.retrieval.base import progress_options

    given = apply_overrides({"k1": 1.2}, ["b=0.5"], "--retriever-set")
    out = progress_options("bm25", given, progress=False)
    assert out == {"k1": 1.2, "b": 0.5, "show_progress": False}
    assert override_source(out, "b") == "--retriever-set b=0.5" and override_source(out, "k1") is None
    with pytest.raises(ConfigError, match=r"^--retriever-set doc_max_length=3: key 'doc_max_length' is now"):
        progress_options("dense", apply_overrides({}, ["doc_max_length=3"], "--retriever-set"), progress=True)
    with pytest.raises(ConfigError, match=r"^--retriever-set pooling=x: must be one of"):
        progress_options("dense", apply_overrides({}, ["pooling=x"], "--retriever-set"), progress=True)


@pytest.mark.parametrize(("row", "where"), [
    ({"retriever": "hybrid", "retriever_options": {"model": "m", "doc_max_length": 20}}, "retriever_options of hybrid"),
    ({"retriever": "dense", "retriever_options": {"model": "m", "query_max_length": 20}}, "retriever_options of dense"),
    ({"retriever": "bm25", "reranker": "bi-encoder", "model": "m", "reranker_options": {"doc_max_length": 20}},
     "bi-encoder options"),
])
def test_a_leaderboard_row_with_a_former_name_says_what_it_is_now(row: dict[str, Any], where: str,
                                                                  tmp_path: Path) -> None:
    from rerank.eval.leaderboard import load_config

    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "columns": [{"label": "a", "dataset": "a"}],
                                    "rows": [{"name": "r", **row}]}))
    old = next(k for k in (*row.get("retriever_options", {}), *row.get("reranker_options", {})) if "length" in k)
    new = dict(OLD_NEW)[old]
    with pytest.raises(ConfigError, match=rf"^{path}: row 'r': {where}: key '{old}' is now '{new}'"):
        load_config(path)


# ----------------------------------------------------------------------- --model OUTPUT/adapter without --reranker
def _lora_output(out: Path) -> Path:
    """A LoRA run's output as rerank train leaves it: model/ (merged) and adapter/ (the adapter alone)."""
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    return out / "adapter"


@pytest.mark.parametrize("command", ["rank", "eval", "serve"])
def test_an_adapter_folder_without_reranker_names_the_merged_model(command: str, tiny_beir_dir: Path,
                                                                   tmp_path: Path, run_cli: Any) -> None:
    adapter = _lora_output(tmp_path / "lora")
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "docs": ["a", "b"]}) + "\n")
    args = {"rank": ["--input", tmp_path / "in.jsonl", "--output", tmp_path / "ranked.jsonl"],
            "eval": ["--dataset", tiny_beir_dir, "--retriever", "bm25", "--output", tmp_path / "e"],
            "serve": ["--port", "0"]}[command]
    rc, _, err = run_cli(command, "--model", adapter, *args)
    assert rc == 2
    line = _error_line(err)
    assert f"--model {adapter} is a LoRA adapter" in line and f"give the merged model {tmp_path / 'lora' / 'model'}" \
        in line and "--reranker" not in line
