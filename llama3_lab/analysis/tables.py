"""Top-k token tables: the most probable tokens of a logit vector, as ids, strings and probabilities."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..tokenizer import token_strings


class TopTokens(NamedTuple):
    """``ids [..., k]``, ``probs [..., k]`` (softmax over the whole vocabulary) and ``strings`` (nested
    like the leading axes), most probable first."""

    ids: torch.Tensor
    probs: torch.Tensor
    strings: Any

    def table(self) -> str:
        """A plain-text table of one row of tokens (the first, if there are several)."""
        ids, probs, strings = self.ids, self.probs, self.strings
        while ids.ndim > 1:
            ids, probs, strings = ids[0], probs[0], strings[0]
        return "\n".join(
            f"{rank:>3}  {token_id:>7}  {prob:7.2%}  {text!r}"
            for rank, (token_id, prob, text) in enumerate(zip(ids.tolist(), probs.tolist(), strings), 1)
        )


def top_k_tokens(logits: torch.Tensor, tokenizer: Any = None, k: int = 10) -> TopTokens:
    """The ``k`` most probable tokens of ``logits [..., V]``.

    ``strings`` come from ``tokenizer.token_strings`` (``"[id]"`` without a tokenizer) and are a list
    for ``[V]``, a list of lists for ``[N, V]``, and so on.
    """
    probs = logits.float().softmax(dim=-1)
    top_probs, top_ids = probs.topk(k, dim=-1)

    def strings(ids: torch.Tensor) -> Any:
        if ids.ndim > 1:
            return [strings(row) for row in ids]
        id_list = ids.tolist()
        return token_strings(tokenizer, id_list)

    return TopTokens(top_ids, top_probs, strings(top_ids))
