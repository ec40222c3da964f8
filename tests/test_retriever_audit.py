"""Retriever trainers, audit fixes: duplicate qrels name the trainers' qrels_duplicates key, STAR mines again for a
negatives.json of another model or depth (a resume refuses it), negatives files of the wrong shape are one-line errors
and queries left without negatives are counted, a dev nDCG@10 over BM25 candidates plus positives is labelled so and
reports no recall, a run stopped before its first checkpoint leaves no record, a tie with the start is not called
worse, and the smaller messages name their key or command."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from rerank.errors import ConfigError, DataFormatError, RerankError
from rerank.trainers.base import build_train_config, get_trainer
from rerank.trainers.retriever import RetrieverTrainer, load_negatives, load_train_data
from tests.test_retriever_train import _scripted_dev, train


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 train + 20 test queries over 200 documents (grades 0-2), as tests/test_retriever_train.py's."""
    from rerank.testing import make_tiny_beir

    return make_tiny_beir(tmp_path_factory.mktemp("rta-beir") / "beir", num_queries=40, splits=("train", "test"))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path_factory.getbasetemp() / "rta-cache"))


def _cfg(name: str, **opts: Any) -> Any:
    return build_train_config(get_trainer(name).config_class, {"model": "m", **opts})


def _with_duplicate(beir: Path, dest: Path) -> tuple[Path, str, str]:
    """A copy of ``beir`` whose train qrels judge one pair twice (grade 0, after its grade); returns (folder, q, d)."""
    shutil.copytree(beir, dest)
    qrels = dest / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    q, d, _ = next(ln.split("\t") for ln in lines[1:] if int(ln.split("\t")[2]) > 0)
    qrels.write_text("\n".join([*lines, f"{q}\t{d}\t0"]) + "\n")
    return dest, q, d


