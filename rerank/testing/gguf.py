"""A tiny Qwen2 folder written as a GGUF file, so the llama.cpp backend can be checked against transformers on the
same weights without a model hub.

Only what llama.cpp and transformers' GGUF reader need is written: the Qwen2 hyper-parameters, the byte-level BPE
vocabulary (tokens, merges, control and user-defined tokens, ``qwen2`` pre-tokenizer), the chat template and the
tensors under llama.cpp's names. 2-D weights are stored as ``qtype`` (``F32``, ``F16``, ``Q8_0``, ``Q4_1``, ...;
quantised by the ``gguf`` package), norms and biases as F32.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["tiny_gguf"]

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    prefix, _, rest = hf_name.removeprefix("model.layers.").partition(".")
    if hf_name.startswith("model.layers.") and rest in _LAYER_TENSORS:
        return f"blk.{int(prefix)}.{_LAYER_TENSORS[rest]}"
    raise ValueError(f"no GGUF name for tensor {hf_name!r}")


def tiny_gguf(hf_dir: str | Path, path: str | Path, qtype: str = "F32") -> Path:
    """Write the Qwen2 model folder ``hf_dir`` (e.g. :func:`rerank.testing.tiny_llm`) as the GGUF file ``path``."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    hf_dir, path = Path(hf_dir), Path(path)
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "qwen2":
        raise ValueError(f"tiny_gguf writes Qwen2 models; {hf_dir} is {config.get('model_type')!r}")
    quant = gguf.GGMLQuantizationType[qtype]
    tok = AutoTokenizer.from_pretrained(hf_dir)
    spec = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(float(config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(quant)

    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"{hf_dir}: token ids are not 0..{len(tokens) - 1}")
    kinds = {t["content"]: gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
             for t in spec["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([kinds.get(t, gguf.TokenType.NORMAL) for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok.chat_template)

    for name, tensor in sorted(load_file(str(hf_dir / "model.safetensors")).items()):
        data = tensor.astype(np.float32)
        if data.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(data, quant), raw_dtype=quant)
        else:
            writer.add_tensor(_gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
