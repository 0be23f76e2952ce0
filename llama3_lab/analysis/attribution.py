"""Direct logit attribution: how much each component writes, directly, into a logit.

With the final norm ``ln_final(x) = w ⊙ x / s`` (s the RMS of the final residual, cached as
``ln_final.hook_scale``) the logit of token t is ``(w ⊙ W_U[t]) · x / s``. The final residual x is a sum of
components (embedding, each attention output, each MLP output; each attention output a sum over heads),
so with s held fixed the logit splits exactly into one term per component. That is the direct effect:
what a component writes straight into the logit, not what it causes later layers to write.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange

from ..activation_cache import ActivationCache
from ..hooks import HookedRootModule
from .lens import decompose_resid

Tokens = int | torch.Tensor
#: a column, or ``"last"``: each row's last real token (the same as -1 without padding)
Position = int | str


@torch.no_grad()
def logit_direction(model: HookedRootModule, token: Tokens, against: Tokens | None = None) -> torch.Tensor:
    """``[D]`` or ``[B, D]``: ``w ⊙ W_U[token]`` (minus the same for ``against``: a logit difference).

    ``token``/``against``: an id, or a LongTensor ``[B]`` of one id per batch row.
    """
    w_u, w_norm = model.unembed.weight, model.ln_final.weight  # type: ignore[attr-defined]
    token = torch.as_tensor(token, device=w_u.device)
    direction = w_u[token]
    if against is not None:
        direction = direction - w_u[torch.as_tensor(against, device=w_u.device)]
    return direction * w_norm


def _final_scale(cache: ActivationCache, pos: Position) -> torch.Tensor:
    """``[B]``: the final norm's RMS at ``pos``, from the cache (the one the model used)."""
    return cache.at("ln_final.hook_scale", pos)[:, 0, 0]


def _project(components: torch.Tensor, direction: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[..., B]``: components ``[..., B, D]`` · ``direction`` (``[D]`` or ``[B, D]``) / scale ``[B]``."""
    direction = direction.expand(components.shape[-2], -1)  # b d: one direction per batch row
    dots = einsum(components.float(), direction.float(), "... b d, b d -> ... b")
    return dots / scale


@torch.no_grad()
def direct_logit_attribution(
    model: HookedRootModule,
    cache: ActivationCache,
    token: Tokens,
    against: Tokens | None = None,
    pos: Position = "last",
) -> tuple[torch.Tensor, list[str]]:
    """``([1 + 2L, B], labels)``: each component's direct contribution to the logit of ``token`` at ``pos``.

    Rows follow ``decompose_resid``: the embedding, then per layer its attention and its MLP. With
    ``against`` the target is the logit difference ``token − against``. The rows sum to the model's
    logit (difference) exactly, up to float rounding, because the cached final-norm scale is used.
    Needs ``embed``, ``attn_out``, ``mlp_out`` and ``ln_final.hook_scale`` in the cache. ``pos``
    defaults to each row's last real token (a padded batch: ``token`` may be one id per row).
    """
    components, labels = decompose_resid(cache, pos=pos)
    direction = logit_direction(model, token, against)
    return _project(components[:, :, 0], direction, _final_scale(cache, pos)), labels


@torch.no_grad()
def head_outputs(
    model: HookedRootModule, cache: ActivationCache, layer: int, pos: Position | None = None
) -> torch.Tensor:
    """``[B, P, H, D]`` (or ``[B, H, D]`` at ``pos``): what each head of ``layer`` writes to the residual.

    ``z`` of head h times its slice of the output projection, ``o_proj.weight[:, h·d:(h+1)·d]``. The heads
    sum to ``attn_out`` (the projection has no bias in Llama). Computed on demand, never stored.
    """
    attn = model.blocks[layer].attn  # type: ignore[attr-defined]
    w_o = rearrange(attn.o_proj.weight, "D (h d) -> h d D", h=attn.n_heads)
    z = cache["z", layer] if pos is None else cache.at(("z", layer), pos)[:, 0]
    return einsum(z, w_o, "... h d, h d D -> ... h D")


@torch.no_grad()
def head_logit_attribution(
    model: HookedRootModule,
    cache: ActivationCache,
    token: Tokens,
    against: Tokens | None = None,
    pos: Position = "last",
) -> torch.Tensor:
    """``[L, H, B]``: each attention head's direct contribution to the logit (difference) at ``pos``.

    Summed over heads it gives the attention rows of ``direct_logit_attribution``. Needs ``z`` and
    ``ln_final.hook_scale`` in the cache.
    """
    direction = logit_direction(model, token, against)
    scale = _final_scale(cache, pos)
    per_layer = []
    for layer in range(cache.n_layers):
        heads = rearrange(head_outputs(model, cache, layer, pos), "b h D -> h b D")
        per_layer.append(_project(heads, direction, scale))
    return torch.stack(per_layer)
