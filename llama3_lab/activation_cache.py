"""The activation cache: what one forward produced at each hook point, and position selection.

``run_with_cache`` (in ``hooks.py``) fills an ``ActivationCache``; ``pos_slice`` there keeps a few
positions of every tensor, along the axis its hook point's shape letters call ``P`` (for attention
patterns ``Pq``: every key position stays).

A cache of a padded batch keeps its ``mask`` and ``positions`` ``[B, P]``: ``cache.real(name)`` gives each
row's real positions only (a list of tensors), ``cache.last(name)`` the activation at each row's last
real token, and ``cache.at(name, pos)`` selects columns, refusing any that is padding in some row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from .hook_points import HookNameError, get_act_name, unknown_hook_error
from .tokens import padding_mask
from .units import format_bytes

PosSlice = int | slice | Sequence[int] | torch.Tensor | None

# Axis letters (TransformerLens convention) that count positions. For an attention pattern the
# query axis (Pq) is the one `pos_slice` cuts; every key position stays.
_POSITION_AXES = ("P", "Pq")


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


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: the column of each row's last True in ``mask [B, P]``."""
    columns = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, columns, -1).amax(dim=1)


def select_positions(
    tensor: torch.Tensor,
    shape: str,
    pos: PosSlice | str,
    mask: torch.Tensor | None = None,
    cache: ActivationCache | None = None,
) -> torch.Tensor:
    """``tensor`` at positions ``pos`` along its ``P``/``Pq`` axis (named by ``shape``), the axis kept.

    ``pos``: None (all), an int, a slice, a list of columns, or ``"last"`` (each row's last real token,
    which needs the ``cache``'s mask, or is ``-1`` without one). With a padding ``mask`` [B P], a column
    that is padding in some row raises instead of returning a pad's meaningless activation.
    """
    axis = _position_axis(shape)
    if axis is None or pos is None:
        return tensor
    axis -= len(shape.split()) - tensor.ndim
    if isinstance(pos, str):
        if pos != "last":
            raise ValueError(f"pos must be an int, a slice, a list of positions or 'last', not {pos!r}.")
        if mask is None:
            return _slice_positions(tensor, shape, slice(-1, None))
        letters = shape.split()[len(shape.split()) - tensor.ndim :]
        batch_axis = letters.index("B") if "B" in letters else 0
        last = cache.last_index() if cache is not None else _last_index(mask)
        index_shape = [1] * tensor.ndim
        index_shape[batch_axis] = tensor.shape[batch_axis]
        index = last.to(tensor.device).view(index_shape)
        return tensor.gather(axis, index.expand(*[1 if i == axis else n for i, n in enumerate(tensor.shape)]))
    normalized = _normalize_pos_slice(pos)
    if mask is not None:
        kept = torch.arange(mask.shape[1])[normalized] if isinstance(normalized, slice) else normalized
        on_pad = ~mask[:, kept.to(mask.device)]
        if bool(on_pad.any()):
            rows = sorted(set(on_pad.nonzero()[:, 0].tolist()))
            raise ValueError(
                f"position {pos!r} is padding in rows {rows} of this padded batch (each row has its own "
                "length): use pos='last' for each row's last real token, cache.real(name) for every row's "
                "real positions, or left padding (padding_side='left') to align the rows' ends."
            )
    return _slice_positions(tensor, shape, normalized)


# --------------------------------------------------------------------------------------------------
# The activation cache


