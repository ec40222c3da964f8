"""Project-wide pytest setup: offline, single-threaded, and session-wide tiny models / datasets built in code.

Fixtures: ``repo_root``, ``shared_data`` (``../shared/data`` or ``$RERANK_SHARED_DATA``, else a visible skip),
``scifact_dir``, ``dl19_dir``, ``tiny_llm_dir`` (Qwen2), ``sharp_llm_dir`` (that Qwen2 with sharper weights),
``tiny_llama_dir``, ``tiny_bert_dir`` (cross-encoder, one label), ``tiny_st_dir`` (SentenceTransformer),
``tiny_t5_dir`` (seq2seq), ``tiny_beir_dir`` (synthetic BEIR), and ``run_cli`` (runs ``rerank.cli.main``
in-process and returns ``(rc, stdout, stderr)``). Tiny models are built once per session. ``RERANK_CACHE``
(indexes, embeddings, LLM calls) is a temporary folder of the run unless set.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "RERANK_CACHE" not in os.environ:  # indexes, embeddings and LLM calls of this run only, never the user's cache
    import atexit
    import shutil
    import tempfile

    os.environ["RERANK_CACHE"] = tempfile.mkdtemp(prefix="rerank-test-cache-")
    atexit.register(shutil.rmtree, os.environ["RERANK_CACHE"], True)

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from rerank.data.datasets import Dataset  # noqa: E402
from rerank.testing import shared_data_path  # noqa: E402

torch.set_num_threads(1)
# Same run, same result: an op without a deterministic kernel raises instead of varying (tests/test_determinism.py).
torch.use_deterministic_algorithms(True)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder ``../shared/data``; skips the test with the paths tried when it is absent."""
    path = shared_data_path()
    if path is None:
        tried = os.environ.get("RERANK_SHARED_DATA") or f"{REPO_ROOT.parent / 'shared' / 'data'}, /work/shared/data"
        pytest.skip(f"../shared/data not found: tried {tried} (set RERANK_SHARED_DATA)")
    return path


def _shared_subdir(shared: Path, name: str) -> Path:
    path = shared / name
    if not path.is_dir():
        pytest.skip(f"../shared/data/{name} not found in {shared}")
    return path


@pytest.fixture(scope="session")
def scifact_dir(shared_data: Path) -> Path:
    """BEIR SciFact (``../shared/data/scifact``)."""
    return _shared_subdir(shared_data, "scifact")


@pytest.fixture(scope="session")
def dl19_dir(shared_data: Path) -> Path:
    """TREC DL19 BM25 top-100 (``../shared/data/dl19-bm25-top100``)."""
    return _shared_subdir(shared_data, "dl19-bm25-top100")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 causal LM folder (head_dim 64, BPE tokenizer with ChatML template), seed 0."""
    from rerank.testing import tiny_llm

    return tiny_llm(tmp_path_factory.mktemp("tiny-qwen2") / "model", arch="qwen2", seed=0)


@pytest.fixture(scope="session")
def sharp_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 of seed 0 with every non-norm weight x10 (std 0.2 instead of 0.02).

    At std 0.02 next-token distributions are nearly uniform and greedy decoding emits newlines forever, which would
    make generation comparisons vacuous; sharper weights give varied continuations and clear score gaps.
    """
    from rerank.testing import tiny_llm

    return tiny_llm(tmp_path_factory.mktemp("sharp-qwen2") / "model", arch="qwen2", seed=0, weight_scale=10.0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama causal LM folder (head_dim 64), seed 0."""
    from rerank.testing import tiny_llm

    return tiny_llm(tmp_path_factory.mktemp("tiny-llama") / "model", arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny BERT cross-encoder folder (one output label, WordPiece tokenizer), seed 0."""
    from rerank.testing import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model", num_labels=1, seed=0)


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentenceTransformer folder: tiny BERT + mean pooling, seed 0."""
    from rerank.testing import tiny_sentence_transformer

    return tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-st") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny T5 (seq2seq) folder with the T5-like Unigram tokenizer, seed 0."""
    from rerank.testing import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("tiny-t5") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BEIR folder: 200 docs, 30 queries dealt to train/dev/test, grades 0-2, seed 0."""
    from rerank.testing import make_tiny_beir

    return make_tiny_beir(tmp_path_factory.mktemp("tiny-beir") / "tiny-beir", seed=0)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``rerank.cli.main(args)`` in-process; return ``(exit code, stdout, stderr)`` (argparse exits included)."""
    from rerank.cli import main

    def _run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors, --help, --version
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return int(rc or 0), out, err

    return _run


ZEBRA_DOCS = [("d1", "zebra facts", "striped animals"), ("d2", "", "loyal dogs running"),
              ("d3", "", "a zebra and a dog")]


@pytest.fixture()
def tiny_ds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """A 3-document BEIR folder (one titled), one query 'zebra' judging d1, with its own cache root."""
    import json

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                               for i, t, x in ZEBRA_DOCS))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "zebra"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return Dataset(root)


@pytest.fixture()
def umask_022() -> Iterator[None]:
    """The usual umask (022) for the test, whatever the process had, restored afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture()
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Empty reranker and retriever registries for one test (built-ins and entry points read again on first use), so
    a test's registrations do not outlive it."""
    from rerank.heads import registry as heads_registry
    from rerank.retrieval import base as retrieval_base
    from rerank.utils.registry import Registry

    monkeypatch.setattr(heads_registry, "RERANKERS", Registry(
        "reranker", fill=heads_registry._builtins, check=heads_registry._check, group="rerank.rerankers", paths=True,
        exclusive=True))
    monkeypatch.setattr(retrieval_base, "RETRIEVERS", Registry(
        "retriever", fill=retrieval_base._builtins, check=retrieval_base._check, group="rerank.retrievers",
        paths=True, exclusive=True))
    yield
