"""A synthetic, learnable ranking task: relevance is whether a document contains its query's rare key word.

Each query is its key word (a made-up word no other query or document uses) plus two topic words. A highly relevant
document (grade 2) has the key twice and the topic words, a partially relevant one (grade 1) has the key once, and a
judged hard negative (grade 0) shares the topic words but lacks the key; the other documents are filler text. BM25
solves the task almost perfectly; a model that ignores the key is fooled by the hard negatives.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerank.data.io import write_jsonl, write_qrels
from rerank.testing.tokenizer import corpus_lines

__all__ = ["make_tiny_beir", "synthetic_ranking_examples", "TaskGenerator"]

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class TaskGenerator:
    """Draws key words, queries and graded documents of the synthetic task from one seeded RNG."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        words = {w.lower() for line in corpus_lines() for w in re.findall(r"[A-Za-z]{3,}", line)}
        self.filler = sorted(words)
        self._used: set[str] = set(self.filler)

    def key(self) -> str:
        """A new made-up word (three consonant-vowel syllables) unused so far."""
        while True:
            word = "".join(self.rng.choice(_CONSONANTS) + self.rng.choice(_VOWELS) for _ in range(3))
            if word not in self._used:
                self._used.add(word)
                return word

    def topics(self, n: int = 2) -> list[str]:
        """``n`` distinct topic words drawn from the filler vocabulary."""
        return self.rng.sample(self.filler, n)

    def query(self, key: str, topics: Sequence[str]) -> str:
        """The query text: the key and the topic words in random order."""
        words = [key, *topics]
        self.rng.shuffle(words)
        return " ".join(words)

    def document(self, grade: int | None, key: str = "", topics: Sequence[str] = ()) -> tuple[str, str]:
        """``(title, text)`` of a document: grade 2 (key twice), 1 (key once), 0 (topics only) or None (filler)."""
        words = [self.rng.choice(self.filler) for _ in range(self.rng.randint(12, 20))]
        inserts: list[str] = []
        if grade is not None:
            inserts += list(topics)
            inserts += [key] * {2: 2, 1: 1, 0: 0}[grade]
        for w in inserts:
            words.insert(self.rng.randint(0, len(words)), w)
        text = " ".join(words) + "."
        if grade == 2:
            title = f"{key} {topics[0]}" if topics else key
        else:
            title = " ".join(self.rng.choice(self.filler) for _ in range(2))
        return title, text


def make_tiny_beir(
    path: str | Path,
    num_docs: int = 200,
    num_queries: int = 30,
    splits: Sequence[str] = ("train", "dev", "test"),
    seed: int = 0,
    doc_chars: int | None = None,
) -> Path:
    """Write a synthetic BEIR folder (corpus.jsonl, queries.jsonl, qrels/{split}.tsv; grades 0-2) to ``path``.

    Queries are dealt to the splits in turn (q000 to the first split, q001 to the second, ...); every query has one
    grade-2, one grade-1 and one judged grade-0 document, so ``num_docs`` must be at least ``3 * num_queries``.
    ``doc_chars``: every document's text is exactly that long (its words, then ordinary English sentences to fill,
    cut at the length): long documents for the heads that fit prompts or score passages.
    """
    if num_queries < 1 or not splits:
        raise ValueError("make_tiny_beir needs at least one query and one split")
    if doc_chars is not None and doc_chars < 1:
        raise ValueError(f"doc_chars must be >= 1, got {doc_chars}")
    if num_docs < 3 * num_queries:
        raise ValueError(f"num_docs={num_docs} is too small: each of {num_queries} queries needs 3 judged documents")
    gen = TaskGenerator(seed)
    slots = list(range(num_docs))
    gen.rng.shuffle(slots)  # judged documents land at random ids
    width = len(str(num_docs - 1))
    docs: dict[int, dict[str, Any]] = {}
    queries: list[dict[str, Any]] = []
    qrels: dict[str, dict[str, dict[str, int]]] = {s: {} for s in splits}
    for i in range(num_queries):
        qid = f"q{i:03d}"
        key, topics = gen.key(), gen.topics()
        queries.append({"_id": qid, "text": gen.query(key, topics)})
        judged: dict[str, int] = {}
        for grade in (2, 1, 0):
            slot = slots.pop()
            docid = f"d{slot:0{width}d}"
            title, text = gen.document(grade, key, topics)
            docs[slot] = {"_id": docid, "title": title, "text": text}
            judged[docid] = grade
        qrels[splits[i % len(splits)]][qid] = judged
    for slot in slots:
        title, text = gen.document(None)
        docs[slot] = {"_id": f"d{slot:0{width}d}", "title": title, "text": text}
    if doc_chars is not None:
        lines = corpus_lines()
        for slot, doc in docs.items():
            fill = " ".join(lines[(slot * 7 + k) % len(lines)] for k in range(doc_chars // 16 + 1))
            doc["text"] = f"{doc['text']} {fill}"[:doc_chars]
    path = Path(path)
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl((docs[s] for s in sorted(docs)), path / "corpus.jsonl")
    write_jsonl(queries, path / "queries.jsonl")
    for split, split_qrels in qrels.items():
        write_qrels(split_qrels, path / "qrels" / f"{split}.tsv", beir=True)
    return path


def synthetic_ranking_examples(n: int, num_candidates: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` training examples ``{"qid", "query", "candidates": [{"id", "text"}], "labels"}`` of the same task.

    Each has one grade-2, one grade-1 and one grade-0 hard negative (as room allows, in that order), the rest filler
    (grade 0), shuffled.
    """
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2, got {num_candidates}")
    gen = TaskGenerator(seed)
    examples = []
    for i in range(n):
        key, topics = gen.key(), gen.topics()
        grades: list[int | None] = [2, 1, 0][:num_candidates] + [None] * max(0, num_candidates - 3)
        cands = []
        for grade in grades:
            title, text = gen.document(grade, key, topics)
            cands.append((f"{title}. {text}", grade or 0))
        gen.rng.shuffle(cands)
        examples.append(
            {
                "qid": f"s{seed}-{i}",
                "query": gen.query(key, topics),
                "candidates": [{"id": f"s{seed}-{i}-d{j}", "text": t} for j, (t, _) in enumerate(cands)],
                "labels": [g for _, g in cands],
            }
        )
    return examples
