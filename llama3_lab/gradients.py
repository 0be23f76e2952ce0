"""Gradients at hook points: backward hooks and gradient caches, with the weights frozen.

The loaded model's parameters never require grad, so nothing in a forward does either. To differentiate a
metric with respect to activations, the token embeddings ``hook_embed`` [B P D] are made a leaf that requires
grad; every activation downstream then carries a gradient, and no parameter ``.grad`` is ever allocated.

- ``with backward_hooks(model, [(name, fn)]):`` runs ``fn(grad, hook) -> grad | None`` on the gradient of
  every selected hook point's tensor during backward passes of forwards inside (a returned tensor replaces
  the gradient flowing on, as TransformerLens's backward hooks do). They are tensor hooks registered by
  forward hooks through ``model.hooks``, and are removed with them on every exit path.
- ``run_with_cache_and_grads(model, tokens, metric, names_filter=...)`` returns ``(metric value, activations,
  gradients)``: two ``ActivationCache`` objects with the same names, filters, position slices and memory
  budget as ``run_with_cache`` (the estimate counts both).

Dtypes: gradients are computed by autograd in the model's dtype (float32 gives float32 gradients; a bf16
model gives bf16 gradients, rounded at every op: judge them against a float32 twin). ``dtype=`` stores the
cached tensors in another dtype. The metric must return a scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .activation_cache import ActivationCache, PosSlice, _normalize_pos_slice, _slice_positions
from .memory import CacheEstimate, check_cache_budget, estimate_cache
from .tokens import TokenBatch, TokensLike, model_input

if TYPE_CHECKING:  # pragma: no cover
    from .hook_points import HookPoint
    from .hooks import HookedRootModule, NamesFilter

GradFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
Metric = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def embeddings_require_grad(model: HookedRootModule) -> Iterator[None]:
    """Inside, ``hook_embed``'s output [B P D] is a fresh leaf that requires grad (weights stay frozen)."""

    def leaf(embeddings: torch.Tensor, hook: Any) -> torch.Tensor:
        return embeddings.detach().requires_grad_(True)

    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)]):
        yield


@contextmanager
def backward_hooks(
    model: HookedRootModule, bwd_hooks: Sequence[tuple[str | Callable[[str], bool], GradFn]]
) -> Iterator[HookedRootModule]:
    """``fn(grad, hook)`` on the gradient of each selected hook point's tensor, in every backward inside.

    Names are checked (with suggestions) before anything is registered. ``fn`` may return a tensor of the
    gradient's shape to replace it. The embeddings are made to require grad for the forwards inside.
    """
    resolved = [(model.resolve_names(name), fn) for name, fn in bwd_hooks]
    tensor_handles: list[torch.utils.hooks.RemovableHandle] = []

    def on_forward(fn: GradFn) -> Callable[[torch.Tensor, Any], None]:
        def attach(tensor: torch.Tensor, hook: Any) -> None:
            if tensor.requires_grad:
                tensor_handles.append(tensor.register_hook(lambda grad: _checked(fn(grad, hook), grad, hook)))

        return attach

    forward = [(name, on_forward(fn)) for names, fn in resolved for name in names]
    try:
        with embeddings_require_grad(model), model.hooks(fwd_hooks=forward):
            yield model
    finally:
        for handle in tensor_handles:
            handle.remove()


def _checked(result: torch.Tensor | None, grad: torch.Tensor, hook: Any) -> torch.Tensor | None:
    if result is not None and result.shape != grad.shape:
        raise ValueError(
            f"the backward hook on {hook.name} returned a gradient of shape {tuple(result.shape)}, but the "
            f"gradient there has shape {tuple(grad.shape)}: return a tensor of the same shape, or None."
        )
    return result


def run_with_cache_and_grads(
    model: HookedRootModule,
    tokens: TokensLike,
    metric: Metric,
    names_filter: NamesFilter = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    pos_slice: PosSlice = None,
    budget_bytes: int | None = None,
    return_logits: bool = False,
    padding_side: str = "right",
) -> tuple[torch.Tensor, ActivationCache, ActivationCache] | tuple[Any, ...]:
    """``(metric(logits), activations, gradients of the metric)`` at the selected hook points (and the
    logits last, with ``return_logits=True``).

    One forward and one backward. ``metric(logits [B P V]) -> scalar``; the gradients cache holds
    d metric / d activation for every name the filter selects (``names_filter`` etc. as in
    ``run_with_cache``). Both caches count against one memory budget.
    """
    inputs = model_input(model, tokens, padding_side=padding_side)  # different lengths: padded, masked
    ids = inputs.ids if isinstance(inputs, TokenBatch) else inputs
    mask = inputs.mask if isinstance(inputs, TokenBatch) else None
    positions = inputs.positions if isinstance(inputs, TokenBatch) else None
    names = model.resolve_names(names_filter)
    pos = _normalize_pos_slice(pos_slice)
    target = torch.device(device) if device is not None else model.device  # type: ignore[attr-defined]
    activations = estimate_cache(model, names, ids.shape[1], ids.shape[0], dtype, pos).per_name
    both = {**activations, **{f"{name} (gradient)": n for name, n in activations.items()}}
    check_cache_budget(model, CacheEstimate(both), target, budget_bytes)

    values: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    shapes = {name: model.hook_dict[name].shape for name in names}

    def keep(store: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> None:
        tensor = _slice_positions(tensor.detach(), shapes[name], pos)
        store[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None).clone()

    def save_value(name: str) -> Callable[[torch.Tensor, Any], None]:
        return lambda tensor, hook: keep(values, name, tensor)

    def save_grad(name: str) -> GradFn:
        def hook(grad: torch.Tensor, point: Any) -> None:
            keep(grads, name, grad)

        return hook

    with ExitStack() as stack:
        stack.enter_context(backward_hooks(model, [(name, save_grad(name)) for name in names]))
        stack.enter_context(model.hooks(fwd_hooks=[(name, save_value(name)) for name in names]))
        logits = model(inputs)
        value = metric(logits)
        if value.numel() != 1:
            raise ValueError(
                f"the metric returned a tensor of shape {tuple(value.shape)}: it must be one number (e.g. "
                "the mean over the batch) so that its gradient is defined."
            )
        if not value.requires_grad:
            raise ValueError(
                "the metric does not depend on the model's output through differentiable operations (did it "
                "call .item(), argmax or torch.no_grad?): return a tensor computed from the logits."
            )
        value.backward()
    extra = {"mask": mask, "positions": positions}
    activations_cache = ActivationCache(
        {n: values[n] for n in names if n in values}, model, shapes, tokens=ids, pos_slice=pos, **extra
    )
    # A hook point the metric does not depend on (e.g. a later position's RoPE table) gets zeros.
    gradients = {n: grads[n] if n in grads else torch.zeros_like(values[n]) for n in activations_cache.keys()}
    gradients_cache = ActivationCache(gradients, model, shapes, tokens=ids, pos_slice=pos, **extra)
    if return_logits:
        return value.detach(), activations_cache, gradients_cache, logits.detach()
    return value.detach(), activations_cache, gradients_cache
