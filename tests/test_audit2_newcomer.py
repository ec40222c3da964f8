"""The newcomer audit's findings (its report: /work/runs/s39/newcomer/report.md), each pinned by a fast test.

1. ``rerank rank`` refuses an ``--output`` that is its ``--input`` or ``--first-stage`` file (a link or ``.gz``
   included) before any work; 2. with a data root given, a bare dataset name found there wins over a same-named
   folder in the current directory (a warning names it; ``./NAME`` reads the local one); 7. a ``--data-root`` given
   that does not exist is a one-line error, not a download into it; 3. rag.md's LangChain install line installs what
   its snippet imports; 4. a trained folder loaded with another ``--reranker`` names the trained method; 5.
   ``--base-url`` without ``--backend openai`` names the flag and the fix; 6. ``rank --input`` keeps the input's order
   and ``--max-queries N`` takes its first N records; 8. parse counts only for a head that parsed generated text, and
   "1 query"; 9. the remote reranker checks its server when it loads; 10. another JSONL format given as ``--input``
   is named, ``train --help`` lists the trainers, README lists the ``irds`` extra.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerank import Reranker
from rerank.data.datasets import resolve_dataset
from rerank.errors import ConfigError
from rerank.heads.registry import register_reranker
from rerank.testing import make_tiny_beir
from tests.serve_support import LongestFirst

REPO = Path(__file__).resolve().parents[1]


register_reranker(LongestFirst.method, LongestFirst)
HEAD = ("--reranker", LongestFirst.method)


def _records(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"query": f"query number {i}", "docs": ["a", "bb"]}) + "\n"
                            for i in range(1, n + 1)), encoding="utf-8")


def _one_error_line(rc: int, err: str) -> str:
    assert rc == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


# ---------------------------------------------------------------- 1. an output that is an input


def test_rank_refuses_an_output_that_is_its_input(tmp_path: Path, run_cli: Any) -> None:
    q = tmp_path / "q.jsonl"
    _records(q, 2)
    before = q.read_bytes()
    err = _one_error_line(*run_cli("rank", *HEAD, "--input", q, "--output", q)[::2])
    assert f"--output {q} is the --input file {q}" in err
    link = tmp_path / "link.jsonl"
    link.symlink_to(q)
    err = _one_error_line(*run_cli("rank", *HEAD, "--input", q, "--output", link)[::2])
    assert "--output" in err and "--input" in err
    assert q.read_bytes() == before and link.is_symlink()


def test_rank_refuses_an_output_that_is_its_first_stage_run(tmp_path: Path, run_cli: Any) -> None:
    ds = make_tiny_beir(tmp_path / "beir", num_docs=10, num_queries=3, seed=0)
    fs = tmp_path / "fs.trec.gz"
    with gzip.open(fs, "wt") as f:
        f.write("q0 Q0 d0 1 2.0 bm25\n")
    before = fs.read_bytes()
    err = _one_error_line(*run_cli("rank", *HEAD, "--first-stage", fs, "--dataset", ds, "--output",
                                   tmp_path / "." / "fs.trec.gz")[::2])
    assert "--first-stage" in err and "--output" in err
    assert fs.read_bytes() == before


# ---------------------------------------------------------------- 2. a local folder does not shadow the data root


@pytest.fixture()
def shadowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A data root holding ``toyset`` and a current directory holding another ``toyset``."""
    root = tmp_path / "root"
    make_tiny_beir(root / "toyset", num_docs=10, num_queries=3, seed=0)
    cwd = tmp_path / "cwd"
    make_tiny_beir(cwd / "toyset", num_docs=10, num_queries=3, seed=1)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("RERANK_DATA", raising=False)
    return root, cwd


