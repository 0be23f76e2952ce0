"""Every weight-layout conversion in one place, each with its inverse beside it.

Why they exist: rotary embeddings pair up dims of each head. Meta (and GGUF, which follows it) pairs
adjacent dims (2i, 2i+1) and rotates them as complex numbers; Hugging Face pairs dim i with i + d/2
(``rotate_half``). Both give identical attention scores if the rows of ``wq``/``wk`` are permuted
within each head: even dims first, then odd dims. Only q and k are permuted; v, o and the MLP are not.
Forgetting this is the classic silent bug: scores at distance 0 are unchanged, everything else is off.
"""

from __future__ import annotations

import torch
from einops import rearrange


def meta_to_hf_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved-pair rows of ``wq``/``wk`` [H·d, D] → Hugging Face's half-split rows.

    Within each head, row 2i+j (pair i, member j) moves to row j·d/2 + i.
    """
    return rearrange(w, "(h half two) i -> (h two half) i", h=n_heads, two=2)


def hf_to_meta_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``meta_to_hf_qk``."""
    return rearrange(w, "(h two half) i -> (h half two) i", h=n_heads, two=2)


def gguf_to_hf_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's ``attn_q``/``attn_k`` rows [H·d, D] → Hugging Face's layout.

    llama.cpp's converter applies Meta's interleaving to HF checkpoints, so undoing it is the same
    permutation as ``meta_to_hf_qk`` (in llama.cpp's axis names: ``d`` the half, ``two`` the member).
    ``n_heads`` is the number of query heads for ``attn_q`` and of K/V heads for ``attn_k``.
    """
    return rearrange(w, "(h d two) i -> (h two d) i", h=n_heads, two=2)


def hf_to_gguf_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``gguf_to_hf_qk`` (what llama.cpp's ``convert_hf_to_gguf.py`` does)."""
    return rearrange(w, "(h two d) i -> (h d two) i", h=n_heads, two=2)
