"""Loading model folders and scoring pairs (audit s43/pyapi): a folder saved without its tokenizer, damaged
``.safetensors`` weights, messages that named CLI flags to Python users, identical pairs that did not tie, and the
activation sentence-transformers' CrossEncoder applies to a cross-encoder folder. Each test names what used to go
wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rerank import Reranker
from rerank.backends.util import check_classifier
from rerank.errors import ConfigError
from rerank.testing import tiny_bert, tiny_colbert, tiny_llm


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return dst


NO_TOKENIZER = r"holds no tokenizer \(no [^)]*\); save the model's tokenizer into it with tokenizer\.save_pretrained\("


@pytest.mark.parametrize(("method", "fixture"), [
    ("cross-encoder", "tiny_bert_dir"), ("bi-encoder", "tiny_st_dir"), ("yes-no", "tiny_llm_dir"),
    ("monot5", "tiny_t5_dir"),
])
def test_folder_without_tokenizer_is_a_one_line_error(method: str, fixture: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    """``model.save_pretrained(dir)`` alone: transformers 5 built a placeholder tokenizer (5 tokens for BERT), every
    word read as [UNK] and the ranking followed text length (yes-no failed with an unrelated 'merges them')."""
    model = _copy(request.getfixturevalue(fixture), tmp_path / "model", ("tokenizer*", "spiece.model", "vocab*"))
    with pytest.raises(ConfigError, match=NO_TOKENIZER) as e:
        Reranker.load(method, model=str(model))
    assert str(model) in str(e.value) and "\n" not in str(e.value)


def test_tokenizer_config_without_vocabulary_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """tokenizer_config.json alone (no tokenizer.json or vocab.txt) also gave the 5-token placeholder."""
    model = _copy(tiny_bert_dir, tmp_path / "model", ("tokenizer.json",))
    with pytest.raises(ConfigError, match=r"holds no tokenizer \(no vocab\.txt or tokenizer\.json\)"):
        Reranker.load("cross-encoder", model=str(model))


def test_llama_folder_without_tokenizer_is_refused_not_a_transformers_error(tmp_path: Path) -> None:
    """Where transformers cannot build a placeholder it raised a long ValueError ('Couldn't instantiate the backend
    tokenizer')."""
    model = _copy(tiny_llm(tmp_path / "src", arch="llama", seed=0), tmp_path / "model", ("tokenizer*",))
    with pytest.raises(ConfigError, match=r"holds no tokenizer \(no tokenizer\.json or tokenizer_config\.json\)"):
        Reranker.load("yes-no", model=str(model))


def test_colbert_folder_without_tokenizer_is_refused(tmp_path: Path) -> None:
    model = _copy(tiny_colbert(tmp_path / "src", seed=0), tmp_path / "model", ("tokenizer*",))
    with pytest.raises(ConfigError, match=NO_TOKENIZER):
        Reranker.load("colbert", model=str(model))


def test_hub_ids_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a local folder is checked: a hub id loads as transformers gives it."""
    from transformers import AutoTokenizer

    from rerank.backends.util import load_tokenizer

    tok = object()
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    assert load_tokenizer("some-org/some-model") is tok


def _damage(folder: Path, how: str) -> Path:
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"header": data[:1000], "data": data[: len(data) * 9 // 10], "empty": b""}[how])
    return file


@pytest.mark.parametrize("how", ["header", "data", "empty"])
@pytest.mark.parametrize(("method", "fixture"), [
    ("cross-encoder", "tiny_bert_dir"), ("bi-encoder", "tiny_st_dir"), ("yes-no", "tiny_llm_dir"),
])
def test_damaged_safetensors_is_a_one_line_error(method: str, fixture: str, how: str,
                                                 request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A truncated or corrupt model.safetensors raised safetensors' bare SafetensorError ('invalid header length'),
    naming neither the file nor a fix."""
    model = _copy(request.getfixturevalue(fixture), tmp_path / "model")
    file = _damage(model, how)
    with pytest.raises(ConfigError, match=r"is damaged or incomplete \(.+\); download or save it again") as e:
        Reranker.load(method, model=str(model))
    assert f"weights file {file} " in str(e.value) and "\n" not in str(e.value)


def test_damaged_colbert_dense_weights_name_the_file(tmp_path: Path) -> None:
    model = tiny_colbert(tmp_path / "model", seed=0)
    file = _damage(model / "1_Dense", "data")
    with pytest.raises(ConfigError, match=rf"weights file {file} is damaged or incomplete"):
        Reranker.load("colbert", model=str(model))


def test_model_kind_messages_name_the_python_option_too() -> None:
    """The hints named only CLI flags (--reranker yes-no, --allow-new-head) to Python users."""
    with pytest.raises(ConfigError) as e:
        check_classifier("cross-encoder: m", ["Qwen2ForCausalLM"])
    assert "method 'yes-no', --reranker yes-no" in str(e.value)
    assert "allow_new_head=True (--allow-new-head)" in str(e.value)
    with pytest.raises(ConfigError, match=r"allow_new_head=True \(--allow-new-head\)"):
        check_classifier("cross-encoder: m", ["BertModel"])


DUP = "the duplicated passage about bm25"
FILL = ["a long first document " * 20, "medium length passage " * 5]


def test_identical_pairs_tie_and_keep_input_order(tiny_bert_dir: Path) -> None:
    """Identical pairs were scored separately and differed in the 9th digit with their place in the padded,
    length-sorted batch, so a later copy could rank above an earlier one."""
    head: Any = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    docs = [DUP] * 4 + FILL
    scores = head.score_pairs([("what is bm25", d) for d in docs])
    assert len({scores[i] for i in range(4)}) == 1
    ranked = [int(r.doc.id) for r in head.rerank("what is bm25", docs).results if r.doc.text == DUP]
    assert ranked == [0, 1, 2, 3]
    alone = [head.score_pairs([("what is bm25", d)])[0] for d in docs]  # other scores as before, up to float32 noise
    np.testing.assert_allclose(scores, alone, rtol=1e-5)


def test_each_distinct_pair_is_scored_once(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head: Any = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    rows: list[int] = []
    forward = head.model.forward
    monkeypatch.setattr(head.model, "forward", lambda **k: rows.append(len(k["input_ids"])) or forward(**k))
    pairs = [("q", DUP), ("q", FILL[0]), ("q", DUP), ("other", DUP), ("q", DUP)]
    scores = head.score_pairs(pairs)
    assert sum(rows) == 3 and scores[0] == scores[2] == scores[4]


def _st_activation(folder: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(folder), device="cpu").activation_fn


def _declare(folder: Path, where: str, dotted: str) -> None:
    """Declare the activation ``dotted`` in ``config.json`` (``sentence_transformers.activation_fn``, or the older
    ``sbert_ce_default_activation_function``) or in a ``config_sentence_transformers.json`` without ``modules.json``
    (where sentence-transformers does not read it)."""
    if where == "st":
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"activation_fn": dotted}), "utf-8")
        return
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if where == "config":
        config["sentence_transformers"] = {"activation_fn": dotted}
    else:
        config["sbert_ce_default_activation_function"] = dotted
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize(("labels", "where", "dotted", "identity"), [
    (1, None, None, False),  # nothing declared, one label: Sigmoid
    (2, None, None, True),  # nothing declared, two labels: Identity
    (1, "config", "torch.nn.modules.linear.Identity", True),  # as ms-marco-MiniLM declares
    (1, "config", "torch.nn.modules.activation.Tanh", False),
    (1, "legacy", "torch.nn.modules.linear.Identity", True),  # sentence-transformers < 4
    (1, "st", "torch.nn.modules.linear.Identity", False),  # no modules.json: not a sentence-transformers folder
    (1, "config", "os.path.Identity", False),  # outside torch, no trust_remote_code: the default, as there
])
def test_st_activation_matches_sentence_transformers(labels: int, where: str | None, dotted: str | None,
                                                     identity: bool, tmp_path: Path) -> None:
    """The head ignored the activation the folder declares, so its predict differed from CrossEncoder.predict."""
    folder = tiny_bert(tmp_path / "model", num_labels=labels, seed=0)
    if where is not None and dotted is not None:
        _declare(folder, where, dotted)
    _same_activation(folder, identity)


