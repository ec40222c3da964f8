"""Small shared utilities (atomic files, hashing, progress)."""
