"""The command line as a script uses it: a ranking streamed to standard output (``-``, or a link to a pipe) without a
file replacing the link, candidates past ``--top-k`` counted, ``rerank index`` options checked before the weights
load (or a corpus is encoded), and flags that would do nothing refused or warned about, naming the flag."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerank.errors import ConfigError
from rerank.heads.base import Reranker


class _Length(Reranker):
    method = "test-s45-cli-length"

    def score_candidates(self, query, candidates):  # noqa: ANN001, ANN201
        return [float(len(c.doc.text)) for c in candidates]


def _drain(fd: int) -> bytes:
    """What the pipe end ``fd`` holds now (non-blocking; nothing written: b"")."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


@pytest.fixture()
def length_head(fresh: None) -> str:
    from rerank.heads.registry import register_reranker

    register_reranker(_Length.method, _Length)
    return _Length.method


@pytest.fixture()
def rank_input(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"query": "q", "docs": ["a", "abc", "ab"]}) + "\n")
    return path


@pytest.fixture()
def stdin_from(tmp_path: Path) -> Iterator[Any]:
    """Point file descriptor 0 at a file for the test (what ``--input -`` reads)."""
    saved = os.dup(0)

    def use(path: Path) -> None:
        with open(path, "rb") as f:
            os.dup2(f.fileno(), 0)

    try:
        yield use
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_atomic_write_goes_through_a_link_to_a_stream_and_keeps_the_link(tmp_path: Path) -> None:
    """As root, ``rank --output /dev/stdout`` renamed a temporary file over the /dev/stdout link."""
    from rerank.utils.files import atomic_write, write_json

    r, w = os.pipe()
    try:
        link = tmp_path / "stdout.trec"
        link.symlink_to(f"/proc/self/fd/{w}")  # what /dev/stdout is
        with atomic_write(link) as f:
            f.write("q1 Q0 d1 1 1.0 x\n")
        assert _drain(r) == b"q1 Q0 d1 1 1.0 x\n"
        assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["stdout.trec"]
    finally:
        os.close(r)
        os.close(w)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_json({"a": 1}, fifo)
        assert json.loads(_drain(reader)) == {"a": 1} and not fifo.is_file()
    finally:
        os.close(reader)
    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    write_json({"b": 2}, tmp_path / "link.json")  # a link to a regular file: that file is replaced, the link kept
    assert (tmp_path / "link.json").is_symlink() and json.loads(target.read_text()) == {"b": 2}