def _same_activation(folder: Path, identity: bool) -> None:
    head: Any = Reranker.load("cross-encoder", model=str(folder))
    ours, theirs = head.st_activation(), _st_activation(folder)
    assert (ours is None) == identity == isinstance(theirs, torch.nn.Identity)
    x = np.array([-3.0, -0.0861, 0.0, 0.5, 4.0])
    expected = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(x if ours is None else ours(x), expected, rtol=1e-12)


@pytest.mark.parametrize("activation", [torch.nn.Identity, torch.nn.Tanh])
def test_st_activation_of_a_folder_sentence_transformers_saved(activation: type, tmp_path: Path) -> None:
    """sentence-transformers 6 records the activation only in config_sentence_transformers.json (with modules.json)."""
    from sentence_transformers import CrossEncoder

    CrossEncoder(str(tiny_bert(tmp_path / "src", num_labels=1, seed=0)), device="cpu",
                 activation_fn=activation()).save_pretrained(str(tmp_path / "model"))
    _same_activation(tmp_path / "model", activation is torch.nn.Identity)


def test_the_sigmoid_option_is_not_applied_twice_by_predict(tiny_bert_dir: Path) -> None:
    """With ``sigmoid=True`` the head's scores are probabilities already; predict passed them through ST's Sigmoid
    again (0.617 where sentence-transformers gives 0.478; review of fix-pyapi)."""
    from sentence_transformers import CrossEncoder

    pairs = [("rain in spain", "the rain in spain"), ("rain in spain", "dogs bark")]
    head = Reranker.load("cross-encoder", model=str(tiny_bert_dir), sigmoid=True)
    assert head.st_activation() is None
    want = CrossEncoder(str(tiny_bert_dir), device="cpu").predict(pairs)
    assert head.predict(pairs).tolist() == pytest.approx(want.tolist(), abs=1e-5)


