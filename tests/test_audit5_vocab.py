"""One vocabulary for the token limits: ``max_query_tokens`` / ``max_doc_tokens`` (``--max-query-tokens`` /
``--max-doc-tokens``) in the retriever trainers, the bi-encoder head, the dense retriever and ``rerank index``, as in
SFT / GRPO and the LLM heads. The former names (``query_max_length`` / ``doc_max_length``) are refused in one line
naming the new one, and what was written under them (model folders, index manifests, STAR negatives files, embedding
cache keys) still loads. Also: the retriever trainers' hints for a reranker-style ``data.*`` key name the right key,
and ``gradient_checkpointing`` reaches the trainer and the model both ways (TRL defaults it on)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank.config import from_dict
from rerank.data.io import write_jsonl
from rerank.errors import ConfigError
from rerank.retrieval.dense import BiEncoder, DenseRetriever
from rerank.retrieval.index import (
    DenseIndex,
    doc_encoder_settings,
    doc_encoding_key,
    embedding_cache_dir,
    rebuild_command,
    settings_differences,
)
from rerank.testing import synthetic_ranking_examples
from rerank.trainers.api import run_trainer
from rerank.trainers.base import get_trainer, load_train_config

RETRIEVER_TRAINERS = ["contrastive", "star", "adore", "pgrank"]
OLD_NEW = [("query_max_length", "max_query_tokens"), ("doc_max_length", "max_doc_tokens")]


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank.testing import make_tiny_beir

    return make_tiny_beir(tmp_path_factory.mktemp("vocab-beir") / "beir", num_queries=24, splits=("train", "test"))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))


def _error_line(err: str) -> str:
    """The one error line of a failed command (its stderr holds no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


def _index(run_cli: Any, model: Path, beir: Path, out: Path, *extra: str) -> dict[str, Any]:
    rc, _, err = run_cli("index", "--model", model, "--dataset", beir, "--output", out, "--device", "cpu",
                         "--no-progress", *extra)
    assert rc == 0, err
    return json.loads((out / "manifest.json").read_text())


def _first_stage(path: Path) -> dict[str, Any]:
    return json.loads((path / "metrics.json").read_text())["first_stage"]


# ------------------------------------------------------------------------------------------- the new names, end to end
def test_the_new_names_train_index_and_evaluate(tiny_st_dir: Path, beir: Path, tmp_path: Path, run_cli: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    widths: dict[str, set[int]] = {"query": set(), "doc": set()}
    tokenize = BiEncoder.tokenize

    def spy(self: BiEncoder, texts: Any, side: str) -> dict[str, Any]:
        out = tokenize(self, texts, side)  # type: ignore[arg-type]
        widths[side].add(int(out["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(BiEncoder, "tokenize", spy)
    out = tmp_path / "run"
    run_trainer("contrastive", {"model": str(tiny_st_dir), "dataset": str(beir), "batch_size": 4, "max_steps": 2,
                                "dev_fraction": 0.0, "progress": False, "max_query_tokens": 5, "max_doc_tokens": 9},
                out)
    assert max(widths["query"]) == 5 and max(widths["doc"]) == 9  # training cut the texts to the new keys' values
    config = json.loads((out / "rerank_train.json").read_text())["config"]
    assert (config["max_query_tokens"], config["max_doc_tokens"]) == (5, 9) and "query_max_length" not in config
    saved = json.loads((out / "model" / "rerank_biencoder.json").read_text())
    assert {"max_query_tokens", "max_doc_tokens"} <= set(saved) and "doc_max_length" not in saved
    monkeypatch.setattr(BiEncoder, "tokenize", tokenize)

    manifest = _index(run_cli, out / "model", beir, tmp_path / "idx", "--max-query-tokens", "12",
                      "--max-doc-tokens", "24")
    assert (manifest["encoder"]["max_query_tokens"], manifest["encoder"]["max_doc_tokens"]) == (12, 24)
    assert "query_max_length" not in manifest["encoder"]
    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", "dense", "--index", tmp_path / "idx", "--output",
                         tmp_path / "ev", "--retriever-set", "progress=false", "--retriever-set", "max_query_tokens=10")
    assert rc == 0, err
    assert _first_stage(tmp_path / "ev")["encoder"]["max_query_tokens"] == 10
    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", "bm25", "--depth", "10", "--top-k", "10",
                         "--reranker", "bi-encoder", "--model", tiny_st_dir, "--reranker-set", "max_doc_tokens=7",
                         "--output", tmp_path / "rr")
    assert rc == 0, err
    head = json.loads((tmp_path / "rr" / "metrics.json").read_text())["reranker"]
    assert head["encoder"]["max_doc_tokens"] == 7 and head["config"]["max_doc_tokens"] == 7


# --------------------------------------------------------------------------------- the former names: one-line refusals
@pytest.mark.parametrize("trainer", [*RETRIEVER_TRAINERS, "sft", "grpo"])
@pytest.mark.parametrize(("old", "new"), OLD_NEW)
def test_a_trainer_refuses_a_former_name_naming_the_new_one(trainer: str, old: str, new: str,
                                                             tmp_path: Path) -> None:
    cls = get_trainer(trainer).config_class
    reranker = trainer in ("sft", "grpo")
    base = ["model=m", "head=erank", "data.path=x", "batch_size=10"] if reranker else ["model=m", "dataset=d"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", **({"head": "erank", "data": {"path": "x"}} if reranker else
                                                     {"dataset": "d"}), old: 16}))
    with pytest.raises(ConfigError, match=rf"^{path}: key '{old}' is now '{new}' \(one vocabulary"):
        load_train_config(cls, path)
    with pytest.raises(ConfigError, match=rf"^--set {old}=16: key '{old}' is now '{new}' \("):
        load_train_config(cls, None, [*base, f"{old}=16"])
    value = 256 if (trainer, new) == ("adore", "max_doc_tokens") else 16  # ADORE: only its default (documents fixed)
    assert getattr(load_train_config(cls, None, [*base, f"{new}={value}"]), new) == value


