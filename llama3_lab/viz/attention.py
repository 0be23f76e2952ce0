"""Attention figures: one head's pattern, all heads of a layer, and layer × head score maps.

Patterns are ``[Pq, Pk]`` probabilities (``blocks.{l}.attn.hook_pattern[b, h]``). Future keys, which the
causal mask removed, are drawn in grey rather than as probability 0, so "masked" and "ignored" look
different. Long prompts are pooled into square blocks (:func:`downsample_pattern`) before drawing, so a
2,048-token pattern renders as fast as a 256-token one; the axes keep absolute positions either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from ._common import (
    DEFAULT_DPI,
    SEQUENTIAL_CMAP,
    LabFigure,
    colormap,
    new_figure,
    parse_window,
    root_figure,
    set_token_ticks,
    squeeze_to,
    symmetric_limits,
    text_color_for,
    token_labels,
)

Reduce = Literal["max", "mean", "sum"]


class PooledPattern(NamedTuple):
    """A pattern pooled into ``block × block`` cells: ``values[i, j]`` covers queries ``i*block ..`` and keys
    ``j*block ..`` (relative to the window it was cut from); fully masked blocks stay masked."""

    values: np.ma.MaskedArray
    block: int


def mask_future(pattern: Any, *, query_offset: int | None = None) -> np.ma.MaskedArray:
    """``pattern [Pq, Pk]`` as a masked array with future keys (and any non-finite value) masked.

    Query ``i`` sits at absolute position ``query_offset + i``; by default ``Pk - Pq``, which is right both
    for a full prompt (offset 0) and for new tokens appended to a KV cache.
    """
    values = squeeze_to(pattern, 2, name="pattern", shape_doc="[Pq, Pk] (one head)")
    n_q, n_k = values.shape
    offset = n_k - n_q if query_offset is None else query_offset
    query_pos = offset + np.arange(n_q)[:, None]
    key_pos = np.arange(n_k)[None, :]
    return np.ma.masked_array(values, mask=(key_pos > query_pos) | ~np.isfinite(values))


def downsample_pattern(pattern: Any, max_size: int = 512, *, reduce: Reduce = "max") -> PooledPattern:
    """Pool ``pattern [Pq, Pk]`` into square blocks so that neither side exceeds ``max_size`` cells.

    ``reduce="max"`` (default) keeps sharp features visible (a single strong key, an induction stripe);
    ``"mean"`` is the average attention in the block; ``"sum"`` sums over keys and averages over queries, so
    each pooled row still sums to 1. Masked cells (see :func:`mask_future`) are ignored; a block with no
    unmasked cell stays masked. A pattern that already fits is returned unchanged with ``block == 1``.
    """
    values = pattern if isinstance(pattern, np.ma.MaskedArray) else mask_future(pattern)
    if values.ndim != 2:
        raise ValueError(f"pattern must have shape [Pq, Pk]; got shape {tuple(values.shape)}.")
    if max_size < 1:
        raise ValueError(f"max_size must be a positive number of cells; got {max_size}.")
    n_q, n_k = values.shape
    block = max(1, math.ceil(max(n_q, n_k) / max_size))
    if block == 1:
        return PooledPattern(values, 1)
    if reduce not in ("max", "mean", "sum"):
        raise ValueError(f"reduce must be 'max', 'mean' or 'sum'; got {reduce!r}.")
    rows, cols = math.ceil(n_q / block), math.ceil(n_k / block)
    # Plain arrays (masked-array reductions are ~10x slower): padding counts as masked.
    visible = np.zeros((rows * block, cols * block), dtype=bool)
    visible[:n_q, :n_k] = ~np.ma.getmaskarray(values)
    data = np.zeros(visible.shape, dtype=values.dtype)
    data[:n_q, :n_k] = values.filled(0.0)
    shape = (rows, block, cols, block)
    counts = visible.reshape(shape).sum(axis=(1, 3))
    if reduce == "max":
        pooled = np.where(visible, data, -np.inf).reshape(shape).max(axis=(1, 3))
    elif reduce == "mean":
        pooled = data.reshape(shape).sum(axis=(1, 3)) / np.maximum(counts, 1)
    else:  # sum over keys, mean over the queries that exist
        query_counts = visible.reshape(shape).any(axis=3).sum(axis=1)
        pooled = data.reshape(shape).sum(axis=(1, 3)) / np.maximum(query_counts, 1)
    return PooledPattern(np.ma.masked_array(pooled, mask=counts == 0), block)


def _windowed(
    pattern: Any,
    query_window: tuple[int, int] | slice | None,
    key_window: tuple[int, int] | slice | None,
    query_offset: int | None,
) -> tuple[np.ma.MaskedArray, int, int, int]:
    """The masked window of a pattern and its absolute origin: (values, q_start, k_start, offset)."""
    full = squeeze_to(pattern, 2, name="pattern", shape_doc="[Pq, Pk] (one head)")
    n_q, n_k = full.shape
    offset = n_k - n_q if query_offset is None else query_offset
    masked = mask_future(full, query_offset=offset)
    q0, q1 = parse_window(query_window, n_q, name="query_window")
    # By default show every key that the last shown query can see.
    default_keys = (0, min(n_k, offset + q1)) if key_window is None else key_window
    k0, k1 = parse_window(default_keys, n_k, name="key_window")
    return masked[q0:q1, k0:k1], q0, k0, offset


def _draw_pattern(
    ax: Axes,
    values: np.ma.MaskedArray,
    *,
    q_start: int,
    k_start: int,
    offset: int,
    tokens: Sequence[str] | None,
    max_size: int,
    reduce: Reduce,
    cmap: Colormap,
    norm: Normalize,
    label_x: bool,
    label_y: bool,
    fontsize: float,
    max_chars: int,
) -> Any:
    pooled, block = downsample_pattern(values, max_size, reduce=reduce)
    rows, cols = pooled.shape
    # Data coordinates are absolute key/query positions, whatever the pooling.
    extent = (
        k_start - 0.5,
        k_start + cols * block - 0.5,
        offset + q_start + rows * block - 0.5,
        offset + q_start - 0.5,
    )
    image = ax.imshow(pooled, cmap=cmap, norm=norm, extent=extent, interpolation="nearest", aspect="auto")
    n_q, n_k = values.shape
    for axis, n, start, wanted in (("x", n_k, k_start, label_x), ("y", n_q, q_start, label_y)):
        absolute = start if axis == "x" else offset + start
        if not wanted:
            (ax.set_xticks if axis == "x" else ax.set_yticks)([])
            continue
        if block == 1:
            labels = token_labels(tokens, n, start=absolute, max_chars=max_chars)
            set_token_ticks(
                ax, axis, labels, positions=absolute + np.arange(n), fontsize=fontsize, first_index=absolute
            )
        else:
            starts = absolute + block * np.arange(math.ceil(n / block))
            set_token_ticks(
                ax, axis, [str(p) for p in starts], positions=starts, fontsize=fontsize, numbered=False
            )
    suffix = "" if block == 1 else f" (blocks of {block}, {reduce})"
    return image, suffix


def attention_pattern(
    pattern: Any,
    tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    query_window: tuple[int, int] | slice | None = None,
    key_window: tuple[int, int] | slice | None = None,
    query_offset: int | None = None,
    max_size: int = 256,
    reduce: Reduce = "max",
    cmap: str | Colormap = SEQUENTIAL_CMAP,
    vmax: float | None = None,
    colorbar: bool = True,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One head's attention pattern ``[Pq, Pk]``: queries down, keys across, future keys greyed out.

    ``tokens`` are the display strings of the key positions (``tok.token_strings(ids)``); queries use the
    same list shifted by ``query_offset`` (default ``Pk - Pq``, right for a KV-cache step). ``query_window``
    ``(start, stop)`` selects query rows (keys default to all that those queries can see) so a 2,048-token
    prompt can be read a slice at a time; whatever remains larger than ``max_size`` is pooled into blocks
    (``reduce`` = "max" | "mean" | "sum"). The colour scale runs from 0 to ``vmax`` (default: the largest
    shown probability).
    """
    values, q0, k0, offset = _windowed(pattern, query_window, key_window, query_offset)
    if figsize is None:
        side = float(np.clip(0.16 * max(values.shape), 3.0, 6.0))
        figsize = (side + 1.2, side)
    fig, ax = new_figure(ax, figsize)
    top = float(values.max()) if values.count() else 1.0
    norm = Normalize(vmin=0.0, vmax=vmax if vmax is not None else (top or 1.0))
    image, suffix = _draw_pattern(
        ax,
        values,
        q_start=q0,
        k_start=k0,
        offset=offset,
        tokens=tokens,
        max_size=max_size,
        reduce=reduce,
        cmap=colormap(cmap),
        norm=norm,
        label_x=True,
        label_y=True,
        fontsize=7.0,
        max_chars=16,
    )
    ax.set_xlabel("key position" + suffix)
    ax.set_ylabel("query position" + suffix)
    if title:
        ax.set_title(title)
    if colorbar:
        root_figure(ax).colorbar(image, ax=ax, label="attention probability", shrink=0.85)
    return fig


