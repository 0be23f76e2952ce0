"""Attribution patching: activation patching's linear approximation, every component in one backward pass.

Activation patching pastes one clean activation into the corrupted run and measures the metric; that is one
forward per component. To first order the same effect is

    metric(corrupted with a ← a_clean) − metric(corrupted)  ≈  (a_clean − a_corrupted) · ∂metric/∂a |corrupted

so one clean forward, one corrupted forward and one backward give it for every component at once
(Nanda 2023, "Attribution patching"). The sign convention is ``patching.patch_resid``'s: positive means
pasting the clean activation raises the metric. Components:

- ``resid``   [L, P]: the residual stream into each layer (``hook_resid_pre``) at each position;
- ``heads``   [L, H]: each attention head's output ``hook_z`` (summed over positions);
  ``heads_by_position`` [L, P, H];
- ``neurons`` [L, M]: each MLP neuron ``mlp.hook_post`` (summed over positions).

Pairs are aligned position by position (each clean row as long as its corrupted row; a ragged batch is
padded alike). The metric is one number (e.g. a mean over the batch), so an estimate is the change of that
number when the component is patched in every row, as ``patch_resid`` measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import reduce

from ..gradients import Metric, run_with_cache_and_grads
from ..hook_points import get_act_name
from ..hooks import HookedRootModule
from ..tokens import TokensLike
from .patching import _patch_pairs

COMPONENTS = ("resid", "heads", "neurons")


@dataclass(frozen=True)
class AttributionPatching:
    """Estimated patching effects; ``axes`` names each tensor's axes (``"layer"``, ``"position"``, ...)."""

    resid: torch.Tensor | None  # [L, P]
    heads: torch.Tensor | None  # [L, H]
    heads_by_position: torch.Tensor | None  # [L, P, H]
    neurons: torch.Tensor | None  # [L, M]
    clean_metric: float
    corrupted_metric: float

    axes = {
        "resid": ("layer", "position"),
        "heads": ("layer", "head"),
        "heads_by_position": ("layer", "position", "head"),
        "neurons": ("layer", "neuron"),
    }

    def normalized(self, component: str) -> torch.Tensor:
        """The estimate as a fraction of the clean − corrupted gap (1 = restores the clean metric)."""
        return getattr(self, component) / (self.clean_metric - self.corrupted_metric)


def attribution_patching(
    model: HookedRootModule,
    clean: TokensLike,
    corrupted: TokensLike,
    metric: Metric,
    components: tuple[str, ...] = ("resid", "heads"),
) -> AttributionPatching:
    """Attribution-patching estimates for ``components`` (of ``COMPONENTS``): 2 forwards and 1 backward."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}: choose from {COMPONENTS}.")
    clean_ids, corrupted_ids, _ = _patch_pairs(model, clean, corrupted, None)  # rows of equal lengths
    layers = range(model.cfg.num_hidden_layers)  # type: ignore[attr-defined]
    acts = {"resid": "resid_pre", "heads": "z", "neurons": "post"}
    names = [get_act_name(acts[c], layer) for c in components for layer in layers]

    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_ids, names_filter=names)
    corrupted_value, corrupted_cache, grads = run_with_cache_and_grads(
        model, corrupted_ids, metric, names_filter=names
    )

    def effect(act: str, layer: int) -> torch.Tensor:
        name = get_act_name(act, layer)
        return (clean_cache[name].float() - corrupted_cache[name].float()) * grads[name].float()

    results: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("resid", "heads", "heads_by_position", "neurons")
    )
    if "resid" in components:
        per_layer = [effect("resid_pre", layer) for layer in layers]  # each [B P D]
        results["resid"] = torch.stack([reduce(e, "b p d -> p", "sum") for e in per_layer])
    if "heads" in components:
        per_layer = [effect("z", layer) for layer in layers]  # each [B P H d]
        by_position = torch.stack([reduce(e, "b p h d -> p h", "sum") for e in per_layer])
        results["heads_by_position"] = by_position
        results["heads"] = by_position.sum(dim=1)
    if "neurons" in components:
        per_layer = [effect("post", layer) for layer in layers]  # each [B P M]
        results["neurons"] = torch.stack([reduce(e, "b p m -> m", "sum") for e in per_layer])
    return AttributionPatching(
        **results,
        clean_metric=float(metric(clean_logits)),
        corrupted_metric=float(corrupted_value),
    )
