"""Hook points: identity modules where tensors are born, the one "is anything hooked" check, short names.

A ``HookPoint`` sits where a tensor is born; its name comes from where it sits in the module tree
(``blocks.3.attn.hook_pattern``, filled in by ``HookedRootModule.setup_hooks``), so names are never
repeated by hand. Its ``shape`` letters, ``meaning`` and ``dtype`` are data: they feed the hook
catalogue and the memory estimate before anything runs.

The forward passes every tensor through ``_hook(point, x)``, which calls the module only when
``is_hooked(point)``: an unused hook point costs one look at four dictionaries.

``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"`` turns TransformerLens-style short names
into full ones, and ``unknown_hook_error`` builds the ``HookNameError`` that names the closest valid
hook points.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]


class HookPoint(nn.Module):
    """An identity module marking an intermediate tensor.

    ``shape`` names the axes in the TransformerLens letters (``"B P H d"``) and ``meaning`` says what
    the tensor is; both feed ``hook_catalogue()`` and the memory estimate. ``dtype`` is the dtype the
    tensor has whatever the model's dtype (RMS scales and RoPE tables are float32); ``None`` means the
    model's dtype. ``name`` is filled in by the root module from the module tree.
    """

    def __init__(self, shape: str = "", meaning: str = "", dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.shape = shape
        self.meaning = meaning
        self.dtype = dtype
        self.name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def has_hooks(self) -> bool:
        """Whether anything would see or change this tensor (the model switches to eager attention if so)."""
        return is_hooked(self)

    def extra_repr(self) -> str:
        return f"{self.shape}: {self.meaning}" if self.shape else ""


# --------------------------------------------------------------------------------------------------
# Is anything hooked? The forward asks at every hook point, so this stays four dictionary checks.


def is_hooked(hook: HookPoint) -> bool:
    """Whether anything would see or change this hook point's tensor (global module hooks see all)."""
    return bool(
        hook._forward_hooks
        or hook._forward_pre_hooks
        or _torch_module._global_forward_hooks
        or _torch_module._global_forward_pre_hooks
    )


