"""The residual stream read through the unembedding: final norm, logit lens, accumulated and decomposed
residuals.

The residual after layer l is ``resid_post[l]``; the model's logits are
``unembed(ln_final(resid_post[L-1]))``. The logit lens applies the same two steps to every layer's
residual, with the final norm's RMS recomputed from *that* residual: reusing the last layer's cached
scale for every layer (a known bug elsewhere) mis-scales the early layers, whose residuals are smaller.

``pos`` everywhere: None (all), an int, a slice, a list of columns, or ``"last"`` (each row's last real
token). On a cache of a padded batch a column that is padding in some row is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..activation_cache import ActivationCache
from ..hooks import HookedRootModule

Positions = int | slice | Sequence[int] | str | None


def _select_positions(cache: ActivationCache, rows: torch.Tensor, pos: Positions) -> torch.Tensor:
    """``rows [C, B, P, D]`` at positions ``pos`` (an int keeps the axis with length 1; ``"last"`` is each
    row's last real token), refusing pads of a padded batch (``ActivationCache.at``)."""
    return cache.at(rows, pos, shape="C B P D")


def apply_final_norm(model: HookedRootModule, resid: torch.Tensor) -> torch.Tensor:
    """``[..., D]``: ``ln_final`` applied to ``resid``, its RMS computed from ``resid`` itself."""
    return model.ln_final(resid)  # type: ignore[attr-defined]


def unembed(model: HookedRootModule, resid: torch.Tensor) -> torch.Tensor:
    """``[..., V]``: the logits the model would produce if ``resid [..., D]`` were its final residual."""
    return model.unembed(apply_final_norm(model, resid))  # type: ignore[attr-defined]


def accumulated_resid(
    cache: ActivationCache, incl_mid: bool = False, pos: Positions = None
) -> tuple[torch.Tensor, list[str]]:
    """``([C, B, P, D], labels)``: the residual stream as it grows, layer by layer.

    Rows: the residual into each layer (``resid_pre`` 0..L-1; row 0 is the embedding), optionally the
    mid-layer residual after each attention (``incl_mid``), and finally ``resid_post`` of the last layer.
    ``pos`` keeps some positions.
    """
    rows, labels = [], []
    for layer in range(cache.n_layers):
        rows.append(cache["resid_pre", layer])
        labels.append(f"{layer}_pre")
        if incl_mid:
            rows.append(cache["resid_mid", layer])
            labels.append(f"{layer}_mid")
    rows.append(cache["resid_post", cache.n_layers - 1])
    labels.append("final_post")
    return _select_positions(cache, torch.stack(rows), pos), labels


def decompose_resid(cache: ActivationCache, pos: Positions = None) -> tuple[torch.Tensor, list[str]]:
    """``([1 + 2L, B, P, D], labels)``: the final residual split into what wrote it.

    Rows: the token embedding, then each layer's ``attn_out`` and ``mlp_out``. They sum to
    ``resid_post`` of the last layer (the residual stream is only ever added to).
    """
    rows, labels = [cache["embed"]], ["embed"]
    for layer in range(cache.n_layers):
        rows += [cache["attn_out", layer], cache["mlp_out", layer]]
        labels += [f"{layer}_attn_out", f"{layer}_mlp_out"]
    return _select_positions(cache, torch.stack(rows), pos), labels


def logit_lens(model: HookedRootModule, cache: ActivationCache, pos: Positions = None) -> torch.Tensor:
    """``[L, B, P, V]``: logits read from each layer's ``resid_post``, final norm recomputed per layer.

    The last row equals the model's logits. ``pos`` keeps some positions: the full tensor is
    L·B·P·V floats (30 layers × 128 positions × 49,152 tokens is 755 MB), so pass ``pos=-1`` to read only
    the prediction for the next token.
    """
    resid = _select_positions(cache, cache.stack("resid_post"), pos)
    with torch.no_grad():
        return unembed(model, resid)
