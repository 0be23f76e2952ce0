"""Head scores ``[L, H]``: what each attention head does, measured on its attention pattern.

- previous-token: attention from each position to the one before it;
- induction: on a random sequence repeated twice, attention from the second copy's token at i to the
  token right *after* that token's first occurrence (the head predicts "what came next last time");
- attention sink: attention mass on the first token (Llama heads park attention there when idle);
- entropy: how spread out the attention is (nats; 0 = one key).

Each takes an ``ActivationCache``; patterns come from ``cache["pattern", l]`` when cached, else are
recomputed from ``rot_q``/``rot_k`` (``cache.pattern``), one layer at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..activation_cache import ActivationCache
from ..hooks import HookedRootModule


def _patterns(cache: ActivationCache) -> Iterator[torch.Tensor]:
    for layer in range(cache.n_layers):
        yield cache["pattern", layer] if ("pattern", layer) in cache else cache.pattern(layer)


def _per_head(cache: ActivationCache, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``[L, H]``: ``score(pattern [B, H, Pq, Pk]) -> [B, H]`` for each layer, averaged over the batch.

    In a padded batch each row is scored on its real queries and keys only (as if run alone)."""
    if cache.mask is None:
        return torch.stack([score(pattern.float()).mean(0) for pattern in _patterns(cache)])
    keeps = [row.nonzero()[:, 0] for row in cache.mask]
    per_layer = []
    for pattern in _patterns(cache):
        rows = [score(pattern[b][:, keep][:, :, keep].float()[None]) for b, keep in enumerate(keeps)]
        per_layer.append(torch.cat(rows).mean(0))
    return torch.stack(per_layer)


def previous_token_scores(cache: ActivationCache) -> torch.Tensor:
    """``[L, H]``: mean attention from position i to i − 1, over positions 1..P−1."""
    return _per_head(cache, lambda pattern: pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1))


def first_token_attention(pattern: torch.Tensor) -> torch.Tensor:
    """``[..., H]``: mean attention on the first token over queries 1..P−1 of ``pattern [..., H, Pq, Pk]``."""
    return pattern[..., 1:, 0].mean(-1)


def attention_sink_scores(cache: ActivationCache) -> torch.Tensor:
    """``[L, H]``: mean attention on the first token over query positions 1..P−1 (0 has no choice)."""
    return _per_head(cache, first_token_attention)


def attention_entropy(cache: ActivationCache) -> torch.Tensor:
    """``[L, H]``: mean entropy −Σ p·log p (nats) of each query's attention, over query positions."""

    def entropy(pattern: torch.Tensor) -> torch.Tensor:
        plogp = torch.where(pattern > 0, pattern * pattern.clamp_min(1e-30).log(), 0.0)
        return -plogp.sum(-1).mean(-1)

    return _per_head(cache, entropy)


def induction_scores(cache: ActivationCache, repeat_len: int) -> torch.Tensor:
    """``[L, H]``: on tokens ``[bos, r_1..r_T, r_1..r_T]`` (T = ``repeat_len``), mean attention from each
    second-copy position T + j to position j + 1, the token after that token's first occurrence."""
    T = repeat_len
    queries = torch.arange(T + 1, 2 * T + 1)  # second copy: positions T+1 .. 2T hold r_1 .. r_T
    keys = queries - T + 1  # r_j's first occurrence is at j; the token after it at j + 1

    def score(pattern: torch.Tensor) -> torch.Tensor:
        if pattern.shape[-2] != 2 * T + 1:
            raise ValueError(
                f"The patterns cover {pattern.shape[-2]} positions, but [bos, r, r] with repeat_len={T} has "
                f"{2 * T + 1}: run the cache on repeated_random_tokens(model, {T}) (or pass its repeat_len)."
            )
        return pattern[..., queries, keys].mean(-1)

    return _per_head(cache, score)


def repeated_random_tokens(
    model: HookedRootModule, repeat_len: int, batch: int = 1, seed: int = 0
) -> torch.Tensor:
    """``[B, 1 + 2T]``: BOS, T random ordinary (not special) tokens, then the same T tokens again."""
    cfg = model.cfg  # type: ignore[attr-defined]
    tokenizer = getattr(model, "tokenizer", None)
    special = set(getattr(tokenizer, "special_tokens", {}).values()) if tokenizer is not None else set()
    special |= {cfg.bos_token_id} if cfg.bos_token_id is not None else set()
    is_ordinary = torch.ones(cfg.vocab_size, dtype=torch.bool)
    is_ordinary[sorted(special)] = False
    ordinary = is_ordinary.nonzero()[:, 0]
    generator = torch.Generator().manual_seed(seed)
    random = ordinary[torch.randint(len(ordinary), (batch, repeat_len), generator=generator)]
    bos = tokenizer.bos_id if tokenizer is not None and tokenizer.bos_id is not None else cfg.bos_token_id
    bos_column = torch.full((batch, 1), bos if bos is not None else int(ordinary[0]))
    return torch.cat([bos_column, random, random], dim=1).to(model.device)  # type: ignore[attr-defined]


@torch.no_grad()
def induction_head_scores(
    model: HookedRootModule, repeat_len: int = 50, batch: int = 4, seed: int = 0
) -> torch.Tensor:
    """``[L, H]``: ``induction_scores`` on ``repeated_random_tokens`` (caching only rot_q/rot_k)."""
    tokens = repeated_random_tokens(model, repeat_len, batch, seed)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "hook_rot_" in name)
    return induction_scores(cache, repeat_len)
