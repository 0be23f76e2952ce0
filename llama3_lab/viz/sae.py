"""Feature dashboards of a sparse autoencoder: where a feature fires, how often, what it writes, what it does.

Each panel draws the plain data that :mod:`llama3_lab.sae.dashboard` returns, and is its own function (with
``ax=`` to draw into an existing figure); :func:`feature_dashboard` puts them together:

- :func:`feature_contexts`: the top-activating contexts, one row each, every token coloured by the
  feature's activation on one shared scale (tokens where it is 0 left white), the peak token outlined;
- :func:`feature_histogram`: counts of its non-zero activations, titled with the firing rate;
- :func:`feature_logit_effect`: the tokens its decoder direction promotes and suppresses
  (``W_dec[f] · W_Uᵀ``);
- :func:`intervention_texts`: a generation clean, with the feature ablated, steered...: each continuation on
  its own row, the part that differs from the clean one highlighted.

The data are duck-typed (``FeatureContext``-like objects with ``tokens``, ``activations``, ``peak``,
``value``; a ``Histogram`` with ``counts``, ``edges``, ``firing_rate``, ``n_tokens``; ``TokenEffect`` rows
with ``token`` and ``logit``), so nothing here needs the SAE package at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from ._common import (
    DIVERGING_CMAP,
    bare_figure,
    colormap,
    display_token,
    new_figure,
    root_figure,
    text_color_for,
)

if TYPE_CHECKING:
    from ..sae.dashboard import FeatureContext, FeatureDashboard, Histogram, TokenEffect

_PEAK_EDGE = "#0072b2"
"""Outline of the token where a context's activation peaks (blue: it stands out on every magma colour)."""
CONTEXT_CMAP = "magma_r"
"""Contexts are mostly tokens where the feature is 0 (white): a map that runs from light (weak) to dark
(strong) keeps weak activations quiet and the peak the darkest cell; magma reversed is still perceptually
uniform."""
_BAR_COLOR = "#4c72b0"
LOG_COUNTS_FROM = 20
"""A histogram whose non-zero counts span this factor or more is drawn on a log count axis."""
_CHANGED_BACKGROUND = "#fde0c5"
"""Light orange behind the part of a continuation that differs from the clean one."""
_CHAR_WIDTH = 0.62
"""Width of one monospace character, in units of the font size (DejaVu Sans Mono)."""


def _char_inches(fontsize: float) -> float:
    return fontsize * _CHAR_WIDTH / 72


# ----------------------------------------------------------------------------------- top contexts


def _fit_window(labels: list[str], peak: int, max_chars: int) -> tuple[int, int]:
    """The widest ``[lo, hi)`` around ``peak`` whose labels (plus a box margin each) fit in ``max_chars``,
    grown one token at a time on alternate sides."""
    lo, hi = peak, peak + 1
    width = len(labels[peak]) + 1.0
    grew = True
    while grew:
        grew = False
        for side in ("left", "right"):
            index = lo - 1 if side == "left" else hi
            if 0 <= index < len(labels) and width + len(labels[index]) + 1.0 <= max_chars:
                width += len(labels[index]) + 1.0
                lo, hi = (index, hi) if side == "left" else (lo, index + 1)
                grew = True
    return lo, hi


