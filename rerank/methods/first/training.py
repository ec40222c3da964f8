"""FIRST's training loss: TRL's ``SFTTrainer`` (a subclass, not a fork) with a ranking loss on the first-identifier
logits added to the LM loss.

For each window the prompt (ending at ``[``, exactly as the FIRST head reads it) is run once more and the logits of
the identifier tokens ``A``..  at its last position are scored against the teacher ranks with
:mod:`rerank.trainers.ranking_losses`: weighted RankNet (pair weight 1/(r_i + r_j), ×10 by default), ListNet
(×0.1) or LambdaRank (×1) — the weights of rank_llm's training script. Total loss = LM loss + weight · ranking loss.
Where every row's tokenised prompt + completion starts with exactly the tokens of that prompt (the usual case), the
identifier logits are read from the LM forward's hidden state at the prompt's last token instead of a second forward
over the prompts, which halves the cost of a step; the logits are the same either way.

GRPO with ``rollout: plackett-luce`` trains the ranking FIRST reads instead of the generated text: each rollout is a
permutation drawn from a Plackett–Luce policy over the first-identifier logits (Gumbel top-k, as PG-Rank samples), and
each identifier of the written permutation gets its placement's PL log-probability as its token log-probability, so
TRL's GRPO loss (ratios, clipping, KL to the reference) applies unchanged. With generated rollouts the first
identifier is one token of ~22 in the policy gradient and the rest of the permutation, which FIRST never reads, takes
the gains.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import GRPOTrainer, SFTTrainer

from rerank.errors import ConfigError
from rerank.heads.permutation import format_permutation, identifiers
from rerank.trainers.plackett_luce import gumbel_topk_sample, plackett_luce_log_prob
from rerank.trainers.ranking_losses import lambdarank, listnet, weighted_ranknet

__all__ = ["DEFAULT_WEIGHTS", "RANKING", "PlackettLuceGRPOTrainer", "RankingSFTTrainer", "first_position_logits",
           "left_pad"]

log = logging.getLogger(__name__)

RANKING = {"ranknet": weighted_ranknet, "listnet": listnet, "lambdarank": lambdarank}
DEFAULT_WEIGHTS = {"ranknet": 10.0, "listnet": 0.1, "lambdarank": 1.0}
_EXTRA = ("rank_prompt_ids", "rank_ranks")


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> left-padded ``input_ids`` and ``attention_mask`` (B, longest), so every prompt ends at the
    last position, where FIRST reads the first identifier."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, p in enumerate(seqs):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        att[i, width - len(p):] = 1
    return ids, att


def _unique_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (ids, mask) rows and each row's index among them: GRPO repeats every prompt ``num_generations``
    times and FIRST's policy reads only the prompt, so one forward per distinct prompt gives every rollout's logits."""
    rows, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
    return rows[:, : ids.size(1)], rows[:, ids.size(1) :], inverse


