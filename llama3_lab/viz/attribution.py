"""Figures for circuit analysis: attribution against actual patching, effects with their confidence
intervals, and per-token attributions over the prompt.

- :func:`attribution_scatter`: one point per component (e.g. each head), the linear estimate against the
  measured effect, with the identity line and Pearson's correlation;
- :func:`effect_ci_heatmap`: a layer × head (or layer × position) map of mean effects, hatching each cell
  whose confidence interval contains 0 and writing the mean and half-width in the cells that do not;
- :func:`token_attribution`: the prompt's tokens along the x axis, one signed bar each (integrated
  gradients, gradient × input), with the completeness check in the title when the target change is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ._common import (
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    colormap,
    new_figure,
    root_figure,
    set_token_ticks,
    squeeze_to,
    symmetric_limits,
    text_color_for,
    to_numpy,
    token_labels,
)

_POINT_COLOR = "#4c72b0"
_HATCH_COLOR = "0.55"


def pearson_r(x: Any, y: Any) -> float:
    """Pearson's correlation of two equally long sets of numbers (NaN pairs dropped)."""
    a, b = to_numpy(x, name="x").ravel(), to_numpy(y, name="y").ravel()
    if a.size != b.size:
        raise ValueError(f"x has {a.size} values and y has {b.size}; pass one of each per component.")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep].astype(np.float64), b[keep].astype(np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def attribution_scatter(
    estimate: Any,
    actual: Any,
    labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    xlabel: str = "actual patching",
    ylabel: str = "attribution patching",
    color_by: Any = None,
    color_label: str = "layer",
    annotate: int = 5,
    figsize: tuple[float, float] = (5.0, 4.2),
) -> Figure:
    """The linear estimate (y) against the measured effect (x) of each component, with ``y = x``.

    ``estimate`` and ``actual`` have the same shape, e.g. ``[L, H]`` (one value per head); they are
    flattened in the same order. Points on the dashed identity line are estimated exactly; the legend
    gives Pearson's r. Points are coloured by ``color_by`` (default: the row index of a 2-D input, i.e.
    the layer) on a sequential map; the ``annotate`` points with the largest ``|actual|`` are labelled with
    ``labels`` (default for a 2-D input: ``"layer.head"``).
    """
    est, act = to_numpy(estimate, name="estimate"), to_numpy(actual, name="actual")
    if est.shape != act.shape:
        raise ValueError(
            f"estimate has shape {tuple(est.shape)} and actual {tuple(act.shape)}; pass one value of each "
            "per component, in the same order (e.g. both [layers, heads])."
        )
    if labels is None and est.ndim == 2:
        labels = [f"{row}.{col}" for row in range(est.shape[0]) for col in range(est.shape[1])]
    if color_by is None and est.ndim == 2:
        color_by = np.repeat(np.arange(est.shape[0]), est.shape[1])
    x, y = act.ravel(), est.ravel()
    if labels is not None and len(labels) != x.size:
        raise ValueError(f"labels has {len(labels)} entries for {x.size} components; pass one per component.")
    fig, ax = new_figure(ax, figsize)
    r = pearson_r(x, y)
    if color_by is not None:
        shade = to_numpy(color_by, name="color_by").ravel()
        points = ax.scatter(x, y, c=shade, cmap=SEQUENTIAL_CMAP, s=14, alpha=0.85, linewidths=0)
        root_figure(ax).colorbar(points, ax=ax, label=color_label)
    else:
        ax.scatter(x, y, color=_POINT_COLOR, s=14, alpha=0.85, linewidths=0)
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "--", color="0.5", linewidth=1, label="y = x")
    ax.plot([], [], " ", label=f"Pearson r = {r:.3f}")
    ax.axhline(0, color="0.85", linewidth=0.6, zorder=0)
    ax.axvline(0, color="0.85", linewidth=0.6, zorder=0)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal", adjustable="box")
    if labels is not None and annotate > 0:
        order = np.argsort(-np.nan_to_num(np.abs(x), nan=-1.0))[:annotate]
        for i in order:
            ax.annotate(labels[i], (x[i], y[i]), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def effect_ci_heatmap(
    mean: Any,
    low: Any,
    high: Any,
    title: str | None = None,
    ax: Axes | None = None,
    *,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    xlabel: str = "head",
    ylabel: str = "layer",
    label: str = "effect",
    confidence: float = 0.95,
    cmap: str | Colormap | None = None,
    annotate: bool | None = None,
    annotate_min: float = 0.0,
    fmt: str = ".2f",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Mean effects ``[rows, columns]`` on a diverging map centred at 0, with their intervals.

    ``low`` and ``high`` bound each cell's interval (e.g. a bootstrap's, from ``analysis.bootstrap_ci``).
    A cell whose interval contains 0 is hatched: the data do not tell its effect from none. The other
    cells get their mean (``fmt``) and the interval's half-width (2 significant digits) written in them
    (``annotate``; only those with ``|mean| >= annotate_min``; by default when at most 60 cells qualify, so
    the text stays readable). Row 0 is on top, as in a table.
    ``x_labels`` are token strings for a layer × position map (shown with whitespace visible).
    """
    shape_doc = "[rows, columns] (e.g. layers × heads)"
    values = squeeze_to(mean, 2, name="mean", shape_doc=shape_doc)
    lower = squeeze_to(low, 2, name="low", shape_doc=shape_doc)
    upper = squeeze_to(high, 2, name="high", shape_doc=shape_doc)
    if not values.shape == lower.shape == upper.shape:
        raise ValueError(
            f"mean, low and high must have one shape; got {values.shape}, {lower.shape}, {upper.shape}."
        )
    if np.any(lower > upper + 1e-12):
        raise ValueError("low must not exceed high: pass the interval's lower bound first.")
    n_rows, n_cols = values.shape
    if figsize is None:
        width = float(np.clip(0.42 * n_cols + 2.0, 3.5, 9.0))
        figsize = (width, float(np.clip(0.2 * n_rows + 1.2, 2.5, 8.0)))
    fig, ax = new_figure(ax, figsize)
    low_lim, high_lim = symmetric_limits(values, None, None)
    norm = Normalize(low_lim, high_lim)
    cmap_obj = colormap(cmap or DIVERGING_CMAP)
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap=cmap_obj, norm=norm, interpolation="nearest", aspect="auto")
    contains_zero = (lower <= 0) & (upper >= 0)
    hatched = [
        Rectangle((col - 0.5, row - 0.5), 1, 1) for row, col in zip(*np.nonzero(contains_zero), strict=True)
    ]
    if hatched:
        ax.add_collection(
            PatchCollection(
                hatched, facecolor="none", edgecolor=_HATCH_COLOR, hatch="///", linewidth=0, alpha=0.5
            )
        )
    written = ~contains_zero & np.isfinite(values) & (np.abs(values) >= annotate_min)
    if annotate is None:
        annotate = int(written.sum()) <= 60
    if annotate:
        half = (upper - lower) / 2
        for row, col in zip(*np.nonzero(written), strict=True):
            color = text_color_for(cmap_obj(norm(values[row, col])))
            text = f"{format(values[row, col], fmt)}\n±{half[row, col]:.2g}"
            ax.text(col, row, text, ha="center", va="center", fontsize=5.5, color=color, linespacing=0.9)
    columns = token_labels(x_labels, n_cols, max_chars=10) if x_labels is not None else None
    set_token_ticks(ax, "x", columns or [str(c) for c in range(n_cols)], fontsize=7, rotation=None)
    set_token_ticks(ax, "y", list(y_labels) if y_labels else [str(r) for r in range(n_rows)], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    root_figure(ax).colorbar(image, ax=ax, label=label)
    ax.legend(
        handles=[
            Patch(
                facecolor="white",
                edgecolor=_HATCH_COLOR,
                hatch="///",
                label=f"{100 * confidence:g}% interval contains 0",
            )
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 if columns is None else -0.28),
        fontsize=7,
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def token_attribution(
    tokens: Sequence[str],
    values: Any,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    label: str = "attribution",
    target_change: float | None = None,
    cmap: str | Colormap | None = None,
    annotate: bool | None = None,
    max_chars: int = 12,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One signed bar per prompt token (``values [P]``), coloured on a diverging map centred at 0.

    The x axis is the prompt itself (tokens with whitespace visible). With ``target_change`` = f(x) − f(x′)
    the title adds the completeness check: the bars' sum beside the change they should add up to.
    Values are written at the bars' ends when there are at most 40 tokens (``annotate``).
    """
    scores = squeeze_to(values, 1, name="values", shape_doc="[P] (one value per token)")
    if len(tokens) != scores.size:
        raise ValueError(
            f"tokens has {len(tokens)} entries but values has {scores.size}; pass one value per token."
        )
    n = scores.size
    fig, ax = new_figure(ax, figsize or (float(np.clip(0.42 * n + 1.5, 4.0, 9.0)), 3.0))
    low, high = symmetric_limits(scores, None, None)
    norm = Normalize(low, high)
    cmap_obj = colormap(cmap or DIVERGING_CMAP)
    finite = np.nan_to_num(scores, nan=0.0)
    ax.bar(np.arange(n), finite, color=[cmap_obj(norm(v)) for v in finite], edgecolor="0.4", linewidth=0.4)
    ax.axhline(0, color="0.4", linewidth=0.6)
    if annotate is None:
        annotate = n <= 40
    if annotate:
        span = (high - low) or 1.0
        for i, value in enumerate(finite):
            offset = 0.02 * span if value >= 0 else -0.02 * span
            va = "bottom" if value >= 0 else "top"
            ax.text(i, value + offset, f"{value:.2f}", ha="center", va=va, fontsize=6)
    margin = 0.12 * (high - low or 1.0)
    ax.set_ylim(min(0.0, float(finite.min())) - margin, max(0.0, float(finite.max())) + margin)
    set_token_ticks(ax, "x", token_labels(list(tokens), n, max_chars=max_chars), fontsize=7)
    ax.set_ylabel(label)
    ax.spines[["top", "right"]].set_visible(False)
    heading = title or ""
    if target_change is not None:
        check = f"sum {float(np.nansum(scores)):.3f} vs f(x) − f(x′) = {target_change:.3f}"
        heading = f"{heading}\n{check}" if heading else check
    if heading:
        ax.set_title(heading, fontsize=10)
    return fig
