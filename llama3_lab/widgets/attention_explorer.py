"""AttentionExplorer: any head of any layer, one query at a time, on prompts up to thousands of tokens.

Patterns are not cached for the whole model: the forward keeps only ``rot_q``/``rot_k`` (``P·(H+K)·d``
floats per layer) and :meth:`ActivationCache.pattern` recomputes one layer's pattern with the model's own
eager attention when that layer is shown. Views are windowed around the chosen query and pooled by
:mod:`llama3_lab.viz`, so a 2,048-token prompt redraws as fast as a short one.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from ..viz import attention_heads_grid, attention_pattern, display_token, token_strip
from ._base import Explorer, cached_run, figure_png, image_view, labelled

STRIP_WINDOW = 160
"""Keys shown in the query's token strip (the last ones before and including the query)."""


def _keeps_queries_and_keys(name: str) -> bool:
    return name.endswith(("attn.hook_rot_q", "attn.hook_rot_k"))


class AttentionExplorer(Explorer):
    """Layer and head sliders, a query-token selector, a single-head / all-heads toggle, a window slider.

    ``AttentionExplorer(model, "some prompt")`` runs the prompt once; ``AttentionExplorer(cache)`` explores
    an :class:`~llama3_lab.activation_cache.ActivationCache` (with ``hook_pattern`` or
    ``rot_q``/``rot_k`` cached), ``tokens`` then optionally giving the display strings. Views: the
    pattern of the ``window`` queries ending at the chosen query (one head, or every head of the layer
    on one colour scale), and the chosen query's attention over the keys as a token strip. State:
    :attr:`ids`, :attr:`token_strings`, :meth:`pattern` and :meth:`query_row`.
    """

    def __init__(
        self,
        model_or_cache: Any,
        tokens: Any = None,
        *,
        layer: int = 0,
        head: int = 0,
        query: int | None = None,
        mode: str = "single",
        window: int = 48,
    ) -> None:
        super().__init__()
        self.model, self.cache, self.ids, self.token_strings = cached_run(
            model_or_cache, tokens, _keeps_queries_and_keys, needs="the attention patterns or rot_q/rot_k"
        )
        cfg = self.model.cfg
        n = len(self.ids)
        self._pattern_layer: int | None = None
        self._pattern: np.ndarray | None = None

        self.layer = labelled(
            "layer",
            widgets.IntSlider(value=layer, min=0, max=cfg.num_hidden_layers - 1, continuous_update=False),
        )
        self.head = labelled(
            "head",
            widgets.IntSlider(value=head, min=0, max=cfg.num_attention_heads - 1, continuous_update=False),
        )
        self.query = labelled(
            "query position",
            widgets.IntSlider(
                value=n - 1 if query is None else query, min=0, max=n - 1, continuous_update=False
            ),
        )
        self.window = labelled(
            "rows shown",
            widgets.IntSlider(value=min(window, n), min=1, max=max(1, min(n, 256)), continuous_update=False),
        )
        self.mode = widgets.ToggleButtons(
            options=[("one head", "single"), ("all heads", "grid")], value=mode, description="view"
        )
        self.query_label = widgets.HTML()
        self.pattern_view = image_view()
        self.pattern_view.add_class("llama3-lab-pattern")
        self.row_view = image_view()
        self.row_view.add_class("llama3-lab-query-row")
        self._watch(self.layer, self.head, self.query, self.window, self.mode)
        self.children = [
            widgets.HBox([self.layer, self.head, self.mode]),
            widgets.HBox([self.query, self.window]),
            self.query_label,
            self.status,
            self.pattern_view,
            self.row_view,
        ]
        self.redraw()

    # -- data ----------------------------------------------------------------------------------------

    def pattern(self, layer: int | None = None) -> np.ndarray:
        """Attention pattern ``[H, P, P]`` (float32) of ``layer`` (default: the slider's), one at a time."""
        layer = self.layer.value if layer is None else layer
        if layer != self._pattern_layer:
            self._pattern = None  # release the previous layer first: at 2,048 tokens it is 150 MB
            name = f"blocks.{layer}.attn.hook_pattern"
            pattern = self.cache[name] if name in self.cache else self.cache.pattern(layer)
            self._pattern = pattern[0].detach().float().cpu().numpy()
            self._pattern_layer = layer
        return self._pattern

    def query_row(self) -> np.ndarray:
        """The chosen head's attention from the chosen query over keys ``0..query`` (sums to 1)."""
        q = self.query.value
        return self.pattern()[self.head.value, q, : q + 1]

    def _query_window(self) -> tuple[int, int]:
        q = self.query.value
        return max(0, q + 1 - self.window.value), q + 1

    # -- drawing -------------------------------------------------------------------------------------

    def _draw(self) -> None:
        q = self.query.value
        row = self.query_row()
        strongest = int(np.argmax(row))
        self.query_label.value = (
            f"query {q} <b>{display_token(self.token_strings[q])}</b>: strongest key {strongest} "
            f"<b>{display_token(self.token_strings[strongest])}</b> ({row[strongest]:.3f})"
        )
        self.pattern_view.value = figure_png(self.figure())
        start = max(0, q + 1 - STRIP_WINDOW)
        self.row_view.value = figure_png(
            token_strip(
                self.token_strings[: q + 1],
                row,
                window=(start, q + 1),
                vmin=0.0,
                label="attention",
                title=f"query {q} → keys (layer {self.layer.value}, head {self.head.value})",
            )
        )

    def _status_text(self) -> str:
        return f"layer {self.layer.value}, head {self.head.value}, query {self.query.value}"

    def figure(self) -> Figure:
        """The pattern of the shown rows: one head, or all heads of the layer on one colour scale."""
        layer, head = self.layer.value, self.head.value
        window = self._query_window()
        if self.mode.value == "grid":
            return attention_heads_grid(
                self.pattern(), self.token_strings, query_window=window, title=f"layer {layer}, all heads"
            )
        return attention_pattern(
            self.pattern()[head], self.token_strings, query_window=window, title=f"layer {layer}, head {head}"
        )
