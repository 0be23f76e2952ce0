"""LogitLensExplorer: what each layer would predict at each position, a window of positions at a time.

The forward keeps only ``resid_post`` (``L·P·D`` floats); :func:`llama3_lab.analysis.lens.logit_lens`
reads the window's positions through the final norm (its RMS recomputed per layer) and the unembedding,
and :func:`llama3_lab.analysis.tables.top_k_tokens` picks the top tokens. Only the shown window is ever
unembedded, so a 2,048-token prompt costs no more than a short one.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from ..analysis.lens import logit_lens
from ..analysis.tables import TopTokens, top_k_tokens
from ..viz import display_token, logit_lens_heatmap, topk_bars
from ._base import Explorer, cached_run, figure_png, image_view, labelled

TOP_K = 10


def _keeps_resid_post(name: str) -> bool:
    return name.endswith("hook_resid_post")


class LogitLensExplorer(Explorer):
    """Position and window sliders for the layer × position heatmap, a layer slider for the top-k bars.

    ``LogitLensExplorer(model, "some prompt")`` or ``LogitLensExplorer(cache)`` (with ``resid_post`` of
    every layer). The heatmap shows the ``width`` positions ending at ``position``, each cell the top token
    of that layer at that position and its probability; the bars show the top-k of ``layer`` at
    ``position``. State: :attr:`top` (the window's :class:`TopTokens`, ``[L, width, k]``).
    """

    def __init__(
        self, model_or_cache: Any, tokens: Any = None, *, position: int | None = None, width: int = 12,
        layer: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model, self.cache, self.ids, self.token_strings = cached_run(
            model_or_cache, tokens, _keeps_resid_post, needs="resid_post of every layer"
        )
        n, n_layers = len(self.ids), self.model.cfg.num_hidden_layers
        self._window: tuple[int, int] | None = None
        self.top: TopTokens | None = None
        self.position = labelled(
            "position",
            widgets.IntSlider(value=n - 1 if position is None else position, min=0, max=n - 1,
                              continuous_update=False),
        )  # fmt: skip
        self.width = labelled(
            "positions shown",
            widgets.IntSlider(value=min(width, n), min=1, max=min(n, 32), continuous_update=False),
        )
        self.layer = labelled(
            "layer (bars)",
            widgets.IntSlider(value=n_layers - 1 if layer is None else layer, min=0, max=n_layers - 1,
                              continuous_update=False),
        )  # fmt: skip
        self.heatmap_view = image_view()
        self.heatmap_view.add_class("llama3-lab-logit-lens")
        self.bars_view = image_view(width="45%")
        self._watch(self.position, self.width, self.layer)
        self.children = [
            widgets.HBox([self.position, self.width]),
            self.layer,
            self.status,
            self.heatmap_view,
            self.bars_view,
        ]
        self.redraw()

    def window(self) -> tuple[int, int]:
        """The shown positions ``(start, stop)``: ``width`` positions ending at ``position``."""
        stop = self.position.value + 1
        return max(0, stop - self.width.value), stop

    def _lens(self) -> TopTokens:
        window = self.window()
        if window != self._window:
            positions = list(range(*window))
            logits = logit_lens(self.model, self.cache, pos=positions)[:, 0]  # [L, width, V]
            self.top = top_k_tokens(logits, getattr(self.model, "tokenizer", None), k=TOP_K)
            self._window = window
        return self.top

    def _draw(self) -> None:
        top = self._lens()
        self.heatmap_view.value = figure_png(self.figure())
        start, _ = self.window()
        offset, layer = self.position.value - start, self.layer.value
        self.bars_view.value = figure_png(
            topk_bars(
                top.strings[layer][offset],
                top.probs[layer, offset],
                title=f"layer {layer} at {self.position.value} "
                f"({display_token(self.token_strings[self.position.value])}) predicts",
            )
        )

    def _status_text(self) -> str:
        start, stop = self.window()
        return f"positions {start}..{stop - 1}, layer {self.layer.value}"

    def figure(self) -> Figure:
        """The heatmap of the shown window (cells outside it are left empty)."""
        top = self._lens()
        start, stop = self.window()
        n_layers, n = top.probs.shape[0], len(self.ids)
        values = np.full((n_layers, n), np.nan)
        values[:, start:stop] = top.probs[..., 0].float().cpu().numpy()
        strings = [[""] * n for _ in range(n_layers)]
        for layer in range(n_layers):
            strings[layer][start:stop] = [row[0] for row in top.strings[layer]]
        return logit_lens_heatmap(
            values, strings, self.token_strings, kind="prob", position_window=(start, stop),
            title="logit lens: top token per layer",
        )  # fmt: skip
