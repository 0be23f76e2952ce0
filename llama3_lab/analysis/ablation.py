"""Zero and mean ablation of attention heads and MLPs.

An ablated head writes nothing (zero) or its average output (mean, over a reference batch and every
position) in place of what it computed; the mean keeps the residual stream's typical statistics, so it
is usually the fairer test. Each ablation is a list of ``(hook name, fn)`` for ``run_with_hooks`` or
``model.hooks(...)``, and a context manager for the common case.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from ..hook_points import HookFn, get_act_name
from ..hooks import HookedRootModule
from ..tokens import TokensLike

Head = tuple[int, int]
Means = dict[str, torch.Tensor]


@torch.no_grad()
def mean_activations(model: HookedRootModule, tokens: TokensLike, names: Iterable[str]) -> Means:
    """``{name: mean over batch and positions}`` (``z``: ``[H, d]``; ``mlp_out``: ``[D]``) on ``tokens``.

    Prompts of different lengths are padded, and the mean is over their real tokens only."""
    _, cache = model.run_with_cache(tokens, names_filter=list(names))
    if cache.mask is None:
        return {name: tensor.mean(dim=(0, 1)) for name, tensor in cache.items()}
    means = {}
    for name, tensor in cache.items():
        weight = cache.mask.to(tensor.dtype).view(*cache.mask.shape, *[1] * (tensor.ndim - 2))
        means[name] = (tensor * weight).sum(dim=(0, 1)) / cache.mask.sum()
    return means


def head_ablation_hooks(
    heads: Iterable[Head], kind: str = "zero", means: Means | None = None
) -> list[tuple[str, HookFn]]:
    """Hooks replacing head ``(layer, head)``'s output ``z`` by zero or by its mean (from ``mean_activations``
    over ``get_act_name("z", layer)``), at every position."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, layer_heads in by_layer.items():
        name = get_act_name("z", layer)
        replacement = _replacement(kind, means, name)

        def ablate(z: torch.Tensor, hook, layer_heads=layer_heads, replacement=replacement) -> torch.Tensor:
            z = z.clone()  # b p h d
            z[:, :, layer_heads] = 0.0 if replacement is None else replacement[layer_heads].to(z)
            return z

        hooks.append((name, ablate))
    return hooks


def mlp_ablation_hooks(
    layers: Iterable[int], kind: str = "zero", means: Means | None = None
) -> list[tuple[str, HookFn]]:
    """Hooks replacing layer l's ``mlp_out`` by zero or by its mean (``mean_activations``)."""
    hooks = []
    for layer in layers:
        name = get_act_name("mlp_out", layer)
        replacement = _replacement(kind, means, name)

        def ablate(out: torch.Tensor, hook, replacement=replacement) -> torch.Tensor:
            return torch.zeros_like(out) if replacement is None else replacement.to(out).expand_as(out)

        hooks.append((name, ablate))
    return hooks


def _replacement(kind: str, means: Means | None, name: str) -> torch.Tensor | None:
    if kind == "zero":
        return None
    if kind != "mean":
        raise ValueError(f"Ablation kind must be 'zero' or 'mean', not {kind!r}.")
    if means is None or name not in means:
        raise ValueError(
            f"Mean ablation needs the mean of {name}: means = mean_activations(model, reference_tokens, "
            f"[{name!r}, ...]) and pass means=means."
        )
    return means[name]


@contextmanager
def ablate_heads(
    model: HookedRootModule, heads: Iterable[Head], kind: str = "zero", means: Means | None = None
) -> Iterator[HookedRootModule]:
    """``with ablate_heads(model, [(layer, head), ...]):`` every forward inside has those heads ablated."""
    with model.hooks(head_ablation_hooks(heads, kind, means)):
        yield model


@contextmanager
def ablate_mlps(
    model: HookedRootModule, layers: Iterable[int], kind: str = "zero", means: Means | None = None
) -> Iterator[HookedRootModule]:
    """``with ablate_mlps(model, [layer, ...]):`` every forward inside runs with those MLPs ablated."""
    with model.hooks(mlp_ablation_hooks(layers, kind, means)):
        yield model
