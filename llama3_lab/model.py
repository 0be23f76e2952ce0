"""The Llama 3 model: the equations, with a hook point wherever a tensor is born.

One small module per idea, each ``forward`` a few lines that mirror the math:

    RMSNorm    x / sqrt(mean(x²) + eps) · g                 (statistics in float32)
    Rotary     rotate (q_i, q_{i+d/2}) by angle pos · inv_freq_i  (Hugging Face's rotate_half layout)
    Attention  softmax(q·kᵀ/√d + causal mask) · v, K/V heads shared by groups of G query heads
    MLP        down(silu(gate(x)) · up(x))                  (SwiGLU; Meta calls them w1=gate, w3=up, w2=down)
    Block      h = x + attn(ln1(x));  out = h + mlp(ln2(h))
    LlamaModel embed → blocks → ln_final → unembed

Hook names follow TransformerLens (``blocks.3.attn.hook_pattern``); see ``model.hook_catalogue()``.
Shapes use its letters: B batch, P positions, H query heads, K key/value heads, G = H/K, d head dim,
D d_model, M d_mlp, V vocab, T cached positions.

Speed is part of the design: an unused hook point costs one dictionary check (``_hook``), the fused
``F.scaled_dot_product_attention`` kernel runs unless someone hooks the attention scores or pattern, and
the KV cache is preallocated (``kv_cache.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import LlamaConfig
from .hook_points import HookPoint, _hook, is_hooked
from .hooks import HookedRootModule
from .kv_cache import KVCache
from .rope import rope_inv_freq
from .tokens import TokenBatch, check_attention_mask, check_token_ids, default_positions, padding_mask

if TYPE_CHECKING:
    from pathlib import Path


Device = torch.device | str | None


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """The dtype the precision-critical steps (norm statistics, RoPE, softmax) compute in: float32 for
    bf16/fp16/float32 models, float64 for float64 models (promote, never demote)."""
    return torch.promote_types(dtype, torch.float32)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on a GPU (what the weights are trained in), float32 on CPU (CPU bf16 matmuls are slow)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def matvec_layout(weight: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column-major on CPU (a transposed view of a contiguous transpose).

    Decoding multiplies one vector by every weight matrix. On CPU, MKL streams a column-major matrix
    through that product ~1.6× faster than a row-major one (SmolLM2's 49152×576 unembedding: 14 ms vs
    23 ms on one core), while batched matmuls run as fast either way. Shape and values are unchanged;
    only ``weight.is_contiguous()`` becomes False (``save_pretrained`` writes contiguous copies).
    """
    if weight.device.type != "cpu" or weight.dim() != 2:
        return weight
    return weight.T.contiguous().T


# --------------------------------------------------------------------------------------------- RMSNorm


