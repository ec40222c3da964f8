"""Datasets and file formats."""

from rerank.data.datasets import Dataset, default_data_root, resolve_dataset
from rerank.data.io import read_corpus, read_qrels, read_queries, read_run, write_run

__all__ = [
    "Dataset",
    "default_data_root",
    "resolve_dataset",
    "read_corpus",
    "read_qrels",
    "read_queries",
    "read_run",
    "write_run",
]