def attention_heads_grid(
    patterns: Any,
    tokens: Sequence[str] | None = None,
    axes: Sequence[Axes] | None = None,
    *,
    title: str | None = None,
    head_labels: Sequence[str] | None = None,
    ncols: int | None = None,
    query_window: tuple[int, int] | slice | None = None,
    key_window: tuple[int, int] | slice | None = None,
    query_offset: int | None = None,
    max_size: int = 128,
    reduce: Reduce = "max",
    cmap: str | Colormap = SEQUENTIAL_CMAP,
    vmax: float | None = None,
    panel_size: float | None = None,
) -> Figure:
    """All heads of one layer, ``patterns [H, Pq, Pk]``, as a compact grid with ONE shared colour scale.

    The scale runs from 0 to ``vmax`` (default: the largest shown probability of any head), so heads are
    comparable at a glance; one colourbar serves the whole grid. Token labels appear only on the left column
    and the bottom row. Each panel is pooled to at most ``max_size`` cells a side (see
    :func:`downsample_pattern`). Pass ``axes`` (at least H of them) to draw into an existing layout.
    """
    stack = squeeze_to(patterns, 3, name="patterns", shape_doc="[H, Pq, Pk] (one layer)")
    n_heads = stack.shape[0]
    windows = [_windowed(stack[h], query_window, key_window, query_offset) for h in range(n_heads)]
    shown_max = max((float(w[0].max()) for w in windows if w[0].count()), default=1.0)
    norm = Normalize(vmin=0.0, vmax=vmax if vmax is not None else (shown_max or 1.0))
    cmap_obj = colormap(cmap)

    if axes is None:
        panel_size = panel_size or (1.5 if n_heads <= 16 else 1.1)  # inches; 32 heads stay one screen
        ncols = ncols or math.ceil(math.sqrt(n_heads))
        nrows = math.ceil(n_heads / ncols)
        # A fixed layout (margins in inches) instead of constrained layout: with 32 panels the layout
        # solver would take as long as the drawing itself, and widgets redraw often.
        left, right, bottom, top = 0.85, 0.95, 0.8, 0.3 + (0.25 if title else 0.0)
        width, height = panel_size * ncols + left + right, (panel_size + 0.18) * nrows + bottom + top
        fig = LabFigure(figsize=(width, height), dpi=DEFAULT_DPI)
        grid = fig.subplots(
            nrows,
            ncols,
            squeeze=False,
            gridspec_kw=dict(
                left=left / width,
                right=1 - right / width,
                bottom=bottom / height,
                top=1 - top / height,
                wspace=0.08,
                hspace=0.18 / panel_size + 0.05,
            ),
        )
        panel_axes = list(grid.ravel())
        for extra in panel_axes[n_heads:]:
            extra.set_axis_off()
        colorbar_ax = fig.add_axes(
            (1 - (right - 0.2) / width, bottom / height, 0.12 / width, 1 - (bottom + top) / height)
        )
    else:
        colorbar_ax = None
        panel_axes = list(axes)
        if len(panel_axes) < n_heads:
            raise ValueError(f"axes has {len(panel_axes)} Axes but patterns has {n_heads} heads.")
        ncols = ncols or len(panel_axes)
        fig = root_figure(panel_axes[0])
    nrows = math.ceil(n_heads / ncols)

    image = None
    suffix = ""
    for h, (values, q0, k0, offset) in enumerate(windows):
        ax = panel_axes[h]
        row, col = divmod(h, ncols)
        on_left, on_bottom = col == 0, row == nrows - 1 or h + ncols >= n_heads
        image, suffix = _draw_pattern(
            ax,
            values,
            q_start=q0,
            k_start=k0,
            offset=offset,
            tokens=tokens,
            max_size=max_size,
            reduce=reduce,
            cmap=cmap_obj,
            norm=norm,
            label_x=on_bottom,
            label_y=on_left,
            fontsize=5.5,
            max_chars=10,
        )
        ax.set_title(head_labels[h] if head_labels is not None else f"head {h}", fontsize=7, pad=2)
        ax.tick_params(length=2, pad=1)
    label = "attention probability" + suffix
    if colorbar_ax is not None:
        fig.colorbar(image, cax=colorbar_ax, label=label)
    else:
        fig.colorbar(image, ax=panel_axes[:n_heads], label=label, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / fig.get_size_inches()[1])
    return fig


