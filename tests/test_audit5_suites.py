"""Review D of audit 5, findings 1 and 3: ``rerank eval --suite ... --resume`` compares the reranker and retriever
options as the typed configs they build (an option given at its default, or at a trained model's value, is the
option left out, both ways; a value that changes results is refused naming it); a 3-column rank run too small to tell
is not warned of as read upside down."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from rerank.data.io import read_run
from rerank.eval.pipeline import EvalConfig
from rerank.eval.suites import _option_differences
from tests.test_suites import _dl_folder

UPSIDE_DOWN = "the third column falls as the file goes on"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def dl_data(tmp_path: Path) -> Path:
    for name in ("dl19-bm25-top100", "dl20-bm25-top100"):
        _dl_folder(tmp_path / "data", name)
    return tmp_path / "data"


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


def _stamps(out: Path) -> dict[Path, int]:
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    assert len(stamps) == 2
    return stamps


# --- #1: options compared as typed configs ------------------------------------------------------------------------


def test_a_reranker_option_at_its_default_is_the_option_left_out_both_ways(dl_data: Path, tiny_st_dir: Path,
                                                                           tmp_path: Path, run_cli: Any) -> None:
    """``batch_size=64`` is BiEncoderConfig's default: given in one run and left out in the other, the members are
    kept; another value is refused in one line naming the option and both values."""
    args = ["eval", "--suite", "dl", "--data-root", dl_data, "--reranker", "bi-encoder", "--model", tiny_st_dir]
    given, left_out = tmp_path / "given", tmp_path / "left-out"
    rc, _, err = run_cli(*args, "--output", given, "--reranker-set", "batch_size=64")
    assert rc == 0, err
    stamps = _stamps(given)
    rc, _, err = run_cli(*args, "--output", given, "--resume")
    assert rc == 0, err
    assert _stamps(given) == stamps  # both kept, none run again
    rc, _, err = run_cli(*args, "--output", given, "--resume", "--reranker-set", "batch_size=32")
    assert rc == 2 and "reranker_options.batch_size: 64 -> 32" in _error_line(err)

    rc, _, err = run_cli(*args, "--output", left_out)
    assert rc == 0, err
    stamps = _stamps(left_out)
    rc, _, err = run_cli(*args, "--output", left_out, "--resume", "--reranker-set", "batch_size=64")
    assert rc == 0, err
    assert _stamps(left_out) == stamps
    rc, _, err = run_cli(*args, "--output", left_out, "--resume", "--reranker-set", "max_doc_tokens=20")
    assert rc == 2 and "reranker_options.max_doc_tokens: absent -> 20" in _error_line(err)


def test_a_trained_folder_s_own_option_value_is_the_option_left_out(dl_data: Path, tiny_st_dir: Path, tmp_path: Path,
                                                                    run_cli: Any) -> None:
    """A model folder whose ``rerank.json`` records ``batch_size: 16``: 16 given equals left out, and the class
    default 64 given is another value (the folder's, not the class's, is what a run without the option uses)."""
    model = tmp_path / "trained"
    shutil.copytree(tiny_st_dir, model)
    (model / "rerank.json").write_text(json.dumps({"format": "rerank-model", "version": 1, "method": "bi-encoder",
                                                   "kind": "reranker", "options": {"batch_size": 16}}))
    args = ["eval", "--suite", "dl", "--data-root", dl_data, "--model", model, "--output", tmp_path / "o"]
    rc, _, err = run_cli(*args, "--reranker-set", "batch_size=16")
    assert rc == 0, err
    stamps = _stamps(tmp_path / "o")
    rc, _, err = run_cli(*args, "--resume")
    assert rc == 0, err
    assert _stamps(tmp_path / "o") == stamps
    rc, _, err = run_cli(*args, "--resume", "--reranker-set", "batch_size=64")
    assert rc == 2 and "reranker_options.batch_size: 16 -> 64" in _error_line(err)


def test_a_retriever_option_at_its_default_and_the_progress_switch_keep_the_members(dl_data: Path, tmp_path: Path,
                                                                                    run_cli: Any) -> None:
    """``k1=0.9`` is BM25Config's default; ``show_progress`` only switches progress bars
    (rerank.retrieval.base.PROGRESS_OPTIONS), so it is not compared; another ``k1`` is refused."""
    out = tmp_path / "o"
    args = ["eval", "--suite", "dl", "--data-root", dl_data, "--retriever", "bm25", "--output", out]
    rc, _, err = run_cli(*args, "--retriever-set", "k1=0.9", "--retriever-set", "show_progress=false")
    assert rc == 0, err
    stamps = _stamps(out)
    rc, _, err = run_cli(*args, "--resume", "--retriever-set", "show_progress=true")
    assert rc == 0, err
    assert _stamps(out) == stamps
    rc, _, err = run_cli(*args, "--resume", "--retriever-set", "k1=1.2")
    assert rc == 2 and "retriever_options.k1: 0.9 -> 1.2" in _error_line(err)


def test_backend_options_are_compared_key_by_key_but_the_openai_transport_ones() -> None:
    """A backend option dropped since the recorded run is a difference (the former check skipped a nested key the
    new side lacks); the openai backend's options its LLM cache key leaves out (timeout, retries...) are not."""
    base = EvalConfig(dataset="d", reranker="yes-no", model="m", backend="openai")
    old = {"reranker_options": {"backend_options": {"timeout": 5, "max_retries": 1, "logprobs_top": 4}}}
    new = {"reranker_options": {"backend_options": {"timeout": 60}}}
    assert _option_differences(old, new, base, None) == ["reranker_options.backend_options.logprobs_top: 4 -> absent"]
    assert old == {} and new == {}  # taken out of what config_differences compares
    same = {"reranker_options": {"batch_size": 8, "backend_options": {"concurrency": 2}}}
    assert _option_differences(same, {"reranker_options": {}}, base, None) == []  # 8: LLMHeadConfig's default


