"""The training data is compared by content on ``--resume`` and ``--check`` (audit s42 owndata, finding 1): a run
records the sha256 of each file it trains on (``data.path``, the corpus, queries and qrels that ``data.beir`` or
``dataset`` resolves to, a ``negatives_file``) in ``rerank_train.json``, and a run whose data changed since it started
is refused in one line naming the file, as ``rerank data build --resume`` refuses changed inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from train_support import make_checkpoint, stand_in_model

from rerank.data.io import write_jsonl
from rerank.errors import ConfigError
from rerank.testing import make_tiny_beir, synthetic_ranking_examples
from rerank.trainers.api import run_trainer
from rerank.trainers.base import TrainContext, build_train_config, register_trainer
from rerank.trainers.resume import DATA_KEY, check_run


def _one_error_line(err: str) -> str:
    """The CLI's error: exactly one line on stderr starting ``error:`` (log lines aside), no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("rerank:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _rewrite(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with a modification time one minute later than before."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 60 * 10**9, before + 60 * 10**9))


# ------------------------------------------------------------------------------- a real run: the audit's data.path
def _sft_args(data: Path, out: Path, model: Path, *more: str) -> list[str]:
    sets = {"model": model, "head": "cross-encoder", "loss": "bce", "max_length": 64, "batch_size": 4,
            "max_steps": 4, "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-4}
    return ["train", "sft", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
            "--set", f"data={{path: {data}, dev_fraction: 0.0}}", "--output", str(out), *more]


def test_a_training_file_rewritten_since_the_run_started_is_refused(tmp_path: Path, tiny_bert_dir: Path,
                                                                     run_cli) -> None:
    """The audit's case: a run stopped after checkpoint-2 whose data file then got other rows resumed to the end
    without a word. Now --resume and --check refuse it naming the file; the same content (a new mtime) resumes to the
    uninterrupted run's weights, and a finished run's --check is refused once its data changes."""
    data = tmp_path / "rows.jsonl"
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), data)
    rows = data.read_text()
    full = tmp_path / "full"
    rc, _, err = run_cli(*_sft_args(data, full, tiny_bert_dir))
    assert rc == 0, err
    record = json.loads((full / "rerank_train.json").read_text())
    assert record[DATA_KEY]["data.path"]["path"] == str(data)
    assert record[DATA_KEY]["data.path"]["fingerprint"].startswith("sha256:")
    out = tmp_path / "run"
    shutil.copytree(full, out)
    shutil.rmtree(out / "model")  # stopped after checkpoint-2
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")

    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=5), data)  # other rows, same path
    for extra in (["--resume"], ["--check"], ["--check", "--resume"]):
        rc, stdout, err = run_cli(*_sft_args(data, out, tiny_bert_dir, *extra))
        assert rc == 2 and "state:" not in stdout, err
        line = _one_error_line(err)
        assert f"cannot resume: data.path {data} changed since the run in {out} started" in line
        assert "restore the data it started with, or start again with --overwrite" in line
    assert not (out / "checkpoints" / "checkpoint-4").exists()

    _rewrite(data, rows)  # the rows it started with, written again: the content is what counts
    rc, stdout, err = run_cli(*_sft_args(data, out, tiny_bert_dir, "--resume"))
    assert rc == 0, err
    assert json.loads(stdout.splitlines()[-1])["global_step"] == 4
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rc, stdout, err = run_cli(*_sft_args(data, out, tiny_bert_dir, "--check"))
    assert rc == 0 and stdout.endswith("state: done\n"), err
    _rewrite(data, rows.replace('"q', '"Q'))
    rc, stdout, err = run_cli(*_sft_args(data, out, tiny_bert_dir, "--check"))
    assert rc == 2 and "state:" not in stdout
    line = _one_error_line(err)
    assert f"{out / 'model'} was trained on other data: data.path {data} changed since the run started" in line


