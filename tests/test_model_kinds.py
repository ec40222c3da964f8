"""A model loads as the kind its reranker needs, or fails in one line before any retrieval (issue 18): a bare encoder
or a causal LM is not silently given a random classification head as a cross-encoder (unless ``--allow-new-head``),
and a cross-encoder or an encoder without a causal language-model head is not an LLM reranker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.testing import tiny_bert, tiny_llm


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kinds")
    untied = tiny_llm(d / "untied", seed=0, tie_word_embeddings=False)
    no_lm_head = d / "no-lm-head"  # says Qwen2ForCausalLM, but its weights lack lm_head
    no_lm_head.mkdir()
    from safetensors.torch import load_file, save_file

    for f in untied.iterdir():
        if f.name == "model.safetensors":
            weights = {k: v for k, v in load_file(str(f)).items() if not k.startswith("lm_head")}
            save_file(weights, str(no_lm_head / f.name), metadata={"format": "pt"})
        else:
            (no_lm_head / f.name).write_bytes(f.read_bytes())
    headless_ce = d / "headless-ce"  # says BertForSequenceClassification, but its weights are a bare encoder's
    bare = tiny_bert(d / "bare", seed=0)
    headless_ce.mkdir()
    for f in bare.iterdir():
        (headless_ce / f.name).write_bytes(f.read_bytes())
    config = json.loads((bare / "config.json").read_text())
    (headless_ce / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    return {"bare": bare, "ce": tiny_bert(d / "ce", num_labels=1, seed=0), "llm": tiny_llm(d / "llm", seed=0),
            "no-lm-head": no_lm_head, "headless-ce": headless_ce}


CASES = [
    ("cross-encoder", "bare", "is not a sequence-classification checkpoint (BertModel)", "--allow-new-head"),
    ("cross-encoder", "llm", "is a causal language model (Qwen2ForCausalLM)", "--reranker yes-no"),
    ("cross-encoder", "headless-ce", "classifier.bias, classifier.weight are not in the checkpoint and would start "
                                     "random", "--allow-new-head"),
    ("yes-no", "ce", "is a sequence-classification checkpoint (BertForSequenceClassification)",
     "use --reranker cross-encoder"),
    ("erank", "bare", "has no causal language-model head (BertModel)", "needs a causal LM"),
    ("yes-no", "no-lm-head", "lm_head.weight are not in the checkpoint and would start random", "causal LM"),
]


@pytest.mark.parametrize(("method", "model", "said", "fix"), CASES)
def test_a_model_of_the_wrong_kind_is_refused(models: dict[str, Path], method: str, model: str, said: str,
                                              fix: str) -> None:
    with pytest.raises(ConfigError) as e:
        Reranker.load(method, model=str(models[model]), device="cpu")
    assert said in str(e.value) and fix in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("method", "model", "said", "fix"), CASES)
def test_the_cli_says_it_in_one_line_before_retrieval(models: dict[str, Path], method: str, model: str, said: str,
                                                      fix: str, dl19_dir: Path, tmp_path: Path, run_cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def no_retrieval(*a: object, **k: object) -> None:
        raise AssertionError("the first stage ran before the model was checked")

    monkeypatch.setattr("rerank.eval.pipeline.build_retriever", no_retrieval)
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--retriever", "bm25", "--reranker", method, "--model",
                         models[model], "--reranker-set", "device=cpu", "--output", tmp_path / "o")
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert said in lines[0] and fix in lines[0], lines[0]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_allow_new_head_starts_a_cross_encoder_from_a_bare_encoder(models: dict[str, Path], tmp_path: Path,
                                                                   run_cli) -> None:
    head = Reranker.load("cross-encoder", model=str(models["bare"]), allow_new_head=True, device="cpu")
    assert head.num_labels == 1 and len(head.rerank("q", ["a b", "c d"]).results) == 2
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"query": "what is bm25", "docs": ["bm25 ranks documents", "paris is in france"]}\n')
    rc, _, err = run_cli("rank", "--input", inp, "--reranker", "cross-encoder", "--model", models["bare"],
                         "--allow-new-head", "--output", tmp_path / "r.trec")
    assert rc == 0, err
    assert len((tmp_path / "r.trec").read_text().splitlines()) == 2
    # a trained cross-encoder needs no flag; the flag is the cross-encoder's alone
    assert Reranker.load("cross-encoder", model=str(models["ce"]), device="cpu").num_labels == 1
    rc, _, err = run_cli("rank", "--input", inp, "--reranker", "yes-no", "--model", models["llm"],
                         "--allow-new-head", "--output", tmp_path / "y.trec")
    assert rc == 2 and "unknown key 'allow_new_head'" in err and len(err.strip().splitlines()) == 1, err


def test_the_cross_encoder_trainer_still_starts_from_a_bare_encoder(models: dict[str, Path], tmp_path: Path) -> None:
    """Training adds the classification head on purpose: SFT from a bare encoder (as from MiniLM) runs, and its
    output then loads as a cross-encoder without the flag."""
    from rerank.data.io import write_jsonl
    from rerank.testing import synthetic_ranking_examples
    from rerank.trainers import sft

    write_jsonl(synthetic_ranking_examples(6, num_candidates=4, seed=4), tmp_path / "t.jsonl")
    out = tmp_path / "ce"
    r = sft({"model": str(models["bare"]), "head": "cross-encoder", "max_length": 64, "batch_size": 4, "max_steps": 1,
             "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.0}}, out)
    assert r["global_step"] == 1
    assert Reranker.load(str(out / "model"), device="cpu").num_labels == 1
