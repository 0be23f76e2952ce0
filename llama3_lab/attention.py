"""Attention with rotary positions: the cos/sin tables, the rotation, and grouped-query attention.

    Rotary     cos/sin of pos · inv_freq_i for the positions of a forward (float32, grown lazily)
    rotate     (q_i, q_{i+d/2}) → (q_i cos − q_{i+d/2} sin, q_{i+d/2} cos + q_i sin)  (rotate_half layout)
    Attention  softmax(q·kᵀ/√d + causal and padding mask) · v, K/V heads shared by groups of G query heads

The frequencies themselves (with Llama 3.1 scaling) are ``rope.rope_inv_freq``. Shapes use TransformerLens
letters: B batch, P positions, H query heads, K key/value heads, G = H/K, d head dim, T key positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import LlamaConfig
from .hook_points import HookPoint, _hook, is_hooked
from .linear import Linear
from .rope import rope_inv_freq

if TYPE_CHECKING:  # pragma: no cover
    from .kv_cache import KVCache

Device = torch.device | str | None


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """The dtype the precision-critical steps (norm statistics, RoPE, softmax) compute in: float32 for
    bf16/fp16/float32 models, float64 for float64 models (promote, never demote)."""
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------------------------- RoPE


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (−x2, x1) on the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B P heads d] by the angles whose cos/sin are given [P d], or [B P d] when each row
    has its own positions (a padded batch), in Hugging Face's layout.

    Dim i is paired with dim i + d/2; the rotation is computed in float32 (float64 for a float64 model)
    and cast back, so bf16 models lose no precision here. The cos/sin tables themselves are float32, as
    in transformers, whatever the model's dtype.
    """
    x32 = x.to(at_least_float32(x.dtype))
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [(B) P 1 d]: one angle per position, shared by heads
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def apply_rotary_complex(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Meta's convention, for teaching and tests: dims (2i, 2i+1) form the complex number rotated by e^{iθ}.

    Given weights in Meta's layout this gives the same attention scores as ``apply_rotary`` on weights
    converted with ``loading.layouts.meta_to_hf_qk``.
    """
    angles = torch.outer(positions.float(), inv_freq)  # [P d/2]
    rotation = torch.polar(torch.ones_like(angles), angles)
    pairs = torch.view_as_complex(rearrange(x.float(), "... (half two) -> ... half two", two=2).contiguous())
    rotated = pairs * rotation[:, None, :]  # x [B P heads d]: broadcast over batch and heads
    return rearrange(torch.view_as_real(rotated), "... half two -> ... (half two)").to(x.dtype)


class Rotary(nn.Module):
    """cos/sin tables for the positions of one forward, from the cached ``inv_freq`` (float32).

    Tables are computed lazily up to the largest position seen so far (never ``max_position_embeddings``
    up front) and kept in float32 whatever the model's dtype.
    """

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None
        self.hook_cos = HookPoint(
            "P d",
            "cos of the rotation angle per position and dim ([B P d] in a padded batch)",
            dtype=torch.float32,
        )
        self.hook_sin = HookPoint(
            "P d",
            "sin of the rotation angle per position and dim ([B P d] in a padded batch)",
            dtype=torch.float32,
        )

    def _apply(self, fn: Any, recurse: bool = True) -> Rotary:
        # .to(bf16) would round inv_freq: recompute it in float32 on the new device instead.
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.cfg).to(self.inv_freq.device)
        self._cos = self._sin = None
        return self

    def _grow(self, end: int) -> None:
        size = max(64, 1 << (end - 1).bit_length())
        positions = torch.arange(size, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)  # [T d/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [T d]: dim i and i + d/2 share an angle
        self._cos, self._sin = angles.cos(), angles.sin()

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [P d] (float32) for positions ``start .. start + length - 1``."""
        end = start + length
        if self._cos is None or self._cos.shape[0] < end:
            self._grow(end)
        cos, sin = self._cos[start:end], self._sin[start:end]
        return _hook(self.hook_cos, cos), _hook(self.hook_sin, sin)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B P d] (float32) for each row's own ``positions`` [B P] (a padded batch)."""
        end = int(positions.max()) + 1
        if self._cos is None or self._cos.shape[0] < end:
            self._grow(end)
        index = positions.to(self._cos.device)
        return _hook(self.hook_cos, self._cos[index]), _hook(self.hook_sin, self._sin[index])


# ------------------------------------------------------------------------------------------- Attention


