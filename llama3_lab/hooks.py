"""Hook points, hook registration, the activation cache and its memory budget.

A ``HookPoint`` is an identity module placed where a tensor is born; its name comes from where it
sits in the module tree (``blocks.3.attn.hook_pattern``), so names are never repeated by hand.
Everything else here builds on PyTorch forward hooks registered on those modules:

- ``model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])`` and ``with model.hooks(fwd_hooks=...):``
  run user functions ``fn(tensor, hook) -> tensor | None`` (returning a tensor replaces it);
- ``model.run_with_cache(tokens, names_filter=...)`` returns ``(logits, ActivationCache)``;
- ``model.estimate_cache_bytes(...)`` predicts the cache's size from each hook point's shape letters
  before anything is allocated, and ``run_with_cache`` refuses a run that would not fit.

Hooks are always removed when the run or the ``with`` block ends, also when a hook raises or the
user interrupts: nothing leaks into the next run.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .units import format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .tokenizer import Tokenizer

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
PosSlice = int | slice | Sequence[int] | torch.Tensor | None
TokensLike = str | Sequence[str] | Sequence[int] | torch.Tensor

# Axis letters (TransformerLens convention) that count positions. For an attention pattern the
# query axis (Pq) is the one `pos_slice` cuts; every key position stays.
_POSITION_AXES = ("P", "Pq")


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
        """Whether anything is registered here (the model switches to eager attention if so)."""
        return bool(self._forward_hooks)

    def extra_repr(self) -> str:
        return f"{self.shape}: {self.meaning}" if self.shape else ""


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


class MemoryBudgetError(MemoryError):
    """A cache that would not fit in its memory budget. Carries the estimate and the budget."""

    def __init__(self, message: str, estimate_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.estimate_bytes = estimate_bytes
        self.budget_bytes = budget_bytes


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


# --------------------------------------------------------------------------------------------------
# Tokens in, one place for everyone (hooks, analysis, generation)


def _bos_text(tokenizer: Tokenizer) -> str | None:
    bos = getattr(tokenizer, "bos_id", None)
    if bos is None:
        return None
    for text, token_id in getattr(tokenizer, "special_tokens", {}).items():
        if token_id == bos:
            return text
    return tokenizer.decode([bos])


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _dtype_of(module: nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def to_tokens(
    model: nn.Module,
    x: TokensLike,
    *,
    prepend_bos: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Token ids ``[B, P]`` (LongTensor on the model's device) from text, ids or a tensor.

    - ``str``: encoded with ``model.tokenizer``; BOS is prepended exactly once (``prepend_bos``): text
      that already starts with the BOS token's text (e.g. ``"<|begin_of_text|>Hi"``) gets that text
      turned into the BOS id instead of a second one, and an encoding that already starts with BOS is
      left alone. Other special-token text stays plain text, as the tokenizer does.
    - a list of ``str``: a batch; each must encode to the same length (there is no padding).
    - a list of ids or a tensor: used as given (you chose the ids); ``[P]`` becomes ``[1, P]``.
    """
    device = device if device is not None else _device_of(model)
    if isinstance(x, torch.Tensor):
        tokens = x
    elif isinstance(x, str):
        tokens = torch.tensor([_encode_text(model, x, prepend_bos)])
    elif isinstance(x, Sequence) and len(x) > 0 and all(isinstance(t, str) for t in x):
        rows = [_encode_text(model, text, prepend_bos) for text in x]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise ValueError(
                f"The texts encode to different lengths {lengths}: a batch needs equal lengths. "
                "Run them one at a time, or pass a [B, P] tensor of ids you padded yourself."
            )
        tokens = torch.tensor(rows)
    elif isinstance(x, Sequence):
        tokens = torch.tensor(list(x), dtype=torch.long)
    else:
        raise TypeError(f"Expected text, a list of ids or a LongTensor of ids, got {type(x).__name__}.")
    if tokens.is_floating_point():
        raise TypeError(f"Token ids must be integers, got a {tokens.dtype} tensor.")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"Token ids must be [P] or [B, P], got shape {tuple(tokens.shape)}.")
    return tokens.to(device=device, dtype=torch.long)


