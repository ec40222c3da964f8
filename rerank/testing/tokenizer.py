"""Tokenizers trained in code on the built-in English text, so tests never need a model hub.

``build_tokenizer`` gives a Qwen/SmolLM-like byte-level BPE (digits one per token, ChatML chat template with
generation markers); ``build_wordpiece_tokenizer`` gives a BERT WordPiece tokenizer for the tiny encoders.
Training is deterministic and takes well under a second; results are cached per process.
"""

from __future__ import annotations

import functools
import string
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "EOS_TOKEN",
    "IM_START",
    "IM_END",
    "SPECIAL_TOKENS",
    "REASONING_TOKENS",
    "BPE_VOCAB_SIZE",
    "WORDPIECE_VOCAB_SIZE",
    "corpus_lines",
    "chat_template",
    "build_tokenizer",
    "build_wordpiece_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]
# added as ordinary (non-special) tokens so that decode() keeps them, as reasoning-model tokenizers do
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
BPE_VOCAB_SIZE = 1200
WORDPIECE_VOCAB_SIZE = 1000
MODEL_MAX_LENGTH = 4096

# Strings that rerankers emit one token at a time (labels, identifiers, verdicts); repeated in training so that BPE
# learns each as one token, both bare and after a space. build_tokenizer checks this.
_SINGLE_TOKEN_WORDS = [*string.ascii_uppercase, "yes", "no", "Yes", "No", "relevant"]
_FORCED_REPEATS = 64


def corpus_lines() -> list[str]:
    """The built-in training text (``corpus.txt``), one sentence per line."""
    text = resources.files("rerank.testing").joinpath("corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def chat_template() -> str:
    """The ChatML chat template (``chat_template.jinja``) with ``{% generation %}`` markers."""
    return resources.files("rerank.testing").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def _bpe_training_text() -> list[str]:
    words = " ".join(_SINGLE_TOKEN_WORDS)
    forced = [*_SINGLE_TOKEN_WORDS, " " + words, "[" + "] > [".join(string.ascii_uppercase) + "]"]
    return corpus_lines() + forced * _FORCED_REPEATS


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # digits first, one per piece (as Qwen2/SmolLM2), then GPT-2 byte-level splitting of the rest
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_bpe_training_text(), trainer=trainer)
    return tok.to_str()


def build_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE fast tokenizer (ChatML template, ``<|endoftext|>`` as eos and pad); saved if asked.

    Padding side is right (the transformers default); LLM backends switch to left padding themselves.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_json()),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.add_tokens(REASONING_TOKENS, special_tokens=False)
    tok.chat_template = chat_template()
    _check_single_tokens(tok)
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok


def _check_single_tokens(tok: PreTrainedTokenizerBase) -> None:
    for text in [*_SINGLE_TOKEN_WORDS, *(" " + w for w in _SINGLE_TOKEN_WORDS), "[", "]", ">", " >"]:
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise AssertionError(f"tiny tokenizer: {text!r} is {len(ids)} tokens, expected 1")


@functools.lru_cache(maxsize=1)
def _wordpiece_vocab() -> tuple[str, ...]:
    """Specials, every character (bare and ``##``-continued), then the most frequent words (ties alphabetical).

    Counted directly rather than with ``tokenizers``' WordPiece trainer, whose tie-breaking depends on hash order
    and so changes the vocabulary from one process to the next.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for line in corpus_lines():
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted({c for w in counts for c in w} | set(string.ascii_lowercase + string.digits))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= WORDPIECE_VOCAB_SIZE:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return tuple(vocab)


def build_wordpiece_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """A lower-casing BERT WordPiece fast tokenizer trained on the built-in text; saved if asked."""
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(_wordpiece_vocab()) + "\n", encoding="utf-8")
        tok = BertTokenizerFast(str(vocab_file), do_lower_case=True, model_max_length=512)
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok
