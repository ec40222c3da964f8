"""Model backends: turn prompts into logits, log-probabilities or text (transformers, vLLM, OpenAI-compatible)."""
