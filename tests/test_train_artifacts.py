"""What every trainer leaves behind is a model users can carry away: ``OUTPUT/model`` holds the final model only
(checkpoints beside it), a model card with Hub metadata and a ``rerank.json`` with the method, its options and the full
prompt template, so ``Reranker.load(path)`` and ``rerank eval|rank --model path`` need no method name; no file in it
holds a path of the training machine. One test per trainer kind: cross-encoder SFT, an LLM head's SFT then GRPO, a
retriever."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from rerank.data.io import write_jsonl
from rerank.heads.base import Reranker
from rerank.prompts import load_template
from rerank.testing import synthetic_ranking_examples, tiny_bert, tiny_llm
from rerank.trainers import grpo, sft
from rerank.trainers.api import run_trainer

TEMPLATE = ('name: erank-card\nuser: "Q: {{ query }}\\nD: {{ document }}\\nScore 0-10:"\n'
            'assistant_prefix: "<answer>"\nanswer_open: "<answer>"\nanswer_close: "</answer>"\n')


def card(model_dir: Path) -> tuple[dict[str, Any], str]:
    """The model card's YAML front matter and its body."""
    text = (model_dir / "README.md").read_text()
    assert text.startswith("---\n")
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def check_clean_and_portable(out: Path, base_temp: Path) -> None:
    """The model folder holds no checkpoint or optimizer state, and no file in it names a temporary path."""
    model = out / "model"
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("checkpoint-*"))
    names = {p.name for p in model.rglob("*")}
    assert not names & {"checkpoints", "optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin",
                        "rng_state.pth"}, names
    needles = {str(base_temp).encode(), str(base_temp.resolve()).encode()}
    for f in model.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(n in data for n in needles), f"{f} holds a path of the training machine"


def check_card(model_dir: Path, method: str, library: str, pipeline: str, evaluated: bool) -> str:
    meta, body = card(model_dir)
    assert meta["library_name"] == library and meta["pipeline_tag"] == pipeline
    assert method in meta["tags"] and "base_model" not in meta  # local starting folders are no Hub ids
    for section in ("## Method", "## Base model", "## Data", "## Training configuration", "## Evaluation", "## Use"):
        assert section in body, section
    evaluation = body.split("## Evaluation")[1].split("## Use")[0]
    assert ("Measured by the trainer on its dev split" in evaluation) == evaluated, evaluation
    assert ("did not evaluate" in evaluation) != evaluated
    return body


def test_cross_encoder_sft_artifacts(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli) -> None:
    """OUTPUT/model loads by path alone, in sentence-transformers' CrossEncoder with our scores, and from the CLI."""
    import torch
    from sentence_transformers import CrossEncoder

    model = tiny_bert(tmp_path / "bert", num_labels=1, seed=0)
    write_jsonl(synthetic_ranking_examples(10, num_candidates=4, seed=4), tmp_path / "t.jsonl")
    out = tmp_path / "ce"
    sft({"model": str(model), "head": "cross-encoder", "loss": "mnrl", "max_length": 64, "batch_size": 4,
         "max_steps": 2, "save_steps": 2, "eval_steps": 2, "learning_rate": 1e-4,
         "data": {"path": str(tmp_path / "t.jsonl"), "dev_fraction": 0.3}}, out)
    check_clean_and_portable(out, tmp_path_factory.getbasetemp())
    body = check_card(out / "model", "cross-encoder", "sentence-transformers", "text-ranking", evaluated=True)
    assert "t.jsonl" in body and "CrossEncoder(" in body
    record = json.loads((out / "model" / "rerank.json").read_text())
    assert (record["method"], record["kind"], record["options"]) == (  # the query cut it trained with, as it loads
        "cross-encoder", "reranker", {"max_length": 64, "max_query_tokens": 256})
    pairs = [("what causes rain", "warm moist air rises"), ("what causes rain", "the bank raised rates")]
    ours = Reranker.load(str(out / "model"))
    st = CrossEncoder(str(out / "model"), device="cpu")
    got = ours.score_pairs(pairs)
    assert got == pytest.approx(st.predict(pairs, activation_fn=torch.nn.Identity()).tolist(), abs=1e-5)
    assert got[0] != got[1]
    write_jsonl([{"query": "what causes rain", "docs": [d for _, d in pairs]}], tmp_path / "in.jsonl")
    rc, stdout, err = run_cli("rank", "--model", out / "model", "--input", tmp_path / "in.jsonl",
                              "--output", tmp_path / "ranked.jsonl")
    assert rc == 0, err
    assert "with cross-encoder" in stdout


