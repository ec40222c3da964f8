"""Local LLM backends (llama.cpp, vLLM) and GGUF files: the errors a user meets are one line naming the fix.

* a truncated or damaged GGUF on the transformers backend (and its tokenizer, which ``--backend llamacpp`` reads) is
  one line naming the file, exit 2, not the reader's ``struct.error`` traceback; other errors pass unchanged;
* without the ``gguf`` package, one line saying ``pip install 'gguf>=…'``, on llamacpp before llama.cpp loads weights;
* a core dependency the CLI cannot import (the vLLM CPU venv installs rerank with ``--no-deps``) is one line naming
  the package and the install command, exit 2;
* the vLLM backend de-quantises a ``.gguf`` as the transformers backend does, and a missing path is one line;
* on llamacpp, a non-GGUF file is "not a GGUF model it supports" with ``n_ctx`` set too, the context-too-small advice
  names ``backend_options.n_ctx``, and an ``n_ctx`` above the trained context warns with both numbers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rerank.backends.registry import build_backend
from rerank.errors import ConfigError

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed "
                                     "(pip install 'rerank[llamacpp]'; builds from source)")
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_gguf_file(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank.testing import tiny_gguf

    return tiny_gguf(tiny_llm_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture()
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh conversion cache, so every GGUF is read again."""
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _queries(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text('{"query": "what do cats eat", "docs": ["Cats eat meat.", "Paris is in France."]}\n')
    return path


def _one_error_line(err: str) -> str:
    """The ``error:`` line of a CLI run that printed nothing else but log records."""
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- 1. damaged GGUF on transformers


@pytest.mark.parametrize("cut", ["header", "tensors"])
def test_a_truncated_gguf_is_one_line_naming_the_file(cut: str, tiny_gguf_file: Path, tmp_path: Path,
                                                      own_cache: Path, run_cli: Any) -> None:
    data = tiny_gguf_file.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:15] if cut == "header" else data[: len(data) // 2])
    rc, out, err = run_cli("rank", "--reranker", "yes-no", "--model", bad, "--input", _queries(tmp_path),
                           "--output", tmp_path / "out.jsonl")
    line = _one_error_line(err)
    assert rc == 2 and str(bad) in line and "truncated or damaged" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_the_tokenizer_read_for_llamacpp_names_the_file_too(tmp_path: Path, own_cache: Path) -> None:
    from rerank.backends.gguf import gguf_tokenizer

    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ConfigError, match=r"trunc\.gguf is truncated or damaged .*copy or download it again"):
        gguf_tokenizer(bad)


def test_a_value_error_from_outside_the_gguf_readers_passes_unchanged(tmp_path: Path) -> None:
    """transformers' "accelerate is required" is a ValueError too; it is not blamed on the file."""
    from rerank.backends.gguf import _reading

    with pytest.raises(ValueError, match="accelerate is required"):
        with _reading(tmp_path / "m.gguf"):
            raise ValueError("accelerate is required when loading a GGUF file")


# ---------------------------------------------------------------- 2. no gguf package


