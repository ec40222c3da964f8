"""Real-world input files and paths (audit s42 files #2-#6, newcomer #1 and #12): a 3-column run holding scores is
named, symbolic link loops and files where folders belong are one-line errors saying so, ``.GZ`` is gzip for readers
as for writers, an empty ``rank --input`` is refused, a TREC qrels header gets a hint, and options are matched by
their whole name only, an unknown one naming its subcommand's help."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from rerank.cli.rank_cmd import output_kind
from rerank.data.io import count_records, iter_lines, open_text, read_qrels, read_query_docs_jsonl, read_run
from rerank.errors import DataFormatError
from rerank.heads.registry import register_reranker
from tests.serve_support import LongestFirst

register_reranker(LongestFirst.method, LongestFirst)


def _one_error_line(rc: int, err: str) -> str:
    """The one stderr line of a command that failed as a user error (exit 2)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, (rc, err)
    return lines[0]


def _rank_input(tmp_path: Path) -> Path:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"query": {"id": "q1", "text": "rain"},
                               "docs": [{"id": "a", "text": "x"}, {"id": "b", "text": "xxx"}]}) + "\n")
    return inp


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