def _hook(hook: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass ``x`` through ``hook``, skipping the module call when nothing is attached to it.

    A module call costs ~0.6 µs and a forward reaches ~20 hook points per layer; checking the hook
    dictionaries costs a tenth of that, so unused hook points are essentially free.
    """
    return hook(x) if is_hooked(hook) else x


def hooked_names(hook_dict: Mapping[str, HookPoint]) -> list[str]:
    """Names of the hook points that something would see (every one while a global module hook is set).

    ``is_hooked`` for each point, with its global half asked once instead of once per point: the fast
    decoder asks before every step.
    """
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return list(hook_dict)
    return [name for name, point in hook_dict.items() if point._forward_hooks or point._forward_pre_hooks]


# --------------------------------------------------------------------------------------------------
# Errors


class HookNameError(KeyError, ValueError):
    """A hook name that the model does not have. The message lists the closest valid names."""

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.suggestions = list(suggestions)

    def __str__(self) -> str:  # KeyError would print the repr of the message, quotes and all
        return self.message


# --------------------------------------------------------------------------------------------------
# Short names: get_act_name("pattern", 3) -> "blocks.3.attn.hook_pattern"

_ATTN_ACTS = {"q", "k", "v", "rot_q", "rot_k", "z", "attn_scores", "pattern"}
_MLP_ACTS = {"pre", "pre_linear", "post"}
_BLOCK_ACTS = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"}
_NORM_ACTS = {"scale", "normalized", "out"}
_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "scores": "attn_scores",
    "query": "q",
    "key": "k",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
    "gate": "pre",
    "up": "pre_linear",
}
_TOP_LEVEL = {
    "embed": "hook_embed",
    "cos": "rope.hook_cos",
    "sin": "rope.hook_sin",
    "logits": "unembed.hook_out",
}
_NORMS = ("ln1", "ln2", "ln_final")


def get_act_name(name: str, layer: int | None = None, sub: str | None = None) -> str:
    """The full hook name for a short one, in TransformerLens's ``get_act_name`` style.

    ``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``,
    ``get_act_name("resid_post", 0) == "blocks.0.hook_resid_post"``,
    ``get_act_name("scale", 3, "ln1") == "blocks.3.ln1.hook_scale"``,
    ``get_act_name("scale") == "ln_final.hook_scale"``, ``get_act_name("embed") == "hook_embed"``.
    A name that already has a dot (a full name) is returned unchanged when no layer is given.
    """
    if layer is None and sub is None and ("." in name or name.startswith("hook_")):
        return name
    name = name.removeprefix("hook_")
    name = _ALIASES.get(name, name)
    if name in _TOP_LEVEL and layer is None:
        return _TOP_LEVEL[name]
    if name in _NORM_ACTS:
        if layer is None:
            if sub not in (None, "ln_final"):
                raise ValueError(f"{sub!r} is a per-layer norm: give a layer, e.g. ({name!r}, 0, {sub!r}).")
            return f"ln_final.hook_{name}"
        if sub not in ("ln1", "ln2"):
            raise ValueError(
                f"Which norm of layer {layer}? Say ({name!r}, {layer}, 'ln1') for the norm before "
                f"attention or ({name!r}, {layer}, 'ln2') for the norm before the MLP."
            )
        return f"blocks.{layer}.{sub}.hook_{name}"
    if layer is None:
        raise ValueError(
            f"{name!r} exists once per layer: give the layer, e.g. get_act_name({name!r}, 0) or "
            f"cache[{name!r}, 0]."
        )
    if name in _ATTN_ACTS:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP_ACTS:
        return f"blocks.{layer}.mlp.hook_{name}"
    if name in _BLOCK_ACTS:
        return f"blocks.{layer}.hook_{name}"
    known = sorted(_ATTN_ACTS | _MLP_ACTS | _BLOCK_ACTS | _NORM_ACTS | set(_TOP_LEVEL))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise HookNameError(
        f"Unknown short hook name {name!r}.{hint} Known short names: {', '.join(known)}.", close
    )


def _suggest(name: str, valid: Sequence[str], n: int = 5) -> list[str]:
    """Valid names close to ``name``: same layer and same final part first, then string similarity."""
    suggestions: list[str] = []
    leaf = name.rsplit(".", 1)[-1]
    leaf = leaf if leaf.startswith("hook_") else f"hook_{leaf}"
    layer = re.match(r"blocks\.(\d+)\.", name)
    prefix = f"blocks.{layer.group(1)}." if layer else ""
    # "blocks.3.hook_pattern" -> "blocks.3.attn.hook_pattern": same layer, same leaf, other sub-module.
    suggestions += [v for v in valid if v.startswith(prefix) and v.rsplit(".", 1)[-1] == leaf][
        : n if layer else 2
    ]
    suggestions += difflib.get_close_matches(name, valid, n=n, cutoff=0.6)
    return list(dict.fromkeys(suggestions))[:n]


def unknown_hook_error(name: str, valid: Sequence[str]) -> HookNameError:
    """The ``HookNameError`` for ``name``, with suggestions and the short-name form when one fits."""
    suggestions = _suggest(name, valid)
    lines = [f"No hook point named {name!r}."]
    if suggestions:
        lines.append("Closest valid names: " + ", ".join(suggestions) + ".")
    short = _ALIASES.get(name.removeprefix("hook_"), name.removeprefix("hook_"))
    if "." not in name and short in _ATTN_ACTS | _MLP_ACTS | _BLOCK_ACTS | _NORM_ACTS:
        lines.append(
            f"{short!r} exists once per layer: use cache[{short!r}, layer] or get_act_name({short!r}, layer)"
            + (f" with a norm, e.g. cache[{short!r}, 0, 'ln1']." if short in _NORM_ACTS else ".")
        )
    lines.append("model.hook_names() lists all of them; model.hook_catalogue() gives shapes and meanings.")
    return HookNameError(" ".join(lines), suggestions)
