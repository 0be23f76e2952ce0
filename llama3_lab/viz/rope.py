"""Rotary position embedding figures: frequencies, the cos/sin table, one pair's rotation, score decay with
distance, and the Llama 3.1 scaling bands.

The math lives in :mod:`llama3_lab.rope` (``rope_inv_freq``, ``rope_pair_regimes``), :mod:`llama3_lab.model`
(``Rotary``, ``apply_rotary_complex``); these functions only draw what they compute, so a figure can never
disagree with the model. Anywhere a "RoPE
source" is accepted, pass a :class:`~llama3_lab.config.LlamaConfig` (its ``rope_theta``, ``head_dim`` and
``rope_scaling`` are used) or an inverse-frequency array ``[d/2]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from einops import repeat
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..config import LLAMA31_ROPE_SCALING, LlamaConfig
from ._common import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    bare_figure,
    colormap,
    new_figure,
    root_figure,
    squeeze_to,
    to_numpy,
)

RopeSource = LlamaConfig | np.ndarray | Any
"""A LlamaConfig, or inverse frequencies [d/2] as a NumPy array or torch tensor."""

MIN_SAMPLES_PER_TURN = 6
"""Samples per wavelength of every drawn angle curve. Curves are drawn at every integer position (the only
positions that exist); since θ > 1 every wavelength is at least 2π ≈ 6.3 tokens, so no curve can alias
into a slower false one, as 256 samples spread over 4,096 positions did (a 48.8-token wavelength showed as
a ~1,200-token sawtooth)."""
MAX_TABLE_ROWS = 512
"""Rows of a cos/sin table drawn as they are; longer tables are averaged over blocks of positions, since a
plot a few hundred pixels tall would otherwise pick rows at a stride and show moiré."""


def rope_config(theta: float, head_dim: int = 128, rope_scaling: dict[str, Any] | None = None) -> LlamaConfig:
    """A config carrying only what RoPE needs, for figures about θ and d without a whole model."""
    heads = 32
    return LlamaConfig(
        hidden_size=head_dim * heads,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=head_dim,
        rope_theta=float(theta),
        rope_scaling=rope_scaling,
    )


def inv_freq_of(source: RopeSource) -> np.ndarray:
    """Inverse frequencies [d/2] of a RoPE source, computed by the model's ``rope_inv_freq`` for a config."""
    if isinstance(source, LlamaConfig):
        from ..rope import rope_inv_freq  # imported here: torch is only needed once a figure is drawn

        return to_numpy(rope_inv_freq(source))
    inv_freq = to_numpy(source, name="inv_freq")
    if inv_freq.ndim != 1 or inv_freq.size == 0 or not np.all(inv_freq > 0):
        raise ValueError(
            "a RoPE source must be a LlamaConfig or a 1-D array of positive inverse frequencies [d/2]; "
            f"got shape {tuple(inv_freq.shape)}."
        )
    return inv_freq


def _describe(cfg: LlamaConfig) -> str:
    label = f"θ={cfg.rope_theta:g}, d={cfg.head_dim}"
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")) == "llama3":
        label += f", llama3 ×{cfg.rope_scaling['factor']:g}"
    return label


def _named_sources(sources: Any) -> dict[str, np.ndarray]:
    """``{label: inv_freq}`` from one source, a sequence of sources, or a mapping label → source."""
    if isinstance(sources, Mapping):
        return {str(name): inv_freq_of(src) for name, src in sources.items()}
    if isinstance(sources, LlamaConfig) or hasattr(sources, "detach") or isinstance(sources, np.ndarray):
        sources = [sources]
    named = {}
    for i, src in enumerate(sources):
        named[_describe(src) if isinstance(src, LlamaConfig) else f"source {i}"] = inv_freq_of(src)
    return named