class ActivationCache:
    """Activations of one forward, by hook name, in the order the forward produced them.

    ``cache["blocks.3.attn.hook_pattern"]`` or ``cache["pattern", 3]`` (see ``get_act_name``);
    ``cache.stack("resid_post")`` gives ``[L, ...]``; ``cache.pattern(layer)`` recomputes a layer's
    attention pattern from the cached ``rot_q``/``rot_k``. ``shapes`` holds each entry's axis letters.
    ``tokens`` are the input ids, ``pos_slice`` the positions kept (None: all), ``start_position`` the
    position of the first token (the KV-cache length before the forward, else 0). ``model`` is the
    ``HookedRootModule`` that produced it (for hook names, the layer count and ``pattern``).
    """

    def __init__(
        self,
        cache: dict[str, torch.Tensor],
        model: nn.Module,
        shapes: dict[str, str] | None = None,
        tokens: torch.Tensor | None = None,
        pos_slice: slice | torch.Tensor | None = None,
        has_batch_dim: bool = True,
        start_position: int = 0,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> None:
        self.cache_dict = cache
        self.model = model
        self.shapes = shapes if shapes is not None else {n: model.hook_dict[n].shape for n in cache}
        self.tokens = tokens
        self.pos_slice = pos_slice
        self.has_batch_dim = has_batch_dim
        self.start_position = start_position
        self.mask = mask  # [B P] bool, True = real token; None: no padding
        self.positions = positions  # [B P] each row's own positions; None: 0..P-1 (+ start_position)

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

    # -- padded batches ---------------------------------------------------------------------------
    @property
    def is_padded(self) -> bool:
        return self.mask is not None

    def last_index(self) -> torch.Tensor:
        """``[B]``: the column of each row's last real token (``P - 1`` for every row without padding)."""
        if self.mask is None:
            P = self.tokens.shape[1] if self.tokens is not None else None
            if P is None:
                raise ValueError("This cache does not know its tokens, so it has no last position.")
            return torch.full((self.tokens.shape[0],), P - 1, dtype=torch.long)
        return _last_index(self.mask)

    def last(self, key: str | tuple) -> torch.Tensor:
        """The activation at each row's last real token: the ``P`` (or ``Pq``) axis dropped, ``[B, ...]``.

        For a pattern every key position stays. Needs a cache of every position (no ``pos_slice``).
        """
        name = self.resolve(key)
        self._check_all_positions("last")
        axis = self._axis(name)
        if axis is None:
            raise ValueError(f"{name} has no position axis (shape {self.shapes.get(name)!r}).")
        return select_positions(self[name], self.shapes[name], "last", self.mask, self).squeeze(axis)

    def real(self, key: str | tuple) -> list[torch.Tensor]:
        """Each row's activation at its real positions only (the batch axis dropped): a list of B tensors.

        Every position axis (``P``, ``Pq``, and ``Pk`` of the patterns) keeps the row's real tokens, so
        row b equals the cache of that prompt run alone. Without padding: the rows as they are.
        """
        name = self.resolve(key)
        self._check_all_positions("real")
        tensor = self[name]
        letters = self.shapes.get(name, "").split()
        if "B" not in letters and tensor.ndim == len(letters) + 1:
            letters = ["B", *letters]  # RoPE tables: one per row in a padded batch
        letters = letters[len(letters) - tensor.ndim :]
        batch_axis = letters.index("B") if "B" in letters else None
        if batch_axis is None:
            raise ValueError(f"{name} has no batch axis (shape {self.shapes.get(name)!r}).")
        rows = []
        for b in range(tensor.shape[batch_axis]):
            row = tensor.select(batch_axis, b)
            row_letters = letters[:batch_axis] + letters[batch_axis + 1 :]
            if self.mask is not None:
                keep = self.mask[b].nonzero()[:, 0].to(tensor.device)
                for axis, letter in enumerate(row_letters):
                    if letter in ("P", "Pq", "Pk"):
                        row = row.index_select(axis, keep)
            rows.append(row)
        return rows

    def at(
        self, key: str | tuple | torch.Tensor, pos: PosSlice | str, shape: str | None = None
    ) -> torch.Tensor:
        """``key``'s activation (or a tensor with ``shape`` letters) at positions ``pos``, the axis kept.

        ``pos``: an int, slice or list of columns, or ``"last"`` (each row's last real token). In a padded
        batch a column that is padding in some row is refused: positions count per row, so ``-1`` of a
        right-padded batch is a pad for its short rows; ``"last"`` (or left padding) is what you mean.
        """
        if isinstance(key, torch.Tensor):
            tensor, letters = key, shape or ""
        else:
            name = self.resolve(key)
            tensor, letters = self[name], self.shapes.get(name, "")
        return select_positions(tensor, letters, pos, self.mask if self.pos_slice is None else None, self)

    def _axis(self, name: str) -> int | None:
        axis = _position_axis(self.shapes.get(name, ""))
        if axis is None:
            return None
        return axis - (len(self.shapes[name].split()) - self[name].ndim)

    def _check_all_positions(self, what: str) -> None:
        if self.pos_slice is not None:
            raise ValueError(
                f"cache.{what}() needs every position, but this cache kept only pos_slice={self.pos_slice}: "
                "run run_with_cache without pos_slice (or, with left padding, pos_slice=-1 is each row's "
                "last real token)."
            )

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
        mask = None
        if self.mask is not None:
            mask = padding_mask(self.mask, 0, self.mask.shape[1])
        queries = self["rot_q", layer].transpose(1, 2)  # b p h d -> b h p d
        keys = self["rot_k", layer].transpose(1, 2)  # b p k d -> b k p d
        values = keys.new_zeros(keys.shape[:-1] + (1,))  # the pattern does not depend on the values
        seen: list[torch.Tensor] = []
        with self.model.hooks([(attn.hook_pattern.name, lambda pattern, hook: seen.append(pattern))]):
            attn._eager(queries, keys, values, 0, mask)
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
            self.mask,
            self.positions,
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
