"""Shared plumbing for the figure functions: array conversion, figure creation, token labels, colour maps.

Every figure function in ``llama3_lab.viz`` follows the same rules, kept here so they hold everywhere:

- Figures are built with the object-oriented API (:class:`LabFigure`, a ``matplotlib.figure.Figure``),
  never through pyplot, so nothing is left in pyplot's registry: a notebook shows each returned figure
  exactly once (even if pyplot was never imported) and memory does not grow across redraws.
- Token strings are shown with their whitespace made visible (``" the"`` → ``"␣the"``, ``"\\n"`` → ``"⏎"``)
  and with ``$`` escaped, so matplotlib never reads a token as mathtext.
- Long axes of tokens are thinned to what fits, with the position written beside each shown token.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

DEFAULT_DPI = 100
"""Screen resolution for every figure: a stored PNG stays in the tens of kilobytes."""

SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
MASKED_COLOR = "0.85"
"""Light grey for cells that do not exist (future keys under the causal mask), so they read as absent."""

_VISIBLE_CHARS = {
    " ": "␣",
    "\n": "⏎",
    "\t": "⇥",
    "\r": "\\r",
    "$": "\\$",
}


def to_numpy(x: Any, *, name: str = "array") -> np.ndarray:
    """A floating-point NumPy array of a tensor or array (torch tensors are detached and moved to the CPU).

    float32 stays float32 (plenty for a picture, and half the memory of a 2,048² pattern stack); bfloat16
    and float16 become float32 (bfloat16 has no NumPy dtype); anything else becomes float64.
    """
    if hasattr(x, "detach"):  # a torch.Tensor, without importing torch here
        x = x.detach().cpu()
        x = (x if x.dtype.is_floating_point and x.dtype.itemsize >= 4 else x.float()).numpy()
    try:
        array = np.asarray(x)
        if array.dtype in (np.float32, np.float64):
            return array
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a NumPy array, a torch tensor or a nested sequence of numbers; "
            f"got {type(x).__name__} ({err})."
        ) from err


def squeeze_to(x: Any, ndim: int, *, name: str, shape_doc: str) -> np.ndarray:
    """``x`` as a NumPy array of exactly ``ndim`` dimensions, dropping leading size-1 (batch) axes."""
    arr = to_numpy(x, name=name)
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(
            f"{name} must have shape {shape_doc}; got shape {tuple(arr.shape)}. "
            f"Select one batch element (and layer/head) first, e.g. `{name}[0]`."
        )
    return arr


class LabFigure(Figure):
    """A plain matplotlib Figure that also shows itself in notebooks when pyplot was never imported.

    Jupyter's inline backend registers its PNG display for ``Figure`` only once pyplot has loaded a
    backend; until then a bare Figure would print as ``<Figure size ...>``. ``_repr_png_`` covers that
    case, and when the inline formatter is registered IPython uses it instead: one image either way.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(
    ax: Axes | None, figsize: tuple[float, float], *, dpi: int = DEFAULT_DPI
) -> tuple[Figure, Axes]:
    """The figure to draw on: ``ax``'s own figure when given, else a fresh pyplot-free one."""
    if ax is not None:
        return root_figure(ax), ax
    fig = LabFigure(figsize=figsize, dpi=dpi, layout="constrained")
    return fig, fig.add_subplot()


def bare_figure(figsize: tuple[float, float], *, dpi: int = DEFAULT_DPI) -> Figure:
    """A fresh pyplot-free figure with constrained layout."""
    return LabFigure(figsize=figsize, dpi=dpi, layout="constrained")


def colormap(cmap: str | Colormap, *, bad: str = MASKED_COLOR) -> Colormap:
    """A copy of ``cmap`` that paints masked (bad) cells in ``bad``, so they are greyed out, not coloured."""
    base = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    return base.with_extremes(bad=bad)


