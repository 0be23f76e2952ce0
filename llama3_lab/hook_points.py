"""Hook points: identity modules where tensors are born, the one "is anything hooked" check, short names.

A ``HookPoint`` sits where a tensor is born; its name comes from where it sits in the module tree
(``blocks.3.attn.hook_pattern``, filled in by ``HookedRootModule.setup_hooks``), so names are never
repeated by hand. Its ``shape`` letters, ``meaning`` and ``dtype`` are data: they feed the hook
catalogue and the memory estimate before anything runs.

Two kinds of hooks, and who sees them:

- **context hooks** (``context_hooks``; what ``model.hooks``, ``run_with_hooks``, ``run_with_cache`` and
  a ``Session`` step use) live in a ``contextvars.ContextVar``: only the thread (or asyncio task, or
  ``contextvars.Context``) that added them sees them. Two threads running forwards on one model with
  different hooks each see their own, and a thread with none runs the plain model.
- **module hooks** (``model.add_hook``, or PyTorch's own ``register_forward_hook`` on a hook point) are
  state of the module: every thread sees them until they are removed. They run first, then the
  context hooks in the order they were added.

The forward passes every tensor through ``_hook(point, x)`` (calling ``point(x)`` is the same), which
does nothing when ``is_hooked(point)`` is false: an unused hook point costs a context-variable read and
a few dictionary checks. A hook ``fn(tensor, point)`` may return a tensor to replace the activation; it
must have the activation's shape, dtype and device (``HookReturnError`` otherwise: nothing is cast or
broadcast silently).

``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"`` turns TransformerLens-style short names
into full ones; ``unknown_hook_error`` and ``nothing_selected_error`` build the ``HookNameError`` that
names the closest valid hook points.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from html import escape
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]

# PyTorch's global module hooks (``register_module_forward_hook``) see every module's output. The dicts
# are mutated in place, never rebound, so holding them here saves two lookups at every hook point.
_GLOBAL_FORWARD_HOOKS = _torch_module._global_forward_hooks
_GLOBAL_FORWARD_PRE_HOOKS = _torch_module._global_forward_pre_hooks
_module_call = nn.Module.__call__


class HookPoint(nn.Module):
    """An identity module marking an intermediate tensor.

    ``shape`` names the axes in the TransformerLens letters (``"B P H d"``) and ``meaning`` says what
    the tensor is; both feed ``hook_catalogue()`` and the memory estimate. ``dtype`` is the dtype the
    tensor has whatever the model's dtype (RoPE tables are float32); with ``promote=True`` it is a
    floor: the tensor has ``torch.promote_types(dtype, model dtype)`` (RMS scales: float32, or float64
    in a float64 model). ``None`` means the model's dtype. ``name`` is filled in by the root module.

    Calling the point, ``point(x)``, runs its module hooks and then the context hooks of the calling
    thread; the forward calls ``_hook(point, x)``, which is the same.
    """

    def __init__(
        self, shape: str = "", meaning: str = "", dtype: torch.dtype | None = None, promote: bool = False
    ) -> None:
        super().__init__()
        self.shape = shape
        self.meaning = meaning
        self.dtype = dtype
        self.promote = promote
        self.name: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _hook(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def tensor_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype this point's tensor has in a model of ``model_dtype`` (the memory estimate's)."""
        if self.dtype is None:
            return model_dtype
        return torch.promote_types(self.dtype, model_dtype) if self.promote else self.dtype

    def has_hooks(self) -> bool:
        """Whether anything this thread runs would see or change this tensor (then attention is eager)."""
        return is_hooked(self)

    def extra_repr(self) -> str:
        return f"{self.shape}: {self.meaning}" if self.shape else ""


# --------------------------------------------------------------------------------------------------
# Context hooks: {hook point: ((fn, token), ...)} in a context variable, so each thread sees its own.
# The dict is never changed in place (adding or removing builds a new one): a context copied with
# ``contextvars.copy_context()`` keeps what it saw.

ContextHooks = Mapping[HookPoint, tuple[tuple[HookFn, object], ...]]
_NO_HOOKS: ContextHooks = {}
_CONTEXT_HOOKS: ContextVar[ContextHooks] = ContextVar("llama3_lab_context_hooks", default=_NO_HOOKS)
_current_hooks = _CONTEXT_HOOKS.get  # bound once: the forward calls it at every hook point


