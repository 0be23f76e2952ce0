"""The root module: hook names from the module tree, hook registration, and caching activations.

Everything here builds on PyTorch forward hooks registered on the model's ``HookPoint`` modules
(``hook_points.py``):

- ``model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])`` and ``with model.hooks(fwd_hooks=...):``
  run user functions ``fn(tensor, hook) -> tensor | None`` (returning a tensor replaces it);
- ``model.run_with_cache(tokens, names_filter=...)`` returns ``(logits, ActivationCache)``
  (``activation_cache.py``), after checking the cache fits its memory budget (``memory.py``);
- ``model.estimate_cache_bytes(...)`` predicts the cache's size from each hook point's shape letters
  before anything is allocated.

Hooks are always removed when the run or the ``with`` block ends, also when a hook raises or the
user interrupts: nothing leaks into the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .activation_cache import ActivationCache, PosSlice, _normalize_pos_slice, _slice_positions
from .hook_points import HookFn, HookPoint, get_act_name, unknown_hook_error
from .memory import check_cache_budget, estimate_cache
from .tokens import TokensLike, to_str_tokens, to_tokens

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


class HookedRootModule(nn.Module):
    """Base for a model whose hook points are named by the module tree.

    Call ``setup_hooks()`` at the end of ``__init__``. Subclasses provide ``forward(tokens, **kw)``,
    ``cfg`` (for the memory estimate) and optionally ``tokenizer`` and ``attention_pattern``.
    ``cache_budget_bytes`` (None: free memory of the target device less a margin) caps what
    ``run_with_cache`` may allocate.
    """

    hook_dict: dict[str, HookPoint]
    cache_budget_bytes: int | None = None
    #: fraction of free memory the default budget allows (the forward itself needs the rest).
    cache_budget_fraction: float = 0.8

    def setup_hooks(self) -> None:
        self.rescan_hook_points()

    def rescan_hook_points(self) -> None:
        """Rebuild ``hook_dict`` (and each point's ``name``) from the module tree. ``setup_hooks`` calls it;
        call it again after adding or removing a module that holds hook points (an SAE spliced in)."""
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_names(self) -> list[str]:
        """Every hook point's name, in module-tree order (the forward order, except that the RoPE tables
        ``rope.hook_cos``/``hook_sin`` are computed just before ``hook_embed``)."""
        return list(self.hook_dict)

    def hook_catalogue(self) -> list[dict[str, str]]:
        """``{"name", "shape", "meaning"}`` for every hook point, in forward order."""
        return [{"name": n, "shape": hp.shape, "meaning": hp.meaning} for n, hp in self.hook_dict.items()]

    # -- names --------------------------------------------------------------------------------------
    def resolve_names(self, names_filter: NamesFilter) -> list[str]:
        """The hook names a filter selects: None (all), a name, a list of names, or ``name -> bool``.

        A name may be full (``"blocks.0.hook_resid_post"``) or a short ``(name, layer[, sub])`` tuple.
        Unknown names raise ``HookNameError`` with the closest valid names.
        """
        if names_filter is None:
            return self.hook_names()
        if callable(names_filter):
            return [name for name in self.hook_dict if names_filter(name)]
        if isinstance(names_filter, (str, tuple)):
            names_filter = [names_filter]
        wanted = [self._check_name(name) for name in names_filter]
        wanted_set = set(wanted)
        return [name for name in self.hook_dict if name in wanted_set]  # forward order

    def _check_name(self, name: str | tuple) -> str:
        full = get_act_name(*name) if isinstance(name, tuple) else name
        if full not in self.hook_dict:
            raise unknown_hook_error(full, self.hook_names())
        return full

    # -- tokens -------------------------------------------------------------------------------------
    def to_tokens(self, x: TokensLike, *, prepend_bos: bool = True) -> torch.Tensor:
        """``[B, P]`` token ids on the model's device; see ``llama3_lab.tokens.to_tokens``."""
        return to_tokens(self, x, prepend_bos=prepend_bos)

    def to_str_tokens(self, x: TokensLike, *, prepend_bos: bool = True) -> list[str] | list[list[str]]:
        """Readable token strings for text or ids."""
        return to_str_tokens(self, x, prepend_bos=prepend_bos)

    # -- hooks --------------------------------------------------------------------------------------
    def add_hook(
        self, name: str | Callable[[str], bool], fn: HookFn
    ) -> list[torch.utils.hooks.RemovableHandle]:
        """Register ``fn(tensor, hook) -> tensor | None`` on every hook point ``name`` selects, until
        the handles are removed (or ``reset_hooks()``). Prefer ``with model.hooks(...)``: it cleans up."""
        handles = []
        for hook_name in self.resolve_names(name):
            point = self.hook_dict[hook_name]
            handles.append(point.register_forward_hook(_forward_hook(fn)))
        return handles

    def reset_hooks(self) -> None:
        """Remove every forward hook from every hook point (including ones added with ``add_hook``)."""
        for point in self.hook_dict.values():
            point._forward_hooks.clear()

    @contextmanager
    def hooks(
        self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()
    ) -> Iterator[HookedRootModule]:
        """``with model.hooks(fwd_hooks=[(name_or_filter, fn)]):`` runs ``fn`` in every forward inside.

        ``fn(tensor, hook)`` may return a tensor to replace the activation (same shape), or None. Every
        name is checked before anything is registered, and all hooks are removed on exit, also when a
        hook raises or the user interrupts.
        """
        resolved = [(self.resolve_names(name), fn) for name, fn in fwd_hooks]
        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            for names, fn in resolved:
                hook = _forward_hook(fn)
                handles += [self.hook_dict[name].register_forward_hook(hook) for name in names]
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(
        self,
        tokens: TokensLike,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        **forward_kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``[B, P, V]`` of one forward with ``fwd_hooks`` in place (removed afterwards)."""
        with self.hooks(fwd_hooks):
            return self(self.to_tokens(tokens), **forward_kwargs)

    # -- caching ------------------------------------------------------------------------------------
    def run_with_cache(
        self,
        tokens: TokensLike,
        names_filter: NamesFilter = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        pos_slice: PosSlice = None,
        budget_bytes: int | None = None,
        **forward_kwargs: Any,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """``(logits [B, P, V], ActivationCache)`` for one forward.

        ``names_filter``: which hook points to keep (None: all; a name; a list; ``name -> bool``).
        ``device``/``dtype``: where and how to keep them; the copy happens inside each hook, so memory
        on the model's device does not grow. ``pos_slice``: positions to keep (int, slice, or indices;
        an int keeps the axis with length 1; attention patterns keep every key position).
        ``budget_bytes``: refuse (``MemoryBudgetError``) if the estimate exceeds it; default
        ``model.cache_budget_bytes`` or the target device's free memory less a margin.
        Tensors are stored detached and not copied unless ``device``/``dtype``/``pos_slice`` ask for it.
        """
        ids = self.to_tokens(tokens)
        names = self.resolve_names(names_filter)
        pos = _normalize_pos_slice(pos_slice)
        target = torch.device(device) if device is not None else ids.device  # the model's device
        past = forward_kwargs.get("start_pos") or getattr(forward_kwargs.get("cache"), "length", 0)
        batch, n_positions = ids.shape
        estimate = estimate_cache(self, names, n_positions, batch, dtype, pos, past_length=past)
        check_cache_budget(self, estimate, target, budget_bytes)

        store: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name in names:
                point = self.hook_dict[name]
                save = _save_hook(store, name, point.shape, device, dtype, pos)
                handles.append(point.register_forward_hook(save))
            logits = self(ids, **forward_kwargs)
        finally:
            for handle in handles:
                handle.remove()
        shapes = {name: self.hook_dict[name].shape for name in store}
        return logits, ActivationCache(store, self, shapes, tokens=ids, pos_slice=pos, start_position=past)

    # -- memory -------------------------------------------------------------------------------------
    def estimate_cache_bytes(
        self,
        tokens_or_length: TokensLike | int,
        names_filter: NamesFilter = None,
        batch: int = 1,
        dtype: torch.dtype | None = None,
        pos_slice: PosSlice = None,
        past_length: int = 0,
    ) -> int:
        """Bytes ``run_with_cache`` would hold for these tokens (or this many positions), before running.

        Computed from each hook point's shape letters and the config (B, P, H, K, d, D, M, V...); RMS
        scales and RoPE tables count as float32, everything else in ``dtype`` or the model's dtype.
        ``past_length`` is the KV-cache length before this forward (key positions = past + P).
        """
        if isinstance(tokens_or_length, int):
            n_positions = tokens_or_length
        else:
            ids = self.to_tokens(tokens_or_length)
            batch, n_positions = ids.shape
        names = self.resolve_names(names_filter)
        pos = _normalize_pos_slice(pos_slice)
        return estimate_cache(self, names, n_positions, batch, dtype, pos, past_length).total

    def estimate_cache_table(
        self,
        n_positions: int,
        names_filter: NamesFilter = None,
        batch: int = 1,
        dtype: torch.dtype | None = None,
    ) -> list[tuple[str, int]]:
        """``(hook kind, bytes)`` summed over layers, biggest first: where a cache's memory goes."""
        return estimate_cache(self, self.resolve_names(names_filter), n_positions, batch, dtype).by_kind()


def _forward_hook(fn: HookFn) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor | None]:
    """Adapt a TransformerLens-style ``fn(tensor, hook)`` to PyTorch's ``(module, args, output)``."""

    def hook(module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output, module)  # type: ignore[arg-type]

    return hook


def _save_hook(
    store: dict[str, torch.Tensor],
    name: str,
    shape: str,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    pos: slice | torch.Tensor | None,
) -> Callable[[nn.Module, Any, torch.Tensor], None]:
    """A forward hook that keeps a detached reference (copying only to slice, move or cast)."""
    if pos is None and device is None and dtype is None:

        def save(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            store[name] = output.detach()

    else:

        def save(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            tensor = _slice_positions(output.detach(), shape, pos)
            tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
            if pos is not None and tensor.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
                tensor = tensor.clone()  # a view of a few positions would keep the whole tensor alive
            store[name] = tensor

    return save
