"""Rotary frequencies: inv_freq_i = θ^(−2i/d), and Llama 3.1/3.2's ``llama3`` scaling of them.

The one home of the scaling rule. With wavelength λ = 2π/f and ``rope_scaling`` = {factor, low_freq_factor,
high_freq_factor, original_max_position_embeddings}:

    λ < orig/high        unchanged       f' = f
    λ > orig/low         divided         f' = f / factor
    otherwise            smoothed        s = (orig/λ − low) / (high − low),  f' = (1 − s)·f/factor + s·f

:func:`rope_inv_freq` (the model's table), :func:`rope_pair_regimes` (which pair is in which band) and
:func:`llama3_divisors` (f/f', what GGUF files store as ``rope_freqs.weight``) all come from
:func:`_llama3_bands`, written with the same float32 operations as transformers so the tables are
bit-identical.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch

__all__ = ["llama3_divisors", "rope_inv_freq", "rope_inv_freq_unscaled", "rope_pair_regimes"]

REGIMES = ("unchanged", "smoothed", "divided")


class RopeFields(Protocol):
    """What RoPE reads from a config (a :class:`~llama3_lab.config.LlamaConfig`, say)."""

    head_dim: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None


def rope_inv_freq_unscaled(head_dim: int, theta: float) -> torch.Tensor:
    """θ^(−2i/d) for i = 0 .. d/2 − 1 [d/2], float32, before any scaling."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


class _Bands(NamedTuple):
    unchanged: torch.Tensor  # [d/2] bool: λ < orig/high
    divided: torch.Tensor  # [d/2] bool: λ > orig/low
    smooth: torch.Tensor  # [d/2] s, meaningful where neither


def _llama3_bands(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> _Bands:
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    return _Bands(wavelength < original / high, wavelength > original / low, smooth)


def _llama3_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """``scaling`` if it is llama3 scaling, None for none; anything else is refused."""
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise ValueError(
            f"rope_scaling type {rope_type!r} is not supported: Llama 3 models use 'llama3' (3.1/3.2) "
            "or none."
        )
    return scaling


def _scaled_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    inv_freq = rope_inv_freq_unscaled(head_dim, theta)
    scaling = _llama3_scaling(scaling)
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    bands = _llama3_bands(inv_freq, scaling)
    scaled = torch.where(bands.divided, inv_freq / factor, inv_freq)
    smoothed = (1 - bands.smooth) * scaled / factor + bands.smooth * scaled
    in_between = ~bands.unchanged * ~bands.divided
    return torch.where(in_between, smoothed, scaled)


def rope_inv_freq(cfg: RopeFields) -> torch.Tensor:
    """Rotation frequency of each pair of dims, ``theta^(-2i/d)`` [d/2], float32, with Llama 3.1 scaling.

    ``rope_scaling = {"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings}``: with wavelength λ = 2π/f, short wavelengths
    (λ < orig/high) are kept, long ones (λ > orig/low) slowed down by ``factor``, and the band in
    between interpolated smoothly. Written with the same float32 operations as transformers so both
    give bit-identical tables.
    """
    return _scaled_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


def rope_pair_regimes(cfg: RopeFields) -> dict[str, list[int]]:
    """Which rotary pairs the llama3 scaling leaves ``unchanged``, ``smoothed`` or ``divided`` by factor.

    Without scaling every pair is unchanged.
    """
    pairs = list(range(cfg.head_dim // 2))
    scaling = _llama3_scaling(cfg.rope_scaling)
    if scaling is None:
        return {"unchanged": pairs, "smoothed": [], "divided": []}
    bands = _llama3_bands(rope_inv_freq_unscaled(cfg.head_dim, cfg.rope_theta), scaling)
    smoothed = ~bands.unchanged & ~bands.divided
    return {
        regime: [i for i in pairs if bool(mask[i])]
        for regime, mask in zip(REGIMES, (bands.unchanged, smoothed, bands.divided))
    }


def llama3_divisors(scaling: dict[str, Any], head_dim: int, theta: float) -> list[float]:
    """f / f' for each rotary pair under llama3 scaling (what llama.cpp stores in ``rope_freqs.weight``)."""
    unscaled = rope_inv_freq_unscaled(head_dim, theta)
    return (unscaled.double() / _scaled_inv_freq(head_dim, theta, scaling).double()).tolist()
