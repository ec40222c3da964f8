"""No dead options in the retriever trainers: an option a combination never reads is a config-time ConfigError naming
it (dev_fraction / dev_depth without eval_steps, document options with fixed documents, STAR's negatives_depth with
negatives_file, contrastive's negatives_depth with hard_negatives 0), and selection without a dev split is refused
(at config time, or before the model loads when the split came out empty)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rerank.config import from_dict, to_dict
from rerank.errors import ConfigError
from rerank.trainers.base import build_train_config, get_trainer, load_train_config

RETRIEVERS = ["contrastive", "star", "adore", "pgrank"]


def config(name: str, **opts: Any) -> Any:
    """The trainer's typed config built as ``rerank train`` builds it (checks included)."""
    return build_train_config(get_trainer(name).config_class, {"model": "m", "dataset": "d", **opts})


# ------------------------------------------------------------------------------------------- dev split and selection
@pytest.mark.parametrize("name", RETRIEVERS)
def test_dev_fraction_follows_eval_steps(name: str) -> None:
    """Unset, dev_fraction is 0.1 with selection and 0 without: a run without selection trains on every query."""
    assert config(name).dev_fraction == 0.0
    assert config(name, eval_steps=5, save_steps=5).dev_fraction == 0.1
    assert config(name, eval_steps=5, save_steps=5, dev_fraction=0.3).dev_fraction == 0.3
    assert config(name, dev_fraction=0.0).dev_fraction == 0.0


@pytest.mark.parametrize("name", RETRIEVERS)
def test_dev_fraction_without_eval_steps_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^retriever config: dev_fraction 0\.2 holds training queries out "
                                          r".*eval_steps is 0 .*drop dev_fraction"):
        build_train_config(get_trainer(name).config_class, {"model": "m", "dev_fraction": 0.2}, "retriever config")


@pytest.mark.parametrize("name", RETRIEVERS)
def test_eval_steps_without_a_dev_split_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"eval_steps 5 selects the model on the dev split, but dev_fraction is 0 "
                                          r"\(no dev split\): set dev_fraction > 0, or eval_steps: 0"):
        config(name, eval_steps=5, save_steps=5, dev_fraction=0.0)


@pytest.mark.parametrize("name", ["contrastive", "star", "pgrank"])
def test_dev_depth_without_eval_steps_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^config: dev_depth 50 is unused with eval_steps 0"):
        config(name, dev_depth=50)
    assert config(name, dev_depth=50, eval_steps=5, save_steps=5).dev_depth == 50


def test_an_empty_dev_split_is_refused_before_the_model_loads(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One usable query: no dev query can be carved, so eval_steps cannot select; refused before BiEncoder.load and
    before queries.json (and, failing before a checkpoint, the run leaves no folder)."""
    from rerank.retrieval.dense import BiEncoder
    from rerank.testing import make_tiny_beir
    from rerank.trainers.api import run_trainer

    def no_model(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded before the empty dev split was refused")

    monkeypatch.setattr(BiEncoder, "load", no_model)
    data = make_tiny_beir(tmp_path / "beir", num_docs=6, num_queries=1, splits=("train",))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"^eval_steps 2 selects the model on the dev split, but the split is empty"):
        run_trainer("contrastive", {"model": "m", "dataset": str(data), "eval_steps": 2, "save_steps": 2,
                                    "dev_fraction": 0.5, "batch_size": 1}, out)
    assert not out.exists()


@pytest.mark.parametrize("name", RETRIEVERS)
def test_example_configs_load_and_record_a_resumable_dev_fraction(repo_root: Path, tmp_path: Path, name: str) -> None:
    """The shipped examples (dev_fraction 0.1, eval_steps 23) load; the run record holds the resolved value, and the
    same config resumes (the record's config builds the same config back)."""
    from rerank.trainers.base import save_run_record
    from rerank.trainers.resume import check_same_run

    cls = get_trainer(name).config_class
    cfg = load_train_config(cls, repo_root / "configs" / "examples" / f"scifact-{name}.yaml")
    assert cfg.dev_fraction == 0.1 and cfg.eval_steps == 23
    bare = build_train_config(cls, {"model": "m"})
    assert from_dict(cls, to_dict(bare)) == bare and to_dict(bare)["dev_fraction"] == 0.0
    save_run_record(tmp_path, name, bare)
    assert json.loads((tmp_path / "rerank_train.json").read_text())["config"]["dev_fraction"] == 0.0
    check_same_run(tmp_path, name, build_train_config(cls, {"model": "m"}))


# ----------------------------------------------------------------------------------------- fixed document embeddings
@pytest.mark.parametrize("name", ["contrastive", "star", "pgrank"])
@pytest.mark.parametrize(("key", "value"), [("max_doc_tokens", 128), ("dev_depth", 50)])
def test_document_options_with_fixed_documents_are_refused(name: str, key: str, value: int) -> None:
    sel = {"eval_steps": 5, "save_steps": 5}
    with pytest.raises(ConfigError, match=rf"^config: {key} {value} is unused with train_doc_encoder: false .*drop "
                                          rf"{key}, or set train_doc_encoder: true$"):
        config(name, train_doc_encoder=False, **sel, **{key: value})
    assert getattr(config(name, **sel, **{key: value}), key) == value  # trained documents read it
    default = getattr(config(name), key)
    assert getattr(config(name, train_doc_encoder=False, **sel, **{key: default}), key) == default


@pytest.mark.parametrize(("key", "value"), [("max_doc_tokens", 128), ("dev_depth", 50)])
def test_adore_refuses_document_options(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"^config: {key} {value} is unused in ADORE \(the query encoder trains "
                                          rf"alone against the fixed index\) .*drop {key}$"):
        config("adore", eval_steps=5, save_steps=5, **{key: value})


# ---------------------------------------------------------------------------------------------- negatives options
def test_star_negatives_depth_with_negatives_file_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^config: negatives_depth 20 is unused with negatives_file .*drop "
                                          r"negatives_depth, or drop negatives_file"):
        config("star", negatives_file="n.json", negatives_depth=20)
    assert config("star", negatives_file="n.json").negatives_file == "n.json"
    assert config("star", negatives_depth=20).negatives_depth == 20


def test_contrastive_negatives_depth_without_hard_negatives_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^config: negatives_depth 10 is unused with hard_negatives: 0 .*set "
                                          r"hard_negatives >= 1$"):
        config("contrastive", hard_negatives=0, negatives_depth=10)
    assert config("contrastive", hard_negatives=0).hard_negatives == 0
    assert config("contrastive", hard_negatives=2, negatives_depth=10).negatives_depth == 10
