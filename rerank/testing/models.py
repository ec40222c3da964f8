"""Random tiny models saved as ordinary HF folders (safetensors), for tests and demos without a model hub.

Every builder is deterministic for a seed: the same seed writes the same weights. The causal LMs use head_dim 64,
the smallest head size vLLM's CPU attention backend accepts, so the same folder serves the vLLM tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerank.testing.tokenizer import (
    IM_END,
    build_t5_tokenizer,
    build_tokenizer,
    build_wordpiece_tokenizer,
    save_portable,
)

__all__ = ["LLM_ARCHS", "tiny_llm", "tiny_bert", "tiny_colbert", "tiny_sentence_transformer", "tiny_t5"]

LLM_ARCHS = ("qwen2", "llama")


def tiny_llm(
    path: str | Path,
    arch: str = "qwen2",
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    weight_scale: float = 1.0,
) -> Path:
    """Write a random tiny causal LM (Qwen2 or Llama config) with the tiny BPE tokenizer to ``path``; return it.

    ``weight_scale`` multiplies every weight but the norms: at 1 (init std 0.02) next-token distributions are nearly
    uniform and greedy text is newlines; at 10 continuations vary and scores have clear gaps."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    if arch not in LLM_ARCHS:
        raise ValueError(f"unknown tiny LLM architecture {arch!r}; known: {', '.join(LLM_ARCHS)}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    path = Path(path)
    tok = build_tokenizer()
    eos_id = tok.eos_token_id
    im_end_id = tok.convert_tokens_to_ids(IM_END)
    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(head_dim=hidden_size // num_heads, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if weight_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" not in name:
                    param.mul_(weight_scale)
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end_id, eos_id], pad_token_id=tok.pad_token_id, bos_token_id=None, do_sample=False
    )
    model.save_pretrained(str(path), safe_serialization=True)
    save_portable(tok, path)
    return path


def tiny_bert(path: str | Path, num_labels: int | None = None, seed: int = 0) -> Path:
    """Write a random tiny BERT with a WordPiece tokenizer to ``path``: a bare encoder, or a classifier with labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    if num_labels is not None and num_labels < 1:
        raise ValueError(f"num_labels must be >= 1 or None, got {num_labels}")
    path = Path(path)
    tok = build_wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        **({"num_labels": num_labels} if num_labels is not None else {}),
    )
    cls = BertModel if num_labels is None else BertForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).to(torch.float32)
    model.save_pretrained(str(path), safe_serialization=True)
    save_portable(tok, path)
    return path


def tiny_sentence_transformer(path: str | Path, seed: int = 0) -> Path:
    """Write a SentenceTransformer folder (tiny BERT + mean pooling) to ``path``; return it."""
    import tempfile

    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models  # type: ignore[no-redef]

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        bert_dir = tiny_bert(Path(tmp) / "bert", seed=seed)
        word = models.Transformer(str(bert_dir), max_seq_length=256)
        dim_fn = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
        pooling = models.Pooling(dim_fn(), pooling_mode="mean")
        st = SentenceTransformer(modules=[word, pooling], device="cpu")
        st.save(str(path), safe_serialization=True)
    return path


def tiny_t5(path: str | Path, seed: int = 0) -> Path:
    """Write a random tiny T5 (encoder-decoder, 2 + 2 layers) with the T5-like Unigram tokenizer to ``path``; return
    it. It loads with ``AutoModelForSeq2SeqLM``, as monoT5 / duoT5 checkpoints do."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    path = Path(path)
    tok = build_t5_tokenizer()
    config = T5Config(vocab_size=len(tok), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2,
                      num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    model.save_pretrained(str(path), safe_serialization=True)
    save_portable(tok, path)
    return path


def tiny_colbert(path: str | Path, seed: int = 0, dim: int = 32) -> Path:
    """Write a random tiny ColBERT in PyLate's folder layout to ``path``: a tiny BERT whose tokenizer has the ``[Q] ``
    and ``[D] `` prefix tokens (``0_Transformer``), a bias-free Dense projection to ``dim`` (``1_Dense``), and
    ``config_sentence_transformers.json`` with the lengths, query expansion and a punctuation skiplist."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from rerank.utils.files import write_json

    path = Path(path)
    tok = build_wordpiece_tokenizer()
    tok.add_tokens(["[Q] ", "[D] "])
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
        linear = torch.nn.Linear(64, dim, bias=False)
    model.save_pretrained(str(path / "0_Transformer"), safe_serialization=True)
    save_portable(tok, path / "0_Transformer")
    write_json({"max_seq_length": 180, "do_lower_case": False}, path / "0_Transformer" / "sentence_bert_config.json")
    (path / "1_Dense").mkdir(parents=True, exist_ok=True)
    write_json({"in_features": 64, "out_features": dim, "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity"}, path / "1_Dense" / "config.json")
    save_file({"linear.weight": linear.weight.detach().contiguous()}, str(path / "1_Dense" / "model.safetensors"))
    write_json([{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}], path / "modules.json")
    write_json({"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32, "document_length": 180,
                "do_query_expansion": True, "attend_to_expansion_tokens": False,
                "skiplist_words": list(".,!?;:"), "similarity_fn_name": "MaxSim"},
               path / "config_sentence_transformers.json")
    return path
