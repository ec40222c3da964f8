"""Fixes of the second retriever-training audit: ADORE's own index records the model's own encoder settings (so any
max length trains, and ``--index OUTPUT/index`` searches as the model alone), its rebuild command runs; lengths
beyond the position limit, a non-positive ``scale``, ``split: test`` and a file as ``dataset`` are one-line errors;
an index whose settings differ from the ``--model`` folder's own is refused; STAR's reuse of ``negatives.json``
compares the encoder settings; the docs state the defaults and the special-token caveat."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict
from rerank.errors import ConfigError, RerankError
from rerank.retrieval.dense import BiEncoder, DenseConfig, DenseRetriever
from rerank.trainers.api import run_trainer
from rerank.trainers.base import get_trainer

TRAINERS = ["contrastive", "star", "adore", "pgrank"]


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank.testing import make_tiny_beir

    return make_tiny_beir(tmp_path_factory.mktemp("a2rt-beir") / "beir", num_docs=60, num_queries=20,
                          splits=("train", "test"))


@pytest.fixture(scope="module")
def plain_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain HF encoder (no sentence-transformers files): max length 512, not the trainers' 256."""
    from rerank.testing import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("a2rt-bert") / "bert", seed=0)


@pytest.fixture(scope="module")
def pst(tiny_st_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-st's weights as a folder with other settings: CLS pooling, normalised, prefixes, max length 128."""
    enc = BiEncoder.load(tiny_st_dir, pooling="cls", normalize=True, query_prefix="query: ", doc_prefix="passage: ",
                         max_query_tokens=128, max_doc_tokens=128, device="cpu")
    return enc.save(tmp_path_factory.mktemp("a2rt-pst") / "pst")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path_factory.getbasetemp() / "a2rt-cache"))


def train(name: str, model: Path, data: Path, out: Path, **opts: Any) -> dict[str, Any]:
    base = {"batch_size": 4, "max_steps": 1, "dev_fraction": 0.0, "progress": False, "model": str(model),
            "dataset": str(data)}
    return run_trainer(name, {**base, **opts}, out)


def _cfg(name: str, **opts: Any) -> Any:
    return from_dict(get_trainer(name).config_class, {"model": "m", "dataset": "d", **opts})


# ---------------------------------------------------------------------------------- 1+2. ADORE's own index
def test_adore_own_index_records_the_models_settings_and_searches_as_the_model(plain_bert: Path, beir: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "a"
    train("adore", plain_bert, beir, out, top_k=10)  # was: refused its own index (max_doc_tokens=256, the model: 512)
    own = BiEncoder.load(plain_bert, device="cpu").settings
    recorded = json.loads((out / "index" / "manifest.json").read_text())["encoder"]
    assert recorded["max_query_tokens"] == own.max_query_tokens == 512 and recorded["max_doc_tokens"] == 512
    from rerank.data.datasets import resolve_dataset

    ds = resolve_dataset(str(beir))
    with_index = DenseRetriever.from_config(ds, DenseConfig(model=str(out / "model"), index=str(out / "index"),
                                                            progress=False))
    alone = BiEncoder.load(out / "model", device="cpu")
    assert with_index.encoder.settings == alone.settings


def test_adore_index_settings_error_names_a_rebuild_command_that_runs(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                                     run_cli: Any) -> None:
    idx = tmp_path / "idx-cls"
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", beir, "--output", idx, "--no-progress",
                         "--pooling", "cls", "--normalize")
    assert rc == 0, err
    with pytest.raises(RerankError) as e:
        train("adore", tiny_st_dir, beir, tmp_path / "a", index=str(idx), top_k=10)
    msg = str(e.value)
    assert "\n" not in msg and "pooling='cls' (the model: 'mean')" in msg
    command = msg.split("`")[1]
    assert f"--dataset {beir}" in command and f"--output {idx}" in command
    rc, _, err = run_cli(*shlex.split(command)[1:], "--no-progress")
    assert rc == 0, err
    assert json.loads((idx / "manifest.json").read_text())["encoder"]["pooling"] == "mean"


# ---------------------------------------------------------------------------------- 3. lengths beyond the model's
@pytest.mark.parametrize("key", ["max_query_tokens", "max_doc_tokens"])
def test_a_length_beyond_the_position_limit_is_refused_before_training(tiny_st_dir: Path, beir: Path, tmp_path: Path,
                                                                       key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} 1024 exceeds this model's limit of 512 tokens") as e:
        train("star", tiny_st_dir, beir, tmp_path / "s", **{key: 1024})
    assert "\n" not in str(e.value) and not (tmp_path / "s" / "negatives.json").exists()