class Attention(nn.Module):
    """Grouped-query attention: H query heads in K groups of G = H/K, each group sharing one K/V head.

    Two paths share everything but the kernel call: eager (scores and pattern materialised, hookable)
    and fused (``F.scaled_dot_product_attention``), chosen per forward by ``_use_eager``.
    """

    def __init__(self, cfg: LlamaConfig, layer: int, device: Device = None) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.group = self.n_heads // self.n_kv_heads
        self.scale = self.head_dim**-0.5
        D, H, K, d = cfg.hidden_size, self.n_heads, self.n_kv_heads, self.head_dim
        self.q_proj = Linear(D, H * d, bias=cfg.attention_bias, device=device)
        self.k_proj = Linear(D, K * d, bias=cfg.attention_bias, device=device)
        self.v_proj = Linear(D, K * d, bias=cfg.attention_bias, device=device)
        self.o_proj = Linear(H * d, D, bias=cfg.attention_bias, device=device)
        self.impl = "sdpa"  # set for the whole model by LlamaModel.attn_impl
        self.hook_q = HookPoint("B P H d", "queries, before RoPE")
        self.hook_k = HookPoint("B P K d", "keys, before RoPE (K/V heads not repeated)")
        self.hook_v = HookPoint("B P K d", "values")
        self.hook_rot_q = HookPoint("B P H d", "queries after RoPE")
        self.hook_rot_k = HookPoint("B P K d", "keys after RoPE (what the KV cache stores)")
        self.hook_attn_scores = HookPoint("B H Pq Pk", "q·k/√d after the causal mask (−inf above it)")
        self.hook_pattern = HookPoint(
            "B H Pq Pk", "attention pattern, softmax of the scores (float32 softmax)"
        )
        self.hook_z = HookPoint("B P H d", "pattern · v, per head, before o_proj")

    def _use_eager(self) -> bool:
        return self.impl == "eager" or is_hooked(self.hook_attn_scores) or is_hooked(self.hook_pattern)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask`` [B P T]: True where query i may see key j, for a padded batch (``padding_mask``);
        None: the plain causal mask."""
        B, P, _ = x.shape
        H, K, d = self.n_heads, self.n_kv_heads, self.head_dim
        q = _hook(self.hook_q, self.q_proj(x).view(B, P, H, d))  # b p (h d) -> b p h d
        k = _hook(self.hook_k, self.k_proj(x).view(B, P, K, d))
        v = _hook(self.hook_v, self.v_proj(x).view(B, P, K, d))
        rot_q = _hook(self.hook_rot_q, apply_rotary(q, cos, sin))
        rot_k = _hook(self.hook_rot_k, apply_rotary(k, cos, sin))

        # Attention works head-major: [B K T d] for keys/values (the cache layout), [B H P d] for queries.
        if cache is None:
            keys, values = rot_k.transpose(1, 2), v.transpose(1, 2)
        else:
            keys, values = cache.write(self.layer, start, rot_k.transpose(1, 2), v.transpose(1, 2))
        queries = rot_q.transpose(1, 2)

        if self._use_eager():
            z = self._eager(queries, keys, values, start, mask)
        else:
            z = self._fused(queries, keys, values, start, mask)
        z = _hook(self.hook_z, z)  # [B P H d]
        return self.o_proj(z.reshape(B, P, H * d))  # b p h d -> b p (h d)

    def _causal_mask(self, P: int, T: int, start: int, device: torch.device) -> torch.Tensor | None:
        """True where query ``start + i`` may see key ``j`` (j ≤ start + i); None if every key is visible."""
        if P == 1:
            return None
        query_pos = torch.arange(start, start + P, device=device)[:, None]
        return torch.arange(T, device=device)[None, :] <= query_pos  # [P T]

    def _mask_bias(
        self, P: int, T: int, start: int, mask: torch.Tensor | None, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | None:
        """0 where a query may see a key, −inf where not: [P T] causal, [B 1 1 P T] from a padding mask
        [B P T]; None if every key is visible.

        Added to the scores, it gives what ``masked_fill(~mask, −inf)`` gives (x + 0 = x, x − inf = −inf;
        only a score of −0.0 becomes +0.0, the same number), in a fifth of its time: building the bias
        21 µs and adding it 15 µs, against 165 µs for masked_fill, for SmolLM2's 9 heads × 128 × 128 scores
        on two cores (masked_fill is a scalar loop there).
        """
        if mask is not None:  # the same for every head
            return torch.zeros((), dtype=dtype, device=device).masked_fill(~mask[:, None, None], -torch.inf)
        if P == 1:
            return None
        hidden = torch.full((P, T), -torch.inf, dtype=dtype, device=device)
        return hidden.triu_(start + 1)  # −inf where key j > start + i

    def _eager(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Group the query heads by the K/V head they share: no copy of K/V per query head. The G heads
        # of a group and their P positions are the rows of one product with that group's keys. (Views
        # and matmul rather than einsum and einops: the same bmm calls, so the same bits, at half the
        # Python cost per layer, 28 against 57 µs for a decode step, measured: this path runs whenever
        # a pattern is hooked, as in every Session step.)
        B, H, P, d = queries.shape
        K, T = self.n_kv_heads, keys.shape[2]
        q = queries.reshape(B, K, H // K * P, d)  # b (k g) p d -> b k (g p) d
        # In place on the product's own fresh tensor (neither step needs it for a gradient): no more
        # tensors of B·H·P·T per layer to allocate and write than the scores themselves.
        scores = torch.matmul(q, keys.transpose(-1, -2)).view(B, K, H // K, P, T).mul_(self.scale)
        bias = self._mask_bias(P, T, start, mask, scores.dtype, q.device)
        if bias is not None:
            scores = scores.add_(bias)
        scores = _hook(self.hook_attn_scores, scores.view(B, H, P, T))  # b k g p t -> b (k g) p t
        pattern = scores.softmax(dim=-1, dtype=at_least_float32(scores.dtype)).to(queries.dtype)
        pattern = _hook(self.hook_pattern, pattern)
        z = torch.matmul(pattern.reshape(B, K, H // K * P, T), values)  # b k (g p) t · b k t d
        z = z.view(B, K, H // K, P, -1).permute(0, 3, 1, 2, 4)  # b k (g p) d -> b p k g d
        return z.reshape(B, P, H, -1)  # b p k g d -> b p (k g) d

    def _fused(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        P, T = queries.shape[2], keys.shape[2]
        if mask is not None:  # a padded batch: [B P T] -> [B 1 P T], shared by the heads
            z = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=mask[:, None], enable_gqa=True
            )
        elif P == T:  # no earlier positions: the kernel's own (top-left aligned) causal mask is right
            z = F.scaled_dot_product_attention(queries, keys, values, is_causal=P > 1, enable_gqa=True)
        else:
            mask = self._causal_mask(P, T, start, queries.device)
            z = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=True)
        return z.transpose(1, 2)  # b h p d -> b p h d

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"