def test_a_bare_name_reads_the_data_root_given(shadowed: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root, cwd = shadowed
    with caplog.at_level(logging.WARNING, logger="rerank.data.datasets"):
        ds = resolve_dataset("toyset", root)
    assert ds.root == root / "toyset"
    assert "toyset" in caplog.text and "current directory" in caplog.text and "./toyset" in caplog.text
    assert resolve_dataset("./toyset", root).root.resolve() == (cwd / "toyset").resolve()  # a path: the local one
    monkeypatch.setenv("RERANK_DATA", str(root))  # the environment's root is given too
    assert resolve_dataset("toyset").root == root / "toyset"


def test_without_a_data_root_the_local_folder_still_wins(shadowed: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _, cwd = shadowed
    monkeypatch.setenv("XDG_CACHE_HOME", str(cwd.parent / "cache"))
    assert resolve_dataset("toyset").root.resolve() == (cwd / "toyset").resolve()


# ---------------------------------------------------------------- 7. a --data-root that does not exist


def test_a_missing_data_root_given_is_an_error_not_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               run_cli: Any) -> None:
    from rerank.data import download

    fetched: list[Path] = []

    def fake_download(info: Any, root: Path) -> Path:
        fetched.append(root)
        return make_tiny_beir(root / info.name, num_docs=10, num_queries=3, seed=0)

    monkeypatch.setattr(download, "download_dataset", fake_download)
    typo = tmp_path / "dat"
    with pytest.raises(ConfigError, match=r"^--data-root .*dat does not exist"):
        resolve_dataset("scifact", typo)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_dataset("irds:beir/scifact", typo)
    err = _one_error_line(*run_cli("eval", "--dataset", "scifact", "--data-root", typo, "--retriever", "bm25",
                                   "--output", tmp_path / "out")[::2])
    assert f"--data-root {typo} does not exist" in err
    assert fetched == [] and not typo.exists()
    existing = tmp_path / "data"
    existing.mkdir()
    assert resolve_dataset("scifact", existing).root == existing / "scifact"  # an existing root: downloaded into
    monkeypatch.setenv("RERANK_DATA", str(tmp_path / "fresh"))  # no --data-root: the default root is made
    assert resolve_dataset("scifact").root == tmp_path / "fresh" / "scifact"
    assert fetched == [existing, tmp_path / "fresh"]


# ---------------------------------------------------------------- 3. rag.md's LangChain install line


def test_rag_md_installs_what_its_langchain_snippet_imports() -> None:
    text = (REPO / "docs" / "rag.md").read_text(encoding="utf-8")
    assert "from langchain_classic" in text
    install = text[text.index("## 2. In LangChain"):text.index("```python", text.index("## 2. In LangChain"))]
    assert "pip install 'rerank[langchain]' langchain-classic" in install


# ---------------------------------------------------------------- 4. a trained folder under another method


def test_a_trained_folder_under_another_method_names_the_trained_one(tmp_path: Path) -> None:
    from rerank.cli.common import check_reranker_options
    from rerank.methods.record import RECORD_FILE, record_payload

    folder = tmp_path / "model"
    folder.mkdir()
    payload = record_payload("erank", "reranker", {"reasoning": True, "max_doc_tokens": 64}, "grpo", "base")
    (folder / RECORD_FILE).write_text(json.dumps(payload), encoding="utf-8")
    for method in ("yes-no", "cross-encoder"):
        with pytest.raises(ConfigError, match=rf"^{folder} was trained as 'erank'; load it with that method or none"):
            check_reranker_options(method, str(folder), {})
    check_reranker_options("erank", str(folder), {})


# ---------------------------------------------------------------- 5. --base-url without --backend openai


def _args(**given: Any) -> argparse.Namespace:
    base = {"reranker_config": None, "reranker_set": [], "allow_new_head": False, "base_url": None,
            "backend": "transformers", "reranker": "yes-no"}
    return argparse.Namespace(**{**base, **given})


def test_base_url_without_the_openai_backend_names_the_flag_and_the_fix() -> None:
    from rerank.cli.common import reranker_options

    url = "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match=r"^--base-url applies to --backend openai .*add --backend openai, or drop "
                                          r"--base-url$"):
        reranker_options(_args(base_url=url))
    with pytest.raises(ConfigError, match="add --backend openai"):
        reranker_options(_args(base_url=url, backend=None))  # eval's default: transformers
    with pytest.raises(ConfigError, match=r"cross-encoder runs on the transformers backend only .*drop --base-url$"):
        reranker_options(_args(base_url=url, reranker="cross-encoder"))
    with pytest.raises(ConfigError, match="--reranker-set base_url=URL"):
        reranker_options(_args(base_url=url, reranker="remote"))
    assert reranker_options(_args(base_url=url, backend="openai")) == {"backend_options": {"base_url": url}}


# ---------------------------------------------------------------- 6. rank --input keeps the input's order