@pytest.mark.parametrize(("flag", "new"), [("--query-max-length", "--max-query-tokens"),
                                           ("--doc-max-length", "--max-doc-tokens")])
@pytest.mark.parametrize("form", ["space", "equals"])
def test_rerank_index_refuses_a_former_flag_naming_the_new_one(flag: str, new: str, form: str, tmp_path: Path,
                                                                run_cli: Any) -> None:
    given = [flag, "12"] if form == "space" else [f"{flag}=12"]
    rc, _, err = run_cli("index", "--model", tmp_path / "m", "--dataset", tmp_path / "d", "--output", tmp_path / "o",
                         *given)
    assert rc == 2
    assert f"{flag} is now {new}" in _error_line(err)
    assert not (tmp_path / "o").exists()
    rc, out, _ = run_cli("index", "--help")
    assert rc == 0 and new in out and flag not in out


@pytest.mark.parametrize(("old", "new"), OLD_NEW)
def test_the_dense_retriever_refuses_a_former_name(old: str, new: str, tiny_st_dir: Path, beir: Path,
                                                    tmp_path: Path, run_cli: Any) -> None:
    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", "dense", "--model", tiny_st_dir, "--output",
                         tmp_path / "ev", "--retriever-set", f"{old}=24")
    assert rc == 2
    assert f"--retriever-set {old}=24: key '{old}' is now '{new}'" in _error_line(err)
    from rerank.data.datasets import resolve_dataset

    with pytest.raises(ConfigError, match=rf"^retriever options: key '{old}' is now '{new}'"):
        DenseRetriever.from_dataset(resolve_dataset(str(beir)), model=str(tiny_st_dir), **{old: 24})


