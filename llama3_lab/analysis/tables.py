"""Top-k token tables: the most probable tokens of a distribution, as ids, strings and probabilities.

One idea, two views: ``TopTokens`` holds a whole batch (tensors ``[..., k]`` and nested strings), and
``TopK`` is one row of it as plain lists (what a ``StepRecord`` keeps for its step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..tokenizer import token_strings


@dataclass(frozen=True)
class TopK:
    """One row of top tokens: ``ids``, readable ``texts`` and ``probs``, most probable first."""

    ids: list[int]
    texts: list[str]
    probs: list[float]

    def table(self) -> str:
        """A plain-text table: rank, id, probability, text."""
        return "\n".join(
            f"{rank:>3}  {token_id:>7}  {prob:7.2%}  {text!r}"
            for rank, (token_id, prob, text) in enumerate(zip(self.ids, self.probs, self.texts), 1)
        )

    def __repr__(self) -> str:
        return "TopK(" + ", ".join(f"{t!r} {p:.3f}" for t, p in zip(self.texts, self.probs)) + ")"


class TopTokens(NamedTuple):
    """``ids [..., k]``, ``probs [..., k]`` and ``strings`` (nested like the leading axes), most probable
    first. ``row(i, ...)`` is one row as a ``TopK``."""

    ids: torch.Tensor
    probs: torch.Tensor
    strings: Any

    def row(self, *index: int) -> TopK:
        """The row at ``index`` of the leading axes (the first row where the index stops short)."""
        ids, probs, strings = self.ids, self.probs, self.strings
        for i in index:
            ids, probs, strings = ids[i], probs[i], strings[i]
        while ids.ndim > 1:
            ids, probs, strings = ids[0], probs[0], strings[0]
        return TopK(ids.tolist(), list(strings), probs.tolist())

    def table(self) -> str:
        """A plain-text table of one row of tokens (the first, if there are several)."""
        return self.row().table()


def top_k_of_probs(probs: torch.Tensor, tokenizer: Any = None, k: int = 10) -> TopTokens:
    """The ``k`` most probable tokens of the distribution ``probs [..., V]`` (``k`` at most ``V``).

    ``strings`` come from ``tokenizer.token_strings`` (``"[id]"`` without a tokenizer) and are a list
    for ``[V]``, a list of lists for ``[N, V]``, and so on.
    """
    top_probs, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)

    def strings(ids: torch.Tensor) -> Any:
        if ids.ndim > 1:
            return [strings(row) for row in ids]
        return token_strings(tokenizer, ids.tolist())

    return TopTokens(top_ids, top_probs, strings(top_ids))


def top_k_tokens(logits: torch.Tensor, tokenizer: Any = None, k: int = 10) -> TopTokens:
    """The ``k`` most probable tokens of ``logits [..., V]`` (softmax over the whole vocabulary)."""
    return top_k_of_probs(logits.float().softmax(dim=-1), tokenizer, k)
