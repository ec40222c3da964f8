"""Audit s43 / dense: ``rerank train <retriever> --check`` refuses what the run refuses before training (the dataset, the
batch, the token limits) with the run's own line; a stale index's rebuild command names the folder searched; a model
folder given as ``--index`` is named as such."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest

from rerank.backends.transformers import position_limit
from rerank.errors import RerankError
from rerank.retrieval.dense import BiEncoder
from rerank.retrieval.index import DenseIndex, rebuild_command

LIMIT = 512  # the tiny model's position table


def _train(run_cli, out: Path, model: Path, *sets: str, check: bool) -> tuple[int, str, str]:
    args = ["train", "contrastive", "--output", out, "--set", f"model={model}", "--set", "max_steps=1",
            "--set", "eval_steps=0", "--set", "save_steps=1", "--set", "batch_size=2", "--set", "use_cpu=true"]
    for s in sets:
        args += ["--set", s]
    return run_cli(*args, *(["--check"] if check else []))


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("case", ["missing", "empty", "file", "no-split", "batch", "query-tokens", "doc-tokens"])
def test_check_refuses_with_the_line_the_run_gives(case: str, tiny_st_dir: Path, tiny_beir_dir: Path,
                                                   tmp_path: Path, run_cli) -> None:
    """--check said ``state: train``, exit 0, for runs that then stopped at once with exit 2."""
    (tmp_path / "empty").mkdir()
    sets = {"missing": [f"dataset={tmp_path / 'nowhere'}"], "empty": [f"dataset={tmp_path / 'empty'}"],
            "file": [f"dataset={tiny_beir_dir / 'corpus.jsonl'}"],
            "no-split": [f"dataset={tiny_beir_dir}", "split=held"],
            "batch": [f"dataset={tiny_beir_dir}", "batch_size=11"],  # 10 training queries
            "query-tokens": [f"dataset={tiny_beir_dir}", f"max_query_tokens={LIMIT + 1}"],
            "doc-tokens": [f"dataset={tiny_beir_dir}", f"max_doc_tokens={LIMIT + 1}"]}[case]
    rc, out, err = _train(run_cli, tmp_path / "checked", tiny_st_dir, *sets, check=True)
    assert rc == 2 and "state:" not in out, (out, err)
    checked = _error_line(err)
    assert not (tmp_path / "checked").exists()
    rc, _, err = _train(run_cli, tmp_path / "ran", tiny_st_dir, *sets, check=False)
    assert rc == 2
    assert checked == _error_line(err)


def test_check_passes_a_run_that_trains_and_loads_no_weights(tiny_st_dir: Path, tiny_beir_dir: Path,
                                                             tmp_path: Path, run_cli,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits themselves pass: a full batch of the training queries, token limits at the position limit."""
    import transformers

    def no_weights(*a: object, **k: object) -> None:
        raise AssertionError("--check loaded model weights")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)
    rc, out, err = _train(run_cli, tmp_path / "o", tiny_st_dir, f"dataset={tiny_beir_dir}", "batch_size=10",
                          f"max_query_tokens={LIMIT}", f"max_doc_tokens={LIMIT}", check=True)
    assert rc == 0, err
    assert out.splitlines()[-1] == "state: train"
    rc, _, err = _train(run_cli, tmp_path / "o", tiny_st_dir, f"dataset={tiny_beir_dir}", "batch_size=10",
                        f"max_query_tokens={LIMIT + 1}", check=True)
    assert rc == 2 and "exceeds this model's limit of 512 tokens" in _error_line(err)


def test_check_skips_a_registered_dataset_the_run_downloads(tiny_st_dir: Path, tmp_path: Path, run_cli) -> None:
    """--check downloads nothing: a registered dataset not here yet is the run's to fetch, not an error."""
    root = tmp_path / "root"
    root.mkdir()
    rc, out, err = run_cli("train", "contrastive", "--output", tmp_path / "o", "--set", f"model={tiny_st_dir}",
                           "--set", "dataset=scifact", "--data-root", root, "--check")
    assert rc == 0, err
    assert out.splitlines()[-1] == "state: train"
    assert list(root.iterdir()) == []


def test_check_is_skipped_with_inputs_later(tiny_st_dir: Path, tmp_path: Path, run_cli) -> None:
    rc, out, err = _train(run_cli, tmp_path / "o", tiny_st_dir, f"dataset={tmp_path / 'made-later'}", check=True)
    assert rc == 2 and "does not exist" in _error_line(err)
    rc, out, err = run_cli("train", "contrastive", "--output", tmp_path / "o", "--set", f"model={tiny_st_dir}",
                           "--set", f"dataset={tmp_path / 'made-later'}", "--check", "--inputs-later")
    assert rc == 0, err