@pytest.mark.parametrize("name", ["e.jsonl", "e.trec"])
def test_rank_input_keeps_its_order_and_max_queries_takes_the_first(tmp_path: Path, run_cli: Any, name: str) -> None:
    src = tmp_path / "eleven.jsonl"
    _records(src, 11)
    out = tmp_path / name

    def qids() -> list[str]:
        lines = out.read_text().splitlines()
        if name.endswith(".jsonl"):
            return [json.loads(x)["qid"] for x in lines]
        return list(dict.fromkeys(x.split()[0] for x in lines))

    rc, _, err = run_cli("rank", *HEAD, "--input", src, "--output", out, "--max-queries", "2")
    assert rc == 0, err
    assert qids() == ["q1", "q2"]
    rc, _, err = run_cli("rank", *HEAD, "--input", src, "--output", out)
    assert rc == 0, err
    assert qids() == [f"q{i}" for i in range(1, 12)]


def test_rank_help_says_which_order_each_mode_keeps(run_cli: Any) -> None:
    rc, out, _ = run_cli("rank", "--help")
    assert rc == 0
    flat = " ".join(out.split())
    assert "the output keeps their order" in flat and "the first N records of --input" in flat
    assert "sorted query-id order" in flat


# ---------------------------------------------------------------- 8. parse counts only where text was parsed


def test_rank_summary_shows_no_parse_counts_for_a_scoring_head(tmp_path: Path, run_cli: Any) -> None:
    src = tmp_path / "one.jsonl"
    _records(src, 1)
    rc, out, err = run_cli("rank", *HEAD, "--input", src, "--output", tmp_path / "o.jsonl")
    assert rc == 0, err
    assert f"ranked 1 query with {LongestFirst.method} -> " in out and "model outputs" not in out


def test_report_shows_parse_counts_only_for_a_head_that_parsed_text() -> None:
    from rerank.eval.report import render_report, summary_line

    metrics: dict[str, Any] = {
        "dataset": "d", "split": "test", "first_stage": {"name": "bm25"}, "num_queries": 1, "missing_queries": [],
        "rel_level": 1, "metrics": {"nDCG@10": 0.5}, "timing_s": {"total_s": 1.0},
        "reranker": {"method": "cross-encoder", "model": "m", "backend_name": "transformers"}, "config": {},
        "parse": {"outputs": 0, "parse_failures": 0, "repaired": 0, "fitted_prompts": 0},
    }
    assert "Model outputs" not in render_report(metrics) and "0 outputs" not in render_report(metrics)
    assert "(1 query)" in summary_line(metrics)
    metrics["parse"] = {"outputs": 4, "parse_failures": 1, "repaired": 2, "fitted_prompts": 0}
    assert "4 outputs, 1 failed to parse, 2 repaired." in render_report(metrics)


# ---------------------------------------------------------------- 9. the remote reranker checks its server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_reranker_fails_at_load_when_its_server_is_unreachable() -> None:
    from rerank.client import RemoteRerankError

    t0 = time.perf_counter()
    with pytest.raises(RemoteRerankError, match=r"unreachable when the reranker loaded \(GET /health, one try\)"):
        Reranker.load("remote", base_url=f"http://127.0.0.1:{_free_port()}", max_retries=3)
    assert time.perf_counter() - t0 < 1.0  # one try, not the request's retries with back-off


@pytest.fixture()
def no_health_server() -> Iterator[str]:
    """A server answering 404 everywhere: another Cohere-compatible server without /health."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_reranker_loads_against_any_answering_server(no_health_server: str) -> None:
    Reranker.load("remote", base_url=no_health_server).close()


# ---------------------------------------------------------------- 10. formats, trainer names, extras


@pytest.mark.parametrize(("row", "looks"), [
    ({"qid": "q1", "query": "a", "ranking": [{"id": "d0", "score": 1.0}]}, "rerank rank's own JSONL output"),
    ({"qid": "q1", "query": "a", "candidates": [{"id": "d0", "text": "x"}], "labels": [1]}, "training data"),
])
def test_rank_names_the_format_of_another_jsonl(tmp_path: Path, run_cli: Any, row: dict[str, Any], looks: str) -> None:
    src = tmp_path / "other.jsonl"
    src.write_text(json.dumps(row) + "\n", encoding="utf-8")
    err = _one_error_line(*run_cli("rank", *HEAD, "--input", src, "--output", tmp_path / "o.jsonl")[::2])
    assert "missing required field 'docs'" in err and '{"query": ..., "docs": [...]}' in err and looks in err


def test_train_help_lists_the_trainers(run_cli: Any) -> None:
    rc, out, _ = run_cli("train", "--help")
    assert rc == 0
    flat = " ".join(out.split())
    assert all(name in flat for name in ("sft", "grpo", "contrastive"))


def test_readme_extras_list_includes_irds() -> None:
    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    extras = text[text.index("(extras `train`"):]
    assert "`irds`" in extras[:extras.index(")")]