def feature_contexts(
    contexts: Sequence[FeatureContext],
    ax: Axes | None = None,
    *,
    max_contexts: int = 8,
    max_chars: int = 96,
    vmax: float | None = None,
    cmap: str | Colormap = CONTEXT_CMAP,
    fontsize: float = 7.5,
    colorbar: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The contexts where a feature is largest, one row each (largest first): every token is a box coloured
    by the feature's activation on one scale shared by all rows (0 to ``vmax``, default the largest value),
    tokens where it is 0 are left white, and the peak token is outlined. The peak value is written at the
    left of each row. A row wider than ``max_chars`` characters is cut to a window around its peak.
    """
    if len(contexts) == 0:
        raise ValueError(
            "contexts is empty: the feature never fired on the tokens scanned. Scan more text "
            "(n_tokens=...) or pick a feature whose firing rate is above 0."
        )
    rows = list(contexts)[:max_contexts]
    for index, context in enumerate(rows):
        if len(context.tokens) != len(context.activations):
            raise ValueError(
                f"context {index} has {len(context.tokens)} tokens but {len(context.activations)} "
                "activations; pass one activation per token (FeatureContext from sae.dashboard)."
            )
    top = vmax if vmax is not None else max(float(np.max(c.activations)) for c in rows)
    norm = Normalize(0.0, top if top > 0 else 1.0)
    cmap_obj = colormap(cmap, bad="white")

    rects, values, texts, widest = [], [], [], 0.0
    for row, context in enumerate(rows):
        labels = [display_token(t, max_chars=14) for t in context.tokens]
        lo, hi = _fit_window(labels, context.peak, max_chars)
        x = 0.0
        for index in range(lo, hi):
            box_width = len(labels[index]) + 0.8
            rects.append(Rectangle((x, row - 0.42), box_width, 0.84))
            value = float(context.activations[index])
            values.append(value if value > 0 else np.nan)  # NaN: drawn white ("did not fire")
            texts.append((x + box_width / 2, row, labels[index], value, index == context.peak))
            x += box_width + 0.2
        widest = max(widest, x)
    char_in = _char_inches(fontsize)
    value_chars = 7.0  # the peak value written left of each row
    width_in = (widest + value_chars) * char_in + (1.1 if colorbar else 0.3)
    fig, ax = new_figure(ax, figsize or (width_in, len(rows) * fontsize * 2.1 / 72 + 0.7))
    for row, context in enumerate(rows):
        ax.text(-0.6, row, f"{context.value:.2f}", ha="right", va="center", fontsize=fontsize - 0.5)
    collection = PatchCollection(rects, cmap=cmap_obj, norm=norm, edgecolor="0.8", linewidth=0.4)
    collection.set_array(np.ma.masked_invalid(np.asarray(values)))
    ax.add_collection(collection)
    peaks = [rect for rect, (*_, is_peak) in zip(rects, texts) if is_peak]
    ax.add_collection(
        PatchCollection(peaks, facecolor="none", edgecolor=_PEAK_EDGE, linewidth=1.4, label="peak")
    )
    for x, y, label, value, _ in texts:
        color = text_color_for(cmap_obj(norm(value))) if value > 0 else "black"
        ax.text(x, y, label, ha="center", va="center", fontsize=fontsize, family="monospace", color=color)
    ax.set_xlim(-value_chars, widest + 0.2)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_axis_off()
    if colorbar:
        root_figure(ax).colorbar(collection, ax=ax, label="activation", fraction=0.04, pad=0.01)
    ax.set_title(
        title or f"top {len(rows)} activating contexts (peak value left, peak token outlined)", fontsize=9
    )
    return fig


# ----------------------------------------------------------------------------------- histogram


def feature_histogram(
    histogram: Histogram,
    ax: Axes | None = None,
    *,
    log: bool | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Counts of a feature's non-zero activations (``Histogram`` from ``sae.dashboard``), titled with its
    firing rate: the fraction of the tokens scanned where it is non-zero.

    ``log=None`` puts the counts on a log axis when they span a factor of ``LOG_COUNTS_FROM`` or more
    (a few strong activations hide under many weak ones on a linear axis), else on a linear one; ticks are
    plain numbers either way."""
    counts = np.asarray(histogram.counts, dtype=float)
    edges = np.asarray(histogram.edges, dtype=float)
    if edges.size != counts.size + 1:
        raise ValueError(
            f"a histogram with {counts.size} counts needs {counts.size + 1} edges; got {edges.size}."
        )
    fig, ax = new_figure(ax, figsize or (4.0, 2.6))
    ax.bar(
        edges[:-1],
        counts,
        width=np.diff(edges),
        align="edge",
        color=_BAR_COLOR,
        edgecolor="white",
        linewidth=0.4,
    )
    fired = counts.sum() > 0
    if log is None:
        nonzero = counts[counts > 0]
        log = bool(nonzero.size) and nonzero.max() >= LOG_COUNTS_FROM * nonzero.min()
    if log and fired:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not fired:
        ax.text(
            0.5,
            0.5,
            f"never fired on the {histogram.n_tokens:,} tokens scanned",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
        )
    ax.set_xlabel("activation (where non-zero)")
    ax.set_ylabel("tokens" + (" (log scale)" if log and fired else ""))
    ax.spines[["top", "right"]].set_visible(False)
    rate = f"fires on {100 * histogram.firing_rate:.2f}% of {histogram.n_tokens:,} tokens"
    ax.set_title(f"{title}\n{rate}" if title else rate, fontsize=9)
    return fig


# ----------------------------------------------------------------------------------- logit effect


def feature_logit_effect(
    promoted: Sequence[TokenEffect],
    suppressed: Sequence[TokenEffect] = (),
    ax: Axes | None = None,
    *,
    max_chars: int = 14,
    title: str | None = "direct logit effect, W_dec[f] · W_U",
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Horizontal bars of the tokens a feature's decoder direction promotes (top, largest first) and
    suppresses (below, most negative last), coloured on a diverging map centred at 0, each labelled with
    its value. ``promoted``/``suppressed``: ``TokenEffect`` rows (``sae.dashboard.logit_effect``)."""
    rows = sorted(promoted, key=lambda e: -e.logit) + sorted(suppressed, key=lambda e: -e.logit)
    if not rows:
        raise ValueError("no tokens to draw: pass the promoted and/or suppressed rows of logit_effect.")
    values = np.array([float(e.logit) for e in rows])
    bound = float(np.max(np.abs(values))) or 1.0
    cmap_obj = colormap(DIVERGING_CMAP)
    norm = Normalize(-bound, bound)
    fig, ax = new_figure(ax, figsize or (3.6, float(np.clip(0.2 * len(rows) + 0.9, 1.8, 6.0))))
    rank = np.arange(len(rows))
    ax.barh(rank, values, color=[cmap_obj(norm(v)) for v in values], height=0.75)
    ax.set_yticks(rank, [display_token(e.token, max_chars=max_chars) for e in rows], fontsize=7)
    ax.invert_yaxis()
    for i, value in enumerate(values):
        ax.text(
            value + (0.02 if value >= 0 else -0.02) * bound,
            i,
            f"{value:+.2f}",
            ha="left" if value >= 0 else "right",
            va="center",
            fontsize=6.5,
        )
    ax.axvline(0, color="0.3", linewidth=0.6)
    if promoted and suppressed:
        ax.axhline(len(promoted) - 0.5, color="0.6", linewidth=0.6, linestyle=":")
    ax.set_xlim(-1.35 * bound if (values < 0).any() else 0, 1.35 * bound if (values > 0).any() else 0)
    ax.set_xlabel("logit", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ----------------------------------------------------------------------------------- interventions


def divergence(reference: str, text: str) -> int:
    """Length of the common prefix of ``reference`` and ``text``: where ``text`` starts to differ."""
    n = min(len(reference), len(text))
    return next((i for i in range(n) if reference[i] != text[i]), n)


def _visible(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "⇥").replace("$", r"\$")


def _wrap(text: str, width: int) -> list[tuple[int, str]]:
    """``(start, line)`` pieces of ``text`` at most ``width`` characters each."""
    return [(start, text[start : start + width]) for start in range(0, max(len(text), 1), width)]


def intervention_texts(
    interventions: Mapping[str, str],
    prompt: str | None = None,
    ax: Axes | None = None,
    *,
    reference: str = "clean",
    chars_per_row: int = 72,
    fontsize: float = 8.0,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Generations side by side (``sae.dashboard.feature_interventions``: ``clean``, ``ablated``,
    ``steered``...), one labelled block each, wrapped at ``chars_per_row``. Everything from where a
    continuation first differs from the ``reference`` one is drawn bold on an orange background, so the
    effect of the intervention is what stands out; newlines show as ``⏎``. ``prompt`` is written above."""
    if not interventions:
        raise ValueError("interventions is empty: pass {'clean': text, 'ablated': text, ...}.")
    if reference not in interventions:
        raise ValueError(
            f"reference {reference!r} is not one of the continuations {list(interventions)}; pass "
            "reference=... naming the one the others are compared with."
        )
    base = interventions[reference]
    blocks = [(label, _visible(text), divergence(base, text)) for label, text in interventions.items()]
    label_chars = max(len(label) for label in interventions) + 2
    lines = sum(len(_wrap(text, chars_per_row)) for _, text, _ in blocks) + (1 if prompt else 0)
    char_in = _char_inches(fontsize)
    fig, ax = new_figure(
        ax,
        figsize or ((label_chars + chars_per_row + 1) * char_in + 0.3, lines * fontsize * 1.9 / 72 + 0.5),
    )
    row = 0
    if prompt is not None:
        ax.text(
            -label_chars,
            row,
            "prompt",
            ha="left",
            va="center",
            fontsize=fontsize,
            color="0.4",
            style="italic",
        )
        ax.text(
            0,
            row,
            _visible(prompt)[:chars_per_row],
            ha="left",
            va="center",
            fontsize=fontsize,
            family="monospace",
            color="0.4",
        )
        row += 1
    for label, text, changed_at in blocks:
        ax.text(-label_chars, row, label, ha="left", va="center", fontsize=fontsize, weight="bold")
        for start, line in _wrap(text, chars_per_row):
            split = min(max(changed_at - start, 0), len(line))  # characters of this line before the change
            if split:
                ax.text(0, row, line[:split], ha="left", va="center", fontsize=fontsize, family="monospace")
            if split < len(line):
                ax.add_patch(
                    Rectangle(
                        (split, row - 0.45),
                        len(line) - split,
                        0.9,
                        facecolor=_CHANGED_BACKGROUND,
                        edgecolor="none",
                        zorder=0,
                    )
                )
                ax.text(
                    split,
                    row,
                    line[split:],
                    ha="left",
                    va="center",
                    fontsize=fontsize,
                    family="monospace",
                    weight="bold",
                    gid="changed",
                )
            row += 1
    ax.set_xlim(-label_chars, chars_per_row + 0.5)
    ax.set_ylim(row - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ----------------------------------------------------------------------------------- the dashboard


def feature_dashboard(
    dashboard: FeatureDashboard,
    *,
    prompt: str | None = None,
    max_contexts: int = 6,
    max_chars: int = 96,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One feature's dashboard (``sae.dashboard.feature_dashboard``) in one figure: its top contexts across
    the top, the activation histogram and the logit effect side by side, and the interventions below when
    the dashboard has them (``prompt``: the prompt they continued, written above them)."""
    n_contexts = min(len(dashboard.contexts), max_contexts)
    n_effects = len(dashboard.promoted) + len(dashboard.suppressed)
    heights = [0.28 * max(n_contexts, 1) + 0.5, float(np.clip(0.17 * n_effects + 0.7, 2.0, 3.6))]
    if dashboard.interventions:
        heights.append(0.22 * (len(dashboard.interventions) * 2 + (1 if prompt else 0)) + 0.4)
    fig = bare_figure(figsize or (8.0, sum(heights)))
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[1.25, 1])
    if dashboard.contexts:
        feature_contexts(
            dashboard.contexts, fig.add_subplot(grid[0, :]), max_contexts=max_contexts, max_chars=max_chars
        )
    else:
        empty = fig.add_subplot(grid[0, :])
        empty.set_axis_off()
        empty.text(0.5, 0.5, "the feature never fired on the tokens scanned", ha="center", va="center")
    feature_histogram(dashboard.histogram, fig.add_subplot(grid[1, 0]))
    if n_effects:
        feature_logit_effect(dashboard.promoted, dashboard.suppressed, fig.add_subplot(grid[1, 1]))
    if dashboard.interventions:
        intervention_texts(
            dashboard.interventions,
            prompt,
            fig.add_subplot(grid[2, :]),
            chars_per_row=max_chars - 10,
            fontsize=7.5,
        )
    fig.suptitle(title or f"feature {dashboard.feature}", fontsize=10)
    return fig
