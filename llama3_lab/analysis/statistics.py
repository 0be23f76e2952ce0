"""Effects over a dataset: per-example values, their mean and a bootstrap confidence interval.

``bootstrap_ci`` resamples the examples (the first axis) with replacement and takes the percentile interval
of the resampled means; ``normalized_effect`` is the literature's patching metric, 0 at the corrupted run and
1 at the clean one; ``patching_over_dataset`` patches each (clean, corrupted) pair on its own and summarises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..hooks import HookedRootModule
from ..tokens import TokensLike
from .patching import Metric, patch_head_z, patch_resid


@dataclass(frozen=True)
class Estimate:
    """``mean`` with its ``low``..``high`` interval at ``confidence``, each of the per-example shape."""

    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    confidence: float
    per_example: torch.Tensor  # [N, ...]


def bootstrap_ci(
    values: torch.Tensor, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Estimate:
    """Mean over the first axis and its percentile-bootstrap interval (``resamples`` resamples, seeded)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}; 0.95 is usual.")
    values = torch.as_tensor(values, dtype=torch.float64)
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 examples, got {n}.")
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty((resamples, *values.shape[1:]), dtype=torch.float64)
    for start in range(0, resamples, 1000):  # chunks keep the index tensor small
        count = min(1000, resamples - start)
        index = torch.randint(0, n, (count, n), generator=generator)
        means[start : start + count] = values[index].mean(dim=1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return Estimate(values.mean(0), low, high, confidence, values)


def normalized_effect(patched: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    """``(patched − corrupted) / (clean − corrupted)``: 0 = no effect, 1 = the clean behaviour restored."""
    gap = clean - corrupted
    if abs(gap) < 1e-9:
        raise ValueError(
            f"the clean and corrupted metrics are equal ({clean:.4g}): the corruption changes nothing, so "
            "no effect can be normalised. Choose a corruption that changes the answer."
        )
    return (patched - corrupted) / gap


def patching_over_dataset(
    model: HookedRootModule,
    pairs: Sequence[tuple[TokensLike, TokensLike]],
    metric: Metric,
    kind: str = "resid",
    confidence: float = 0.95,
) -> Estimate:
    """Normalised activation-patching effects of every (clean, corrupted) pair: ``kind="resid"`` gives
    [N, L, P] per example (pairs of one length) and ``"heads"`` [N, L, H]; the mean and bootstrap interval."""
    if kind not in ("resid", "heads"):
        raise ValueError(f"kind must be 'resid' or 'heads', got {kind!r}.")
    patch = patch_resid if kind == "resid" else patch_head_z
    effects = []
    with torch.no_grad():
        for clean, corrupted in pairs:
            clean_metric = float(metric(model(model.to_tokens(clean))))
            corrupted_metric = float(metric(model(model.to_tokens(corrupted))))
            patched = patch(model, clean, corrupted, metric)
            effects.append(normalized_effect(patched, clean_metric, corrupted_metric))
    shapes = {tuple(e.shape) for e in effects}
    if len(shapes) > 1:
        raise ValueError(
            f"the pairs give effect grids of different shapes {sorted(shapes)}: residual patching compares "
            "positions, so every pair must have the same length (or patch heads, kind='heads')."
        )
    return bootstrap_ci(torch.stack(effects), confidence)
