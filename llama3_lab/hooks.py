"""The root module: hook names from the module tree, hook registration, and caching activations.

Everything here builds on the model's ``HookPoint`` modules and their two kinds of hooks
(``hook_points.py``):

- ``model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])`` and ``with model.hooks(fwd_hooks=...):``
  run user functions ``fn(tensor, hook) -> tensor | None`` (returning a tensor replaces it);
- ``model.run_with_cache(tokens, names_filter=...)`` returns ``(logits, ActivationCache)``
  (``activation_cache.py``), after checking the cache fits its memory budget (``memory.py``);
- ``model.estimate_cache_bytes(...)`` predicts the cache's size from each hook point's shape letters
  before anything is allocated.

Hooks added by ``hooks()``, ``run_with_hooks`` and ``run_with_cache`` are *context hooks*: only the
thread that added them sees them (two threads may run different hooks on one model at once, and a
thread with none runs the plain model), and they are removed when the run or the ``with`` block ends,
also when a hook raises or the user interrupts: nothing leaks into the next run. ``add_hook`` is the
exception: a permanent module hook that every thread sees until ``reset_hooks()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .activation_cache import ActivationCache, PosSlice, _normalize_pos_slice, _slice_positions
from .hook_points import (
    HookFn,
    HookPoint,
    checked_replacement,
    clear_context_hooks,
    context_hooks,
    get_act_name,
    hooked_names,
    nothing_selected_error,
    unknown_hook_error,
)
from .memory import check_cache_budget, estimate_cache
from .tokens import TokenBatch, TokensLike, model_input, to_str_tokens, to_token_batch, to_tokens

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
        Unknown names raise ``HookNameError`` with the closest valid names, and so does a filter that
        selects nothing (an empty list, a function false for every name): it would silently do nothing.
        """
        if names_filter is None:
            return self.hook_names()
        if callable(names_filter):
            selected = [name for name in self.hook_dict if names_filter(name)]
        else:
            if isinstance(names_filter, (str, tuple)):
                names_filter = [names_filter]
            wanted = {self._check_name(name) for name in names_filter}
            selected = [name for name in self.hook_dict if name in wanted]  # forward order
        if not selected:
            raise nothing_selected_error(names_filter, self.hook_names())
        return selected

    def _check_name(self, name: str | tuple) -> str:
        full = get_act_name(*name) if isinstance(name, tuple) else name
        if full not in self.hook_dict:
            raise unknown_hook_error(full, self.hook_names())
        return full

    # -- tokens -------------------------------------------------------------------------------------
    def to_tokens(self, x: TokensLike, *, prepend_bos: bool | None = None) -> torch.Tensor:
        """``[B, P]`` token ids on the model's device; see ``llama3_lab.tokens.to_tokens``.

        ``prepend_bos=None`` follows the tokenizer (``tokenizer.add_bos``: Llama 3 yes, SmolLM2 no)."""
        return to_tokens(self, x, prepend_bos=prepend_bos)

    def to_token_batch(
        self, xs: Any, *, padding_side: str = "right", prepend_bos: bool | None = None
    ) -> TokenBatch:
        """Prompts of different lengths as a padded ``TokenBatch`` (``llama3_lab.tokens.to_token_batch``)."""
        return to_token_batch(self, xs, padding_side=padding_side, prepend_bos=prepend_bos)

    def to_str_tokens(self, x: TokensLike, *, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        """Readable token strings for text or ids: BOS is the first string when the encoding adds it."""
        return to_str_tokens(self, x, prepend_bos=prepend_bos)

    # -- hooks --------------------------------------------------------------------------------------
    def add_hook(
        self, name: str | Callable[[str], bool], fn: HookFn
    ) -> list[torch.utils.hooks.RemovableHandle]:
        """Register ``fn(tensor, hook) -> tensor | None`` on every hook point ``name`` selects, until
        the handles are removed (or ``reset_hooks()``). Prefer ``with model.hooks(...)``: it cleans up.

        A permanent hook is state of the model: **every thread** sees it (a PyTorch forward hook on the
        hook point), and it runs before the context hooks of ``hooks()``/``run_with_cache``, so a cache
        sees what it made of a tensor. Its replacements are checked like any other hook's.
        """
        handles = []
        for hook_name in self.resolve_names(name):
            point = self.hook_dict[hook_name]
            handles.append(point.register_forward_hook(_forward_hook(fn)))
        return handles

    def reset_hooks(self) -> None:
        """Remove every module hook from every hook point (``add_hook``'s, PyTorch's own
        ``register_forward_hook``'s) and this thread's context hooks (other threads keep theirs).

        A spliced SAE is part of the model, not a hook: it stays until ``detach_sae`` (its pre-hooks are
        marked ``splice``)."""
        for point in self.hook_dict.values():
            point._forward_hooks.clear()
            for key, fn in list(point._forward_pre_hooks.items()):
                if not getattr(fn, "splice", False):
                    del point._forward_pre_hooks[key]
        clear_context_hooks(self.hook_dict.values())

    def hooked_names(self) -> list[str]:
        """Names of the hook points that something this thread runs would see (``[]``: the plain model)."""
        return hooked_names(self.hook_dict)

    @contextmanager
    def hooks(
        self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()
    ) -> Iterator[HookedRootModule]:
        """``with model.hooks(fwd_hooks=[(name_or_filter, fn)]):`` runs ``fn`` in every forward inside.

        ``fn(tensor, hook)`` may return a tensor to replace the activation (same shape, dtype and
        device: ``HookReturnError`` otherwise), or None. Only this thread sees the hooks (other threads'
        forwards run without them). Every name is checked before anything is registered, and all hooks
        are removed on exit, also when a hook raises or the user interrupts.
        """
        resolved = [(self.resolve_names(names), fn) for names, fn in fwd_hooks]  # all checked first
        with context_hooks((self.hook_dict[name], fn) for names, fn in resolved for name in names):
            yield self

    def run_with_hooks(
        self,
        tokens: TokensLike,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        padding_side: str = "right",
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **forward_kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``[B, P, V]`` of one forward with ``fwd_hooks`` in place (removed afterwards).

        Prompts of different lengths are padded on ``padding_side`` and masked (hooks see the padded
        ``[B, P, ...]`` tensors; what sits at a pad is meaningless). ``bwd_hooks=[(name, fn(grad, hook))]``
        (TransformerLens's spelling) run on the gradients of ``metric(logits)`` (a scalar, required with
        them), computed inside this call: see ``llama3_lab.gradients.backward_hooks``."""
        inputs = model_input(self, tokens, padding_side=padding_side)
        if not bwd_hooks:
            with self.hooks(fwd_hooks):
                return self(inputs, **forward_kwargs)
        if metric is None:
            raise ValueError(
                "bwd_hooks run on the gradient of a metric: pass metric=lambda logits: ... (one number, e.g. "
                "a logit difference averaged over the batch); the backward pass runs inside this call."
            )
        from .gradients import backward_hooks

        with backward_hooks(self, bwd_hooks), self.hooks(fwd_hooks):
            logits = self(inputs, **forward_kwargs)
            metric(logits).backward()
        return logits.detach()

    # -- caching ------------------------------------------------------------------------------------
    def run_with_cache(
        self,
        tokens: TokensLike,
        names_filter: NamesFilter = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        pos_slice: PosSlice = None,
        budget_bytes: int | None = None,
        padding_side: str = "right",
        incl_bwd: bool = False,
        metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **forward_kwargs: Any,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """``(logits [B, P, V], ActivationCache)`` for one forward.

        ``incl_bwd=True, metric=fn`` (TransformerLens's spelling) also keeps d metric / d activation under
        ``"<name>_grad"`` for every selected name, from one backward pass (the budget counts both; see
        ``llama3_lab.gradients.run_with_cache_and_grads``).

        ``names_filter``: which hook points to keep (None: all; a name; a list; ``name -> bool``).
        ``device``/``dtype``: where and how to keep them; the copy happens inside each hook, so memory
        on the model's device does not grow. The default device is the model's, except for a model
        placed over several devices (``model.placement``): there the cache goes to the CPU, one place
        that holds every layer's activations whichever GPU computed them. ``pos_slice``: positions to
        keep (int, slice, or indices; an int keeps the axis with length 1; attention patterns keep every
        key position).
        ``budget_bytes``: refuse (``MemoryBudgetError``) if the estimate exceeds it; default
        ``model.cache_budget_bytes`` or the target device's free memory less a margin.
        Tensors are stored detached and not copied unless ``device``/``dtype``/``pos_slice`` ask for it.

        Prompts of different lengths (texts, chats, id lists, a ``TokenBatch``) are padded on
        ``padding_side`` (``"right"``: column i is every row's token i) and masked; the cache keeps the
        ``mask`` and ``positions``, and ``cache.real(name)`` / ``cache.last(name)`` read each row's real
        tokens without index arithmetic.
        """
        if incl_bwd:
            if forward_kwargs:
                raise ValueError(
                    f"incl_bwd=True runs one plain forward and backward; {sorted(forward_kwargs)} cannot be "
                    "passed with it (run the gradient cache without a KV cache or start position)."
                )
            return self._run_with_cache_and_grads(
                tokens, metric, names_filter, device=device, dtype=dtype, pos_slice=pos_slice,
                budget_bytes=budget_bytes, padding_side=padding_side,
            )  # fmt: skip
        inputs = model_input(self, tokens, padding_side=padding_side)
        ids = inputs.ids if isinstance(inputs, TokenBatch) else inputs
        mask = inputs.mask if isinstance(inputs, TokenBatch) else forward_kwargs.get("attention_mask")
        positions = inputs.positions if isinstance(inputs, TokenBatch) else forward_kwargs.get("positions")
        names = self.resolve_names(names_filter)
        pos = _normalize_pos_slice(pos_slice)
        if device is None and spread_over_devices(self):
            device = "cpu"
        target = torch.device(device) if device is not None else ids.device  # the model's device
        past = forward_kwargs.get("start_pos") or getattr(forward_kwargs.get("cache"), "length", 0)
        batch, n_positions = ids.shape
        estimate = estimate_cache(self, names, n_positions, batch, dtype, pos, past_length=past)
        check_cache_budget(self, estimate, target, budget_bytes)

        store: dict[str, torch.Tensor] = {}
        savers = [(self.hook_dict[name], _save_hook(store, device, dtype, pos)) for name in names]
        with context_hooks(savers):
            logits = self(inputs, **forward_kwargs)
        shapes = {name: self.hook_dict[name].shape for name in store}
        if mask is not None:
            mask = torch.as_tensor(mask, device=ids.device).reshape(ids.shape).bool()
        cache = ActivationCache(
            store,
            self,
            shapes,
            tokens=ids,
            pos_slice=pos,
            start_position=past,
            mask=mask,
            positions=positions,
        )
        return logits, cache

    def _run_with_cache_and_grads(
        self, tokens: TokensLike, metric: Any, names_filter: NamesFilter, **options: Any
    ) -> tuple[torch.Tensor, ActivationCache]:
        from .gradients import run_with_cache_and_grads

        if metric is None:
            raise ValueError(
                "incl_bwd=True caches gradients of a metric: pass metric=lambda logits: ... (one number)."
            )
        _, acts, grads, logits = run_with_cache_and_grads(
            self, tokens, metric, names_filter, **options, return_logits=True
        )
        store = {**dict(acts.items()), **{f"{name}_grad": grad for name, grad in grads.items()}}
        shapes = {**acts.shapes, **{f"{name}_grad": shape for name, shape in grads.shapes.items()}}
        cache = ActivationCache(
            store,
            self,
            shapes,
            tokens=acts.tokens,
            pos_slice=acts.pos_slice,
            mask=acts.mask,
            positions=acts.positions,
        )
        return logits, cache

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
            inputs = model_input(self, tokens_or_length)
            ids = inputs.ids if isinstance(inputs, TokenBatch) else inputs
            batch, n_positions = ids.shape  # a padded batch holds B × (longest row) positions
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


def spread_over_devices(model: nn.Module) -> bool:
    """Whether ``model`` was dispatched over several devices (``placement.dispatch``: GPUs, CPU, disk)."""
    plan = getattr(model, "placement", None)
    return plan is not None and len(plan.devices) > 1


def _forward_hook(fn: HookFn) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor | None]:
    """Adapt a TransformerLens-style ``fn(tensor, hook)`` to PyTorch's ``(module, args, output)``,
    checking a replacement as a context hook's is checked (the error then names ``fn``)."""

    def hook(module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
        returned = fn(output, module)  # type: ignore[arg-type]
        return None if returned is None else checked_replacement(module, output, returned, fn)  # type: ignore[arg-type]

    return hook


def _save_hook(
    store: dict[str, torch.Tensor],
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    pos: slice | torch.Tensor | None,
) -> HookFn:
    """A hook that keeps a detached reference (copying only to slice, move or cast)."""
    if pos is None and device is None and dtype is None:

        def save(output: torch.Tensor, point: HookPoint) -> None:
            store[point.name] = output.detach()

    else:

        def save(output: torch.Tensor, point: HookPoint) -> None:
            tensor = _slice_positions(output.detach(), point.shape, pos)
            tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
            if pos is not None and tensor.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
                tensor = tensor.clone()  # a view of a few positions would keep the whole tensor alive
            store[point.name] = tensor

    return save