def test_a_declared_activation_that_is_not_a_module_is_one_line(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """``torch.save`` declared as the activation raised a TypeError traceback when called without arguments."""
    model = _copy(tiny_bert_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.save"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="declared activation 'torch.save' cannot be imported"):
        Reranker.load("cross-encoder", model=str(model)).st_activation()


def test_a_folder_holding_only_tokenizer_json_loads(tmp_path: Path) -> None:
    """GPT-2's tokenizer class (also OPT, phi, codegen) lists vocab.json and merges.txt as its files, and transformers 5
    saves it as tokenizer.json alone: such a folder was refused as holding no tokenizer (review s43/reviewC)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from rerank.backends.util import load_tokenizer
    from rerank.testing.tokenizer import build_tokenizer

    root = tmp_path / "gpt2"
    build_tokenizer().save_pretrained(root)
    config = json.loads((root / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    config["add_prefix_space"] = False
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2, n_positions=256)).save_pretrained(root)
    tokenizer = AutoTokenizer.from_pretrained(str(root))
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        (root / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(root)
    assert not (root / "vocab.json").exists() and (root / "tokenizer.json").exists()
    assert "vocab.json" in tokenizer.vocab_files_names.values()
    loaded = load_tokenizer(root, "model")
    assert loaded("what is bm25")["input_ids"] == tokenizer("what is bm25")["input_ids"]


def test_a_declared_activation_applies_to_each_pair_alone(tmp_path: Path) -> None:
    """A declared Softmax was applied across every pair of the call, so a pair's score depended on the others."""
    from sentence_transformers import CrossEncoder

    folder = tiny_bert(tmp_path / "model", num_labels=1, seed=0)
    _declare(folder, "config", "torch.nn.modules.activation.Softmax")
    pairs = [("rain in spain", "the rain in spain"), ("rain in spain", "dogs bark"), ("cats", "a cat sat")]
    head: Any = Reranker.load("cross-encoder", model=str(folder))
    want = CrossEncoder(str(folder), device="cpu").predict(pairs)
    assert head.predict(pairs).tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert head.predict(pairs[:1]).tolist() == pytest.approx(want[:1].tolist(), abs=1e-6)


def test_two_label_models_keep_their_one_score_in_predict(tmp_path: Path) -> None:
    """sentence-transformers returns two columns for a two-label model; the head's one score a pair is returned as it
    is rather than passed through an activation meant for those columns."""
    folder = tiny_bert(tmp_path / "model", num_labels=2, seed=0)
    _declare(folder, "config", "torch.nn.modules.activation.Softmax")
    head: Any = Reranker.load("cross-encoder", model=str(folder))
    pairs = [("rain in spain", "the rain in spain"), ("rain in spain", "dogs bark")]
    assert head.st_activation() is None
    raw = [r.score for r in head.rerank("rain in spain", ["the rain in spain", "dogs bark"]).results]
    assert sorted(head.predict(pairs).tolist()) == pytest.approx(sorted(raw), abs=1e-6)


def test_predict_takes_one_pair_given_as_a_list(tiny_bert_dir: Path) -> None:
    """sentence-transformers takes ``predict(["q", "d"])`` as one pair; it was a TypeError here."""
    head: Any = Reranker.load("cross-encoder", model=str(tiny_bert_dir))
    assert head.predict(["rain in spain", "the rain in spain"]) == pytest.approx(
        float(head.predict(("rain in spain", "the rain in spain"))), abs=1e-9)
