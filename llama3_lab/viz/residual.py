"""Residual-stream figures: norms per layer and position, and the logit lens.

Both put depth on the vertical axis growing upward (the embedding at the bottom, the output at the top),
the way the residual stream is usually drawn, with positions across.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.figure import Figure

from ._common import (
    SEQUENTIAL_CMAP,
    colormap,
    display_token,
    new_figure,
    parse_window,
    root_figure,
    set_token_ticks,
    squeeze_to,
    text_color_for,
    token_labels,
)


def _layer_labels(layer_labels: Sequence[str] | None, n_layers: int) -> list[str]:
    if layer_labels is None:
        return [str(layer) for layer in range(n_layers)]
    if len(layer_labels) != n_layers:
        raise ValueError(f"layer_labels has {len(layer_labels)} entries but the data has {n_layers} layers.")
    return [str(label) for label in layer_labels]


def residual_norms(
    norms: Any,
    tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    *,
    kind: Literal["heatmap", "lines"] = "heatmap",
    log: bool = True,
    layer_labels: Sequence[str] | None = None,
    position_window: tuple[int, int] | slice | None = None,
    cmap: str | Colormap = SEQUENTIAL_CMAP,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The residual-stream norm ‖x‖ at each layer (rows of ``norms [L, P]``) and position.

    ``kind="heatmap"``: layers upward × positions across, on a log colour scale by default (the first token
    of a Llama prompt often has a norm tens of times the others, which a linear scale would make the only
    thing visible). ``kind="lines"``: one line per position against layer, coloured by position.
    ``layer_labels`` names the rows (e.g. ``["embed", "0", ...]`` when the first row is ``hook_embed``).
    """
    values = squeeze_to(norms, 2, name="norms", shape_doc="[L, P] (layers × positions)")
    n_layers, n_pos = values.shape
    p0, p1 = parse_window(position_window, n_pos, name="position_window")
    values = values[:, p0:p1]
    rows = _layer_labels(layer_labels, n_layers)
    labels = token_labels(tokens, p1 - p0, start=p0)
    masked = np.ma.masked_invalid(values)
    if log:
        masked = np.ma.masked_less_equal(masked, 0)
    positive = masked.compressed()
    low, high = (float(positive.min()), float(positive.max())) if positive.size else (1.0, 10.0)
    norm = LogNorm(low, max(high, low * 1.01)) if log else Normalize(low, high)
    cmap_obj = colormap(cmap)

    if kind == "heatmap":
        if figsize is None:
            figsize = (
                float(np.clip(0.22 * (p1 - p0) + 2.0, 4.0, 12.0)),
                float(np.clip(0.18 * n_layers + 1.8, 3.0, 8.0)),
            )
        fig, ax = new_figure(ax, figsize)
        extent = (p0 - 0.5, p1 - 0.5, -0.5, n_layers - 0.5)
        image = ax.imshow(
            masked,
            cmap=cmap_obj,
            norm=norm,
            origin="lower",
            extent=extent,
            aspect="auto",
            interpolation="nearest",
        )
        set_token_ticks(ax, "x", labels, positions=np.arange(p0, p1), first_index=p0)
        set_token_ticks(ax, "y", rows)
        ax.set_xlabel("position")
        ax.set_ylabel("layer")
        root_figure(ax).colorbar(image, ax=ax, label="‖residual‖" + (" (log scale)" if log else ""))
    elif kind == "lines":
        fig, ax = new_figure(ax, figsize or (6.0, 3.5))
        pos_norm = Normalize(p0, max(p1 - 1, p0 + 1))
        line_cmap = colormap(cmap)
        for offset, label in enumerate(labels):
            position = p0 + offset
            ax.plot(
                np.arange(n_layers),
                values[:, offset],
                color=line_cmap(pos_norm(position)),
                linewidth=1,
                label=f"{position} {label}",
            )
        if log:
            ax.set_yscale("log")
        set_token_ticks(ax, "x", rows, rotation=0)
        ax.set_xlabel("layer")
        ax.set_ylabel("‖residual‖")
        if p1 - p0 <= 12:
            ax.legend(fontsize=7, ncols=2)
        else:
            mappable = ax.scatter([], [], c=[], cmap=line_cmap, norm=pos_norm)
            root_figure(ax).colorbar(mappable, ax=ax, label="position")
    else:
        raise ValueError(f"kind must be 'heatmap' or 'lines'; got {kind!r}.")
    if title:
        ax.set_title(title)
    return fig