@contextmanager
def context_hooks(pairs: Iterable[tuple[HookPoint, HookFn]]) -> Iterator[None]:
    """``with context_hooks([(point, fn), ...]):`` runs ``fn(tensor, point)`` at each point in every
    forward that this thread (this ``contextvars`` context) runs inside the block; other threads do not
    see them. Removed on exit, also when a hook raises or the user interrupts; blocks may be nested and
    may end in any order (each removes exactly what it added)."""
    token = object()
    added: dict[HookPoint, tuple[tuple[HookFn, object], ...]] = dict(_current_hooks())
    for point, fn in pairs:
        added[point] = added.get(point, ()) + ((fn, token),)
    _CONTEXT_HOOKS.set(added)
    try:
        yield
    finally:
        _remove_context_hooks(lambda point, entry_token: entry_token is token)


def clear_context_hooks(points: Iterable[HookPoint]) -> None:
    """Remove this context's hooks from ``points`` (``reset_hooks``; other threads keep theirs)."""
    cleared = set(points)
    _remove_context_hooks(lambda point, _token: point in cleared)


def _remove_context_hooks(drop: Callable[[HookPoint, object], bool]) -> None:
    kept = {}
    for point, entries in _current_hooks().items():
        left = tuple(entry for entry in entries if not drop(point, entry[1]))
        if left:
            kept[point] = left
    _CONTEXT_HOOKS.set(kept or _NO_HOOKS)


def hide_context_hooks_from_compiler() -> None:
    """Let ``torch.compile`` trace the model's forward code: inside a compiled graph, context hooks read
    as none (a graph cannot guard on a context variable, and dynamo cannot trace reading one).

    Only the fast decoder compiles, and it checks before every step, outside the graph, that this
    thread has no hooks at all (``FastDecoder.check_no_hooks``). Module hooks are seen as before.
    """
    global _compiler_view_registered
    if _compiler_view_registered:
        return
    from torch._dynamo.decorators import substitute_in_graph  # deferred: importing dynamo takes seconds

    @substitute_in_graph(_current_hooks, skip_signature_check=True)
    def _no_context_hooks() -> ContextHooks:
        return _NO_HOOKS

    _compiler_view_registered = True


_compiler_view_registered = False


# --------------------------------------------------------------------------------------------------
# Is anything hooked? The forward asks at every hook point, so this stays a few dictionary checks.


def is_hooked(hook: HookPoint) -> bool:
    """Whether anything this thread runs would see or change this hook point's tensor: its module
    hooks, PyTorch's global module hooks (they see every module), or this context's hooks on it."""
    return bool(
        hook._forward_hooks
        or hook._forward_pre_hooks
        or _GLOBAL_FORWARD_HOOKS
        or _GLOBAL_FORWARD_PRE_HOOKS
        or hook in _current_hooks()
    )


