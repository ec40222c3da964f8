"""Training: SFT -> GRPO for reranker heads, and retriever trainers."""
