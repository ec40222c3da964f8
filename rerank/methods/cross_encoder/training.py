"""The cross-encoder's training defaults (its descriptor's ``configure_train``): the pair is cut by the inference
head's rules, so training reads the pairs inference scores.

``max_query_tokens`` unset: the method's own head config default (its inference head cuts the query there);
``max_length`` unset: 0, the model's own limit as the head takes it, else >= 8 (the head refuses a shorter pair; the
model's position limit is checked by the trainer before the weights load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rerank.config import option_default
from rerank.errors import ConfigError

if TYPE_CHECKING:
    from rerank.trainers.common import CommonTrainConfig

__all__ = ["MIN_PAIR_LENGTH", "configure_train"]

#: the shortest pair the cross-encoder's inference head scores (its config refuses a shorter ``max_length``)
MIN_PAIR_LENGTH = 8


def configure_train(cfg: CommonTrainConfig, trainer: str) -> None:
    """Derive the unset ``max_query_tokens`` (the head's own default) and ``max_length`` (0: the model's own), and
    refuse a ``max_length`` the inference head would refuse."""
    from rerank.methods import get_method

    if cfg.max_query_tokens is None:
        head = get_method(cfg.head).resolve("head")
        cfg._derive("max_query_tokens", int(option_default(head.config_class, "max_query_tokens")))
    if cfg.max_length is None:
        cfg._derive("max_length", 0)
    if 0 < cfg.max_length < MIN_PAIR_LENGTH or cfg.max_length < 0:
        raise ConfigError(f"max_length must be >= {MIN_PAIR_LENGTH} for the cross-encoder head {cfg.head!r} (its "
                          f"inference head refuses a shorter pair), or 0 / unset for the model's own limit; got "
                          f"{cfg.max_length}")