def test_llm_sft_then_grpo_artifacts(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_beir_dir: Path,
                                     run_cli) -> None:
    """An ERank head trained on a custom template: rerank.json holds that template in full, the model loads by path
    with the prompts it was trained on, GRPO from the SFT output inherits the template, eval and rank need no
    --reranker."""
    from transformers import AutoTokenizer

    from rerank.config import from_dict
    from rerank.methods.erank.head import ERankReranker
    from rerank.trainers.sft_trainer import SFTTrainConfig
    from rerank.trainers.task import build_task

    tiny_llm(tmp_path / "llm", seed=0)
    write_jsonl(synthetic_ranking_examples(8, num_candidates=3, seed=3), tmp_path / "train.jsonl")
    (tmp_path / "erank.yaml").write_text(TEMPLATE)
    cfg = {"model": str(tmp_path / "llm"), "head": "erank", "template": str(tmp_path / "erank.yaml"),
           "max_doc_tokens": 24, "max_query_tokens": 12, "data": {"path": str(tmp_path / "train.jsonl"),
                                                                   "dev_fraction": 0.25},
           "batch_size": 4, "max_steps": 2, "save_steps": 2, "eval_steps": 2, "learning_rate": 1e-3}
    out = tmp_path / "sft"
    sft(cfg, out)
    check_clean_and_portable(out, tmp_path_factory.getbasetemp())
    check_card(out / "model", "erank", "transformers", "text-generation", evaluated=True)
    record = json.loads((out / "model" / "rerank.json").read_text())
    assert record["method"] == "erank" and record["kind"] == "reranker"
    assert record["options"]["template"] == load_template(tmp_path / "erank.yaml").to_dict()
    assert (record["options"]["max_doc_tokens"], record["options"]["max_query_tokens"]) == (24, 12)

    head = Reranker.load(str(out / "model"), device="cpu")
    assert isinstance(head, ERankReranker) and head.template.to_dict() == record["options"]["template"]
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    task = build_task("erank", tok, from_dict(SFTTrainConfig, cfg))
    ex = synthetic_ranking_examples(1, num_candidates=3, seed=5)[0]
    query, cands = task.query(ex), task.candidates(ex, [0, 1, 2])
    assert head.pair_prompts(query, cands) == [r["prompt"] for r in task.sft_rows(ex)]

    grpo_out = tmp_path / "grpo"
    grpo({**cfg, "model": str(out / "model"), "template": "", "eval_steps": 0, "max_steps": 1, "batch_size": 6,
          "num_generations": 2, "data": {"path": str(tmp_path / "train.jsonl"), "dev_fraction": 0.0}}, grpo_out)
    check_clean_and_portable(grpo_out, tmp_path_factory.getbasetemp())
    check_card(grpo_out / "model", "erank", "transformers", "text-generation", evaluated=False)
    inherited = json.loads((grpo_out / "model" / "rerank.json").read_text())
    assert inherited["options"]["template"] == record["options"]["template"]
    assert inherited["trained_with"]["trainer"] == "grpo" and inherited["trained_with"]["base_model_local"] == "llm"

    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--retriever", "bm25", "--model", grpo_out / "model",
                         "--top-k", "3", "--max-queries", "2", "--reranker-set", "device=cpu",
                         "--output", tmp_path / "ev")
    assert rc == 0, err
    described = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "erank" in json.dumps(described)
    with pytest.raises(Exception, match="was trained as 'erank'"):
        Reranker.load("first", model=str(out / "model"))


def test_retriever_artifacts(tiny_st_dir: Path, tiny_beir_dir: Path, tmp_path: Path,
                             tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                             run_cli) -> None:
    """A trained retriever's folder describes itself as a retriever: eval uses it as the dense first stage without
    --retriever, and Reranker.load refuses it with the way to use it."""
    from sentence_transformers import SentenceTransformer

    from rerank.retrieval.dense import BiEncoder

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "star"
    run_trainer("star", {"model": str(tiny_st_dir), "dataset": str(tiny_beir_dir), "batch_size": 4, "max_steps": 2,
                         "save_steps": 2, "eval_steps": 2, "dev_fraction": 0.3, "progress": False,
                         "negatives_depth": 10}, out)
    check_clean_and_portable(out, tmp_path_factory.getbasetemp())
    body = check_card(out / "model", "star", "sentence-transformers", "sentence-similarity", evaluated=True)
    assert "SentenceTransformer(" in body
    record = json.loads((out / "model" / "rerank.json").read_text())
    assert (record["method"], record["kind"]) == ("star", "retriever")
    texts = ["a query", "a document about proteins"]
    np.testing.assert_allclose(SentenceTransformer(str(out / "model"), device="cpu").encode_document(texts),
                               BiEncoder.load(out / "model", device="cpu").encode_docs(texts), atol=1e-5)
    with pytest.raises(Exception, match="not a reranker"):
        Reranker.load(str(out / "model"))
    rc, _, err = run_cli("eval", "--dataset", tiny_beir_dir, "--model", out / "model", "--output", tmp_path / "ev",
                         "--retriever-set", "progress=false")
    assert rc == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["first_stage"]["name"] == "dense"


@pytest.mark.parametrize(("max_steps", "shown"), [(40, False), (-1, True)])
def test_the_card_shows_epochs_only_when_they_set_the_schedule(tmp_path: Path, max_steps: int, shown: bool) -> None:
    """With max_steps set, epochs are not what ran: the card used to show the default ``epochs: 1.0`` beside them."""
    from rerank.trainers.artifacts import write_model_artifacts

    config = {"model": "base", "head": "cross-encoder", "epochs": 1.0, "max_steps": max_steps}
    write_model_artifacts(tmp_path, method="cross-encoder", trainer="sft", config=config)
    trained = yaml.safe_load(card(tmp_path)[1].split("```yaml\n", 1)[1].split("```", 1)[0])
    assert ("epochs" in trained) is shown and trained["max_steps"] == max_steps