def test_rank_output_dash_prints_the_run_and_nothing_else_on_stdout(tmp_path: Path, rank_input: Path,
                                                                       length_head: str, run_cli: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, out, err = run_cli("rank", "--reranker", length_head, "--input", rank_input, "--output", "-")
    assert rc == 0, err
    assert [line.split()[2] for line in out.splitlines()] == ["d1", "d2", "d0"]  # the TREC run alone
    assert "ranked 1 query" in err and "standard output" in err
    assert list(work.iterdir()) == []  # no file named '-', no record beside it


def test_rank_input_dash_reads_standard_input(tmp_path: Path, rank_input: Path, length_head: str, run_cli: Any,
                                              stdin_from: Any) -> None:
    stdin_from(rank_input)
    rc, out, err = run_cli("rank", "--reranker", length_head, "--input", "-", "--output", tmp_path / "o.jsonl")
    assert rc == 0, err
    ranking = json.loads((tmp_path / "o.jsonl").read_text())["ranking"]
    assert [d["text"] for d in ranking] == ["abc", "ab", "a"]


def test_rank_to_a_link_to_a_pipe_streams_and_sends_the_summary_to_stderr(tmp_path: Path, rank_input: Path,
                                                                           length_head: str, run_cli: Any) -> None:
    r, w = os.pipe()
    link = tmp_path / "out.jsonl"
    link.symlink_to(f"/proc/self/fd/{w}")
    try:
        rc, out, err = run_cli("rank", "--reranker", length_head, "--input", rank_input, "--output", link)
        written = _drain(r).decode()
    finally:
        os.close(r)
        os.close(w)
    assert rc == 0, err
    assert [d["id"] for d in json.loads(written)["ranking"]] == ["d1", "d2", "d0"]  # .jsonl: JSON lines
    assert out == "" and "ranked 1 query" in err
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_rank_summary_counts_the_candidates_past_top_k(tmp_path: Path, rank_input: Path, length_head: str,
                                                       run_cli: Any) -> None:
    rc, out, err = run_cli("rank", "--reranker", length_head, "--input", rank_input, "--top-k", "1",
                           "--output", tmp_path / "o.trec")
    assert rc == 0, err
    assert "2 candidates of 1 query past --top-k 1 not reranked" in out
    rc, out, err = run_cli("rank", "--reranker", length_head, "--input", rank_input, "--output", tmp_path / "o.trec")
    assert rc == 0 and "past --top-k" not in out


def test_hnsw_m_below_two_is_refused_before_faiss_crashes(tmp_path: Path) -> None:
    """``--hnsw-m 1`` segfaulted in FAISS while the graph was built (exit 139, no message)."""
    from rerank.cli import build_parser
    from rerank.retrieval.index import IndexConfig

    with pytest.raises(ConfigError, match=r"hnsw_m must be >= 2, got 1"):
        IndexConfig(index_type="hnsw", hnsw_m=1)
    with pytest.raises(ConfigError, match=r"pq_nbits must be in \[1, 24\], got 25"):
        IndexConfig(index_type="ivfpq", pq_nbits=25)
    for flag, value in (("--hnsw-m", "1"), ("--pq-nbits", "25")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["index", "--model", "m", "--dataset", "d", "--output", str(tmp_path), flag,
                                       value])


@pytest.mark.parametrize(("flags", "message"), [
    (["--quantize", "int8"], "--quantize int8 needs --runtime onnx"),
    (["--runtime", "onnx", "--dtype", "bfloat16"], "--dtype bfloat16 applies to --runtime torch"),
    (["--max-doc-tokens", "100000"], "--max-doc-tokens 100000 exceeds the limit of"),
    (["--index-type", "ivfpq"], "ivfpq needs at least 256 documents to train (nlist=5, pq_nbits=8); the corpus has "
                                "200"),
])
def test_index_options_are_checked_before_the_weights_load(tmp_path: Path, tiny_st_dir: Path, tiny_beir_dir: Path,
                                                           run_cli: Any, monkeypatch: pytest.MonkeyPatch,
                                                           flags: list[str], message: str) -> None:
    from rerank.retrieval import index
    from rerank.retrieval.dense import BiEncoder

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    if "onnx" in flags:
        pytest.importorskip("onnxruntime")
    original = BiEncoder.load.__func__
    weights: list[bool] = []

    def load(cls: type, *args: Any, **kwargs: Any) -> BiEncoder:
        weights.append(kwargs.get("weights", True))
        return original(cls, *args, **kwargs)

    def encode(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the corpus was encoded")

    monkeypatch.setattr(BiEncoder, "load", classmethod(load))
    monkeypatch.setattr(index, "encode_corpus_cached", encode)
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", tiny_beir_dir, "--output", tmp_path / "ix",
                         *flags)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert True not in weights  # the model built without its weights at most


def test_index_no_progress_hides_the_model_loading_bar(tmp_path: Path, tiny_st_dir: Path, tiny_beir_dir: Path,
                                                       run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    hf_logging.enable_progress_bar()
    rc, out, err = run_cli("index", "--model", tiny_st_dir, "--dataset", tiny_beir_dir, "--output", tmp_path / "ix",
                           "--no-progress")
    assert rc == 0, err
    assert "indexed 200 documents" in out and "Loading weights" not in err and "%|" not in err
    assert hf_logging.is_progress_bar_enabled()  # as it was, after the command


def test_leaderboard_only_cached_refuses_workers(tmp_path: Path, run_cli: Any) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text("name: x\n")
    rc, _, err = run_cli("leaderboard", "--config", config, "--only-cached", "--workers", "4",
                         "--results-dir", tmp_path / "res")
    assert rc == 2 and "--workers 4 sets the processes of the cells that run, and --only-cached runs none" in err


def test_a_missing_data_root_is_refused_even_for_a_dataset_given_by_path(tmp_path: Path, tiny_beir_dir: Path,
                                                                          run_cli: Any) -> None:
    missing = tmp_path / "nonexistent"
    rc, _, err = run_cli("index", "--model", tmp_path / "no-model", "--dataset", tiny_beir_dir, "--data-root",
                         missing, "--output", tmp_path / "ix")
    assert rc == 2 and f"--data-root {missing} does not exist" in err, err
    (tmp_path / "file").write_text("")
    rc, _, err = run_cli("index", "--model", tmp_path / "no-model", "--dataset", tiny_beir_dir, "--data-root",
                         tmp_path / "file", "--output", tmp_path / "ix")
    assert rc == 2 and "--data-root" in err and "is a file" in err, err


def test_evaluate_rel_level_without_a_binary_measure_warns(tmp_path: Path, run_cli: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "run.trec").write_text("q1 Q0 a 1 2 t\nq1 Q0 b 2 1 t\n")
    (tmp_path / "qrels.txt").write_text("q1 0 a 3\nq1 0 b 1\n")
    base = ["evaluate", "--run", tmp_path / "run.trec", "--qrels", tmp_path / "qrels.txt"]
    rc, out, _ = run_cli(*base, "-m", "nDCG@10", "--rel-level", "3")
    assert rc == 0 and "nDCG@10\tall\t1.0000" in out
    assert "--rel-level 3 changes nothing" in caplog.text and "(nDCG@10) is binary" in caplog.text
    caplog.clear()
    rc, out, _ = run_cli(*base, "-m", "nDCG@10", "-m", "AP", "--rel-level", "3")
    assert rc == 0 and "changes nothing" not in caplog.text


@pytest.mark.parametrize(("flags", "message"), [
    (["--interpolate", "1.5", "--reranker", "cross-encoder"],
     "error: --interpolate must be a number in [0, 1], got 1.5"),
    (["--interpolate", "nan", "--reranker", "cross-encoder"],
     "error: --interpolate must be a number in [0, 1], got nan"),
    (["--interpolate", "0.5"], "--interpolate weighs a reranker's scores"),
])
def test_eval_interpolate_errors_name_the_flag(tmp_path: Path, tiny_beir_dir: Path, run_cli: Any,
                                               flags: list[str], message: str) -> None:
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--output", tmp_path / "out", *flags)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