# ------------------------------------------------------------------- every data option, through a stand-in trainer
@dataclass
class DCData:
    path: str = ""
    beir: str = ""
    split: str = "train"


@dataclass
class DCConfig:
    model: str = ""
    data: DCData = field(default_factory=DCData)
    dataset: str = ""
    split: str = "train"
    negatives_file: str = ""
    max_steps: int = 4


class DCTrainer:
    """Writes checkpoint-2 on a fresh run, notes a resume: the record and its checks come before any trainer."""

    config_class = DCConfig

    def train(self, config: DCConfig, ctx: TrainContext) -> dict[str, Any]:
        if ctx.resume:
            (ctx.output / "resumed.json").write_text("{}")
        else:
            make_checkpoint(ctx.output, 2)
        return {}


register_trainer("test-datachange", DCTrainer)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working folder, with a stand-in starting model ``m0`` and a BEIR folder ``data/scifact``
    (a registered dataset's name, under the data root ``data``)."""
    monkeypatch.chdir(tmp_path)
    stand_in_model(tmp_path / "m0")
    make_tiny_beir(tmp_path / "data" / "scifact", num_docs=30, num_queries=6, seed=0)
    return tmp_path


def _config(option: str, value: str, **more: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"model": "m0", **more}
    if option.startswith("data."):
        cfg["data"] = {option.split(".", 1)[1]: value}
    else:
        cfg[option] = value
    return cfg


def _resume(cfg: dict[str, Any], out: Path, data_root: str | None = None) -> None:
    run_trainer("test-datachange", cfg, out, data_root=data_root, resume=True)


@pytest.mark.parametrize("option", ["dataset", "data.beir"])
@pytest.mark.parametrize("named", ["by path", "registered name"])
def test_a_beir_datasets_files_are_compared(work: Path, option: str, named: str) -> None:
    """The corpus, the queries and the qrels of the split trained on are fingerprinted as the dataset resolves (a
    folder, or the registered name scifact under the data root): each one changed is refused naming it; the qrels
    of another split, which training never reads, may change."""
    folder = work / "data" / "scifact"
    value, root = ("data/scifact", None) if named == "by path" else ("scifact", "data")
    cfg = _config(option, value)
    out = work / "out"
    run_trainer("test-datachange", cfg, out, data_root=root)
    recorded = json.loads((out / "rerank_train.json").read_text())[DATA_KEY]
    assert sorted(recorded) == [f"{option} corpus", f"{option} qrels", f"{option} queries"]
    assert Path(recorded[f"{option} qrels"]["path"]).resolve() == folder.resolve() / "qrels" / "train.tsv"

    test_qrels = folder / "qrels" / "test.tsv"
    _rewrite(test_qrels, test_qrels.read_text() + "q999\td000\t1\n")
    _resume(cfg, out, root)
    assert (out / "resumed.json").is_file()

    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv"):
        file = folder / name
        kept = file.read_text()
        lines = kept.splitlines(keepends=True)
        _rewrite(file, "".join(lines[:-1]))  # one row fewer
        with pytest.raises(ConfigError) as e:
            _resume(cfg, out, root)
        message = str(e.value)
        assert "\n" not in message and f"cannot resume: {option} " in message
        assert Path(message.split(f"cannot resume: {option} ", 1)[1].split(" changed")[0]).resolve() == \
            file.resolve()
        with pytest.raises(ConfigError, match="cannot resume: .* changed since the run"):
            check_run(out, "test-datachange", build_train_config(DCConfig, cfg), data_root=root)
        _rewrite(file, kept)
        _resume(cfg, out, root)


def test_a_registered_name_under_another_data_root_is_its_data_there(work: Path) -> None:
    """scifact is what it resolves to: under another --data-root a copy with other qrels is a change, naming that
    root's file; a byte-identical copy there is none."""
    cfg = _config("dataset", "scifact")
    out = work / "out"
    run_trainer("test-datachange", cfg, out, data_root="data")
    shutil.copytree(work / "data", work / "same")
    _resume(cfg, out, "same")
    shutil.copytree(work / "data", work / "other")
    qrels = work / "other" / "scifact" / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text().replace("\t2\n", "\t1\n"))
    with pytest.raises(ConfigError, match="cannot resume: dataset other/scifact/qrels/train.tsv changed since the run"):
        _resume(cfg, out, "other")