# ---------------------------------------------------------------------------------- 4. index vs the model's own
def test_an_index_built_with_other_settings_than_the_models_own_is_refused(tiny_st_dir: Path, pst: Path, beir: Path,
                                                                          tmp_path: Path, run_cli: Any) -> None:
    from rerank.data.datasets import resolve_dataset

    idx = tmp_path / "idx"
    rc, _, err = run_cli("index", "--model", tiny_st_dir, "--dataset", beir, "--output", idx, "--no-progress")
    assert rc == 0, err
    ds = resolve_dataset(str(beir))
    with pytest.raises(RerankError) as e:
        DenseRetriever.from_config(ds, DenseConfig(model=str(pst), index=str(idx), progress=False))
    msg = str(e.value)
    assert "\n" not in msg and "built with pooling='mean', normalize=False, query_prefix=''" in msg
    assert "says pooling='cls', normalize=True, query_prefix='query: '" in msg
    assert f"rebuild the index with the model's own: `rerank index --model {pst} --dataset {beir} --output {idx}" in msg
    # the index's settings, given explicitly, are searched with; --index alone uses them as before
    given = DenseConfig(model=str(pst), index=str(idx), pooling="mean", normalize=False, query_prefix="",
                        doc_prefix="", max_query_tokens=256, max_doc_tokens=256, progress=False)
    assert DenseRetriever.from_config(ds, given).encoder.settings.pooling == "mean"
    assert DenseRetriever.from_config(ds, DenseConfig(index=str(idx), progress=False)).encoder.settings.pooling == "mean"


# ---------------------------------------------------------------------------------- 5. STAR's negatives reuse
def test_star_negatives_record_and_compare_the_encoder_settings(tiny_st_dir: Path, pst: Path, beir: Path,
                                                                tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "s1"
    train("star", pst, beir, out, negatives_depth=10)
    raw = json.loads((out / "negatives.json").read_text())
    assert raw["encoder"]["pooling"] == "cls" and raw["encoder"]["query_prefix"] == "query: "
    again = tmp_path / "s2"
    again.mkdir()
    (again / "negatives.json").write_text(json.dumps(raw))
    with caplog.at_level(logging.INFO, logger="rerank.methods.star.trainer"):
        train("star", tiny_st_dir, beir, again, negatives_depth=10)  # same weights and tokenizer, other settings
    assert "mined with other encoder settings than the starting model's: pooling='cls' (the starting model: " \
           "'mean')" in caplog.text and "mining the negatives again" in caplog.text
    assert "reusing" not in caplog.text
    assert json.loads((again / "negatives.json").read_text())["encoder"]["pooling"] == "mean"


# ---------------------------------------------------------------------------------- 6. scale
@pytest.mark.parametrize("name", TRAINERS)
@pytest.mark.parametrize("scale", [0, -1.0])
def test_scale_must_be_positive(name: str, scale: float) -> None:
    with pytest.raises(ConfigError, match=r"scale must be a finite number > 0 .*, got"):
        _cfg(name, scale=scale)


def test_docs_give_each_trainers_default_scale(repo_root: Path) -> None:
    assert _cfg("contrastive").scale == 20.0 and {_cfg(n).scale for n in ("star", "adore", "pgrank")} == {1.0}
    text = " ".join((repo_root / "docs" / "retriever-training.md").read_text().split())
    assert "`scale` (the score multiplier, finite and > 0: 1.0 for `star`, `adore` and `pgrank`, 20 for " \
           "`contrastive`" in text


# ---------------------------------------------------------------------------------- 8. split: test
@pytest.mark.parametrize("name", TRAINERS)
def test_training_on_the_test_split_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^config: split test is the evaluation split, which training never reads"):
        _cfg(name, split="test")


# ---------------------------------------------------------------------------------- 9. a file as dataset
def test_a_file_as_dataset_is_named_a_file(beir: Path) -> None:
    from rerank.trainers.retriever import load_train_data

    cfg = from_dict(get_trainer("star").config_class, {"dataset": str(beir / "corpus.jsonl")})
    with pytest.raises(ConfigError, match=r"corpus\.jsonl is a file, not a BEIR folder: give the folder holding "
                                          r"corpus\.jsonl, queries\.jsonl and qrels/<split>\.tsv$"):
        load_train_data(cfg, None)


# ---------------------------------------------------------------------------------- 7, 10. docs
def test_docs_state_the_special_token_caveat_and_a_plain_starts_settings(repo_root: Path) -> None:
    text = " ".join((repo_root / "docs" / "retriever-training.md").read_text().split())
    assert "loads it with embeddings equal to ours (`encode_query`, `encode_document`)." not in text
    assert "rerank neutralises such strings so they stay text, sentence-transformers turns them into control " \
           "tokens, so those texts' embeddings differ" in text
    assert "a plain Hugging Face checkpoint starts mean-pooled (last-token for a `*ForCausalLM` architecture), " \
           "unnormalised and without prefixes" in text


def test_an_index_fills_what_a_plain_model_does_not_record(plain_bert: Path, beir: Path, tmp_path: Path,
                                                            run_cli: Any) -> None:
    """A plain HF encoder states no pooling or prefixes of its own: an index built with E5-style prefixes and CLS
    pooling is searched with them (research.md: "with index: the index's"), not refused."""
    from rerank.data.datasets import resolve_dataset

    idx = tmp_path / "idx"
    rc, _, err = run_cli("index", "--model", plain_bert, "--dataset", beir, "--output", idx, "--no-progress",
                         "--pooling", "cls", "--query-prefix", "query: ", "--doc-prefix", "passage: ")
    assert rc == 0, err
    got = DenseRetriever.from_config(resolve_dataset(str(beir)),
                                     DenseConfig(model=str(plain_bert), index=str(idx), progress=False))
    assert (got.encoder.settings.pooling, got.encoder.settings.query_prefix) == ("cls", "query: ")