def test_weightless_load_has_the_settings_and_limits_of_both_sides(tiny_st_dir: Path, tmp_path: Path) -> None:
    """``BiEncoder.load(weights=False)``, what --check reads the position limits from: an untied (Router) folder too."""
    untied = tmp_path / "untied"
    BiEncoder.load(tiny_st_dir, device="cpu").untie().save_into(untied)
    for folder in (tiny_st_dir, untied):
        real, shape = BiEncoder.load(folder, device="cpu"), BiEncoder.load(folder, weights=False)
        assert shape.settings == real.settings
        assert shape.tied == real.tied
        for side in ("query_model", "doc_model"):
            assert position_limit(getattr(shape, side)) == position_limit(getattr(real, side)) == LIMIT
        assert {p.device.type for p in shape.parameters()} == {"meta"}


def test_rebuild_command_names_a_bare_folder_so_no_data_root_reads_another() -> None:
    assert "--dataset ./cb " in rebuild_command("idx", dataset="cb")
    assert "--dataset dr/cb " in rebuild_command("idx", dataset="dr/cb")
    assert "--dataset /data/cb " in rebuild_command("idx", dataset="/data/cb")
    assert "--dataset DATASET " in rebuild_command("idx")


def test_stale_index_rebuild_command_rebuilds_the_searched_corpus(tiny_st_dir: Path, tiny_beir_dir: Path,
                                                                 tmp_path: Path, run_cli,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dataset ./cb --data-root dr` searched ./cb, but the rebuild command said `--dataset cb`: run with the data
    root, that indexed dr/cb, another corpus, over the index."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_beir_dir, "cb")
    shutil.copytree(tiny_beir_dir, "dr/cb")
    (tmp_path / "dr/cb/corpus.jsonl").write_text("\n".join(
        (tmp_path / "dr/cb/corpus.jsonl").read_text().splitlines()[:50]) + "\n")
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", "./cb", "--output", "idx", "--no-progress")
    assert rc == 0, err
    corpus = tmp_path / "cb/corpus.jsonl"
    first, *rest = corpus.read_text().splitlines()
    doc = json.loads(first)
    corpus.write_text("\n".join([json.dumps({**doc, "text": doc["text"] + " edited"}), *rest]) + "\n")
    rc, _, err = run_cli("eval", "--dataset", "./cb", "--data-root", "dr", "--retriever", "dense", "--index", "idx",
                         "--output", "ev", "--rel-level", "1")
    assert rc == 2
    line = _error_line(err)
    assert "stale" in line and "--dataset ./cb " in line
    command = shlex.split(line.split("`")[1])
    assert command[:2] == ["rerank", "index"]
    rc, _, err = run_cli(*command[1:], "--data-root", "dr", "--no-progress")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "idx/manifest.json").read_text())
    assert manifest["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    rc, _, err = run_cli("eval", "--dataset", "./cb", "--data-root", "dr", "--retriever", "dense", "--index", "idx",
                         "--output", "ev", "--rel-level", "1")
    assert rc == 0, err


def test_a_model_folder_as_index_is_named_a_model_folder(tiny_st_dir: Path, tiny_beir_dir: Path, tmp_path: Path,
                                                        run_cli) -> None:
    """The error suggested `rerank index … --output <the model folder>`, which would write into the model."""
    with pytest.raises(RerankError) as info:
        DenseIndex.read_manifest(tiny_st_dir, dataset="/data/b")
    message = str(info.value)
    assert "is a model folder (it holds modules.json), not a dense index" in message
    assert f"--model {tiny_st_dir}" in message and f"--output {tiny_st_dir}" not in message
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "dense", "--index", tiny_st_dir,
                         "--output", tmp_path / "ev", "--rel-level", "1")
    assert rc == 2 and "is a model folder" in _error_line(err)
    (tmp_path / "half").mkdir()
    with pytest.raises(RerankError, match=r"not a complete dense index folder: no manifest\.json; rebuild it with "
                                          r"`rerank index --model MODEL --dataset /data/b --output "):
        DenseIndex.read_manifest(tmp_path / "half", dataset="/data/b")


def test_a_model_folder_with_a_space_is_quoted_in_the_hint(tiny_st_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "my model"
    shutil.copytree(tiny_st_dir, model)
    with pytest.raises(RerankError) as info:
        DenseIndex.read_manifest(model, dataset="/data/b")
    assert f"(--model {shlex.quote(str(model))})" in str(info.value)


def test_check_writes_no_converted_gguf_model(tiny_llm_dir: Path, tiny_beir_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    """With a token limit set, --check de-quantised a .gguf starting model into the cache (review s43/reviewD)."""
    from rerank.testing.gguf import tiny_gguf

    gguf = tiny_gguf(tiny_llm_dir, tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    monkeypatch.setenv("RERANK_CACHE", str(cache))
    rc, out, err = _train(run_cli, tmp_path / "o", Path(gguf), f"dataset={tiny_beir_dir}", "max_query_tokens=100",
                          check=True)
    assert rc == 0, err
    assert not (cache / "gguf").exists()
