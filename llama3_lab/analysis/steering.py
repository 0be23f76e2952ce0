"""Steering vectors: add a direction to the residual stream (or any activation) during every forward.

``with steering(model, "blocks.5.hook_resid_post", vector, scale=4.0):`` acts on plain forwards, caches
and generation alike, since generation calls the same forward (with the KV cache, each step's new
position gets the vector, and the prompt got it during prefill).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..hooks import HookedRootModule
from ..tokens import TokensLike


def steering_hook(vector: torch.Tensor, scale: float = 1.0, positions: Sequence[int] | None = None):
    """A hook ``fn(tensor, hook)`` adding ``scale · vector`` ``[D]`` at every position (or ``positions``)."""

    def add(activation: torch.Tensor, hook) -> torch.Tensor:
        shift = (scale * vector).to(activation)
        if positions is None:
            return activation + shift
        activation = activation.clone()
        activation[:, list(positions)] += shift
        return activation

    return add


@contextmanager
def steering(
    model: HookedRootModule,
    hook_name: str,
    vector: torch.Tensor,
    scale: float = 1.0,
    positions: Sequence[int] | None = None,
) -> Iterator[HookedRootModule]:
    """Every forward inside the ``with`` adds ``scale · vector`` to ``hook_name``'s activation."""
    with model.hooks([(hook_name, steering_hook(vector, scale, positions))]):
        yield model


@torch.no_grad()
def steering_vector(
    model: HookedRootModule,
    positive: TokensLike,
    negative: TokensLike,
    hook_name: str,
    pos: int | str = "last",
) -> torch.Tensor:
    """``[D]``: activation at ``hook_name`` on ``positive`` minus on ``negative`` (at ``pos``, each averaged
    over its batch): the "activation addition" recipe for a steering direction.

    ``pos="last"``: each prompt's last real token, so prompts of different lengths may be mixed."""
    _, plus = model.run_with_cache(positive, names_filter=hook_name)
    _, minus = model.run_with_cache(negative, names_filter=hook_name)
    return plus.at(hook_name, pos)[:, 0].mean(0) - minus.at(hook_name, pos)[:, 0].mean(0)