def _stop_at_first_step(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make the contrastive loss stop the run on its first step: Ctrl-C (KeyboardInterrupt) or a SIGTERM."""
    from rerank.methods.contrastive.trainer import ContrastiveTrainer

    def stop(self: Any, model: Any, batch: Any) -> Any:
        if how == "sigint":
            raise KeyboardInterrupt
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # the signal would kill the test process itself
            raise AssertionError("the run installed no SIGTERM handler: a SIGTERM would leave its record behind")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(ContrastiveTrainer, "loss", stop)


# ------------------------------------------------------------------------------------------ 1. duplicate judgements
def test_duplicate_qrels_name_the_trainers_key(beir: Path, tmp_path: Path) -> None:
    data, q, d = _with_duplicate(beir, tmp_path / "dup")
    with pytest.raises(ConfigError) as e:
        load_train_data(_cfg("star", dataset=str(data)), None)
    msg = str(e.value)
    assert "\n" not in msg and "duplicate judgement" in msg and "qrels_duplicates: last|max" in msg
    assert "--allow-duplicates" not in msg
    assert load_train_data(_cfg("star", dataset=str(data), qrels_duplicates="max"), None).grades[q][d] > 0
    assert load_train_data(_cfg("star", dataset=str(data), qrels_duplicates="last"), None).grades[q][d] == 0
    with pytest.raises(ConfigError, match=r"qrels_duplicates: must be one of \['error', 'last', 'max'\], got 'first'"):
        _cfg("contrastive", qrels_duplicates="first")
    with pytest.raises(ConfigError, match=r"qrels_duplicates must be one of error, last, max, got 'first'"):
        get_trainer("contrastive").config_class(model="m", qrels_duplicates="first")  # built in Python


def test_sft_beir_data_names_data_qrels_duplicates(beir: Path, tmp_path: Path) -> None:
    from rerank.trainers.data import DataConfig, build_from_beir

    data, _, _ = _with_duplicate(beir, tmp_path / "dup")
    with pytest.raises(ConfigError, match=r"duplicate judgement .*keep one grade with data\.qrels_duplicates: "
                                          r"last\|max") as e:
        build_from_beir(str(data))
    assert "--allow-duplicates" not in str(e.value)
    assert DataConfig(beir=str(data), qrels_duplicates="max").qrels_duplicates == "max"
    with pytest.raises(ConfigError, match="data.qrels_duplicates is an option of data.beir"):
        DataConfig(path="t.jsonl", qrels_duplicates="max")
    with pytest.raises(ConfigError, match="data.qrels_duplicates must be one of"):
        DataConfig(beir="x", qrels_duplicates="first")


# --------------------------------------------------------------------------------- 2. STAR's negatives.json reuse
def test_star_mines_again_for_another_model_or_depth_and_resume_refuses(
        tiny_st_dir: Path, beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from rerank.methods.star.trainer import StarTrainer

    first = tmp_path / "first"
    original = StarTrainer.loss

    def dying(self: Any, model: Any, batch: Any) -> Any:
        if batch.step == 1:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(StarTrainer, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train("star", tiny_st_dir, beir, first, max_steps=3, save_steps=1, negatives_depth=20)
    monkeypatch.setattr(StarTrainer, "loss", original)
    mined = json.loads((first / "negatives.json").read_text())
    assert mined["depth"] == 20 and (first / "checkpoints" / "checkpoint-1").is_dir()

    for i, (change, why) in enumerate([({"model_hash": "0" * 64, "model": "other"}, "mined with model 'other'"),
                                       ({"depth": 10}, "mined to depth 10, not negatives_depth 20")]):
        out = tmp_path / f"o{i}"
        out.mkdir()
        (out / "negatives.json").write_text(json.dumps({**mined, **change}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rerank.methods.star.trainer"):
            train("star", tiny_st_dir, beir, out, max_steps=1, negatives_depth=20)
        assert why in caplog.text and "mining the negatives again" in caplog.text
        again = json.loads((out / "negatives.json").read_text())
        assert again["model_hash"] == mined["model_hash"] and again["depth"] == 20

    # a resume keeps the run's negatives: a file that no longer fits the starting model is refused, not re-mined
    (first / "negatives.json").write_text(json.dumps({**mined, "model_hash": "0" * 64}))
    with pytest.raises(RerankError, match=r"negatives\.json: mined with model .*a --resume trains on the negatives "
                                          r"its run started with"):
        train("star", tiny_st_dir, beir, first, resume=True, max_steps=3, save_steps=1, negatives_depth=20)


# ------------------------------------------------------------------------------------- 3. negatives_file shapes
def test_negatives_file_shapes(beir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = load_train_data(_cfg("star", dataset=str(beir)), None)
    qids = data.train_qids
    q0, q1 = qids[0], qids[1]
    other = next(d for d in sorted(data.dataset.corpus) if d not in data.grades[q0] and d not in data.grades[q1])

    def write(name: str, negatives: Any) -> Path:
        path = tmp_path / name
        negs = {q: [other] for q in qids}
        path.write_text(json.dumps({"format": "rerank-negatives", "corpus_sha256": data.dataset.corpus_hash,
                                    "negatives": {**negs, **negatives}}))
        return path

    pairs = write("pairs.json", {q0: [[other, 1.5]]})
    with pytest.raises(DataFormatError, match=rf"pairs\.json: query '{q0}': negative 0 is list .*not a document id "
                                              r"\(ids only, no scores\): expected .*\"negatives\": \{\"QUERY_ID\"") as e:
        load_negatives(pairs, data, qids)
    assert "\n" not in str(e.value)
    with pytest.raises(DataFormatError, match=rf"str\.json: query '{q0}': its negatives are str .*not a list of "
                                              r"document ids"):
        load_negatives(write("str.json", {q0: other}), data, qids)
    with pytest.raises(DataFormatError, match=r"'negatives' is list .*not an object"):
        bad = tmp_path / "list.json"
        bad.write_text(json.dumps({"format": "rerank-negatives", "negatives": [[q0, other]]}))
        load_negatives(bad, data, qids)

    # an empty list and a list of positives only: accepted, positives dropped, the queries counted in a warning
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.retriever"):
        negs = load_negatives(write("thin.json", {q0: [], q1: list(data.positives[q1])}), data, qids)
    assert negs[q0] == [] and negs[q1] == [] and negs[qids[2]] == [other]
    assert f"2 of {len(qids)} training queries have no usable negative" in caplog.text
    assert f"{len(data.positives[q1])} listed negatives are positives of their query" in caplog.text


# ---------------------------------------------------------------------------------- 4. several processes: the docs
def test_docs_state_when_two_processes_equal_one(repo_root: Path) -> None:
    text = " ".join((repo_root / "docs" / "retriever-training.md").read_text().split())
    assert "(tested: 2 processes = 1)" not in text
    assert "divide evenly into global batches" in text and "dropout is off (`disable_dropout: true`" in text


# ---------------------------------------------------------------------------- 5. dev over BM25 candidates + positives
def test_dev_over_bm25_candidates_reports_no_recall_and_says_what_it_ranks(tiny_st_dir: Path, beir: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "d"
    res = train("contrastive", tiny_st_dir, beir, out, max_steps=2, dev_fraction=0.2, eval_steps=2, save_steps=2,
                train_doc_encoder=True)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["dev_candidates"] == res["dev_candidates"] == \
        "BM25's top-30 plus the judged positives of each dev query"
    assert all("recall@100" not in d for d in summary["dev_history"]) and "recall@100" not in summary["best"]
    card = (out / "model" / "README.md").read_text()
    assert "dev R@100" not in card and "nDCG@10 over BM25's top-30 plus the judged positives" in card


# ------------------------------------------------------------------------ 6. stopped before the first checkpoint
@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_a_run_stopped_before_its_first_checkpoint_leaves_no_record(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "sigterm" and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process")
    out = tmp_path / "o"
    _stop_at_first_step(monkeypatch, how)
    with pytest.raises(KeyboardInterrupt if how == "sigint" else SystemExit) as e:
        train("contrastive", tiny_st_dir, beir, out, max_steps=2, save_steps=2)
    assert how == "sigint" or e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's own handler is gone
    assert not (out / "rerank_train.json").exists() and not (out / "checkpoints").exists()
    monkeypatch.undo()
    res = train("contrastive", tiny_st_dir, beir, out, max_steps=1)  # a plain run into that folder is allowed
    assert res["global_step"] == 1 and (out / "rerank_train.json").is_file()


# -------------------------------------------------------------------------------------- 7. a tie with the start
def test_a_tie_with_the_starting_model_is_not_called_worse(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    _scripted_dev(monkeypatch, [0.5, 0.5, 0.5])
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.retriever"):
        res = train("contrastive", tiny_st_dir, beir, tmp_path / "t", dev_fraction=0.2, eval_steps=2, save_steps=2,
                    train_doc_encoder=False)
    assert res["improved_on_start"] is False
    assert "scores the same there" in caplog.text and "scores better" not in caplog.text


# ------------------------------------------------------------------------------------------ 8. smaller messages
def test_adore_index_of_another_model_names_the_rebuild_command(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                                run_cli) -> None:
    from rerank.testing import tiny_sentence_transformer

    other = tiny_sentence_transformer(tmp_path / "m1", seed=1)
    idx = tmp_path / "idx-m1"
    assert run_cli("index", "--model", other, "--dataset", beir, "--output", idx, "--no-progress")[0] == 0
    with pytest.raises(RerankError) as e:
        train("adore", tiny_st_dir, beir, tmp_path / "a", max_steps=1, index=str(idx))
    msg = str(e.value)
    assert "\n" not in msg and "built with model" in msg
    assert f"`rerank index --model {tiny_st_dir} --dataset {beir} --output {idx}`" in msg


def test_split_without_qrels_names_the_key(beir: Path) -> None:
    with pytest.raises(ConfigError, match=r"no qrels for split 'dev' .*set the key split \(or --set split=NAME\)"):
        load_train_data(_cfg("star", dataset=str(beir), split="dev"), None)


def test_a_batch_larger_than_the_training_queries_names_batch_size(tiny_st_dir: Path, beir: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(ConfigError, match=r"^20 training queries cannot fill one batch of batch_size 64 x 1 process: "
                                          r"lower batch_size"):
        train("contrastive", tiny_st_dir, beir, out, batch_size=64)
    assert not out.exists()  # refused before queries.json, so the run leaves nothing


def test_tiny_beir_with_too_few_documents_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rerank.testing.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["tiny-beir", str(tmp_path / "b"), "--num-queries", "120", "--num-docs", "300"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--num-docs 300 is too small for --num-queries 120" in err and "360" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_dev_candidates_label_with_fixed_documents() -> None:
    trainer = RetrieverTrainer()
    trainer.trains_docs = False
    assert trainer.dev_candidates() == "a search of the whole corpus"


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_only_rank_0_prints_the_training_summary(tiny_st_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 run_cli, rank: str, printed: bool) -> None:
    """Under torchrun every rank finishes ``rerank train`` with the same result; the JSON line is printed once."""
    from rerank.trainers import api

    monkeypatch.setattr(api, "run_trainer", lambda *a, **k: {"best": {"step": 3}})
    monkeypatch.setenv("RANK", rank)
    rc, out, err = run_cli("train", "contrastive", "--set", f"model={tiny_st_dir}", "--set", "dataset=x",
                           "--output", tmp_path / "out")
    assert rc == 0, err
    assert ('"best"' in out) is printed


def test_recipes_name_a_fix_they_have_for_a_repeated_judgement(beir: Path, tmp_path: Path) -> None:
    """``rerank data build`` has no duplicates option: its error says to keep one line, not to pass a flag."""
    from rerank.data_recipes.base import build

    data, _, _ = _with_duplicate(beir, tmp_path / "dup")
    recipe = {"recipe": "hard_negatives", "source": {"dataset": str(data), "split": "train"},
              "first_stage": {"retriever": "bm25", "depth": 10}, "window": [1, 10], "num_negatives": 2}
    with pytest.raises(ConfigError, match="duplicate judgement .*keep one of its lines") as e:
        build(recipe, tmp_path / "o", progress=False)
    assert "--allow-duplicates" not in str(e.value) and "\n" not in str(e.value)