def head_score_heatmap(
    scores: Any,
    title: str | None = None,
    cmap: str | Colormap | None = None,
    ax: Axes | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    center: float | None = None,
    label: str = "score",
    annotate: bool | None = None,
    fmt: str = ".2f",
    layer_labels: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A layer × head map of one score per head, ``scores [L, H]`` (entropy, sink mass, induction...).

    Layer 0 is the top row, as in a table. Pass ``center=0`` for signed scores: the map becomes diverging
    (``RdBu_r``) with limits symmetric about 0. NaN scores (undefined for a head) are greyed out.
    ``annotate`` writes each value in its cell (default: when the grid has at most 200 cells).
    """
    values = np.ma.masked_invalid(squeeze_to(scores, 2, name="scores", shape_doc="[L, H] (layers × heads)"))
    n_layers, n_heads = values.shape
    if figsize is None:
        figsize = (
            float(np.clip(0.3 * n_heads + 1.8, 3.5, 9.0)),
            float(np.clip(0.25 * n_layers + 1.0, 2.5, 8.0)),
        )
    fig, ax = new_figure(ax, figsize)
    if center is not None:
        low, high = symmetric_limits(
            values.filled(np.nan) - center,
            None if vmin is None else vmin - center,
            None if vmax is None else vmax - center,
        )
        norm = Normalize(vmin=center + low, vmax=center + high)
        cmap = cmap or "RdBu_r"
    else:
        norm = Normalize(vmin=vmin, vmax=vmax)
        cmap = cmap or SEQUENTIAL_CMAP
    cmap_obj = colormap(cmap)
    image = ax.imshow(values, cmap=cmap_obj, norm=norm, interpolation="nearest", aspect="auto")
    set_token_ticks(ax, "x", [str(h) for h in range(n_heads)], fontsize=7, rotation=0)
    set_token_ticks(
        ax, "y", list(layer_labels) if layer_labels else [str(l) for l in range(n_layers)], fontsize=7
    )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    root_figure(ax).colorbar(image, ax=ax, label=label)
    if annotate is None:
        annotate = n_layers * n_heads <= 200
    if annotate:
        for (layer, head), value in np.ndenumerate(values.filled(np.nan)):
            if np.isfinite(value):
                color = text_color_for(cmap_obj(norm(value)))
                ax.text(head, layer, format(value, fmt), ha="center", va="center", fontsize=6, color=color)
    return fig