def symmetric_limits(values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """Colour limits centred at 0 (for signed values on a diverging map)."""
    finite = values[np.isfinite(values)]
    bound = float(np.max(np.abs(finite))) if finite.size else 1.0
    if vmax is not None:
        bound = abs(vmax)
    elif vmin is not None:
        bound = abs(vmin)
    bound = bound or 1.0
    return -bound, bound


def display_token(token: str | bytes, *, max_chars: int = 16) -> str:
    """A token as a readable label: whitespace made visible, ``$`` escaped, long tokens cut with "…".

    ``" the"`` → ``"␣the"``, ``"\\n\\n"`` → ``"⏎⏎"``, ``""`` → ``"∅"``, control bytes → ``"\\x04"``.
    """
    if isinstance(token, bytes):
        token = token.decode("utf-8", errors="backslashreplace")
    if token == "":
        return "∅"
    if len(token) > max_chars:
        token = token[: max_chars - 1] + "…"
    pieces = []
    for ch in token:
        if ch in _VISIBLE_CHARS:
            pieces.append(_VISIBLE_CHARS[ch])
        elif not ch.isprintable():
            pieces.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            pieces.append(ch)
    return "".join(pieces)


def token_labels(
    tokens: Sequence[str | bytes] | None, n: int, *, start: int = 0, max_chars: int = 16, name: str = "tokens"
) -> list[str]:
    """Display labels for positions ``start .. start + n``: the tokens made visible, or the positions."""
    if tokens is None:
        return [str(p) for p in range(start, start + n)]
    if len(tokens) < start + n:
        raise ValueError(
            f"{name} has {len(tokens)} entries but the data covers positions {start}..{start + n - 1}; "
            f"pass one token string per position (e.g. `tok.token_strings(ids)`)."
        )
    return [display_token(t, max_chars=max_chars) for t in tokens[start : start + n]]


def label_step(n: int, max_labels: int) -> int:
    """The stride k so that showing every k-th of ``n`` labels shows at most ``max_labels``."""
    if max_labels < 1:
        return max(n, 1)
    return max(1, -(-n // max_labels))


def root_figure(ax: Axes) -> Figure:
    """The top-level figure holding ``ax`` (not a subfigure), which is what callers save or display."""
    try:
        return ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10: ax.figure is the root figure
        return ax.figure


def _axis_length_points(ax: Axes, axis: str) -> float:
    fig = root_figure(ax)
    box = ax.get_position()
    width, height = fig.get_size_inches()
    return 72.0 * (box.width * width if axis == "x" else box.height * height)


def set_token_ticks(
    ax: Axes,
    axis: str,
    labels: Sequence[str],
    *,
    positions: Sequence[float] | np.ndarray | None = None,
    max_labels: int | None = None,
    fontsize: float = 7.0,
    rotation: float | None = None,
    first_index: int = 0,
    numbered: bool | None = None,
) -> int:
    """Label ``axis`` ("x" or "y") with token labels, thinned to every k-th one when they do not fit.

    ``positions`` are the data coordinates of the labels (default 0, 1, ...). When thinned, each shown label
    is prefixed with its position (``first_index + i``) so the reader can still locate it, unless the labels
    are plain numbers already (``numbered`` forces this on or off). The x labels are rotated vertical when
    there are more than a few. Returns the stride k that was used.
    """
    n = len(labels)
    positions = np.arange(n) if positions is None else np.asarray(positions)
    if max_labels is None:  # one label per ~1.3 font heights of axis length
        max_labels = max(2, int(_axis_length_points(ax, axis) / (1.3 * fontsize)))
    step = label_step(n, max_labels)
    shown = range(0, n, step)
    if numbered is None:  # labels that are already indices (layer numbers) need no position prefix
        numbered = step > 1 and not all(str(label).isdigit() for label in labels)
    texts = [f"{first_index + i} {labels[i]}" if numbered else labels[i] for i in shown]
    ticks = positions[::step]
    if axis == "x":
        if rotation is None:
            rotation = 90 if n > 4 or max((len(t) for t in texts), default=0) > 4 else 0
        ax.set_xticks(ticks, texts, fontsize=fontsize, rotation=rotation)
    elif axis == "y":
        ax.set_yticks(ticks, texts, fontsize=fontsize, rotation=rotation or 0)
    else:
        raise ValueError(f"axis must be 'x' or 'y'; got {axis!r}.")
    return step


def text_color_for(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (by relative luminance)."""
    r, g, b = rgba[:3]
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if luminance > 0.45 else "white"


def parse_window(window: tuple[int, int] | slice | None, n: int, *, name: str) -> tuple[int, int]:
    """A ``(start, stop)`` window clipped to ``0..n``; ``None`` means everything."""
    if window is None:
        return 0, n
    if isinstance(window, slice):
        if window.step not in (None, 1):
            raise ValueError(f"{name} must be a contiguous range; got a slice with step {window.step}.")
        start, stop, _ = window.indices(n)
    else:
        start, stop = window
        start, stop, _ = slice(start, stop).indices(n)
    if stop <= start:
        raise ValueError(
            f"{name}={window!r} selects no position out of {n}; pass (start, stop) with start < stop."
        )
    return start, stop
