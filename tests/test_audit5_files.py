"""Real-world input files and paths (audit s42 files #2-#6, newcomer #1 and #12): a 3-column run holding scores is
named, symbolic link loops and files where folders belong are one-line errors saying so, ``.GZ`` is gzip for readers
as for writers, an empty ``rank --input`` is refused, a TREC qrels header gets a hint, and options are matched by
their whole name only, an unknown one naming its subcommand's help."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from rerank.cli import build_parser
from rerank.cli.common import check_distinct_files
from rerank.cli.rank_cmd import output_kind
from rerank.data.datasets import resolve_dataset
from rerank.data.io import count_records, iter_lines, open_text, read_qrels, read_query_docs_jsonl, read_run
from rerank.errors import DataFormatError, DatasetNotFoundError, RerankError
from rerank.heads.registry import register_reranker
from tests.serve_support import LongestFirst

register_reranker(LongestFirst.method, LongestFirst)

UPSIDE_DOWN = "the third column falls as the file goes on"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _one_error_line(rc: int, err: str) -> str:
    """The one stderr line of a command that failed as a user error (exit 2)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, (rc, err)
    return lines[0]


def _loop(folder: Path, name: str = "loop") -> Path:
    """A symbolic link to itself (``ln -s loop loop``)."""
    link = folder / name
    os.symlink(name, link)
    return link


def _rank_input(tmp_path: Path) -> Path:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"query": {"id": "q1", "text": "rain"},
                               "docs": [{"id": "a", "text": "x"}, {"id": "b", "text": "xxx"}]}) + "\n")
    return inp


# files #2: a 3-column run whose third column holds scores


def _three_columns(path: Path, scores: bool) -> Path:
    """Two queries of four documents, d0 listed first: ``qid<TAB>docid<TAB>rank`` (1, 2, ...) or, as ``rerank eval``
    scores reranked runs, ``n - rank + 1`` (4, 3, ...)."""
    path.write_text("".join(f"q{q}\td{i}\t{4 - i if scores else i + 1}\n" for q in (1, 2) for i in range(4)))
    return path