# --- #3: the upside-down warning needs queries of 3 lines or more, 2 of them at least -------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and UPSIDE_DOWN in r.getMessage()]


@pytest.mark.parametrize("text", [
    "q1\ta\t2\nq1\tb\t1\n",  # 1 query, 2 lines, correct ranks listed by doc id
    "q1\ta\t3\nq1\tb\t2\nq1\tc\t1\n",  # 1 query, 3 lines
    "q1\ta\t2\nq1\tb\t1\nq2\ta\t2\nq2\tb\t1\n",  # 2 queries of 2 lines
    "".join(f"q{i}\ta\t2\nq{i}\tb\t1\n" for i in range(9)) + "q9\ta\t1\nq9\tb\t2\n",  # 9 of 10 queries of 2 lines
    "q1\ta\t3\nq1\tb\t2\nq1\tc\t1\nq2\ta\t2\nq2\tb\t1\n",  # one query of 3 lines, one of 2
])
def test_a_rank_run_too_small_to_tell_is_not_warned_of(text: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rerank")
    path = tmp_path / "run.tsv"
    path.write_text(text)
    assert read_run(path)["q1"][0][1] == -1.0
    assert _warnings(caplog) == []


def test_two_queries_of_three_lines_listed_best_first_warn_naming_the_rule(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rerank")
    path = tmp_path / "scores.tsv"
    path.write_text("".join(f"q{q}\td{i}\t{3 - i}\n" for q in (1, 2) for i in range(3)) + "q3\ta\t2\nq3\tb\t1\n")
    read_run(path)
    (warning,) = _warnings(caplog)
    assert "in 2 of 2 queries (of those with 3 lines or more)" in warning and "6-column" in warning


@pytest.mark.shared_data
def test_dl19_written_as_101_minus_rank_best_first_warns_for_every_query(
        dl19_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The audit's case: the DL19 BM25 run as ``qid docid 101-rank``, best first; sorted by doc id it is silent."""
    caplog.set_level(logging.WARNING, logger="rerank")
    rows = [line.split() for line in (dl19_dir / "bm25_top100.trec").read_text().splitlines()]
    by_docid = tmp_path / "by-docid.tsv"
    by_docid.write_text("".join(f"{r[0]}\t{r[2]}\t{r[3]}\n" for r in sorted(rows, key=lambda r: (r[0], r[2]))))
    read_run(by_docid)
    assert _warnings(caplog) == []
    scores = tmp_path / "scores.tsv"
    scores.write_text("".join(f"{r[0]}\t{r[2]}\t{101 - int(r[3])}\n" for r in rows))
    read_run(scores)
    (warning,) = _warnings(caplog)
    assert "in 43 of 43 queries (of those with 3 lines or more)" in warning