class RMSNorm(nn.Module):
    """x / RMS(x) · weight, with RMS(x) = sqrt(mean(x²) + eps) computed in float32.

    The statistics are taken in float32 (float64 in a float64 model) and the normalized vector cast back
    to the input dtype before the weight multiplies it (Meta's and Hugging Face's order: it matters in bf16).
    """

    def __init__(self, dim: int, eps: float, device: Device = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))
        self.hook_scale = HookPoint(
            "B P 1", "RMS of the input, sqrt(mean(x²) + eps)", dtype=torch.float32, promote=True
        )
        self.hook_normalized = HookPoint("B P D", "x / RMS, before the norm weight")
        self.hook_out = HookPoint("B P D", "normalized · weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and not (is_hooked(self.hook_scale) or is_hooked(self.hook_normalized)):
            # The same math as below in one fused kernel (bit-identical in float32; not in bf16, where
            # the cast before the weight matters).
            return _hook(self.hook_out, F.rms_norm(x, self.weight.shape, self.weight, self.eps))
        x32 = x.to(at_least_float32(x.dtype))
        mean_square = x32.pow(2).mean(-1, keepdim=True) + self.eps
        if is_hooked(self.hook_scale):
            rms = mean_square.sqrt()
            scale = _hook(self.hook_scale, rms)
            # Unchanged, the scale is applied as rsqrt (bit-identical to transformers), except while a
            # gradient is recorded through it: then x / scale, so d(metric)/d(scale) is its true value.
            if scale is rms and not (scale.requires_grad and torch.is_grad_enabled()):
                normalized = x32 * torch.rsqrt(mean_square)
            else:
                normalized = x32 / scale
        else:
            normalized = x32 * torch.rsqrt(mean_square)
        normalized = _hook(self.hook_normalized, normalized.to(x.dtype))
        return _hook(self.hook_out, self.weight * normalized)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


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
        self.q_proj = nn.Linear(D, H * d, bias=cfg.attention_bias, device=device)
        self.k_proj = nn.Linear(D, K * d, bias=cfg.attention_bias, device=device)
        self.v_proj = nn.Linear(D, K * d, bias=cfg.attention_bias, device=device)
        self.o_proj = nn.Linear(H * d, D, bias=cfg.attention_bias, device=device)
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

    def _eager(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Group the query heads by the K/V head they share: no copy of K/V per query head.
        q = rearrange(queries, "b (k g) p d -> b k g p d", k=self.n_kv_heads)
        scores = torch.einsum("bkgpd,bktd->bkgpt", q, keys) * self.scale
        if mask is None:
            mask = self._causal_mask(q.shape[3], keys.shape[2], start, q.device)  # [P T]
        else:
            mask = mask[:, None, None]  # [B P T] -> [B 1 1 P T]: the same for every head
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        scores = _hook(self.hook_attn_scores, rearrange(scores, "b k g p t -> b (k g) p t"))
        pattern = scores.softmax(dim=-1, dtype=at_least_float32(scores.dtype)).to(queries.dtype)
        pattern = _hook(self.hook_pattern, pattern)
        pattern = rearrange(pattern, "b (k g) p t -> b k g p t", k=self.n_kv_heads)
        z = torch.einsum("bkgpt,bktd->bpkgd", pattern, values)
        return rearrange(z, "b p k g d -> b p (k g) d")

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


# ------------------------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) · up(x)). Meta's names: w1 = gate_proj, w3 = up_proj, w2 = down_proj."""

    def __init__(self, cfg: LlamaConfig, device: Device = None) -> None:
        super().__init__()
        D, M = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(D, M, bias=cfg.mlp_bias, device=device)
        self.up_proj = nn.Linear(D, M, bias=cfg.mlp_bias, device=device)
        self.down_proj = nn.Linear(M, D, bias=cfg.mlp_bias, device=device)
        self.hook_pre = HookPoint("B P M", "gate projection, before SiLU")
        self.hook_pre_linear = HookPoint("B P M", "up projection")
        self.hook_post = HookPoint("B P M", "silu(gate) · up, the input of down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = _hook(self.hook_pre, self.gate_proj(x))
        up = _hook(self.hook_pre_linear, self.up_proj(x))
        return self.down_proj(_hook(self.hook_post, F.silu(gate) * up))


# ----------------------------------------------------------------------------------------------- Block


class Block(nn.Module):
    """One transformer layer: h = x + attn(ln1(x)); out = h + mlp(ln2(h))."""

    def __init__(self, cfg: LlamaConfig, layer: int, device: Device = None) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint("B P D", "residual stream into the block")
        self.ln1 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.attn = Attention(cfg, layer, device)
        self.hook_attn_out = HookPoint("B P D", "attention output (after o_proj)")
        self.hook_resid_mid = HookPoint("B P D", "resid_pre + attn_out")
        self.ln2 = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.mlp = MLP(cfg, device)
        self.hook_mlp_out = HookPoint("B P D", "MLP output")
        self.hook_resid_post = HookPoint("B P D", "resid_mid + mlp_out, the residual out of the block")

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        resid_pre = _hook(self.hook_resid_pre, x)
        attn_out = _hook(self.hook_attn_out, self.attn(self.ln1(resid_pre), cos, sin, cache, start, mask))
        resid_mid = _hook(self.hook_resid_mid, resid_pre + attn_out)
        mlp_out = _hook(self.hook_mlp_out, self.mlp(self.ln2(resid_mid)))
        return _hook(self.hook_resid_post, resid_mid + mlp_out)


class Unembed(nn.Module):
    """Logits = x · Wᵀ; W is ``embed.weight`` itself when the embeddings are tied."""

    def __init__(self, cfg: LlamaConfig, device: Device = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, device=device))
        self.hook_out = HookPoint("B P V", "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _hook(self.hook_out, F.linear(x, self.weight))


# ------------------------------------------------------------------------------------------ LlamaModel


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


class LlamaModel(HookedRootModule):
    """A Llama 3 decoder: ``model(tokens) -> logits [B P V]`` with a hook point on every intermediate.

    ``device="meta"`` builds the module tree without allocating weights (what the loaders fill in).
    ``attn_impl``: ``"sdpa"`` (default; falls back to eager for a layer whose scores or pattern are
    hooked) or ``"eager"``. ``tokenizer`` is attached by the loaders (None for a random model).
    """

    def __init__(self, cfg: LlamaConfig, tokenizer: Any = None, device: Device = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._tokenizer = tokenizer
        self._tokenizer_loader: Callable[[], Any] | None = None
        # nn.Embedding's own init would run normal_ on meta tensors, whose first use imports ~2 s of torch.
        embedding = torch.empty(cfg.vocab_size, cfg.hidden_size, device=device)
        if embedding.device.type != "meta":
            nn.init.normal_(embedding)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=embedding)
        self.hook_embed = HookPoint("B P D", "token embeddings")
        self.rope = Rotary(cfg)
        self.blocks = nn.ModuleList(Block(cfg, layer, device) for layer in range(cfg.num_hidden_layers))
        self.ln_final = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.unembed = Unembed(cfg, device)
        self.tie_weights()
        self._attn_impl = "sdpa"
        self.setup_hooks()

    # -- construction ---------------------------------------------------------------------------------

    def tie_weights(self) -> None:
        """Make ``unembed.weight`` the very tensor ``embed.weight`` when the config ties them."""
        if self.cfg.tie_word_embeddings:
            self.unembed.weight = self.embed.weight

    @classmethod
    def from_config(
        cls,
        cfg: LlamaConfig,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LlamaModel:
        """A randomly initialised model (weights ~ N(0, initializer_range²), norms 1), built in place.

        Like loaded models, its parameters are frozen (``requires_grad=False``: forwards build no
        autograd graph unless an input asks for one); ``model.requires_grad_(True)`` to train.

        The model is built on the meta device and materialised directly on ``device`` in ``dtype``,
        so an 8B-shaped model never exists twice. Same seed, device and dtype give the same weights.
        """
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        model = cls(cfg, device="meta").to(dtype)  # shapes and dtypes only: no memory yet
        model.to_empty(device=device)  # one allocation per parameter, in its final dtype
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                    param.fill_(1.0)
                elif name.endswith(".bias"):
                    param.zero_()
                else:
                    param.normal_(0.0, cfg.initializer_range, generator=generator)
            for param in model.parameters():
                param.data = matvec_layout(param.data)
        model.tie_weights()
        return model.requires_grad_(False).eval()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` in the Hugging Face layout and names."""
        from .loading.hf import save_hf

        save_hf(self, directory)

    # -- properties -----------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None for a random model). Loaders attach it lazily: read on first use."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            self._tokenizer = self._tokenizer_loader()
            self._tokenizer_loader = None
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._tokenizer, self._tokenizer_loader = value, None

    def set_tokenizer_loader(self, loader: Callable[[], Any]) -> None:
        """Attach a tokenizer to be built on first access of ``model.tokenizer`` (keeps loading fast)."""
        self._tokenizer, self._tokenizer_loader = None, loader

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        if value not in ("sdpa", "eager"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'eager', not {value!r}.")
        self._attn_impl = value
        for block in self.blocks:
            block.attn.impl = value

    def hook_catalogue(self) -> HookCatalogue:
        """Every hook point: name, shape (TransformerLens letters) and meaning, in forward order."""
        return HookCatalogue(HookRow(name, hook.shape, hook.meaning) for name, hook in self.hook_dict.items())

    # -- forward --------------------------------------------------------------------------------------

    def forward(
        self,
        tokens: torch.Tensor | TokenBatch,
        cache: KVCache | None = None,
        start_pos: int | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B P V] for ``tokens`` [B P] (or [P]) placed at positions ``start .. start + P - 1``.

        ``start`` is ``cache.length`` with a cache (whose K/V for these tokens are written and whose
        length advances by P), else ``start_pos`` or 0.

        A padded batch: ``tokens`` a ``TokenBatch``, or ``attention_mask`` [B P] (True/1 = real token)
        with optional ``positions`` [B P] (default: each row counts its own real tokens from 0, after
        those already in the cache). Pad keys are never attended to; a pad's own outputs are finite and
        meaningless. The cache remembers its pads, so later steps need no mask. Without any of these
        the forward is the plain causal one (same code, same bits as always).
        """
        if isinstance(tokens, TokenBatch):
            tokens, attention_mask, positions = tokens.ids, tokens.mask, tokens.positions
        tokens = self._check_tokens(tokens)
        start = self._start_position(tokens, cache, start_pos)
        P = tokens.shape[1]
        mask = None
        if attention_mask is None and positions is None and (cache is None or cache.key_mask is None):
            cos, sin = self.rope(start, P)
        else:
            cos, sin, mask = self._padded_inputs(tokens, cache, start, attention_mask, positions)
        x = _hook(self.hook_embed, self.embed(tokens))
        for block in self.blocks:
            x = block(x, cos, sin, cache, start, mask)
        if cache is not None:
            cache.length = start + P
        return self.unembed(self.ln_final(x))

    def _padded_inputs(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None,
        start: int,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE tables at each row's positions and the attention mask [B P T] of a padded batch."""
        if attention_mask is None:
            real = torch.ones_like(tokens, dtype=torch.bool)
        else:
            real = check_attention_mask(attention_mask, tokens)
        if cache is not None:
            past = cache.real_lengths()  # [B]: each row's real tokens before these
            key_mask, first_slot = cache.write_mask(start, real), start
        else:
            past, key_mask, first_slot = start, real, 0
        if positions is None:
            positions = default_positions(real, past)
        else:
            positions = self._check_positions(positions, tokens)
        cos, sin = self.rope.at(positions)
        return cos, sin, padding_mask(key_mask, first_slot, tokens.shape[1])

    def _check_positions(self, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.as_tensor(positions, device=tokens.device)
        if positions.dim() == 1:
            positions = positions.expand(tokens.shape[0], -1)
        if tuple(positions.shape) != tuple(tokens.shape) or positions.is_floating_point():
            raise ValueError(
                f"positions must be integers of the tokens' shape {tuple(tokens.shape)}, got "
                f"{tuple(positions.shape)} {positions.dtype}: one position per token (0 for a row's first)."
            )
        limit = self.cfg.max_position_embeddings
        lowest, highest = (int(v) for v in torch.aminmax(positions))
        if lowest < 0 or highest >= limit:
            raise ValueError(
                f"positions run from {lowest} to {highest}, outside 0..{limit - 1} "
                "(max_position_embeddings): shorten the prompts or renumber them from 0."
            )
        return positions.long()

    def _check_tokens(self, tokens: torch.Tensor | list[int]) -> torch.Tensor:
        return check_token_ids(tokens, self.cfg.vocab_size).to(self.device)

    def _start_position(self, tokens: torch.Tensor, cache: KVCache | None, start_pos: int | None) -> int:
        B, P = tokens.shape
        limit = self.cfg.max_position_embeddings
        start = start_pos if start_pos is not None else (cache.length if cache is not None else 0)
        if cache is not None:
            if start != cache.length:
                raise ValueError(
                    f"start_pos={start_pos} but the cache holds {cache.length} positions: new tokens must "
                    f"follow them (call cache.truncate({start_pos}) first to overwrite the tail)."
                )
            cache.check_compatible(self.device, self.dtype)
            if B != cache.batch_size:
                raise ValueError(
                    f"the cache was allocated for batch {cache.batch_size}, tokens have batch {B}."
                )
            if start + P > cache.max_length:
                raise ValueError(
                    f"the cache holds {cache.max_length} positions; {start} are filled and {P} more do not "
                    "fit. Allocate a larger cache (KVCache.allocate(cfg, max_length=...))."
                )
        if start + P > limit:
            raise ValueError(
                f"prompt too long for the context: positions {start}..{start + P - 1} ({start + P} tokens) "
                f"exceed max_position_embeddings = {limit}. Shorten the prompt or start a new cache."
            )
        return start

    # -- delegates ------------------------------------------------------------------------------------

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate text or tokens; see ``llama3_lab.generation.generate``."""
        from .generation import generate

        return generate(self, *args, **kwargs)

    def session(self, *args: Any, **kwargs: Any) -> Any:
        """A stepping generation session; see ``llama3_lab.generation.Session``."""
        from .session import session

        return session(self, *args, **kwargs)