def test_a_folder_of_rows_and_a_negatives_file_are_compared(work: Path) -> None:
    """A data.path folder (an HF dataset saved to disk) is compared file by file, a file added counting; a
    negatives_file by its content."""
    rows = work / "rows"
    rows.mkdir()
    (rows / "data-00000-of-00001.arrow").write_bytes(b"arrow")
    (rows / "state.json").write_text("{}")
    negatives = work / "negatives.json"
    negatives.write_text('{"negatives": {}}')
    cfg = _config("data.path", "rows", negatives_file="negatives.json")
    out = work / "out"
    run_trainer("test-datachange", cfg, out)
    assert sorted(json.loads((out / "rerank_train.json").read_text())[DATA_KEY]) == \
        ["data.path data-00000-of-00001.arrow", "data.path state.json", "negatives_file"]
    (rows / "data-00001-of-00001.arrow").write_bytes(b"more")
    with pytest.raises(ConfigError, match=r"cannot resume: data\.path rows/data-00001-of-00001\.arrow changed"):
        _resume(cfg, out)
    (rows / "data-00001-of-00001.arrow").unlink()
    _rewrite(negatives, '{"negatives": {"q1": ["d1"]}}')
    with pytest.raises(ConfigError, match="cannot resume: negatives_file negatives.json changed"):
        _resume(cfg, out)
    _rewrite(negatives, '{"negatives": {}}')
    _resume(cfg, out)


@pytest.mark.parametrize("dataset", [["dataset=data/scifact"], ["dataset=scifact", "--data-root", "data"]],
                         ids=["by path", "registered name under --data-root"])
def test_check_on_the_command_line_refuses_changed_data(work: Path, run_cli, dataset: list[str]) -> None:
    """``rerank train --check`` compares the data too, resolving a dataset given by name under ``--data-root`` as
    the run does: an interrupted run whose dataset changed is refused in one line, not ``state: resume``."""
    args = ["train", "test-datachange", "--set", "model=m0", "--set", *dataset, "--output", "out"]
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    rc, stdout, err = run_cli(*args, "--check")
    assert rc == 0 and stdout.endswith("state: resume\n"), err
    corpus = work / "data" / "scifact" / "corpus.jsonl"
    _rewrite(corpus, corpus.read_text().replace('"text": "', '"text": "changed '))
    rc, stdout, err = run_cli(*args, "--check")
    assert rc == 2 and "state:" not in stdout
    assert "cannot resume: dataset data/scifact/corpus.jsonl changed since the run in out started" in \
        _one_error_line(err)


def test_a_record_without_fingerprints_resumes_with_a_warning(work: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run started by an older rerank recorded no fingerprints: it resumes, and the warning says the data is not
    compared."""
    cfg = _config("dataset", "data/scifact")
    out = work / "out"
    run_trainer("test-datachange", cfg, out)
    path = out / "rerank_train.json"
    record = json.loads(path.read_text())
    del record[DATA_KEY]
    path.write_text(json.dumps(record))
    corpus = work / "data" / "scifact" / "corpus.jsonl"
    _rewrite(corpus, corpus.read_text() + "\n")
    with caplog.at_level(logging.WARNING, logger="rerank.trainers.resume"):
        _resume(cfg, out)
    assert (out / "resumed.json").is_file()
    assert "records no fingerprint of the data the run trained on (a run started by an older rerank): dataset " \
        "data/scifact is not compared with it" in caplog.text
