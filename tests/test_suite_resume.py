"""``rerank eval --suite … --resume``: complete members recorded with the same settings are kept (not run again, their
metrics in the summary), other settings are refused, incomplete members run again, a failing member names itself and
``--resume``, and the earlier run's other members go as they do without ``--resume``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from rerank.errors import ConfigError
from rerank.eval.pipeline import EvalConfig
from rerank.eval.suites import run_suite
from rerank.heads.base import Reranker
from rerank.heads.registry import register_reranker
from rerank.types import Candidate, Query
from tests.test_suites import _dl_folder

DL19, DL20 = "dl19-bm25-top100", "dl20-bm25-top100"


class ResumeReranker(Reranker):
    """Reverses the first-stage order; counts its loads and fails on the dataset named in ``fail_on``."""

    method = "test-resume"
    instances = 0
    fail_on: str | None = None
    load_fails = False

    def __init__(self, config: Any = None) -> None:
        if type(self).load_fails:
            raise ConfigError("test-resume: does not load now")
        super().__init__(config)
        type(self).instances += 1

    def prepare_corpus(self, dataset: Any, doc_ids: Any) -> None:
        if dataset.name == type(self).fail_on:
            raise RuntimeError(f"test-resume: crashed on {dataset.name}")

    def score_candidates(self, query: Query, candidates: list[Candidate]) -> list[float]:
        return [float(i) for i in range(len(candidates))]


class OtherReranker(ResumeReranker):
    method = "test-resume-other"


register_reranker("test-resume", ResumeReranker)
register_reranker("test-resume-other", OtherReranker)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    _dl_folder(tmp_path / "data", DL19)
    _dl_folder(tmp_path / "data", DL20)
    ResumeReranker.instances, ResumeReranker.fail_on = 0, None
    return tmp_path / "data"


def _stamp(out: Path, member: str) -> tuple[int, str]:
    path = out / member / "metrics.json"
    return path.stat().st_mtime_ns, path.read_text()


def _cfg(data: Path, **kw: Any) -> EvalConfig:
    return EvalConfig(dataset="", data_root=str(data), **kw)


def test_a_crashed_member_is_named_and_resume_runs_only_the_rest(data: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "o"
    ResumeReranker.fail_on = DL20
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="crashed on dl20"):  # unexpected: as it is
        run_suite("dl", _cfg(data, reranker="test-resume"), out, progress=False)
    assert f"suite dl: {DL20} did not finish (RuntimeError); rerun with --resume to continue from {DL20}" in caplog.text
    assert (out / DL19 / "metrics.json").is_file() and not (out / DL20 / "metrics.json").exists()
    before = _stamp(out, DL19)
    ResumeReranker.fail_on, ResumeReranker.instances = None, 0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        summary = run_suite("dl", _cfg(data, reranker="test-resume"), out, progress=False, resume=True)
    assert f"--resume keeps 1 of 2 members (complete runs with these settings in {out}: {DL19}); running {DL20}" \
        in caplog.text
    assert _stamp(out, DL19) == before  # kept, not run again
    assert ResumeReranker.instances == 1 and list(summary["datasets"]) == [DL19, DL20]
    recorded = json.loads(before[1])
    assert summary["datasets"][DL19]["metrics"] == recorded["metrics"]
    assert json.loads((out / "summary.json").read_text())["num_datasets"] == 2
    ResumeReranker.instances = 0  # every member kept: the reranker does not load
    again = run_suite("dl", _cfg(data, reranker="test-resume"), out, progress=False, resume=True)
    assert ResumeReranker.instances == 0 and again["mean"] == summary["mean"]


def test_a_failing_member_is_one_line_naming_it_and_resume(data: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "o"
    corpus = data / DL20 / "corpus.jsonl"
    good = corpus.read_text()
    corpus.write_text(good + "not json\n")
    args = ("eval", "--suite", "dl", "--data-root", data, "--reranker", "test-resume", "--output", out)
    rc, _, err = run_cli(*args)
    line = err.strip().splitlines()[-1]  # after dl19's progress bar
    assert rc == 2 and "Traceback" not in err and err.count("error:") == 1, err
    assert line.startswith(f"error: suite dl: {DL20} failed: ") and "corpus.jsonl" in line
    assert line.endswith(f"rerun with --resume to continue from {DL20} (the results of the 1 finished member stay "
                         f"in {out})")
    before = _stamp(out, DL19)
    corpus.write_text(good)
    rc, so, err = run_cli(*args, "--resume")
    assert rc == 0, err
    assert _stamp(out, DL19) == before and (out / DL20 / "metrics.json").is_file()
    assert "suite dl (2 datasets)" in so


def test_a_member_under_other_settings_is_refused(data: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "o"
    base = ("eval", "--suite", "dl", "--data-root", data, "--reranker", "test-resume", "--output", out)
    assert run_cli(*base, "--top-k", "3")[0] == 0
    files = sorted((p.relative_to(out).as_posix(), p.stat().st_mtime_ns) for p in out.rglob("*"))
    rc, _, err = run_cli(*base, "--top-k", "4", "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--resume: {out / DL19} holds a complete run of {DL19} under other settings (recorded -> this run: " \
           f"top_k: 3 -> 4) (and so do {DL20}): drop --resume" in err
    rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", data, "--reranker", "test-resume-other",
                         "--top-k", "3", "--output", out, "--resume")
    assert rc == 2 and "reranker: \"test-resume\" -> \"test-resume-other\"" in err, err
    assert sorted((p.relative_to(out).as_posix(), p.stat().st_mtime_ns) for p in out.rglob("*")) == files


def test_a_given_reranker_is_compared_too(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    run_suite("dl", _cfg(data), out, reranker=ResumeReranker(), progress=False)
    before = _stamp(out, DL19)
    run_suite("dl", _cfg(data), out, reranker=ResumeReranker(), progress=False, resume=True)
    assert _stamp(out, DL19) == before
    with pytest.raises(ConfigError, match=r"reranker\.method: \"test-resume\" -> \"test-resume-other\""):
        run_suite("dl", _cfg(data), out, reranker=OtherReranker(), progress=False, resume=True)
    with pytest.raises(ConfigError, match=r"reranker: test-resume \(None\) -> none"):
        run_suite("dl", _cfg(data), out, progress=False, resume=True)


def test_an_incomplete_member_runs_again_and_paths_spelt_otherwise_are_the_same(
        data: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    assert run_cli("eval", "--suite", "dl", "--data-root", data, "--output", out)[0] == 0
    (out / DL20 / "metrics.json").unlink()  # killed while it wrote: run.trec and report.md without metrics.json
    before = _stamp(out, DL19)
    monkeypatch.chdir(tmp_path)  # the data root relative, the output too: the same folders
    rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", "data", "--output", "o", "--resume")
    assert rc == 0, err
    assert _stamp(out, DL19) == before and (out / DL20 / "metrics.json").is_file()


def test_a_model_path_spelt_otherwise_is_the_same_model(data: Path, tmp_path: Path, run_cli, tiny_bert_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    args = ("eval", "--suite", "dl", "--data-root", data, "--reranker", "cross-encoder", "--output", out)
    assert run_cli(*args, "--datasets", DL19, "--model", tiny_bert_dir)[0] == 0
    before = _stamp(out, DL19)
    monkeypatch.chdir(tiny_bert_dir.parent)
    rc, _, err = run_cli(*args, "--model", f"./{tiny_bert_dir.name}", "--resume")
    assert rc == 0, err
    assert _stamp(out, DL19) == before and (out / DL20 / "metrics.json").is_file()


def test_the_kept_members_are_logged_before_the_reranker_loads(data: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "o"
    run_suite("dl", _cfg(data, reranker="test-resume"), out, [DL19], progress=False)
    ResumeReranker.load_fails = True
    try:
        with caplog.at_level(logging.INFO), pytest.raises(ConfigError, match="does not load now"):
            run_suite("dl", _cfg(data, reranker="test-resume"), out, [DL19, DL20], progress=False, resume=True)
    finally:
        ResumeReranker.load_fails = False
    assert f"--resume keeps 1 of 2 members (complete runs with these settings in {out}: {DL19}); running {DL20}" \
        in caplog.text


def test_resume_needs_a_suite(data: Path, tmp_path: Path, run_cli) -> None:
    rc, _, err = run_cli("eval", "--dataset", data / DL19, "--output", tmp_path / "o", "--resume")
    assert rc == 2 and err.startswith("error: --resume needs --suite") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_every_member_kept_still_clears_the_earlier_runs_others(data: Path, tmp_path: Path, run_cli,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "o"
    assert run_cli("eval", "--suite", "dl", "--data-root", data, "--output", out)[0] == 0
    before = _stamp(out, DL19)
    rc, _, err = run_cli("eval", "--suite", "dl", "--data-root", data, "--datasets", DL19, "--output", out,
                         "--resume")
    assert rc == 0, err
    assert _stamp(out, DL19) == before and not (out / DL20 / "metrics.json").exists()
    assert f"removed the results of {DL20}" in caplog.text
    assert list(json.loads((out / "summary.json").read_text())["datasets"]) == [DL19]


def test_a_member_whose_inputs_changed_after_its_run_is_refused(data: Path, tmp_path: Path, run_cli) -> None:
    """A file a kept member was computed from (its qrels, its folder's run; a model trained again in place) modified
    after its metrics.json: refused by name, not kept with results of the old inputs."""
    import os

    out = tmp_path / "o"
    base = ("eval", "--suite", "dl", "--data-root", data, "--reranker", "test-resume", "--output", out)
    assert run_cli(*base)[0] == 0
    assert run_cli(*base, "--resume")[0] == 0  # unchanged: kept
    written = (out / DL19 / "metrics.json").stat().st_mtime_ns
    run_file = data / DL19 / "bm25_top100.trec"
    os.utime(run_file, ns=(written + 10**9, written + 10**9))
    rc, _, err = run_cli(*base, "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"holds a complete run of {DL19} under other settings" in err and \
        f"{run_file} was modified after that run" in err and DL20 not in err.split("(recorded")[1], err
