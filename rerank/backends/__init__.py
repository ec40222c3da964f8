"""Model backends: turn prompts into logits, log-probabilities or text (transformers, vLLM, llama.cpp,
OpenAI-compatible)."""
