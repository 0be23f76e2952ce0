"""The KV cache: every layer's keys (after RoPE) and values for the positions seen so far.

Preallocated once as ``[B, K, T_max, d]`` per layer, so a decode step writes one slot in place and
attends over a view of the filled prefix: no concatenation, no allocation per step. Keys are stored
after RoPE, exactly what attention multiplies with the queries, so the cache can be inspected,
edited, rewound and cloned like any tensor.

A padded batch (``model(batch, cache=cache)`` with a ``TokenBatch`` or an ``attention_mask``) also
leaves ``key_mask [B, T_max]`` (False at a pad): later forwards never attend to those slots and number
each row's positions from its own real tokens (``real_lengths``). Without padding it stays None.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .config import LlamaConfig
from .units import format_bytes


class HasConfig(Protocol):
    """What ``KVCache.allocate`` reads from a model: its config, device and dtype (a ``LlamaModel``)."""

    cfg: LlamaConfig
    device: torch.device
    dtype: torch.dtype


class KVCache:
    """Per-layer preallocated keys and values; ``length`` positions of them are filled.

    Build with ``KVCache.allocate(cfg_or_model, batch_size, max_length)``; pass to ``model(tokens,
    cache=cache)``, which writes the new positions and advances ``length``.
    """

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        length: int = 0,
        key_mask: torch.Tensor | None = None,
    ) -> None:
        if len(keys) != len(values) or not keys:
            raise ValueError("a KVCache needs one key and one value tensor per layer (at least one layer).")
        self.keys = keys
        self.values = values
        self.length = length
        self.key_mask = key_mask  # [B, T_max] bool, False at a pad; None: no pads ever written

    @classmethod
    def allocate(
        cls,
        cfg: LlamaConfig | HasConfig,
        batch_size: int = 1,
        max_length: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Empty cache for ``batch_size`` sequences of up to ``max_length`` positions.

        ``cfg`` may be the model itself, whose device and dtype are then the defaults (else CPU and
        float32); for a model placed over several devices (``model.placement``) each layer's keys and
        values go to the device that layer computes on. ``max_length`` defaults to
        ``max_position_embeddings``; memory is reserved, not touched, until positions are written.
        """
        layer_devices = None
        if not isinstance(cfg, LlamaConfig):  # a model
            placement = getattr(cfg, "placement", None)  # a model over several devices (placement.Plan)
            if device is None and placement is not None:
                layer_devices = [placement.layer_device(layer) for layer in range(cfg.cfg.num_hidden_layers)]
            device = device if device is not None else cfg.device
            dtype = dtype or cfg.dtype
            cfg = cfg.cfg
        max_length = max_length or cfg.max_position_embeddings
        if max_length > cfg.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length} exceeds the model's context, max_position_embeddings = "
                f"{cfg.max_position_embeddings}."
            )
        shape = (batch_size, cfg.num_key_value_heads, max_length, cfg.head_dim)
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or torch.float32
        # Each layer's keys and values live where that layer computes (one device unless placed).
        devices = layer_devices or [device] * cfg.num_hidden_layers
        keys = [torch.empty(shape, device=where, dtype=dtype) for where in devices]
        values = [torch.empty(shape, device=where, dtype=dtype) for where in devices]
        return cls(keys, values)

    # -- shape --------------------------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (all of ``max_length``, not just the filled part)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    # -- reading and writing ------------------------------------------------------------------------------

    def layer_keys(self, layer: int) -> torch.Tensor:
        """Keys of ``layer`` for the filled positions, a view [B K length d] (after RoPE)."""
        return self.keys[layer][:, :, : self.length]

    def layer_values(self, layer: int) -> torch.Tensor:
        """Values of ``layer`` for the filled positions, a view [B K length d]."""
        return self.values[layer][:, :, : self.length]

    def write(
        self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` [B K P d] at positions ``start..start+P-1`` of ``layer``.

        Returns views of keys and values for positions ``0..start+P-1``, what the new queries attend
        over. ``length`` is advanced by the model once every layer has been written.
        """
        end = start + keys.shape[2]
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def write_mask(self, start: int, mask: torch.Tensor) -> torch.Tensor:
        """Record which of the new slots ``start..start+P-1`` are real (``mask`` [B P]); returns the key
        mask [B, start+P] the new queries attend with (every earlier slot real if none was recorded)."""
        end = start + mask.shape[1]
        if self.key_mask is None:
            self.key_mask = torch.ones(
                (self.batch_size, self.max_length), dtype=torch.bool, device=self.keys[0].device
            )
        self.key_mask[:, start:end] = mask
        return self.key_mask[:, :end]

    def real_lengths(self) -> torch.Tensor:
        """[B]: real (not pad) positions each row holds: the position its next token gets."""
        if self.key_mask is None:
            return torch.full((self.batch_size,), self.length, dtype=torch.long, device=self.device)
        return self.key_mask[:, : self.length].sum(dim=1)

    def check_compatible(self, device: torch.device, dtype: torch.dtype) -> None:
        """Raise if the cache cannot hold what a model on ``device`` computing in ``dtype`` writes."""
        if device != self.device or dtype != self.dtype:
            raise ValueError(
                f"the cache holds {self.dtype} on {self.device} but the model computes {dtype} on "
                f"{device}: allocate it with KVCache.allocate(model, ...)."
            )

    # -- editing ------------------------------------------------------------------------------------------

    def truncate(self, length: int) -> KVCache:
        """Keep the first ``length`` positions (the rest is overwritten by the next forward)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate to {length}: the cache holds {self.length} positions.")
        self.length = length
        return self

    def rewind(self, n: int = 1) -> KVCache:
        """Forget the last ``n`` positions."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot rewind {n} positions: the cache holds {self.length}.")
        self.length -= n
        return self

    def reset(self) -> KVCache:
        """Forget every position (the memory stays allocated)."""
        self.length = 0
        return self

    def grow(self, max_length: int) -> KVCache:
        """Enlarge the cache in place to ``max_length`` positions, keeping the filled ones.

        The one place a cache grows: new tensors of the larger size, the filled prefix copied over.
        Views taken before (``layer_keys``...) still show the old tensors.
        """
        if max_length < self.max_length:
            raise ValueError(
                f"cannot grow a cache of {self.max_length} positions to {max_length}: to forget positions, "
                "use truncate() or rewind()."
            )
        if max_length > self.max_length:
            self.keys, self.values, self.key_mask = self._copy_filled(max_length)
        return self

    def clone(self) -> KVCache:
        """An independent copy (same capacity; only the filled positions are copied)."""
        keys, values, key_mask = self._copy_filled(self.max_length)
        return KVCache(keys, values, self.length, key_mask)

    def select_rows(self, rows: torch.Tensor | list[int]) -> KVCache:
        """Keep only the batch rows ``rows`` (in that order), in place: batched generation drops the
        rows that have finished so that no forward is spent on them."""
        index = torch.as_tensor(rows, dtype=torch.long)
        self.keys = [t.index_select(0, index.to(t.device)) for t in self.keys]  # layers may differ in device
        self.values = [t.index_select(0, index.to(t.device)) for t in self.values]
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, index.to(self.key_mask.device))
        return self

    def _copy_filled(
        self, max_length: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
        """New key and value tensors (and key mask) of ``max_length`` positions holding a copy of the
        filled ones."""

        def copy(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            B, K, _, d = tensors[0].shape
            copies = [t.new_empty((B, K, max_length, d)) for t in tensors]
            for src, dst in zip(tensors, copies):
                dst[:, :, : self.length] = src[:, :, : self.length]
            return copies

        key_mask = None
        if self.key_mask is not None:
            key_mask = self.key_mask.new_ones((self.batch_size, max_length))
            key_mask[:, : self.length] = self.key_mask[:, : self.length]
        return copy(self.keys), copy(self.values), key_mask

    def __repr__(self) -> str:
        B, K, T, d = self.keys[0].shape
        used = self.nbytes * self.length / max(T, 1)
        return (
            f"KVCache(layers={self.n_layers}, batch={B}, kv_heads={K}, head_dim={d}, "
            f"length={self.length}/{T}, {str(self.dtype).removeprefix('torch.')} on {self.device}, "
            f"{format_bytes(used)} used of {format_bytes(self.nbytes)}"
            f"{', padded' if self.key_mask is not None else ''})"
        )
