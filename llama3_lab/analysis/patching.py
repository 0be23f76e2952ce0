"""Activation patching: run a corrupted prompt, paste in one activation from the clean run, measure.

If pasting the clean residual at (layer, position) restores the clean behaviour, the information that
matters sits there. ``metric(logits) -> float`` says what "behaviour" is, e.g. ``logit_diff_metric``.
Each cell is one forward; patching a run with its own activations changes nothing (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..hook_points import get_act_name
from ..hooks import HookedRootModule
from ..tokens import TokensLike

Metric = Callable[[torch.Tensor], torch.Tensor | float]


def logit_diff_metric(answer: int, wrong: int, pos: int = -1) -> Metric:
    """``logits -> logits[:, pos, answer] − logits[:, pos, wrong]``, averaged over the batch."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, pos, answer] - logits[:, pos, wrong]).mean()

    return metric


def _clean_activations(
    model: HookedRootModule, tokens: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return dict(cache.items())


def _check_same_shape(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"Clean and corrupted tokens must have the same shape to patch position by position, got "
            f"{tuple(clean.shape)} and {tuple(corrupted.shape)}: make the prompts the same length in tokens."
        )


@torch.no_grad()
def patch_resid(
    model: HookedRootModule,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    act: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """``[L, P]``: ``metric`` of the corrupted run with the clean ``act`` (default ``resid_pre``) pasted in
    at one (layer, position) per cell. ``layers``/``positions`` restrict the grid (rows/columns follow them).
    """
    clean_ids, corrupted_ids = model.to_tokens(clean), model.to_tokens(corrupted)
    _check_same_shape(clean_ids, corrupted_ids)
    layers = list(range(model.cfg.num_hidden_layers)) if layers is None else list(layers)  # type: ignore[attr-defined]
    positions = list(range(clean_ids.shape[1])) if positions is None else list(positions)
    names = [get_act_name(act, layer) for layer in layers]
    saved = _clean_activations(model, clean_ids, names)
    result = torch.zeros(len(layers), len(positions))
    for row, name in enumerate(names):
        for col, position in enumerate(positions):

            def paste(resid: torch.Tensor, hook, name=name, position=position) -> torch.Tensor:
                resid = resid.clone()
                resid[:, position] = saved[name][:, position]
                return resid

            result[row, col] = float(metric(model.run_with_hooks(corrupted_ids, [(name, paste)])))
    return result


@torch.no_grad()
def patch_head_z(
    model: HookedRootModule,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """``[L, H]``: ``metric`` of the corrupted run with one head's clean output ``z`` pasted in (at every
    position, or only at ``positions``)."""
    clean_ids, corrupted_ids = model.to_tokens(clean), model.to_tokens(corrupted)
    _check_same_shape(clean_ids, corrupted_ids)
    layers = list(range(model.cfg.num_hidden_layers)) if layers is None else list(layers)  # type: ignore[attr-defined]
    where = slice(None) if positions is None else torch.as_tensor(list(positions))
    names = [get_act_name("z", layer) for layer in layers]
    saved = _clean_activations(model, clean_ids, names)
    n_heads = model.cfg.num_attention_heads  # type: ignore[attr-defined]
    result = torch.zeros(len(layers), n_heads)
    for row, name in enumerate(names):
        for head in range(n_heads):

            def paste(z: torch.Tensor, hook, name=name, head=head) -> torch.Tensor:
                z = z.clone()  # b p h d
                z[:, where, head] = saved[name][:, where, head]
                return z

            result[row, head] = float(metric(model.run_with_hooks(corrupted_ids, [(name, paste)])))
    return result
