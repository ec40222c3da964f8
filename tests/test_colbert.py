"""colbert: MaxSim against hand-computed values; a scripted token encoder gives the exact order; a tiny PyLate-layout
ColBERT scores as a manual computation (prefix token, query expansion with [MASK], skiplist) and runs through
``rerank eval`` on DL19."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank.errors import ConfigError
from rerank.heads.base import Reranker
from rerank.methods.colbert.head import ColBERTConfig, ColBERTReranker, maxsim
from rerank.testing import tiny_colbert


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_colbert(tmp_path_factory.mktemp("colbert") / "model", seed=0)


def test_maxsim_by_hand() -> None:
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    d = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]])
    assert maxsim(q, d, torch.tensor([[1, 1, 1]])).tolist() == pytest.approx([1.0 + 0.8])
    assert maxsim(q, d, torch.tensor([[1, 0, 1]])).tolist() == pytest.approx([0.6 + 0.8])
    assert maxsim(q, d, torch.tensor([[0, 0, 1]])).tolist() == pytest.approx([0.0 + -1.0])
    assert maxsim(q, d, torch.tensor([[0, 0, 0]])).tolist() == [0.0]  # nothing to match: 0, not -inf


class ScriptedTokenEncoder:
    """One token per word, embeddings from a table (already unit length); no prefix or expansion."""

    settings = {"query_length": 8, "document_length": 8}
    device = torch.device("cpu")

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.words = sorted(table)
        self.table = torch.tensor([table[w] for w in self.words])

    def tokenize(self, texts: list[str], side: str, length: int) -> dict[str, torch.Tensor]:
        rows = [[self.words.index(w) for w in t.split()] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask, "score_mask": mask}

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.table[features["input_ids"]]


def test_scripted_token_encoder_exact_order() -> None:
    enc = ScriptedTokenEncoder({"x": [1.0, 0.0], "y": [0.0, 1.0], "xy": [0.6, 0.8], "z": [-1.0, 0.0]})
    head = ColBERTReranker(ColBERTConfig(batch_size=2), enc)  # type: ignore[arg-type]
    res = head.rerank("x y", ["z", "xy", "x z", "x y z", "y"])
    # x y vs: z -> -1 + 0; xy -> .6 + .8; x z -> 1 + 0; x y z -> 1 + 1; y -> 0 + 1
    assert [r.doc.text for r in res.results] == ["x y z", "xy", "x z", "y", "z"]
    assert [r.score for r in res.results] == pytest.approx([2.0, 1.4, 1.0, 1.0, -1.0])


def test_tiny_colbert_equals_a_manual_computation(colbert_dir: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    head = Reranker.load("colbert", model=str(colbert_dir), device="cpu", batch_size=2)
    docs = ["the cat sat on the mat.", "a dog!", "gene expression of a virus, and more words"]
    res = head.rerank("what is a cat", docs)
    tok = AutoTokenizer.from_pretrained(colbert_dir / "0_Transformer")
    bert = AutoModel.from_pretrained(colbert_dir / "0_Transformer").eval()
    w = load_file(str(colbert_dir / "1_Dense" / "model.safetensors"))["linear.weight"]
    q_id, d_id = tok.convert_tokens_to_ids("[Q] "), tok.convert_tokens_to_ids("[D] ")

    def emb(ids: list[int], att: list[int]) -> torch.Tensor:
        with torch.no_grad():
            h = bert(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([att])).last_hidden_state[0]
        return torch.nn.functional.normalize(h @ w.T, dim=-1)

    qi = tok("what is a cat")["input_ids"]
    qi = [qi[0], q_id, *qi[1:]]
    q_ids = qi + [tok.mask_token_id] * (32 - len(qi))
    qe = emb(q_ids, [1] * len(qi) + [0] * (32 - len(qi)))  # all 32 positions score; masks are not attended to
    punct = {tok.convert_tokens_to_ids(p) for p in ".,!"}
    for r in res.results:
        di = tok(r.doc.text)["input_ids"]
        di = [di[0], d_id, *di[1:]]
        de = emb(di, [1] * len(di))
        keep = torch.tensor([t not in punct for t in di])
        want = (qe @ de[keep].T).max(dim=1).values.sum().item()
        assert r.score == pytest.approx(want, abs=1e-4)
    assert head.relevance([res.results[0].score])[0] <= 1.0


def test_special_token_strings_in_text_are_data(colbert_dir: Path) -> None:
    """``[SEP]``, ``[MASK]`` or a prefix token (``[Q] ``, ``[d] ``) written in a query or document are text, not
    control or prefix tokens."""
    from rerank.methods.colbert.head import ColBERTEncoder
    from rerank.testing.adversarial import BERT_CONTROL, BERT_CONTROL_AS_TEXT

    enc = ColBERTEncoder.load(str(colbert_dir), device="cpu")
    tok = enc.tokenizer
    assert tok.sep_token_id in tok(BERT_CONTROL)["input_ids"]
    for side in ("query", "doc"):
        ids = enc.tokenize([f"a cat {BERT_CONTROL} [Q] x [d] y"], side, 64)["input_ids"][0].tolist()
        assert ids.count(tok.sep_token_id) == 1 and ids.count(tok.cls_token_id) == 1
        assert [ids.count(enc.prefix_ids[s]) for s in ("query", "doc")] == [side == "query", side == "doc"]
        n = len(tok(f"a cat {BERT_CONTROL_AS_TEXT} [ Q] x [ d] y")["input_ids"]) + 1  # and the prefix token
        assert ids.count(tok.mask_token_id) == (64 - n if side == "query" else 0)  # query expansion only
    head = Reranker.load("colbert", model=str(colbert_dir), device="cpu")
    attacked = head.rerank(f"a cat {BERT_CONTROL}", ["the cat sat", f"a dog {BERT_CONTROL}"])
    plain = head.rerank(f"a cat {BERT_CONTROL_AS_TEXT}", ["the cat sat", f"a dog {BERT_CONTROL_AS_TEXT}"])
    assert [r.score for r in attacked.results] == [r.score for r in plain.results]


def test_wrong_folders_are_clear_errors(tiny_bert_dir: Path, tiny_st_dir: Path, colbert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no modules.json"):
        Reranker.load("colbert", model=str(tiny_bert_dir))
    with pytest.raises(ConfigError, match="expected Transformer -> Dense"):
        Reranker.load("colbert", model=str(tiny_st_dir))
    with pytest.raises(ConfigError, match="transformers backend only"):
        Reranker.load("colbert", model=str(colbert_dir), backend="vllm")
    for name in ("query_length", "document_length"):  # loaded, it failed on the first long text (a tensor-size error)
        with pytest.raises(ConfigError, match=f"colbert: {name} 1024 exceeds this model's limit of 512 tokens"):
            Reranker.load("colbert", model=str(colbert_dir), **{name: 1024})


def test_cli_eval_on_dl19(colbert_dir: Path, dl19_dir: Path, tmp_path: Path, run_cli: Any) -> None:
    rc, _, err = run_cli("eval", "--dataset", dl19_dir, "--first-stage", dl19_dir / "bm25_top100.trec",
                         "--reranker", "colbert", "--model", colbert_dir, "--top-k", "5", "--max-queries", "2",
                         "--output", tmp_path / "out")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["reranker"]["method"] == "colbert" and metrics["reranker"]["query_length"] == 32