@pytest.mark.parametrize(("old", "new"), OLD_NEW)
def test_the_bi_encoder_head_refuses_a_former_name(old: str, new: str, tiny_st_dir: Path) -> None:
    from rerank import Reranker

    with pytest.raises(ConfigError, match=rf"^bi-encoder options: key '{old}' is now '{new}'"):
        Reranker.load("bi-encoder", model=str(tiny_st_dir), **{old: 24})
    head = Reranker.load("bi-encoder", model=str(tiny_st_dir), **{new: 24})
    assert getattr(head.encoder.settings, new) == 24  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- artefacts written under the former names
def _rename_keys(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` as the code before the rename wrote it: the former key names, in place."""
    back = {new: old for old, new in OLD_NEW}
    return {back.get(k, k): v for k, v in block.items()}


def test_a_model_folder_saved_under_the_former_names_loads_with_its_lengths(tiny_st_dir: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(tiny_st_dir, device="cpu")
    enc.settings = dataclasses.replace(enc.settings, max_query_tokens=7, max_doc_tokens=9)
    folder = enc.untie().save(tmp_path / "old")
    record = folder / "rerank_biencoder.json"
    record.write_text(json.dumps(_rename_keys(json.loads(record.read_text()))))
    assert "query_max_length" in record.read_text()
    loaded = BiEncoder.load(folder, device="cpu")
    assert (loaded.settings.max_query_tokens, loaded.settings.max_doc_tokens) == (7, 9)
    short = BiEncoder.load(folder, device="cpu", max_query_tokens=3)
    assert (short.settings.max_query_tokens, short.settings.max_doc_tokens) == (3, 9)


def test_an_index_built_under_the_former_names_is_searched_as_recorded(tiny_st_dir: Path, beir: Path,
                                                                       tmp_path: Path, run_cli: Any) -> None:
    idx = tmp_path / "idx"
    manifest = _index(run_cli, tiny_st_dir, beir, idx, "--max-query-tokens", "12", "--max-doc-tokens", "24")
    manifest["encoder"] = _rename_keys(manifest["encoder"])
    (idx / "manifest.json").write_text(json.dumps(manifest))
    assert "doc_max_length" in (idx / "manifest.json").read_text()

    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", "dense", "--index", idx, "--output",
                         tmp_path / "ev", "--retriever-set", "progress=false")
    assert rc == 0, err
    encoder = _first_stage(tmp_path / "ev")["encoder"]
    assert (encoder["max_query_tokens"], encoder["max_doc_tokens"]) == (12, 24)  # the index's recorded limits
    rc, _, err = run_cli("eval", "--dataset", beir, "--retriever", "dense", "--index", idx, "--output",
                         tmp_path / "ev2", "--retriever-set", "max_doc_tokens=30")
    assert rc == 2
    line = _error_line(err)
    assert "built with max_doc_tokens=24, but max_doc_tokens=30 was given" in line
    assert "--max-query-tokens 12 --max-doc-tokens 30" in line

    enc = BiEncoder.load(tiny_st_dir, device="cpu", max_doc_tokens=24)
    assert DenseIndex.load(idx, encoder=doc_encoder_settings(enc)).manifest["encoder"]["max_doc_tokens"] == 24
    assert settings_differences(manifest["encoder"], doc_encoder_settings(enc)) == ""  # what ADORE compares
    assert "--max-query-tokens 12 --max-doc-tokens 24" in rebuild_command(idx, manifest)


def test_embedding_cache_keys_are_those_written_before_the_rename(tiny_st_dir: Path) -> None:
    """The cache key keeps the former name, so corpus embeddings cached before the rename are found."""
    enc = BiEncoder.load(tiny_st_dir, device="cpu", max_doc_tokens=24)
    before = {"model_hash": enc.fingerprint("doc"), "corpus_sha256": "c", "pooling": enc.settings.pooling,
              "normalize": enc.settings.normalize, "doc_prefix": enc.settings.doc_prefix, "doc_max_length": 24,
              "lowercase": enc.settings.lowercase, "dtype": "float32", "title_sep": " "}
    assert doc_encoding_key(enc, "c") == before
    assert embedding_cache_dir(doc_encoding_key(enc, "c")) == embedding_cache_dir(before)


def test_a_star_negatives_file_mined_under_the_former_names_still_serves(tiny_st_dir: Path, tmp_path: Path) -> None:
    from rerank.trainers.retriever import NEGATIVES_FORMAT, read_negatives_file

    own = dataclasses.asdict(BiEncoder.load(tiny_st_dir, device="cpu").settings)
    path = tmp_path / "negatives.json"
    path.write_text(json.dumps({"format": NEGATIVES_FORMAT, "encoder": _rename_keys(own), "negatives": {"q": ["d"]}}))
    assert read_negatives_file(path)["encoder"] == own  # what STAR compares with the starting model's settings


# ------------------------------------------------------------------- newcomer #5: the retriever trainers' data.* hints
@pytest.mark.parametrize(("trainer", "key", "use"), [
    ("contrastive", "seed", "seed"),
    ("pgrank", "seed", "seed"),
    ("contrastive", "negatives_per_positive", "hard_negatives"),
    ("pgrank", "negatives_per_positive", "num_candidates"),
    ("adore", "negatives_per_positive", "top_k"),
    ("star", "bm25_depth", "negatives_depth"),
    ("contrastive", "split", "split"),
    ("star", "beir", "dataset"),
])
def test_a_reranker_data_key_names_the_retriever_trainers_own(trainer: str, key: str, use: str) -> None:
    cls = get_trainer(trainer).config_class
    with pytest.raises(ConfigError, match=rf"^--set data.{key}=1: unknown key 'data.{key}' for {cls.__name__}: did "
                                          rf"you mean '{use}'\?"):
        load_train_config(cls, None, ["model=m", "dataset=d", f"data.{key}=1"])


def test_a_data_key_without_a_retriever_counterpart_names_none() -> None:
    cls = get_trainer("star").config_class
    with pytest.raises(ConfigError, match=r"^--set data.negatives_per_positive=2: unknown key "
                                          r"'data.negatives_per_positive' for StarConfig: the retriever trainers have "
                                          r"no block data \(.*STAR draws one per query\)$") as caught:
        load_train_config(cls, None, ["model=m", "dataset=d", "data.negatives_per_positive=2"])
    assert "dataset" not in str(caught.value)


# --------------------------------------------------------------------------- llmtrain #3: gradient_checkpointing
class _Seen(Exception):
    """Raised by the first training step once it has recorded what the trainer and the model say."""


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
@pytest.mark.parametrize("on", [False, True])
def test_gradient_checkpointing_reaches_the_trainer_and_the_model(trainer: str, on: bool, tiny_llm_dir: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from rerank import trainers

    seen: list[tuple[bool, bool, bool]] = []

    def first_step(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        # TRL reads gradient_checkpointing, transformers 5 activation_checkpointing (which the former mirrors)
        seen.append((self.args.activation_checkpointing, self.args.gradient_checkpointing,
                     model.is_activation_checkpointing))
        raise _Seen

    monkeypatch.setattr(transformers.Trainer, "training_step", first_step)
    write_jsonl(synthetic_ranking_examples(4, num_candidates=4, seed=5), tmp_path / "t.jsonl")
    cfg = {"model": str(tiny_llm_dir), "head": "yes-no", "max_steps": 1, "save_steps": 1, "batch_size": 4,
           "use_cpu": True, "gradient_checkpointing": on, "data": {"path": str(tmp_path / "t.jsonl")}}
    if trainer == "grpo":
        cfg["num_generations"] = 2
    with pytest.raises(_Seen):
        getattr(trainers, trainer)(cfg, tmp_path / "out")
    assert seen == [(on, on, on)]


def test_training_kwargs_always_give_activation_checkpointing() -> None:
    from rerank.trainers.common import training_kwargs
    from rerank.trainers.sft_trainer import SFTTrainConfig

    for on in (False, True):
        cfg = from_dict(SFTTrainConfig, {"model": "m", "head": "yes-no", "data": {"path": "t.jsonl"},
                                         "gradient_checkpointing": on})
        assert training_kwargs(cfg, Path("out"), has_dev=False)["activation_checkpointing"] is on
