"""Data recipes that build training data (hard negatives, teacher labels, synthetic queries)."""
