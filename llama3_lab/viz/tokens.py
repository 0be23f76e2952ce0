"""Token-level figures: top-k probability bars and a strip of tokens coloured by a per-token value."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ._common import (
    SEQUENTIAL_CMAP,
    colormap,
    display_token,
    new_figure,
    parse_window,
    root_figure,
    squeeze_to,
    symmetric_limits,
    text_color_for,
)

_BAR_COLOR = "#4c72b0"
_HIGHLIGHT_COLOR = "#dd8452"


def topk_bars(
    token_strings: Sequence[str],
    probs: Any,
    ax: Axes | None = None,
    highlight: int | str | Collection[int | str] | None = None,
    *,
    title: str | None = None,
    xlabel: str = "probability",
    max_chars: int = 20,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Horizontal bars of the top-k candidates, most likely on top, each labelled with its value.

    ``highlight`` marks bars in a second colour: a rank (int), a token string, or a collection of either
    (e.g. the token that was actually sampled, or the correct answer).
    """
    values = squeeze_to(probs, 1, name="probs", shape_doc="[k]")
    if len(token_strings) != values.size:
        raise ValueError(f"token_strings has {len(token_strings)} entries but probs has {values.size}.")
    if highlight is None:
        marks: set[int | str] = set()
    elif isinstance(highlight, (int, str)):
        marks = {highlight}
    else:
        marks = set(highlight)
    highlighted = [i in marks or token_strings[i] in marks for i in range(values.size)]
    fig, ax = new_figure(ax, figsize or (4.5, float(np.clip(0.28 * values.size + 0.9, 1.8, 8.0))))
    rank = np.arange(values.size)
    colors = [_HIGHLIGHT_COLOR if h else _BAR_COLOR for h in highlighted]
    ax.barh(rank, values, color=colors, height=0.75)
    ax.set_yticks(rank, [display_token(t, max_chars=max_chars) for t in token_strings], fontsize=8)
    ax.invert_yaxis()  # rank 0 on top
    top = float(np.nanmax(values)) if values.size else 1.0
    for i, value in enumerate(values):
        ax.text(value + 0.01 * top, i, f"{value:.3f}", va="center", fontsize=7)
    ax.set_xlim(0, top * 1.18 if top > 0 else 1.0)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def token_strip(
    tokens: Sequence[str],
    values: Any,
    cmap: str | Colormap | None = None,
    ax: Axes | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    *,
    center: float | None = None,
    chars_per_row: int = 80,
    window: tuple[int, int] | slice | None = None,
    max_tokens: int = 512,
    label: str = "value",
    fontsize: float = 8.0,
    colorbar: bool = True,
    title: str | None = None,
) -> Figure:
    """The text as a strip of token boxes, each coloured by one value (loss, attention from a query, a
    neuron's activation...), wrapped onto rows of about ``chars_per_row`` characters.

    Pass ``center=0`` for signed values: the map becomes diverging with symmetric limits. NaN values are
    greyed out. ``window=(start, stop)`` shows part of a long sequence; at most ``max_tokens`` tokens are
    drawn (one text per token is what costs time and bytes), and the title says when the rest were left out.
    """
    scores = squeeze_to(values, 1, name="values", shape_doc="[P] (one value per token)")
    if len(tokens) != scores.size:
        raise ValueError(
            f"tokens has {len(tokens)} entries but values has {scores.size}; pass one value per token."
        )
    p0, p1 = parse_window(window, scores.size, name="window")
    clipped = p1 - p0 > max_tokens
    if clipped:
        note = f"tokens {p0}-{p0 + max_tokens - 1} of {p0}-{p1 - 1}: pass window=(start, stop) for the rest"
        title = f"{title}\n{note}" if title else note
        p1 = p0 + max_tokens
    labels = [display_token(t, max_chars=24) for t in tokens[p0:p1]]
    shown = np.ma.masked_invalid(scores[p0:p1])
    if center is not None:
        low, high = symmetric_limits(
            shown.filled(np.nan) - center,
            None if vmin is None else vmin - center,
            None if vmax is None else vmax - center,
        )
        norm = Normalize(center + low, center + high)
        cmap = cmap or "RdBu_r"
    else:
        finite = shown.compressed()
        norm = Normalize(
            vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0),
            vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0),
        )
        cmap = cmap or SEQUENTIAL_CMAP
    cmap_obj = colormap(cmap)

    # Lay the boxes out in character units: x across, one row per line, rows counted downward.
    boxes: list[tuple[float, int, float]] = []
    x, row = 0.0, 0
    for text in labels:
        width = max(len(text), 1) + 0.8
        if x > 0 and x + width > chars_per_row:
            x, row = 0.0, row + 1
        boxes.append((x, row, width))
        x += width + 0.2
    n_rows = row + 1
    char_in = fontsize * 0.62 / 72  # width of one monospace character, in inches
    fig, ax = new_figure(
        ax, ((chars_per_row + 1) * char_in + (1.2 if colorbar else 0.3), n_rows * fontsize * 2.0 / 72 + 0.6)
    )
    rects = [Rectangle((bx, by - 0.42), width, 0.84) for bx, by, width in boxes]
    collection = PatchCollection(rects, cmap=cmap_obj, norm=norm, edgecolor="white", linewidth=0.5)
    collection.set_array(shown)
    ax.add_collection(collection)
    for (bx, by, width), text, value in zip(boxes, labels, shown):
        color = "black" if np.ma.is_masked(value) else text_color_for(cmap_obj(norm(value)))
        ax.text(
            bx + width / 2,
            by,
            text,
            ha="center",
            va="center",
            fontsize=fontsize,
            family="monospace",
            color=color,
        )
    ax.set_xlim(-0.2, chars_per_row + 0.2)
    ax.set_ylim(n_rows - 0.5, -0.5)
    ax.set_axis_off()
    if colorbar:
        root_figure(ax).colorbar(
            collection, ax=ax, label=label, shrink=0.9 if n_rows > 3 else 1.0, fraction=0.05, pad=0.02
        )
    if title:
        ax.set_title(title, fontsize=10)
    return fig
