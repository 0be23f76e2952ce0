"""AttentionView: hover a token to see where it attends, or what attends to it, in any head.

The forward keeps only ``rot_q``/``rot_k`` (``P·(H+K)·d`` floats per layer); the shown layer's pattern is
recomputed by :meth:`ActivationCache.pattern` when that layer is chosen, one layer at a time. The browser
gets the chosen head's causal lower triangle as float16 (``P(P+1)`` bytes: 4.2 MB at 2,048 tokens) and a
max-pooled uint8 thumbnail of every head of the layer; the script pools the pattern to the canvas's pixels
and reads rows and columns straight from the triangle, so hovering costs no kernel round-trip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import traitlets
from matplotlib.figure import Figure

from ..analysis.heads import first_token_attention
from ..viz import attention_pattern, display_token
from ._base import View, cached_run, float16_bytes

THUMB_SIZE = 48
"""Pixels per side of each head's thumbnail (the pattern max-pooled into THUMB_SIZE² blocks)."""
FIGURE_ROWS = 48
"""Queries shown in the static PNG (the ones ending at the selected query)."""


def _keeps_queries_and_keys(name: str) -> bool:
    return name.endswith(("attn.hook_rot_q", "attn.hook_rot_k"))


class AttentionView(View):
    """The prompt as text; hover a token for its attention in the chosen head; every head as a thumbnail.

    ``AttentionView(model, "some prompt")`` runs the prompt once (keeping ``rot_q``/``rot_k``);
    ``AttentionView(cache, tokens=None)`` explores an :class:`~llama3_lab.hooks.ActivationCache` (with
    ``pattern`` or ``rot_q``/``rot_k`` cached), ``tokens`` then optionally giving the display strings.
    ``head=None`` opens on the layer's head with the least attention on the first token (the most
    informative one to look at first); ``query=None`` on the last token.

    Synced state (assign from Python, or click in the browser): :attr:`layer`, :attr:`head`,
    :attr:`query` (the selected query), :attr:`mode` (``"row"``: hover shows where a token attends;
    ``"column"``: what attends to it). Data: :meth:`pattern` ``[H, P, P]``, :meth:`row`, :meth:`column`,
    :meth:`query_row`.
    """

    _view = "attention"
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    query = traitlets.Int(0).tag(sync=True)
    mode = traitlets.Enum(("row", "column"), "row").tag(sync=True)
    head_pattern = traitlets.Bytes(b"").tag(sync=True)
    """float16, little-endian: the chosen head's rows 0..P−1, row q holding keys 0..q (P(P+1)/2 values)."""
    thumbs = traitlets.Bytes(b"").tag(sync=True)
    """uint8 ``[H, T, T]``: each head of the layer max-pooled to T×T blocks; 255 is weight 1."""
    thumb_size = traitlets.Int(THUMB_SIZE).tag(sync=True)
    sink = traitlets.List(traitlets.Float()).tag(sync=True)
    """Per head of the layer: mean attention on the first token (``analysis.heads.first_token_attention``)."""

    def __init__(
        self,
        model_or_cache: Any,
        tokens: Any = None,
        *,
        layer: int = 0,
        head: int | None = None,
        query: int | None = None,
        mode: str = "row",
    ) -> None:
        model, self.cache, self.ids, self.token_strings = cached_run(
            model_or_cache, tokens, _keeps_queries_and_keys, needs="the attention patterns or rot_q/rot_k"
        )
        self.model = model
        cfg = model.cfg
        n = len(self.ids)
        self._check_index("layer", layer, cfg.num_hidden_layers)
        if head is not None:
            self._check_index("head", head, cfg.num_attention_heads)
        if query is not None:
            self._check_index("query", query, n)
        self._layer_pattern: tuple[int, np.ndarray] | None = None
        super().__init__(
            tokens=list(self.token_strings),
            labels=[display_token(t, max_chars=24) for t in self.token_strings],
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            layer=layer,
            query=n - 1 if query is None else query,
            mode=mode,
        )
        self._send_layer(head)
        self._react(lambda: self._send_layer(None), "layer")
        self._react(self._send_head, "head")
        self._react(self._update_status, ("query", "mode"))

    @staticmethod
    def _check_index(name: str, value: int, size: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ValueError(
                f"{name} must be an int in 0..{size - 1} for this model and prompt; got {value!r}."
            )

    # -- data ----------------------------------------------------------------------------------------

    def pattern(self, layer: int | None = None) -> np.ndarray:
        """Attention pattern ``[H, P, P]`` (float32) of ``layer`` (default: the shown one), one at a time."""
        layer = self.layer if layer is None else layer
        if self._layer_pattern is None or self._layer_pattern[0] != layer:
            self._layer_pattern = None  # release the previous layer first: at 2,048 tokens it is 150 MB
            name = f"blocks.{layer}.attn.hook_pattern"
            with torch.no_grad():
                pattern = self.cache[name] if name in self.cache else self.cache.pattern(layer)
            self._layer_pattern = (layer, pattern[0].detach().float().cpu().numpy())
        return self._layer_pattern[1]

    def row(self, query: int, head: int | None = None) -> np.ndarray:
        """Where ``query`` attends: weights over keys ``0..query`` (sums to 1), in ``head`` of the layer."""
        return self.pattern()[self.head if head is None else head, query, : query + 1]

    def column(self, key: int, head: int | None = None) -> np.ndarray:
        """What attends to ``key``: the weights of queries ``key..P−1`` on it."""
        return self.pattern()[self.head if head is None else head, key:, key]

    def query_row(self) -> np.ndarray:
        """The selected query's row (:meth:`row` of :attr:`query`)."""
        return self.row(self.query)

    @property
    def payload_bytes(self) -> int:
        """Bytes of binary data the view sends to the browser (the pattern and the thumbnails)."""
        return len(self.head_pattern) + len(self.thumbs)

    # -- sending -------------------------------------------------------------------------------------

    def _send_layer(self, head: int | None) -> None:
        pattern = self.pattern()
        n_heads, n = pattern.shape[0], pattern.shape[1]
        sink = first_token_attention(torch.from_numpy(pattern)) if n > 1 else torch.zeros(n_heads)
        thumbs = _thumbnails(pattern, THUMB_SIZE)
        chosen = int(np.argmin(sink.numpy())) if head is None else head
        with self.hold_trait_notifications():
            self.sink = [round(float(s), 4) for s in sink]
            self.thumbs = thumbs.tobytes()
            self.head = chosen
        self._send_head()

    def _send_head(self) -> None:
        pattern = self.pattern()[self.head]
        rows, keys = np.tril_indices(pattern.shape[0])
        self.head_pattern = float16_bytes(pattern[rows, keys])
        self._update_status()

    def _update_status(self) -> None:
        sink = self.sink[self.head] if self.sink else float("nan")
        lowest = self.sink and self.head == int(np.argmin(self.sink))
        why = " (the head of this layer with least attention on the first token)" if lowest else ""
        q = self.query
        self.status = (
            f"layer {self.layer}, head {self.head}{why}: attention on the first token {sink:.2f} · "
            f"selected query {q} {display_token(self.token_strings[q])!s} · hover a token "
            f"({'where it attends' if self.mode == 'row' else 'what attends to it'}), click to select"
        )

    # -- static form ---------------------------------------------------------------------------------

    def figure(self) -> Figure:
        """The pattern of the chosen head for the queries ending at the selected one."""
        q = self.query
        return attention_pattern(
            self.pattern()[self.head],
            self.token_strings,
            query_window=(max(0, q + 1 - FIGURE_ROWS), q + 1),
            title=f"layer {self.layer}, head {self.head}",
        )


def _thumbnails(pattern: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, size, size]``: ``pattern [H, P, P]`` max-pooled into blocks (255 = weight 1).

    Blocks of ``ceil(P / size)`` positions; a prompt shorter than ``size`` is scaled up (nearest), so each
    thumbnail is always ``size`` pixels wide. Future keys hold 0, so a max over a block is the max of the
    keys that exist.
    """
    n_heads, n = pattern.shape[0], pattern.shape[-1]
    block = -(-n // size)
    cells = -(-n // block)
    padded = np.zeros((n_heads, cells * block, cells * block), dtype=np.float32)
    padded[:, :n, :n] = pattern
    pooled = padded.reshape(n_heads, cells, block, cells, block).max(axis=(2, 4))
    index = np.arange(size) * cells // size
    return np.clip(np.round(pooled[:, index][:, :, index] * 255), 0, 255).astype(np.uint8)