def rope_frequencies(
    thetas: Sequence[float] = (1e4, 5e5),
    head_dim: int = 128,
    context_length: int = 8192,
    axes: Sequence[Axes] | None = None,
    *,
    sources: Any = None,
    title: str | None = None,
) -> Figure:
    """Inverse frequency and wavelength (2π/f, in tokens) of every rotated pair, on log axes.

    One line per θ in ``thetas`` (Llama 2 used 10⁴, Llama 3 uses 5·10⁵), or per entry of ``sources``
    (configs or arrays, e.g. a Llama 3.1 config to see its scaled frequencies). The context length is
    marked: pairs whose wavelength exceeds it never complete a turn inside the context, so they carry
    "absolute-ish" slow position information rather than relative offsets.
    """
    named = (
        _named_sources(sources)
        if sources is not None
        else {f"θ={theta:g}": inv_freq_of(rope_config(theta, head_dim)) for theta in thetas}
    )
    if axes is None:
        fig = bare_figure((8.0, 3.2))
        freq_ax, wave_ax = fig.subplots(1, 2)
    else:
        freq_ax, wave_ax = axes
        fig = root_figure(freq_ax)
    for label, inv_freq in named.items():
        pairs = np.arange(inv_freq.size)
        freq_ax.plot(pairs, inv_freq, label=label)
        wave_ax.plot(pairs, 2 * math.pi / inv_freq, label=label)
    freq_ax.set_yscale("log")
    freq_ax.set_xlabel("pair index i (dims 2i, 2i+1)")
    freq_ax.set_ylabel("inverse frequency θ^(−2i/d) (rad / token)")
    freq_ax.set_title("rotation speed", fontsize=10)
    wave_ax.set_yscale("log")
    wave_ax.axhline(context_length, color="0.3", linestyle="--", linewidth=1)
    wave_ax.text(0, context_length * 1.3, f"context {context_length}", fontsize=7, color="0.3")
    wave_ax.set_xlabel("pair index i")
    wave_ax.set_ylabel("wavelength 2π/f (tokens)")
    wave_ax.set_title("tokens per full turn", fontsize=10)
    wave_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _pair_table(table: Any, name: str) -> np.ndarray:
    """Per-pair values [P, d/2] from a Hugging Face table [P, d] (halves equal) or a per-pair table."""
    values = squeeze_to(table, 2, name=name, shape_doc="[P, d] (Hugging Face layout) or [P, d/2] (per pair)")
    half = values.shape[1] // 2
    if values.shape[1] % 2 == 0 and values.shape[0] > 1 and np.allclose(values[:, :half], values[:, half:]):
        return values[:, :half]
    return values


