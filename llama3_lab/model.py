"""The Llama 3 model: the equations, with a hook point wherever a tensor is born.

One small module per idea, each ``forward`` a few lines that mirror the math:

    RMSNorm    x / sqrt(mean(x²) + eps) · g                 (statistics in float32)
    Rotary     rotate (q_i, q_{i+d/2}) by angle pos · inv_freq_i  (attention.py; HF's rotate_half layout)
    Attention  softmax(q·kᵀ/√d + causal mask) · v, K/V heads shared by groups of G query heads (attention.py)
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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (  # noqa: F401  (apply_rotary & co. also importable from here)
    Attention,
    Rotary,
    apply_rotary,
    apply_rotary_complex,
    at_least_float32,
    rotate_half,
)
from .config import LlamaConfig
from .hook_points import HookCatalogue, HookPoint, HookRow, _hook, is_hooked  # noqa: F401
from .hooks import HookedRootModule
from .kv_cache import KVCache
from .linear import Linear, linear
from .rope import rope_inv_freq  # noqa: F401  (also importable from here)
from .tokens import TokenBatch, check_attention_mask, check_token_ids, default_positions, padding_mask

if TYPE_CHECKING:
    from pathlib import Path


Device = torch.device | str | None


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


# ------------------------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) · up(x)). Meta's names: w1 = gate_proj, w3 = up_proj, w2 = down_proj."""

    def __init__(self, cfg: LlamaConfig, device: Device = None) -> None:
        super().__init__()
        D, M = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(D, M, bias=cfg.mlp_bias, device=device)
        self.up_proj = Linear(D, M, bias=cfg.mlp_bias, device=device)
        self.down_proj = Linear(M, D, bias=cfg.mlp_bias, device=device)
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
        return _hook(self.hook_out, linear(x, self.weight))


# ------------------------------------------------------------------------------------------ LlamaModel


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
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits [B P V] for ``tokens`` [B P] (or [P]) placed at positions ``start .. start + P - 1``.

        ``logits_to_keep`` (transformers' name): 0 keeps every position; n > 0 only the last n, so the
        final norm and the unembedding (and their hook points) see ``[B n ·]`` and the logits are
        ``[B n V]`` (a prefill that needs only the next token's logits: 1).

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
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(
                f"logits_to_keep={logits_to_keep!r}: 0 keeps every position's logits, n > 0 the last n."
            )
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
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # b p d -> b n d
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