def logit_lens_heatmap(
    values: Any,
    top_tokens: Sequence[Sequence[str]] | None = None,
    tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    *,
    kind: Literal["auto", "prob", "logprob"] = "auto",
    layer_labels: Sequence[str] | None = None,
    position_window: tuple[int, int] | slice | None = None,
    cmap: str | Colormap = SEQUENTIAL_CMAP,
    max_chars: int = 7,
    min_fontsize: float = 4.0,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Logit lens: layers upward × positions across, coloured by the probability (or log-probability) of
    each cell's top token, with that token written in the cell.

    ``values [L, P]`` are probabilities in [0, 1] or log-probabilities (≤ 0; ``kind="auto"`` tells them apart
    by sign). ``top_tokens[l][p]`` is the decoded top token at layer l, position p. The text is drawn only
    when the cells are large enough to read it (font ≥ ``min_fontsize`` points); narrow it down with
    ``position_window=(start, stop)`` for long prompts. The x axis shows the input tokens.
    """
    grid = squeeze_to(values, 2, name="values", shape_doc="[L, P] (layers × positions)")
    n_layers, n_pos = grid.shape
    if top_tokens is not None and (
        len(top_tokens) != n_layers or any(len(row) != n_pos for row in top_tokens)
    ):
        raise ValueError(
            f"top_tokens must be a list of {n_layers} rows of {n_pos} strings, matching values [L, P]."
        )
    if kind == "auto":
        kind = "logprob" if np.nanmin(grid) < 0 else "prob"
    if kind not in ("prob", "logprob"):
        raise ValueError(f"kind must be 'auto', 'prob' or 'logprob'; got {kind!r}.")
    p0, p1 = parse_window(position_window, n_pos, name="position_window")
    shown = np.ma.masked_invalid(grid[:, p0:p1])
    rows = _layer_labels(layer_labels, n_layers)
    if figsize is None:
        figsize = (
            float(np.clip(0.55 * (p1 - p0) + 2.2, 4.0, 14.0)),
            float(np.clip(0.2 * n_layers + 1.6, 3.0, 9.0)),
        )
    fig, ax = new_figure(ax, figsize)
    if kind == "prob":
        norm = Normalize(0.0, 1.0)
    else:
        finite = shown.compressed()
        norm = Normalize(float(finite.min()) if finite.size else -10.0, 0.0)
    cmap_obj = colormap(cmap)
    extent = (p0 - 0.5, p1 - 0.5, -0.5, n_layers - 0.5)
    image = ax.imshow(
        shown, cmap=cmap_obj, norm=norm, origin="lower", extent=extent, aspect="auto", interpolation="nearest"
    )
    set_token_ticks(
        ax, "x", token_labels(tokens, p1 - p0, start=p0), positions=np.arange(p0, p1), first_index=p0
    )
    set_token_ticks(ax, "y", rows)
    ax.set_xlabel("input token (position)")
    ax.set_ylabel("layer")
    label = "probability of the top token" if kind == "prob" else "log-probability of the top token"
    root_figure(ax).colorbar(image, ax=ax, label=label)
    if title:
        ax.set_title(title)

    if top_tokens is not None:
        texts = [
            [display_token(top_tokens[layer][p], max_chars=max_chars) for p in range(p0, p1)]
            for layer in range(n_layers)
        ]
        # Cell size in points, from the axes' share of the figure (about 80 % of it across, 85 % up).
        width_in, height_in = root_figure(ax).get_size_inches()
        cell_w = 72 * 0.8 * width_in * ax.get_position().width / (p1 - p0)
        cell_h = 72 * 0.85 * height_in * ax.get_position().height / n_layers
        longest = max((len(t) for row in texts for t in row), default=1)
        fontsize = min(7.0, cell_w / (0.62 * max(longest, 1)), 0.75 * cell_h)
        if fontsize >= min_fontsize:
            for layer in range(n_layers):
                for offset, text in enumerate(texts[layer]):
                    value = shown[layer, offset]
                    color = "black" if np.ma.is_masked(value) else text_color_for(cmap_obj(norm(value)))
                    ax.text(
                        p0 + offset, layer, text, ha="center", va="center", fontsize=fontsize, color=color
                    )
    return fig