def _hook(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass ``x`` through ``point``'s hooks: module hooks first, then this context's, in the order added.

    Nothing is called when nothing is attached (a module call costs ~0.6 µs and a forward reaches ~20
    hook points per layer; the checks below cost a fraction of that). Every replacement is checked
    (``checked_replacement``).
    """
    if point._forward_hooks or point._forward_pre_hooks or _GLOBAL_FORWARD_HOOKS or _GLOBAL_FORWARD_PRE_HOOKS:
        returned = _module_call(point, x)
        x = returned if returned is x else checked_replacement(point, x, returned)
    entries = _current_hooks().get(point)
    if entries is None:
        return x
    for fn, _token in entries:
        returned = fn(x, point)
        if returned is not None:
            x = checked_replacement(point, x, returned, fn)
    return x


def any_hook_would_run(modules: Iterable[nn.Module]) -> bool:
    """Whether a forward through ``modules`` might run a hook: a global module hook, a context hook of
    this thread (on any point: the answer errs towards True), or a module's own forward (pre-)hook.
    Cheaper than ``hooked_names`` (no per-point context lookup): asked before every compiled step."""
    if _GLOBAL_FORWARD_HOOKS or _GLOBAL_FORWARD_PRE_HOOKS or _current_hooks():
        return True
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


def hooked_names(hook_dict: Mapping[str, HookPoint]) -> list[str]:
    """Names of the hook points that something this thread runs would see (every one while a global
    module hook is set).

    ``is_hooked`` for each point, with its global half asked once instead of once per point: the fast
    decoder asks before every step.
    """
    if _GLOBAL_FORWARD_HOOKS or _GLOBAL_FORWARD_PRE_HOOKS:
        return list(hook_dict)
    context = _current_hooks()
    return [
        name
        for name, point in hook_dict.items()
        if point._forward_hooks or point._forward_pre_hooks or point in context
    ]


# --------------------------------------------------------------------------------------------------
# Replacements: same shape, dtype and device as the activation, or an error naming the hook


class HookReturnError(ValueError):
    """A hook returned something that cannot replace its activation (not a tensor, or another shape,
    dtype or device). The message names the hook point, the function, what was expected and what came."""


def checked_replacement(
    point: HookPoint, tensor: torch.Tensor, returned: object, fn: object = None
) -> torch.Tensor:
    """``returned`` if it can replace ``tensor`` at ``point`` (same shape, dtype and device), else raise.

    Nothing is cast or broadcast: a ``[B, 1, D]`` return would broadcast silently in the next addition,
    and a float64 one would turn the rest of the forward into float64.
    """
    if (
        isinstance(returned, torch.Tensor)
        and returned.shape == tensor.shape
        and returned.dtype == tensor.dtype
        and returned.device == tensor.device
    ):
        return returned
    raise _replacement_error(point, tensor, returned, fn)


def _replacement_error(
    point: HookPoint, tensor: torch.Tensor, returned: object, fn: object
) -> HookReturnError:
    who = f"The hook {_describe(fn)} on {point.name or 'an unnamed hook point'}"
    expected = f"[{', '.join(map(str, tensor.shape))}]" + (f" ({point.shape})" if point.shape else "")
    if not isinstance(returned, torch.Tensor):
        return HookReturnError(
            f"{who} returned a {type(returned).__name__}, not a tensor. Return a tensor of shape "
            f"{expected}, dtype {tensor.dtype} on {tensor.device} to replace the activation, or None to "
            "leave it as it is."
        )
    if returned.shape != tensor.shape:
        got = f"[{', '.join(map(str, returned.shape))}]"
        return HookReturnError(
            f"{who} returned shape {got}; the activation it replaces has shape {expected}. A replacement "
            "must have the same shape (a smaller one would broadcast silently in the next operation): "
            "build it from the tensor, e.g. tensor + delta, or delta.expand_as(tensor)."
        )
    if returned.dtype != tensor.dtype:
        return HookReturnError(
            f"{who} returned dtype {returned.dtype}; the activation is {tensor.dtype}. Replacements are "
            "not cast (the rest of the forward would run in the other dtype): return "
            "replacement.to(tensor.dtype)."
        )
    return HookReturnError(
        f"{who} returned a tensor on {returned.device}; the activation is on {tensor.device}. Return "
        "replacement.to(tensor.device)."
    )


def _describe(fn: object) -> str:
    if fn is None:
        return "registered with register_forward_hook"
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{name!r}"


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


def nothing_selected_error(names_filter: object, valid: Sequence[str]) -> HookNameError:
    """The ``HookNameError`` for a filter that selects no hook point (an empty list, or a function that
    is false for every name): running on would silently hook or cache nothing.

    For a function, the strings in its code (``lambda n: "resid_psot" in n``) are compared with the
    parts of the valid names, to suggest what it may have meant.
    """
    if not callable(names_filter):
        return HookNameError(
            f"The names filter {names_filter!r} selects no hook point: nothing would be hooked or cached. "
            "Give at least one name (model.hook_names() lists them), or names_filter=None for all.",
            [],
        )
    code = getattr(names_filter, "__code__", None)
    words = [c for c in (code.co_consts if code else ()) if isinstance(c, str) and c != names_filter.__doc__]
    parts = sorted({part for name in valid for part in name.split(".") if not part.isdigit()})
    suggestions: list[str] = []
    for word in words:
        for part in difflib.get_close_matches(word.strip("."), parts, n=2, cutoff=0.6):
            suggestions += [name for name in valid if part in name.split(".")][:2]
    suggestions = list(dict.fromkeys(suggestions))[:5]
    looked_for = f" (it looks for {', '.join(map(repr, words))})" if words else ""
    hint = f" Closest valid names: {', '.join(suggestions)}." if suggestions else ""
    return HookNameError(
        f"The names filter {_describe(names_filter)}{looked_for} is false for every hook point: nothing "
        f"would be hooked or cached.{hint} model.hook_names() lists all {len(valid)} names, e.g. "
        f"{', '.join(valid[:3])}.",
        suggestions,
    )


# --------------------------------------------------------------------------------------------------
# The catalogue: every hook point's name, shape and meaning


class HookRow(NamedTuple):
    name: str
    shape: str
    meaning: str


class HookCatalogue(list):
    """``HookRow(name, shape, meaning)`` for every hook point; prints as a table in text and HTML."""

    def to_markdown(self) -> str:
        lines = ["| name | shape | meaning |", "|---|---|---|"]
        lines += [f"| `{r.name}` | {r.shape} | {r.meaning} |" for r in self]
        return "\n".join(lines)

    def __repr__(self) -> str:
        width = max((len(r.name) for r in self), default=4)
        return "\n".join(f"{r.name:<{width}}  {r.shape:<10}  {r.meaning}" for r in self)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{escape(r.name)}</code></td><td>{escape(r.shape)}</td>"
            f"<td style='text-align:left'>{escape(r.meaning)}</td></tr>"
            for r in self
        )
        return f"<table><tr><th>name</th><th>shape</th><th>meaning</th></tr>{rows}</table>"