def rope_table(
    cos: Any,
    sin: Any,
    convention: Literal["hf", "meta", "both"] = "both",
    axes: Sequence[Axes] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """The cos and sin tables as position × dimension heatmaps, in one or both layout conventions.

    ``cos``/``sin`` are the model's tables (``rope.hook_cos`` / ``Rotary(cfg)(0, P)``: [P, d], Hugging Face
    layout) or per-pair tables [P, d/2]. Hugging Face pairs dim i with i + d/2, so its table is two copies
    side by side; Meta pairs adjacent dims (2i, 2i+1), so each column appears twice in a row. Same angles,
    different dimension order: this is why q/k weights must be permuted between the two.
    """
    cos_pairs, sin_pairs = _pair_table(cos, "cos"), _pair_table(sin, "sin")
    if cos_pairs.shape != sin_pairs.shape:
        raise ValueError(
            f"cos and sin must have the same shape; got {cos_pairs.shape} and {sin_pairs.shape}."
        )
    block = -(-cos_pairs.shape[0] // MAX_TABLE_ROWS)
    if block > 1:  # average blocks of positions: fast pairs then read as ~0 instead of as moiré
        cos_pairs, sin_pairs = _block_mean(cos_pairs, block), _block_mean(sin_pairs, block)
        note = f"each row: mean over {block} positions"
        title = f"{title} ({note})" if title else note
    layouts = {
        "hf": ("Hugging Face: dim i pairs with i + d/2", "p half -> p (two half)"),
        "meta": ("Meta: dims 2i, 2i+1 pair up", "p half -> p (half two)"),
    }
    if convention == "both":
        chosen = ["hf", "meta"]
    elif convention in layouts:
        chosen = [convention]
    else:
        raise ValueError(f"convention must be 'hf', 'meta' or 'both'; got {convention!r}.")
    if axes is None:
        fig = bare_figure((7.5, 2.6 * len(chosen) + 0.4))
        grid = fig.subplots(len(chosen), 2, squeeze=False)
    else:
        grid = np.asarray(axes, dtype=object).reshape(len(chosen), 2)
        fig = root_figure(grid[0, 0])
    norm = Normalize(-1.0, 1.0)
    cmap = colormap(DIVERGING_CMAP)
    image = None
    for row, key in enumerate(chosen):
        heading, pattern = layouts[key]
        for col, (name, pairs) in enumerate((("cos", cos_pairs), ("sin", sin_pairs))):
            ax = grid[row, col]
            image = ax.imshow(
                repeat(pairs, pattern, two=2), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest"
            )
            ax.set_title(f"{name} — {heading}", fontsize=8)
            ax.set_xlabel("dimension")
            ax.set_ylabel("position")
    fig.colorbar(image, ax=list(grid.ravel()), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _block_mean(table: np.ndarray, block: int) -> np.ndarray:
    """Rows averaged over consecutive blocks of ``block`` positions (the last block may be shorter)."""
    rows = -(-table.shape[0] // block)
    sums = np.add.reduceat(table, np.arange(rows) * block, axis=0)
    counts = np.diff(np.append(np.arange(rows) * block, table.shape[0]))
    return sums / counts[:, None]


def _wrapped_curve(positions: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, angles)`` with a NaN where the angle wraps from 2π to 0, so no line joins the two."""
    wraps = np.flatnonzero(np.diff(angles) < -math.pi) + 1
    return (
        np.insert(positions.astype(float), wraps, np.nan),
        np.insert(angles, wraps, np.nan),
    )


def rope_rotation(
    pair: int | Sequence[int],
    positions: int | Sequence[int] = 32,
    source: RopeSource | None = None,
    axes: Sequence[Axes] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """How RoPE turns one pair of dimensions (2i, 2i+1) as the position grows.

    Left: the unit vector e₀ of each pair rotated to each position (points on the unit circle, coloured by
    position). Right: its angle (mod 2π) against position, drawn at every integer position from the first
    to the last of ``positions`` (never sampled more sparsely: see :data:`MIN_SAMPLES_PER_TURN`): fast
    pairs wrap many times, slow pairs barely move. ``source`` defaults to Llama 3 8B (θ = 5·10⁵, d = 128).
    Rotations come from the model's ``apply_rotary_complex``.
    """
    import torch

    from ..model import apply_rotary_complex

    cfg = source if source is not None else rope_config(5e5, 128)
    inv_freq = inv_freq_of(cfg)
    pairs = [pair] if isinstance(pair, int) else list(pair)
    for p in pairs:
        if not 0 <= p < inv_freq.size:
            raise ValueError(
                f"pair {p} is out of range: this RoPE has {inv_freq.size} pairs (0..{inv_freq.size - 1})."
            )
    pos = np.arange(positions) if isinstance(positions, int) else np.asarray(positions)
    every = np.arange(pos.min(), pos.max() + 1)  # every position the angle curves cover
    unit = torch.zeros(1, len(every), 1, 2 * inv_freq.size)
    unit[..., [2 * p for p in pairs]] = 1.0  # the real part of each chosen pair: e₀
    freqs = torch.as_tensor(inv_freq, dtype=torch.float32)
    rotated_every = to_numpy(apply_rotary_complex(unit, torch.as_tensor(every), freqs))[0, :, 0]  # [P d]
    rotated = rotated_every[pos - pos.min()]

    if axes is None:
        fig = bare_figure((7.5, 3.3))
        circle_ax, angle_ax = fig.subplots(1, 2, width_ratios=(1, 1.4))
    else:
        circle_ax, angle_ax = axes
        fig = root_figure(circle_ax)
    theta = np.linspace(0, 2 * math.pi, 200)
    circle_ax.plot(np.cos(theta), np.sin(theta), color="0.8", linewidth=0.8)
    norm = Normalize(pos.min(), max(pos.max(), pos.min() + 1))
    markers = "osD^v<>"
    points = None
    for n, p in enumerate(pairs):
        x, y = rotated[:, 2 * p], rotated[:, 2 * p + 1]
        points = circle_ax.scatter(
            x, y, c=pos, cmap=SEQUENTIAL_CMAP, norm=norm, s=14, marker=markers[n % 7], label=f"pair {p}"
        )
        curve_x, curve_y = _wrapped_curve(
            every, np.mod(np.arctan2(rotated_every[:, 2 * p + 1], rotated_every[:, 2 * p]), 2 * math.pi)
        )
        angle_ax.plot(
            curve_x,
            curve_y,
            marker="." if len(every) <= 64 else None,
            markersize=3,
            linewidth=0.8,
            label=f"pair {p}: {2 * math.pi / inv_freq[p]:.3g} tokens/turn",
        )
    circle_ax.set_aspect("equal")
    circle_ax.set_xlabel("dim 2i")
    circle_ax.set_ylabel("dim 2i+1")
    circle_ax.set_title("e₀ rotated to each position", fontsize=9)
    if len(pairs) > 1:
        circle_ax.legend(fontsize=6, loc="center")
    fig.colorbar(points, ax=circle_ax, label="position", shrink=0.8)
    angle_ax.set_xlabel("position")
    angle_ax.set_ylabel("angle mod 2π (rad)")
    angle_ax.set_ylim(0, 2 * math.pi)
    angle_ax.legend(fontsize=6, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def rope_score_vs_distance(
    sources: Any = None,
    q: Any = None,
    k: Any = None,
    ax: Axes | None = None,
    *,
    max_distance: int = 8192,
    log_x: bool = True,
    title: str | None = None,
) -> Figure:
    """The score q·k of a fixed query and key placed ``Δ`` positions apart, against Δ.

    RoPE makes the score depend only on Δ. With the default q = k = (1, ..., 1) this is the RoFormer
    long-range decay curve: all pairs agree at Δ = 0 and drift out of phase as Δ grows, faster for small θ.
    Scores are divided by d, so Δ = 0 gives |q||k|/d. ``q``/``k`` [d] are in Meta's pair layout (2i, 2i+1).
    ``sources`` defaults to θ = 10⁴ and θ = 5·10⁵ with d = 128.
    """
    import torch

    from ..model import apply_rotary_complex

    if sources is None:
        sources = [rope_config(1e4), rope_config(5e5)]
    named = _named_sources(sources)
    distances = (
        np.unique(np.geomspace(1, max_distance, 600).astype(int)) if log_x else np.arange(max_distance + 1)
    )
    if log_x:
        distances = np.concatenate([[0], distances])
    fig, ax = new_figure(ax, (5.5, 3.2))
    for label, inv_freq in named.items():
        d = 2 * inv_freq.size
        q_vec = torch.ones(d) if q is None else torch.as_tensor(to_numpy(q, name="q"), dtype=torch.float32)
        k_vec = torch.ones(d) if k is None else torch.as_tensor(to_numpy(k, name="k"), dtype=torch.float32)
        if q_vec.shape != (d,) or k_vec.shape != (d,):
            raise ValueError(
                f"q and k must be vectors of length d = {d} for {label}; got {tuple(q_vec.shape)} "
                f"and {tuple(k_vec.shape)}."
            )
        freqs = torch.as_tensor(inv_freq, dtype=torch.float32)
        # Query at position Δ, key at position 0: the score depends only on the distance.
        rot_q = apply_rotary_complex(q_vec.expand(1, len(distances), 1, d), torch.as_tensor(distances), freqs)
        rot_k = apply_rotary_complex(k_vec.expand(1, 1, 1, d), torch.zeros(1), freqs)
        scores = (rot_q * rot_k).sum(-1)[0, :, 0] / d
        ax.plot(
            np.maximum(distances, 0.8) if log_x else distances, to_numpy(scores), label=label, linewidth=1
        )
    if log_x:
        ax.set_xscale("log")
    ax.axhline(0, color="0.6", linewidth=0.6)
    ax.set_xlabel("relative distance Δ (tokens)" + (" — Δ=0 drawn at 0.8" if log_x else ""))
    ax.set_ylabel("q·k / d")
    ax.set_title(title or "score of a fixed q, k against distance", fontsize=10)
    ax.legend(fontsize=7)
    return fig


_BAND_COLORS = {"unchanged": "#1b9e77", "smoothed": "#d95f02", "divided": "#7570b3"}


def rope_scaling_bands(
    cfg: LlamaConfig | None = None,
    axes: Sequence[Axes] | None = None,
    *,
    theta: float = 5e5,
    head_dim: int = 128,
    rope_scaling: dict[str, Any] | None = None,
    title: str | None = None,
) -> Figure:
    """Llama 3.1's RoPE scaling, pair by pair: new/old frequency ratio, and wavelengths before and after.

    Pairs fall in three bands: short wavelengths (< orig/high_freq_factor) are unchanged, long ones
    (> orig/low_freq_factor) are divided by ``factor``, the ones in between are interpolated smoothly. For
    Llama 3.1 (factor 8, d = 128, θ = 5·10⁵) that is pairs 0-28 unchanged, 29-34 smoothed, 35-63 divided.
    Pass a config with ``rope_scaling`` or the parameters (defaults: Llama 3.1). Frequencies come from the
    ``rope.rope_inv_freq``, the bands from ``rope.rope_pair_regimes``.
    """
    if cfg is None:
        cfg = rope_config(theta, head_dim, dict(rope_scaling or LLAMA31_ROPE_SCALING))
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        raise ValueError(
            f"this config has rope_scaling={cfg.rope_scaling!r}, which is not Llama 3.1-style scaling; "
            "pass a config with rope_scaling={'rope_type': 'llama3', ...}, or no config for Llama 3.1."
        )
    old = inv_freq_of(cfg.replace(rope_scaling=None))
    new = inv_freq_of(cfg)
    ratio = new / old
    factor = float(scaling["factor"])
    bands = np.empty(ratio.size, dtype=object)
    for band, members in cfg.rope_pair_regimes().items():
        bands[members] = band
    pairs = np.arange(ratio.size)

    if axes is None:
        fig = bare_figure((8.0, 3.3))
        ratio_ax, wave_ax = fig.subplots(1, 2)
    else:
        ratio_ax, wave_ax = axes
        fig = root_figure(ratio_ax)
    ratio_ax.bar(pairs, ratio, width=0.85, color=[_BAND_COLORS[b] for b in bands])
    ratio_ax.set_ylim(0, 1.2)
    ratio_ax.set_xlabel("pair index i")
    ratio_ax.set_ylabel("new / old frequency")
    ratio_ax.set_title(f"llama3 scaling, factor {factor:g}", fontsize=10)
    for i in pairs[bands == "smoothed"]:
        ratio_ax.text(
            i, ratio[i] + 0.02, f"{ratio[i]:.4f}", rotation=90, fontsize=6, ha="center", va="bottom"
        )
    handles = [
        Line2D([], [], color=c, linewidth=6, label=f"{band}: pairs {_span(pairs[bands == band])}")
        for band, c in _BAND_COLORS.items()
        if np.any(bands == band)
    ]
    ratio_ax.legend(handles=handles, fontsize=7, loc="upper right")

    original = float(scaling["original_max_position_embeddings"])
    wave_ax.plot(pairs, 2 * math.pi / old, color="0.5", linestyle="--", label="before")
    wave_ax.scatter(
        pairs, 2 * math.pi / new, c=[_BAND_COLORS[b] for b in bands], s=10, label="after", zorder=3
    )
    for value, text in (
        (original / scaling["high_freq_factor"], "orig / high_freq_factor"),
        (original / scaling["low_freq_factor"], "orig / low_freq_factor"),
    ):
        wave_ax.axhline(value, color="0.3", linewidth=0.7, linestyle=":")
        wave_ax.text(0, value * 1.15, f"{text} = {value:g}", fontsize=6, color="0.3")
    wave_ax.set_yscale("log")
    wave_ax.set_xlabel("pair index i")
    wave_ax.set_ylabel("wavelength (tokens)")
    wave_ax.set_title("wavelengths before and after", fontsize=10)
    wave_ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _span(indices: np.ndarray) -> str:
    return f"{indices.min()}-{indices.max()}" if indices.size > 1 else f"{indices.min()}"