def test_three_column_scores_warn_that_the_run_is_read_upside_down(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rerank")
    run = read_run(_three_columns(tmp_path / "scores.tsv", scores=True))
    assert [d for d, _ in run["q1"]] == ["d3", "d2", "d1", "d0"]  # still read as ranks: what the form says
    (warning,) = [w for w in _warnings(caplog) if UPSIDE_DOWN in w]
    assert str(tmp_path / "scores.tsv") in warning and "in 2 of 2 queries" in warning and "6-column" in warning


def test_msmarco_rank_files_read_exactly_as_before_and_without_a_warning(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rerank")
    run = read_run(_three_columns(tmp_path / "ranks.tsv", scores=False))
    assert run == {q: [(f"d{i}", float(-(i + 1))) for i in range(4)] for q in ("q1", "q2")}
    one_falls = tmp_path / "mixed.tsv"  # one query of three listed backwards: not most
    one_falls.write_text("q1\ta\t2\nq1\tb\t1\nq2\ta\t1\nq2\tb\t2\nq3\ta\t1\nq3\tb\t2\n")
    assert read_run(one_falls)["q1"] == [("b", -1.0), ("a", -2.0)]
    assert _warnings(caplog) == []


def test_pyserini_msmarco_run_reads_without_a_warning(dl19_dir: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The DL19 BM25 run in Pyserini's 3-column form reads as the 6-column run orders it, with no warning."""
    caplog.set_level(logging.WARNING, logger="rerank")
    lines = (dl19_dir / "bm25_top100.trec").read_text().splitlines()
    msmarco = tmp_path / "run.msmarco.tsv"
    msmarco.write_text("".join(f"{p[0]}\t{p[2]}\t{p[3]}\n" for p in map(str.split, lines)))
    six = read_run(dl19_dir / "bm25_top100.trec")
    three = read_run(msmarco)
    assert {q: [d for d, _ in v] for q, v in three.items()} == {q: [d for d, _ in v] for q, v in six.items()}
    assert _warnings(caplog) == []


def test_evaluate_warns_about_a_three_column_run_of_scores(tmp_path: Path, run_cli: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rerank")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d3 1\nq2 0 d3 1\n")
    run = _three_columns(tmp_path / "scores.tsv", scores=True)
    rc, _, err = run_cli("evaluate", "--run", run, "--qrels", qrels)
    assert rc == 0, err
    assert len([w for w in _warnings(caplog) if UPSIDE_DOWN in w and str(run) in w]) == 1, _warnings(caplog)


def test_three_column_tied_scores_name_the_six_column_form(tmp_path: Path) -> None:
    path = tmp_path / "ties.tsv"
    path.write_text("q1\ta\t7\nq1\tb\t7\n")
    with pytest.raises(DataFormatError, match=r"duplicate rank 7 .*6-column TREC form"):
        read_run(path)


# files #3: a symbolic link loop as --output (and as any path _same_file compares)


def test_rank_output_symlink_loop_is_one_line(tmp_path: Path, run_cli: Any) -> None:
    loop = _loop(tmp_path)
    line = _one_error_line(*run_cli("rank", "--reranker", LongestFirst.method, "--input", _rank_input(tmp_path),
                                    "--output", loop)[::2])
    assert line == f"error: --output {loop} is a symlink loop; give another file name"
    line = _one_error_line(*run_cli("rank", "--reranker", LongestFirst.method, "--input", _rank_input(tmp_path),
                                    "--output", loop / "out.trec")[::2])
    assert "symlink loop" in line and f"--output {loop / 'out.trec'}" in line


def test_distinct_files_check_names_a_loop_instead_of_crashing(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    with pytest.raises(RerankError, match=r"^--first-stage .*loop is a symlink loop"):
        check_distinct_files([("--output", str(tmp_path / "out.trec"))], [("--first-stage", str(loop))])
    with pytest.raises(RerankError, match=r"^--log-llm-io .*loop is a symlink loop"):
        check_distinct_files([("--output", str(tmp_path / "o.trec")), ("--log-llm-io", str(loop))], [])


def test_eval_output_folder_symlink_loop_is_named(tmp_path: Path, run_cli: Any, tiny_ds: Any) -> None:
    loop = _loop(tmp_path)
    line = _one_error_line(*run_cli("eval", "--dataset", tiny_ds.root, "--retriever", "bm25", "--output", loop)[::2])
    assert line == f"error: --output {loop}: {loop} is a symlink loop"


# files #4: .GZ in upper case is gzip for the readers as for rank's writer


def test_upper_case_gz_is_read_as_gzip(tmp_path: Path) -> None:
    run = tmp_path / "run.TREC.GZ"
    run.write_bytes(gzip.compress(b"q1 Q0 a 1 2.0 t\nq1 Q0 b 2 1.0 t\n"))
    assert read_run(run) == {"q1": [("a", 2.0), ("b", 1.0)]}
    qrels = tmp_path / "qrels.Gz"
    qrels.write_bytes(gzip.compress(b"q1 0 a 1\n"))
    assert read_qrels(qrels) == {"q1": {"a": 1}}
    assert [line for _, line in iter_lines(run)][0] == "q1 Q0 a 1 2.0 t"
    with open_text(qrels) as f:
        assert f.read() == "q1 0 a 1\n"
    assert count_records(run) == 2


def test_rank_writes_upper_case_gz_that_evaluate_reads_back(tmp_path: Path, run_cli: Any) -> None:
    assert output_kind("o.TREC.GZ") == (".trec", True)
    out = tmp_path / "o.TREC.GZ"
    rc, _, err = run_cli("rank", "--reranker", LongestFirst.method, "--input", _rank_input(tmp_path), "--output", out)
    assert rc == 0, err
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 b 1\n")
    rc, stdout, err = run_cli("evaluate", "--run", out, "--qrels", qrels, "--measure", "nDCG@10")
    assert rc == 0, err
    assert "nDCG@10\tall\t1.0000" in stdout


# files #5: an empty or all-blank rank --input


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_empty_rank_input_is_refused_naming_the_file(tmp_path: Path, run_cli: Any, content: str) -> None:
    inp = tmp_path / "empty.jsonl"
    inp.write_text(content)
    with pytest.raises(DataFormatError, match="no queries found"):
        read_query_docs_jsonl(inp)
    out = tmp_path / "out.trec"
    line = _one_error_line(*run_cli("rank", "--reranker", LongestFirst.method, "--input", inp, "--output", out)[::2])
    assert line.startswith(f"error: {inp}: no queries found") and not out.exists()


# files #6: messages that say what a path is


def test_trec_qrels_header_hint_names_the_four_column_form(tmp_path: Path) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text("query-id Q0 corpus-id score\nq1 0 a 1\n")
    with pytest.raises(DataFormatError, match=r":1: relevance grade 'score' is not an integer \(TREC qrels are 4 "
                                              r"columns, qid iter docid grade, with no header line"):
        read_qrels(path)
    beir = tmp_path / "beir.tsv"  # a 3-column first line that is no known header keeps the BEIR hint
    beir.write_text("id\tdoc\tgrade\n")
    with pytest.raises(DataFormatError, match="a BEIR header line starts with 'query-id'"):
        read_qrels(beir)


def test_a_file_as_dataset_or_data_root_is_named_a_file(tmp_path: Path, run_cli: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "x"}\n')
    with pytest.raises(DatasetNotFoundError, match=r"is a file, not a dataset folder"):
        resolve_dataset(str(corpus))
    monkeypatch.chdir(tmp_path)  # a bare name that is a file here
    (tmp_path / "root").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"^dataset corpus.jsonl is a file, not a dataset folder"):
        resolve_dataset("corpus.jsonl", data_root=tmp_path / "root")
    line = _one_error_line(*run_cli("eval", "--dataset", corpus, "--retriever", "bm25",
                                    "--output", tmp_path / "o")[::2])
    assert line.startswith(f"error: dataset {corpus} is a file, not a dataset folder")
    line = _one_error_line(*run_cli("eval", "--dataset", "scifact", "--data-root", corpus, "--retriever", "bm25",
                                    "--output", tmp_path / "o")[::2])
    assert line == f"error: --data-root {corpus} is a file, not the folder holding datasets by name"


def test_symlink_loops_are_named_as_loops(tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = _loop(tmp_path)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 a 1\n")
    line = _one_error_line(*run_cli("evaluate", "--run", loop, "--qrels", qrels)[::2])
    assert line == f"error: --run {loop} is a symlink loop; give a file"
    line = _one_error_line(*run_cli("leaderboard", "--config", loop)[::2])
    assert line == f"error: --config {loop} is a symlink loop; give a file"
    line = _one_error_line(*run_cli("eval", "--dataset", loop, "--retriever", "bm25", "--output", tmp_path / "o")[::2])
    assert line.startswith(f"error: dataset {loop} is a symlink loop")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "root").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"^dataset loop is a symlink loop"):
        resolve_dataset("loop", data_root=tmp_path / "root")
    line = _one_error_line(*run_cli("eval", "--dataset", "scifact", "--data-root", loop, "--retriever", "bm25",
                                    "--output", tmp_path / "o")[::2])
    assert line.startswith(f"error: --data-root {loop} is a symlink loop")


# newcomer #1 and #12: whole option names only; an unknown option names its subcommand's help


def test_no_command_matches_an_abbreviated_option() -> None:
    stack, seen = [build_parser()], 0
    while stack:
        parser = stack.pop()
        assert parser.allow_abbrev is False, parser.prog
        seen += 1
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    assert seen > 8  # the top level, every command and data's actions


def test_leaderboard_output_is_unrecognized_not_output_md(tmp_path: Path, run_cli: Any) -> None:
    """``--output DIR`` was taken as ``--output-md DIR``: a Markdown file named DIR, exit 0."""
    config = tmp_path / "lb.yaml"
    config.write_text("name: x\n")
    out = tmp_path / "out"
    line = _one_error_line(*run_cli("leaderboard", "--config", config, "--output", out)[::2])
    assert line == f"rerank leaderboard: error: unrecognized arguments: --output {out} (see rerank leaderboard --help)"
    assert not out.exists()
    line = _one_error_line(*run_cli("eval", "--dataset", "x", "--output", out, "--max-q", "3")[::2])
    assert "unrecognized arguments: --max-q 3" in line


def test_unknown_option_names_the_subcommand_help(tmp_path: Path, run_cli: Any) -> None:
    line = _one_error_line(*run_cli("index", "--model", "m", "--dataset", "d", "--output", tmp_path / "i",
                                    "--bogus", "1")[::2])
    assert line == "rerank index: error: unrecognized arguments: --bogus 1 (see rerank index --help)"
    line = _one_error_line(*run_cli("data", "build", "hard_negatives", "--output", tmp_path / "d", "--bogus")[::2])
    assert line == "rerank data build: error: unrecognized arguments: --bogus (see rerank data build --help)"
    line = _one_error_line(*run_cli("--bogus", "evaluate", "--run", "r", "--qrels", "q")[::2])
    assert line == "rerank: error: unrecognized arguments: --bogus (see rerank --help)"