def _encode_text(model: nn.Module, text: str, prepend_bos: bool) -> list[int]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "This model has no tokenizer, so it cannot encode text. Pass token ids (a list or a "
            "LongTensor), or set model.tokenizer = llama3_lab.load_tokenizer(...)."
        )
    bos_text = _bos_text(tokenizer)
    if prepend_bos and bos_text and text.startswith(bos_text):
        text = text[len(bos_text) :]
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def to_str_tokens(
    model: nn.Module, x: TokensLike, *, prepend_bos: bool = True
) -> list[str] | list[list[str]]:
    """Readable token strings for text or ids (a list per row for a batch of more than one)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("This model has no tokenizer: set model.tokenizer to turn ids into strings.")
    tokens = to_tokens(model, x, prepend_bos=prepend_bos, device="cpu")
    rows = [tokenizer.token_strings(row.tolist()) for row in tokens]
    return rows if _is_batch(x) else rows[0]


def _is_batch(x: TokensLike) -> bool:
    """A ``[B, P]`` tensor, a list of texts or a list of id lists (not one text or one list of ids)."""
    if isinstance(x, torch.Tensor):
        return x.ndim == 2
    return not isinstance(x, str) and len(x) > 0 and not isinstance(x[0], int)


# --------------------------------------------------------------------------------------------------
# Position slices


def _normalize_pos_slice(pos_slice: PosSlice) -> slice | torch.Tensor | None:
    """A slice or an index tensor that keeps the positions axis (an int keeps it as length 1)."""
    if pos_slice is None or isinstance(pos_slice, slice):
        return pos_slice
    if isinstance(pos_slice, int):
        return slice(pos_slice, pos_slice + 1) if pos_slice != -1 else slice(-1, None)
    return torch.as_tensor(pos_slice, dtype=torch.long)


def _kept_positions(pos_slice: slice | torch.Tensor | None, n_positions: int) -> int:
    if pos_slice is None:
        return n_positions
    if isinstance(pos_slice, slice):
        return len(range(n_positions)[pos_slice])
    return int(pos_slice.numel())


def _position_axis(shape: str) -> int | None:
    for i, letter in enumerate(shape.split()):
        if letter in _POSITION_AXES:
            return i
    return None


def _slice_positions(
    tensor: torch.Tensor, shape: str, pos_slice: slice | torch.Tensor | None
) -> torch.Tensor:
    axis = _position_axis(shape)
    if pos_slice is None or axis is None:
        return tensor
    axis -= len(shape.split()) - tensor.ndim  # tolerate a shape string that names fewer axes
    if isinstance(pos_slice, slice):
        index = (slice(None),) * axis + (pos_slice,)
        return tensor[index]
    return tensor.index_select(axis, pos_slice.to(tensor.device))


# --------------------------------------------------------------------------------------------------
# The activation cache


class ActivationCache:
    """Activations of one forward, by hook name, in the order the forward produced them.

    ``cache["blocks.3.attn.hook_pattern"]`` or ``cache["pattern", 3]`` (see ``get_act_name``);
    ``cache.stack("resid_post")`` gives ``[L, ...]``; ``cache.pattern(layer)`` recomputes a layer's
    attention pattern from the cached ``rot_q``/``rot_k``. ``shapes`` holds each entry's axis letters.
    ``tokens`` are the input ids, ``pos_slice`` the positions kept (None: all), ``start_position`` the
    position of the first token (the KV-cache length before the forward, else 0).
    """

    def __init__(
        self,
        cache: dict[str, torch.Tensor],
        model: HookedRootModule,
        shapes: dict[str, str] | None = None,
        tokens: torch.Tensor | None = None,
        pos_slice: slice | torch.Tensor | None = None,
        has_batch_dim: bool = True,
        start_position: int = 0,
    ) -> None:
        self.cache_dict = cache
        self.model = model
        self.shapes = shapes if shapes is not None else {n: model.hook_dict[n].shape for n in cache}
        self.tokens = tokens
        self.pos_slice = pos_slice
        self.has_batch_dim = has_batch_dim
        self.start_position = start_position

    # -- lookup -----------------------------------------------------------------------------------
    def resolve(self, key: str | tuple) -> str:
        """The full hook name for ``key`` (a full name, a short name, or a ``(name, layer, sub)`` tuple)."""
        if isinstance(key, tuple):
            return get_act_name(*key)
        if key in self.cache_dict:
            return key
        try:
            return get_act_name(key)
        except ValueError as err:
            raise unknown_hook_error(key, self.model.hook_names()) from err

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = self.resolve(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            raise self._missing(name) from None

    def _missing(self, name: str) -> KeyError:
        if name in self.model.hook_dict:
            return HookNameError(
                f"{name!r} is a valid hook point but was not cached (names_filter left it out). "
                f"Run run_with_cache again with names_filter including it.",
                [name],
            )
        return unknown_hook_error(name, self.model.hook_names())

    def __contains__(self, key: object) -> bool:
        try:
            return self.resolve(key) in self.cache_dict  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self) -> Iterable[str]:
        return self.cache_dict.keys()

    def values(self) -> Iterable[torch.Tensor]:
        return self.cache_dict.values()

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.cache_dict.items()

    # -- derived views ----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.model.cfg.num_hidden_layers

    def stack(self, name: str, sub: str | None = None, layers: Iterable[int] | None = None) -> torch.Tensor:
        """``[L, ...]``: the per-layer activation ``name`` (e.g. ``"resid_post"``) stacked over layers."""
        layers = range(self.n_layers) if layers is None else layers
        return torch.stack([self[name, layer, sub] if sub else self[name, layer] for layer in layers])

    def pattern(self, layer: int) -> torch.Tensor:
        """``[B, H, Pq, Pk]``: layer ``layer``'s attention pattern recomputed from cached ``rot_q``/``rot_k``.

        Runs the model's own eager attention (``blocks[layer].attn._eager``, the code that produces
        ``hook_pattern``) on the cached queries and keys, so it equals the pattern the forward saw
        without having cached the ``B H P P`` tensors. Hooks on ``hook_pattern`` run here too.
        """
        if self.pos_slice is not None or self.start_position:
            raise ValueError(
                "This cache does not hold every query and key position (pos_slice or a KV-cache run), so "
                "the pattern cannot be recomputed from it: cache 'pattern' directly instead."
            )
        attn = self.model.blocks[layer].attn  # type: ignore[attr-defined]
        queries = self["rot_q", layer].transpose(1, 2)  # b p h d -> b h p d
        keys = self["rot_k", layer].transpose(1, 2)  # b p k d -> b k p d
        values = keys.new_zeros(keys.shape[:-1] + (1,))  # the pattern does not depend on the values
        seen: list[torch.Tensor] = []
        with self.model.hooks([(attn.hook_pattern.name, lambda pattern, hook: seen.append(pattern))]):
            attn._eager(queries, keys, values, 0)
        return seen[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for t in self.cache_dict.values())

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ActivationCache:
        """A new cache with every tensor moved to ``device`` and/or floating tensors cast to ``dtype``."""
        moved = {
            n: t.to(device=device, dtype=dtype if t.is_floating_point() else None) for n, t in self.items()
        }
        return self._with(moved)

    def remove_batch_dim(self) -> ActivationCache:
        """A new cache with the batch axis dropped from every entry that has one (batch must be 1)."""
        if not self.has_batch_dim:
            return self
        out = {}
        for name, tensor in self.items():
            letters = self.shapes.get(name, "").split()
            if "B" in letters:
                axis = letters.index("B") - (len(letters) - tensor.ndim)
                if tensor.shape[axis] != 1:
                    raise ValueError(
                        f"remove_batch_dim needs batch 1, {name} has batch {tensor.shape[axis]}."
                    )
                tensor = tensor.squeeze(axis)
            out[name] = tensor
        shapes = {n: " ".join(a for a in s.split() if a != "B") for n, s in self.shapes.items()}
        new = self._with(out, shapes=shapes)
        new.has_batch_dim = False
        return new

    def _with(
        self, tensors: dict[str, torch.Tensor], shapes: dict[str, str] | None = None
    ) -> ActivationCache:
        return ActivationCache(
            tensors,
            self.model,
            shapes or dict(self.shapes),
            self.tokens,
            self.pos_slice,
            self.has_batch_dim,
            self.start_position,
        )

    def __repr__(self) -> str:
        first = next(iter(self.cache_dict.values()), None)
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in self.values()})
        devices = sorted({str(t.device) for t in self.values()})
        layers = sorted({int(m.group(1)) for n in self for m in [re.match(r"blocks\.(\d+)\.", n)] if m})
        layer_text = f"layers {layers[0]}-{layers[-1]}" if layers else "no layers"
        pos = "" if self.pos_slice is None else f", pos_slice={self.pos_slice}"
        shape = "" if first is None or self.tokens is None else f", tokens {tuple(self.tokens.shape)}"
        return (
            f"ActivationCache({len(self)} tensors, {format_bytes(self.nbytes)}, {layer_text}{shape}, "
            f"{'/'.join(dtypes) or '-'} on {'/'.join(devices) or '-'}{pos})"
        )


# --------------------------------------------------------------------------------------------------
# The root module: names, registration, caching, estimates


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
        """``[B, P]`` token ids on the model's device; see ``llama3_lab.hooks.to_tokens``."""
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
        target = torch.device(device) if device is not None else _device_of(self)
        past = forward_kwargs.get("start_pos") or getattr(forward_kwargs.get("cache"), "length", 0)
        estimate = self._estimate(names, ids.shape[1], ids.shape[0], dtype, pos, past_length=past)
        budget = self._budget(budget_bytes, target)
        if estimate.total > budget:
            raise MemoryBudgetError(_budget_message(estimate, budget, target), estimate.total, budget)

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
        return self._estimate(
            names, n_positions, batch, dtype, _normalize_pos_slice(pos_slice), past_length
        ).total

    def estimate_cache_table(
        self,
        n_positions: int,
        names_filter: NamesFilter = None,
        batch: int = 1,
        dtype: torch.dtype | None = None,
    ) -> list[tuple[str, int]]:
        """``(hook kind, bytes)`` summed over layers, biggest first: where a cache's memory goes."""
        estimate = self._estimate(self.resolve_names(names_filter), n_positions, batch, dtype, None)
        return estimate.by_kind()

    def _estimate(
        self,
        names: Sequence[str],
        n_positions: int,
        batch: int,
        dtype: torch.dtype | None,
        pos: slice | torch.Tensor | None,
        past_length: int = 0,
    ) -> _Estimate:
        sizes = self._axis_sizes(batch, _kept_positions(pos, n_positions), past_length + n_positions)
        model_dtype = _dtype_of(self)
        per_name = {}
        for name in names:
            point = self.hook_dict[name]
            numel = math.prod(_axis_size(letter, sizes, name, point.shape) for letter in point.shape.split())
            natural = point.dtype or (torch.float32 if _is_float32_hook(name) else model_dtype)
            element = torch.empty((), dtype=dtype or natural).element_size()
            per_name[name] = numel * element
        return _Estimate(per_name)

    def _axis_sizes(self, batch: int, kept_positions: int, key_positions: int) -> dict[str, int]:
        cfg = self.cfg  # type: ignore[attr-defined]
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

    def _budget(self, budget_bytes: int | None, device: torch.device) -> int:
        if budget_bytes is not None:
            return int(budget_bytes)
        if self.cache_budget_bytes is not None:
            return int(self.cache_budget_bytes)
        return int(self.cache_budget_fraction * free_memory_bytes(device))


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: ``psutil`` available RAM on CPU, ``torch.cuda.mem_get_info`` on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    import psutil

    return int(psutil.virtual_memory().available)


def _is_float32_hook(name: str) -> bool:
    return name.endswith("hook_scale") or name.startswith("rope.")


def _axis_size(letter: str, sizes: dict[str, int], name: str, shape: str) -> int:
    if letter.isdigit():
        return int(letter)
    if letter not in sizes:
        raise ValueError(
            f"Hook point {name} has shape {shape!r} with an axis letter {letter!r} I cannot size."
        )
    return sizes[letter]


class _Estimate:
    def __init__(self, per_name: dict[str, int]) -> None:
        self.per_name = per_name
        self.total = sum(per_name.values())

    def by_kind(self) -> list[tuple[str, int]]:
        kinds: dict[str, int] = {}
        for name, n in self.per_name.items():
            kind = re.sub(r"^blocks\.\d+\.", "blocks.*.", name)
            kinds[kind] = kinds.get(kind, 0) + n
        return sorted(kinds.items(), key=lambda kv: -kv[1])


def _budget_message(estimate: _Estimate, budget: int, device: torch.device) -> str:
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
