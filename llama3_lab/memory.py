"""How much an activation cache will hold, before anything is allocated, and the budget it must fit.

Every hook point carries its shape letters (``"B H Pq Pk"``) and dtype, so a cache's size is a sum of
products over the config's sizes: ``estimate_cache`` computes it per hook point. ``check_cache_budget``
is the one check every caching path makes before running (``run_with_cache``, and
``fast.run_with_cache_offloaded``): over the budget, it raises ``MemoryBudgetError`` naming the biggest
contributors and the ways out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .activation_cache import _kept_positions
from .allocator import keep_freed, kept_bytes
from .units import format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .config import LlamaConfig


class MemoryBudgetError(MemoryError):
    """A cache that would not fit in its memory budget. Carries the estimate and the budget."""

    def __init__(self, message: str, estimate_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.estimate_bytes = estimate_bytes
        self.budget_bytes = budget_bytes


# --------------------------------------------------------------------------------------------------
# The estimate: numel from the shape letters, element size from the hook point's dtype


@dataclass
class CacheEstimate:
    """Bytes per hook name of a cache that has not been taken yet."""

    per_name: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.per_name.values())

    def by_kind(self) -> list[tuple[str, int]]:
        """``(hook kind, bytes)`` summed over layers (``blocks.*.attn.hook_pattern``), biggest first."""
        kinds: dict[str, int] = {}
        for name, n in self.per_name.items():
            kind = re.sub(r"^blocks\.\d+\.", "blocks.*.", name)
            kinds[kind] = kinds.get(kind, 0) + n
        return sorted(kinds.items(), key=lambda kv: -kv[1])


def estimate_cache(
    model: nn.Module,
    names: Sequence[str],
    n_positions: int,
    batch: int = 1,
    dtype: torch.dtype | None = None,
    pos: slice | torch.Tensor | None = None,
    past_length: int = 0,
) -> CacheEstimate:
    """What caching ``names`` of ``model`` (a ``HookedRootModule``: ``hook_dict`` and ``cfg``) for
    ``batch × n_positions`` tokens would hold, per hook name.

    ``pos``: the kept positions (a normalized ``pos_slice``); ``past_length``: KV-cache positions
    before this forward (key positions = past + P). Each tensor counts in ``dtype`` if given, else in
    the dtype its hook point says it has in this model (``HookPoint.tensor_dtype``: RoPE tables
    float32; RMS scales at least float32, float64 in a float64 model; the rest the model's dtype).
    """
    sizes = axis_sizes(model.cfg, batch, _kept_positions(pos, n_positions), past_length + n_positions)
    model_dtype = _dtype_of(model)
    per_name = {}
    for name in names:
        point = model.hook_dict[name]
        numel = math.prod(_axis_size(letter, sizes, name, point.shape) for letter in point.shape.split())
        per_name[name] = numel * (dtype or point.tensor_dtype(model_dtype)).itemsize
    return CacheEstimate(per_name)


def axis_sizes(cfg: LlamaConfig, batch: int, kept_positions: int, key_positions: int) -> dict[str, int]:
    """The size of each shape letter (TransformerLens convention) for one forward."""
    return {
        "B": batch,
        "P": kept_positions,
        "Pq": kept_positions,
        "Pk": key_positions,
        "H": cfg.num_attention_heads,
        "K": cfg.num_key_value_heads,
        "G": cfg.num_attention_heads // cfg.num_key_value_heads,
        "d": cfg.head_dim,
        "D": cfg.hidden_size,
        "M": cfg.intermediate_size,
        "V": cfg.vocab_size,
    }


def _axis_size(letter: str, sizes: dict[str, int], name: str, shape: str) -> int:
    if letter.isdigit():
        return int(letter)
    if letter not in sizes:
        raise ValueError(
            f"Hook point {name} has shape {shape!r} with an axis letter {letter!r} I cannot size."
        )
    return sizes[letter]


def _dtype_of(module: nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


# --------------------------------------------------------------------------------------------------
# The budget


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: on CPU ``psutil``'s available RAM plus the freed memory malloc keeps for
    the next cache (``allocator.kept_bytes``); ``torch.cuda.mem_get_info`` on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    import psutil

    return int(psutil.virtual_memory().available) + kept_bytes()


def cache_budget(model: nn.Module, budget_bytes: int | None, device: torch.device | str) -> int:
    """Bytes a cache on ``device`` may hold: ``budget_bytes``, else ``model.cache_budget_bytes``, else
    ``model.cache_budget_fraction`` of the device's free memory (the forward itself needs the rest)."""
    if budget_bytes is not None:
        return int(budget_bytes)
    if model.cache_budget_bytes is not None:
        return int(model.cache_budget_bytes)
    return int(model.cache_budget_fraction * free_memory_bytes(device))


def check_cache_budget(
    model: nn.Module,
    estimate: CacheEstimate,
    device: torch.device | str,
    budget_bytes: int | None = None,
) -> None:
    """Raise ``MemoryBudgetError`` (biggest contributors, ways out) if ``estimate`` is over the budget.

    A cache that fits, on the CPU, lets malloc keep its freed memory for the next one
    (``allocator.keep_freed``, twice its size: the next cache then reuses these pages instead of fresh
    ones the kernel must zero first)."""
    budget = cache_budget(model, budget_bytes, device)
    if estimate.total > budget:
        message = _budget_message(estimate, budget, torch.device(device))
        raise MemoryBudgetError(message, estimate.total, budget)
    if torch.device(device).type == "cpu":
        keep_freed(estimate.total)


def _budget_message(estimate: CacheEstimate, budget: int, device: torch.device) -> str:
    top = estimate.by_kind()[:5]
    rows = "\n".join(f"    {kind:<32} {format_bytes(n):>10}" for kind, n in top)
    return (
        f"This cache would hold about {format_bytes(estimate.total)}, over the budget of "
        f"{format_bytes(budget)} on {device}.\nBiggest contributors:\n{rows}\n"
        "Ways out: a names_filter that keeps only what you need (e.g. names_filter=lambda n: "
        "'resid_post' in n); fewer layers; device='cpu' to keep the cache in RAM; a shorter prompt; "
        "pos_slice=-1 to keep only the last position; cache.pattern(layer) recomputes a pattern from "
        "rot_q/rot_k instead of caching every pattern; or raise the budget with budget_bytes=... or "
        "model.cache_budget_bytes = ...."
    )