def test_without_gguf_package_transformers_says_pip_install_gguf(tiny_gguf_file: Path, tmp_path: Path,
                                                                 own_cache: Path, run_cli: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    rc, out, err = run_cli("rank", "--reranker", "yes-no", "--model", tiny_gguf_file, "--input", _queries(tmp_path),
                           "--output", tmp_path / "out.jsonl")
    line = _one_error_line(err)
    assert rc == 2 and "needs the `gguf` package" in line and "pip install 'gguf>=" in line


@needs_llama_cpp
def test_without_gguf_package_llamacpp_stops_before_loading_the_weights(tiny_gguf_file: Path, own_cache: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from rerank.backends import llamacpp

    loads = []
    monkeypatch.setattr(llamacpp, "_load", lambda *a, **k: loads.append(k) or pytest.fail("weights loaded"))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ConfigError, match=r"needs the `gguf` package.*pip install 'gguf>="):
        build_backend("llamacpp", str(tiny_gguf_file), n_threads=1)
    assert loads == []


# ---------------------------------------------------------------- 3. a core dependency missing (vLLM CPU venv)


def test_a_missing_core_dependency_is_one_line_naming_the_package() -> None:
    """As in the vLLM CPU venv (rerank installed --no-deps): the parser's import of ir_measures fails."""
    code = ("import sys; sys.modules['ir_measures'] = None\n"
            "from rerank.cli import main\nsys.exit(main(['rank', '--help']))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: rerank needs the ir-measures package (import ir_measures), which is not installed: pip install "
        "'ir-measures>=0.3.1' (README's install brings every core dependency)"]


def test_missing_dependency_maps_import_names_and_leaves_others_alone() -> None:
    from rerank.cli import missing_dependency

    assert "pip install 'PyStemmer>=" in (missing_dependency(ModuleNotFoundError(name="Stemmer")) or "")
    assert "pip install 'faiss-cpu>=" in (missing_dependency(ModuleNotFoundError(name="faiss")) or "")
    assert "pip install 'pytrec-eval-terrier>=" in (missing_dependency(ModuleNotFoundError(name="pytrec_eval")) or "")
    assert missing_dependency(ModuleNotFoundError(name="vllm")) is None  # an extra: its backend says how
    assert missing_dependency(ModuleNotFoundError(name="not_a_dependency")) is None
    assert missing_dependency(ImportError("cannot import name x", name="torch")) is None


def test_a_missing_dependency_while_a_command_runs_is_one_line(run_cli: Any, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from rerank.cli import rank_cmd

    def run(args: Any) -> int:
        raise ModuleNotFoundError("No module named 'bm25s'", name="bm25s")

    monkeypatch.setattr(rank_cmd, "run", run)
    rc, out, err = run_cli("rank", "--reranker", "yes-no", "--model", "m", "--input", _queries(tmp_path),
                           "--output", tmp_path / "out.jsonl")
    assert rc == 2 and _one_error_line(err).startswith("error: rerank needs the bm25s package")
    with pytest.raises(ModuleNotFoundError):
        run_cli("--debug", "rank", "--reranker", "yes-no", "--model", "m", "--input", _queries(tmp_path),
                "--output", tmp_path / "out.jsonl")


# ---------------------------------------------------------------- 4. vLLM: a .gguf file, a missing path


def _fake_vllm(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """An importable stand-in for vllm that records the engine's keyword arguments."""
    started: list[dict[str, Any]] = []

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            started.append(kwargs)
            config = types.SimpleNamespace(get_vocab_size=lambda: 10**6, max_model_len=512, dtype="float32")
            self.llm_engine = types.SimpleNamespace(model_config=config)

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM  # type: ignore[attr-defined]
    vllm.SamplingParams = lambda: types.SimpleNamespace(logprob_token_ids=None)  # type: ignore[attr-defined]
    vllm.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cpu")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return started


def test_vllm_dequantises_a_gguf_file_as_transformers_does(tiny_gguf_file: Path, own_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    started = _fake_vllm(monkeypatch)
    backend = build_backend("vllm", str(tiny_gguf_file))
    folder = Path(started[0]["model"])
    assert folder.is_dir() and folder.parent == own_cache / "gguf" and started[0]["tokenizer"] == str(folder)
    assert (folder / "config.json").is_file() and backend.model_name == str(tiny_gguf_file)


@pytest.mark.parametrize("model", ["/nope/x.gguf", "/nope/folder"])
def test_vllm_a_missing_path_is_one_line(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _fake_vllm(monkeypatch)
    with pytest.raises(ConfigError, match=f"{model} does not exist"):
        build_backend("vllm", model)
    assert started == []


def test_vllm_venv_refuses_a_missing_gguf_in_one_line() -> None:
    """The real vLLM (its CPU venv, when present): no engine starts for a path that does not exist."""
    env_python = os.environ.get("RERANK_VLLM_PYTHON")
    python = Path(env_python) if env_python else REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.skip("vLLM venv not found (set RERANK_VLLM_PYTHON or run `bash .ci/vllm-venv.sh`)")
    code = ("from rerank.backends.registry import build_backend\nfrom rerank.errors import ConfigError\n"
            "try:\n    build_backend('vllm', '/nope/x.gguf')\nexcept ConfigError as e:\n    print('ConfigError:', e)")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip() == "ConfigError: model /nope/x.gguf does not exist (neither a folder nor a Hugging " \
                                  "Face hub id)", done.stderr[-2000:]


# ---------------------------------------------------------------- 5-7. llama.cpp: file check, n_ctx


@needs_llama_cpp
@pytest.mark.parametrize("options", [{}, {"n_ctx": 512}])
def test_a_non_gguf_file_is_named_so_whether_or_not_n_ctx_is_set(options: dict[str, Any], tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match=r"llama\.cpp cannot read .*fake\.gguf \(not a GGUF model it supports\)"):
        build_backend("llamacpp", str(fake), n_threads=1, **options)


def test_the_context_advice_names_backend_options_n_ctx() -> None:
    from rerank.backends.scripted import ScriptedBackend
    from rerank.methods.grouprank.head import GroupRankConfig, GroupRankReranker
    from rerank.testing import build_tokenizer

    def scored(prompt: str, ids: Sequence[int]) -> list[float]:
        return [-1.0] * len(ids)

    tok = build_tokenizer()
    head = GroupRankReranker(GroupRankConfig(backend_options={"n_ctx": 600}),
                             backend=ScriptedBackend(tok, scored, context_length=600))
    assert head.room_options(512) == ("use a shorter template, lower group_size / max_new_tokens, raise "
                                      "backend_options.n_ctx, or use a model with a longer context")


@needs_llama_cpp
def test_n_ctx_above_the_trained_context_warns_with_both_numbers(tiny_gguf_file: Path, tiny_llm_dir: Path,
                                                                 own_cache: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import json

    trained = json.loads((tiny_llm_dir / "config.json").read_text())["max_position_embeddings"]
    with caplog.at_level(logging.WARNING, logger="rerank.backends.llamacpp"):
        within = build_backend("llamacpp", str(tiny_gguf_file), n_threads=1, n_ctx=trained)
        within.close()
        assert caplog.records == []
        above = build_backend("llamacpp", str(tiny_gguf_file), n_threads=1, n_ctx=trained + 256)
        above.close()
    [record] = caplog.records
    assert f"n_ctx {trained + 256} is above the {trained} tokens" in record.getMessage()


def test_a_missing_submodule_of_an_installed_package_is_not_called_a_missing_package() -> None:
    """A remote-code model importing ``transformers.onnx`` (gone in transformers 5) was told to pip install
    transformers (review s43/reviewE)."""
    from rerank.cli import missing_dependency

    for name in ("transformers.onnx", "torch._C", "faiss.swigfaiss", "sentence_transformers.sentence_transformer"):
        assert missing_dependency(ModuleNotFoundError(f"No module named '{name}'", name=name)) is None


@pytest.mark.parametrize("address", ["s3://bucket/qwen3", "gs://bucket/model", "az://container/model"])
def test_vllm_takes_cloud_storage_addresses_as_they_are(address: str, tiny_llm_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM loads s3:// / gs:// / az:// models itself; rerank refused them as missing paths (review s43/reviewE)."""
    started = _fake_vllm(monkeypatch)
    build_backend("vllm", address, tokenizer=str(tiny_llm_dir))
    assert started[0]["model"] == address
