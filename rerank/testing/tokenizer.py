"""Tokenizers trained in code on the built-in English text, so tests never need a model hub.

``build_tokenizer`` gives a Qwen/SmolLM-like byte-level BPE (digits one per token, ChatML chat template with
generation markers); ``build_wordpiece_tokenizer`` gives a BERT WordPiece tokenizer for the tiny encoders;
``build_t5_tokenizer`` a T5-like Unigram (metaspace, ``</s>`` appended, ``<pad>`` id 0) for the tiny T5.
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
    "build_t5_tokenizer",
    "save_portable",
]

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]
# added as ordinary (non-special) tokens so that decode() keeps them, as reasoning-model tokenizers do
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
BPE_VOCAB_SIZE = 1200  # about; merges gluing punctuation to letters are dropped after training
_BPE_TRAIN_VOCAB_SIZE = 1300
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
    forced = [*_SINGLE_TOKEN_WORDS, " " + words, " > ".join(string.ascii_uppercase)]
    return corpus_lines() + forced * _FORCED_REPEATS


# Qwen2's pre-tokenizer regex: digits one per piece, contractions, letter runs with one leading non-letter, ...
# transformers 5 rebuilds any tokenizer of a `qwen2` model with exactly this pipeline, so we train with it too.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _qwen2_pipeline(tok):  # noqa: ANN001, ANN202 - tokenizers.Tokenizer in and out
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _glues_punctuation_to_letter(token: str) -> bool:
    """True for a token like ``[A`` or ``(the`` (punctuation then a letter; ``'s``-style contractions excepted)."""
    from tokenizers import decoders

    text = decoders.ByteLevel().decode([token])
    return any(
        not a.isalnum() and not a.isspace() and a != "'" and b.isalpha() for a, b in zip(text, text[1:])
    )


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    """Train the byte-level BPE and drop merges that glue punctuation to letters, so ``[A]`` is ``[``, ``A``, ``]``.

    Qwen2's regex keeps one leading punctuation mark with a word (``[A``); listwise rerankers read the logit of the
    identifier right after ``[``, as with the Mistral/Zephyr tokenizers FIRST was trained on.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_TRAIN_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained = _qwen2_pipeline(Tokenizer(models.BPE()))
    trained.train_from_iterator(_bpe_training_text(), trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    old_vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    known = {t for t, i in old_vocab.items() if i < len(SPECIAL_TOKENS) + 256}  # specials + byte alphabet
    kept: list[tuple[str, str]] = []
    for a, b in merges:
        if a in known and b in known and not _glues_punctuation_to_letter(a + b):
            kept.append((a, b))
            known.add(a + b)
    vocab = {t: i for i, t in enumerate(sorted(known, key=old_vocab.__getitem__))}
    tok = _qwen2_pipeline(Tokenizer(models.BPE(vocab=vocab, merges=kept)))
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok.to_str()


def build_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A tiny Qwen2-style byte-level BPE fast tokenizer (ChatML template, ``<|endoftext|>`` eos/pad); saved if asked.

    Digits are one token each; ``A``..``Z``, ``[``, ``]``, ``>``, ``yes``, ``no`` are single tokens (also after a
    space). It loads as ``Qwen2Tokenizer`` in transformers 4 and 5 alike. Padding side is right (the transformers
    default); LLM backends switch to left padding themselves.
    """
    from transformers import Qwen2TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.json").write_text(_bpe_json(), encoding="utf-8")
        tok = Qwen2TokenizerFast.from_pretrained(
            tmp,
            eos_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
            unk_token=None,
            bos_token=None,
            additional_special_tokens=[IM_START, IM_END],
            model_max_length=MODEL_MAX_LENGTH,
            padding_side="right",
            clean_up_tokenization_spaces=False,
        )
    tok.add_tokens(REASONING_TOKENS, special_tokens=False)
    tok.chat_template = chat_template()
    _check_single_tokens(tok)
    if save_dir is not None:
        save_portable(tok, save_dir)
    return tok


def save_portable(tok: PreTrainedTokenizerBase, save_dir: str | Path) -> None:
    """``save_pretrained``, then make ``tokenizer_config.json`` readable by transformers 4 too (vLLM's venvs).

    transformers 5 writes extra special tokens as a list under ``extra_special_tokens``, which transformers 4 reads
    as a dict and fails on; the 4.x key ``additional_special_tokens`` is read by both. Load-time keys are dropped.
    """
    import json

    from rerank.utils.files import write_json

    tok.save_pretrained(str(save_dir))
    path = Path(save_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif extra is not None:
        config["extra_special_tokens"] = extra
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    write_json(config, path)


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
        save_portable(tok, save_dir)
    return tok


T5_WORDS = 600
# monoT5 / duoT5 prompt words and answers: whole pieces, as in T5's own vocabulary
_T5_FORCED = ["Query:", "Document:", "Document0:", "Document1:", "Relevant:", "true", "false"]


def build_t5_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A T5-like Unigram tokenizer: ``<pad>`` 0, ``</s>`` 1 (appended to every input), ``<unk>`` 2, the corpus's most
    frequent words (and the monoT5 prompt words) as ``▁word`` pieces scored by log frequency, single characters last.
    Built from counts, not trained, so it is deterministic."""
    import collections
    import math

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    counts = collections.Counter(w for line in corpus_lines() for w in line.split())
    for w in _T5_FORCED:
        counts[w] += 1000
    words = sorted(counts, key=lambda w: (-counts[w], w))[:T5_WORDS]
    total = sum(counts[w] for w in words)
    vocab: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "\u2581": -3.0}
    for w in words:
        vocab.setdefault("\u2581" + w, math.log(counts[w] / total))
    for c in sorted({c for line in corpus_lines() for c in line} | set(string.printable.strip())):
        vocab.setdefault(c, -20.0)
    tk = Tokenizer(models.Unigram(list(vocab.items()), unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  model_max_length=512)
    if save_dir is not None:
        save_portable(tok, save_dir)
    return tok