class _RankingCollator:
    """Wraps TRL's collator: pops the ranking columns and adds them as left-padded tensors."""

    def __init__(self, base: Any, pad_id: int) -> None:
        self.base = base
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [list(e["rank_prompt_ids"]) for e in examples]
        ranks = [list(e["rank_ranks"]) for e in examples]
        batch = self.base([{k: v for k, v in e.items() if k not in _EXTRA} for e in examples])
        ids, att = left_pad(prompts, self.pad_id)
        n = max(map(len, ranks))
        rk = torch.full((len(ranks), n), n + 1, dtype=torch.long)
        mask = torch.zeros((len(ranks), n), dtype=torch.bool)
        for i, r in enumerate(ranks):
            rk[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        batch.update(rank_input_ids=ids, rank_attention_mask=att, rank_ranks=rk, rank_mask=mask)
        return batch


def first_position_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Float logits (B, vocab) at the last position of left-padded prompts (ending at ``[``), as the FIRST head reads."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at each prompt
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                logits_to_keep=1)
    return out.logits[:, -1, :].float()


def _causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (a PEFT wrapper is looked through)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def _plain_logits(lm: Any) -> bool:
    """Whether the causal LM's logits are its LM head applied to the last hidden state, with nothing after it."""
    text = lm.config.get_text_config()
    return (all(getattr(text, k, None) in (None, 1.0) for k in _LOGIT_TRANSFORMS)
            and lm.get_output_embeddings() is not None and hasattr(lm, "base_model") and lm.base_model is not lm)


class RankingSFTTrainer(SFTTrainer):
    """``SFTTrainer`` + a ranking loss on the first-identifier logits (``ranking_loss`` = ranknet|listnet|lambdarank)."""

    def __init__(self, *args: Any, ranking_loss: str = "ranknet", ranking_weight: float | None = None,
                 identifier_token_ids: list[int] | None = None, **kwargs: Any) -> None:
        if ranking_loss not in RANKING:
            raise ConfigError(f"ranking loss must be one of {sorted(RANKING)}, got {ranking_loss!r}")
        if not identifier_token_ids:
            raise ConfigError("the ranking loss needs the identifier token ids")
        super().__init__(*args, **kwargs)
        self.ranking_fn = RANKING[ranking_loss]
        self.ranking_name = ranking_loss
        self.ranking_weight = DEFAULT_WEIGHTS[ranking_loss] if ranking_weight is None else ranking_weight
        self.identifier_ids = torch.tensor(identifier_token_ids, dtype=torch.long)
        self._warned_second_forward = False
        pad = self.processing_class.pad_token_id
        self.data_collator = _RankingCollator(self.data_collator, int(pad if pad is not None else 0))

    def ranking_loss(self, model: Any, inputs: dict[str, Any], hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The ranking loss of the batch's windows: from ``hidden`` (the LM forward's hidden state at each prompt's
        last token) when given, else from one forward over their prompts."""
        n = inputs["rank_ranks"].shape[1]
        ids = self.identifier_ids[:n]
        if hidden is None:
            last = first_position_logits(model, inputs["rank_input_ids"], inputs["rank_attention_mask"])
            logits = last[:, ids.to(last.device)]
        else:
            head = _causal_lm(self.accelerator.unwrap_model(model)).get_output_embeddings()
            ids = ids.to(head.weight.device)
            logits = hidden.to(head.weight.dtype) @ head.weight[ids].T
            if head.bias is not None:
                logits = logits + head.bias[ids]
            logits = logits.float()
        return self.ranking_fn(logits, inputs["rank_ranks"], inputs["rank_mask"])

    def _prompt_ends(self, inputs: dict[str, Any], extra: dict[str, Any]) -> list[int] | None:
        """Per row, the position of the prompt's last token in the LM batch, if every row's LM sequence starts with
        exactly its ranking prompt's tokens (else None: the ranking loss then runs its own forward)."""
        labels = inputs.get("labels")
        if labels is None or labels.shape[0] != extra["rank_input_ids"].shape[0]:
            return None
        ends = []
        for b in range(labels.shape[0]):
            target = (labels[b] != -100).nonzero()
            if target.numel() == 0:
                return None
            start = int(target[0])
            prompt = extra["rank_input_ids"][b][extra["rank_attention_mask"][b].bool()]
            seq = inputs["input_ids"][b]
            if start != prompt.numel() or start == 0 or not torch.equal(seq[:start], prompt.to(seq.device)):
                return None
            ends.append(start - 1)
        return ends

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        extra = {k: inputs.pop(k) for k in ("rank_input_ids", "rank_attention_mask", "rank_ranks", "rank_mask")
                 if k in inputs}
        if not extra:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                         num_items_in_batch=num_items_in_batch)
        lm = _causal_lm(self.accelerator.unwrap_model(model))
        ends = self._prompt_ends(inputs, extra) if _plain_logits(lm) else None
        if ends is None and not self._warned_second_forward:
            self._warned_second_forward = True
            log.info("FIRST ranking loss: a second forward over the prompts (the LM batch does not start with each "
                     "prompt's tokens, or the model transforms its logits)")
        captured: list[torch.Tensor] = []
        handle = None
        if ends is not None:
            handle = lm.base_model.register_forward_hook(lambda _m, _a, out: captured.append(out[0]))
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            if handle is not None:
                handle.remove()
        hidden = None
        if ends is not None and len(captured) == 1:
            rows = torch.arange(len(ends), device=captured[0].device)
            hidden = captured[0][rows, torch.tensor(ends, device=captured[0].device)]
        rank = self.ranking_loss(model, extra, hidden)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][f"{self.ranking_name}_loss"].append(float(rank.detach()))
        if num_items_in_batch is not None:  # the LM loss is already a share of the accumulated step; so is this
            rank = rank / self.current_gradient_accumulation_steps
        if return_outputs:
            loss, outputs = result
            return loss + self.ranking_weight * rank, outputs
        return result + self.ranking_weight * rank


class PlackettLuceGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` whose policy is FIRST's ranking: PL(first-identifier logits / T) over the window.

    Rollouts come through TRL's ``rollout_func``: one forward per distinct prompt, a Gumbel-top-k permutation as
    ``A] > [C] > …]`` (the prompt already ends at ``[``) plus EOS; only identifier tokens are in the loss mask.
    ``_get_per_token_logps_and_entropies`` returns each identifier's placement log-probability (and the entropy of
    that placement's distribution) for the policy, the old policy and the reference alike.
    """

    def __init__(self, *args: Any, identifier_token_ids: list[int], window_sizes: dict[str, int], scheme: str,
                 **kwargs: Any) -> None:
        super().__init__(*args, rollout_func=self._plackett_luce_rollout, **kwargs)
        if self.aux_loss_enabled:
            raise ConfigError("plackett-luce rollouts score one position per prompt; a MoE router's aux loss is not "
                              "supported with them")
        tok = self.processing_class
        self.identifier_ids = torch.tensor(identifier_token_ids, dtype=torch.long)
        self._local = {t: k for k, t in enumerate(identifier_token_ids)}
        self.window_sizes = window_sizes
        a, b = identifiers(scheme, 2)
        text = format_permutation(scheme, [0, 1])
        sep = text[text.index(a) + len(a) : text.index(b)]
        self._sep = tok.encode(sep, add_special_tokens=False)
        self._close = tok.encode(text[text.index(b) + len(b) :], add_special_tokens=False)
        if tok.eos_token_id is None:
            raise ConfigError("plackett-luce rollouts need a tokenizer with an EOS token")
        self._eos = int(tok.eos_token_id)
        clash = set(self._local) & {*self._sep, *self._close, self._eos, tok.pad_token_id}
        if clash:
            raise ConfigError(f"plackett-luce: identifier tokens {sorted(clash)} also occur in the separators")

    def _window_size(self, prompt: str) -> int:
        if prompt not in self.window_sizes:
            raise KeyError(f"plackett-luce rollout: a prompt that is not one of the training rows: {prompt[:80]!r}")
        return self.window_sizes[prompt]

    def _plackett_luce_rollout(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        """One PL draw per prompt (TRL repeats each prompt ``num_generations`` times)."""
        tok = self.processing_class
        prompt_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
        ids, att = left_pad(prompt_ids, int(tok.pad_token_id if tok.pad_token_id is not None else self._eos))
        device = self.accelerator.device
        ids, att, inverse = _unique_rows(ids, att)
        with torch.no_grad(), self.accelerator.autocast():
            logits = first_position_logits(self.model, ids.to(device), att.to(device))[inverse.to(device)]
        completion_ids, logprobs, env_mask = [], [], []
        for i, prompt in enumerate(prompts):
            n = self._window_size(prompt)
            s = logits[i, self.identifier_ids[:n].to(logits.device)].unsqueeze(0)
            order = gumbel_topk_sample(s, 1, temperature=self.temperature)
            lp = plackett_luce_log_prob(s, order, self.temperature, per_step=True)[0, 0].tolist()
            c, lps, mask = [], [], []
            for k, j in enumerate(order[0, 0].tolist()):
                tail = self._sep if k < n - 1 else self._close
                c += [int(self.identifier_ids[j]), *tail]
                lps += [lp[k]] + [0.0] * len(tail)
                mask += [1] + [0] * len(tail)
            completion_ids.append(c + [self._eos])
            logprobs.append(lps + [0.0])
            env_mask.append(mask + [0])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs,
                "env_mask": env_mask}

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, batch_size: int | None = None,
                                           compute_entropy: bool = False, compute_aux_loss: bool = False,
                                           **_multimodal: Any) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """Each identifier token's PL placement log-probability under ``model``; 0 at the separators (masked)."""
        prompt, prompt_mask = input_ids[:, :-logits_to_keep], attention_mask[:, :-logits_to_keep]
        completion = input_ids[:, -logits_to_keep:].tolist()
        batch_size = batch_size or input_ids.size(0)
        prompt, prompt_mask, inverse = _unique_rows(prompt, prompt_mask)
        with self.accelerator.autocast():
            logits = torch.cat([first_position_logits(model, prompt[b : b + batch_size], prompt_mask[b : b + batch_size])
                                for b in range(0, prompt.size(0), batch_size)])[inverse.to(prompt.device)]
        logps = torch.zeros(input_ids.size(0), logits_to_keep, device=logits.device)
        entropies = torch.zeros_like(logps) if compute_entropy else None
        for b, row in enumerate(completion):
            pos = [t for t, tok in enumerate(row) if tok in self._local]
            order = [self._local[row[t]] for t in pos]
            n = len(order)
            if sorted(order) != list(range(n)):
                raise ValueError(f"plackett-luce: completion {b} is not a permutation of its window's identifiers")
            s = logits[b, self.identifier_ids[:n].to(logits.device)]
            ranking = torch.tensor(order, device=logits.device)
            logps[b, pos] = plackett_luce_log_prob(s.unsqueeze(0), ranking.view(1, 1, n), self.temperature,
                                                   per_step=True)[0, 0]
            if entropies is not None:
                with torch.no_grad():
                    ranked = s[ranking] / self.temperature
                    h = [torch.special.entr(torch.softmax(ranked[k:], -1)).sum() for k in range(n)]
                    entropies[b, pos] = torch.stack(h)
        return logps, entropies, None
