"""LogitLensView: layers × positions, each cell the probability a layer gives to the final prediction
(or a chosen token); hover a cell for its top 5 tokens.

The forward keeps only ``resid_post`` (``L·P·D`` floats); :func:`llama3_lab.analysis.lens.logit_lens`
reads the shown window of positions through the final norm (its RMS recomputed per layer) and the
unembedding, so a 2,048-token prompt costs no more than a short one. The browser gets float32
``[L, width]`` cell values and ``[L, width, k]`` top-k probabilities with their token labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import traitlets
from matplotlib.figure import Figure

from ..analysis.lens import logit_lens
from ..analysis.tables import TopTokens, top_k_of_probs
from ..viz import display_token, logit_lens_heatmap
from ._base import View, cached_run, float32_bytes

TOP_K = 5
MAX_WIDTH = 32
"""Positions unembedded at once: L·width·V probabilities (30 × 32 × 49,152 floats = 189 MB at most)."""


def _keeps_resid_post(name: str) -> bool:
    return name.endswith("hook_resid_post")


class LogitLensView(View):
    """``LogitLensView(model, "some prompt")`` or ``LogitLensView(cache, tokens=None)`` (with ``resid_post``).

    Shows ``width`` positions from :attr:`start` (default: the last ones); each cell is coloured by the
    probability of :attr:`target` (empty: the final layer's top token at that position; else a token's
    text, e.g. ``" Paris"``, or its id as text). Click a cell to select it (:attr:`layer`,
    :attr:`position`). State: :attr:`top` (the window's :class:`TopTokens` ``[L, width, k]``),
    :attr:`cell_values` ``[L, width]``, :meth:`window`.
    """

    _view = "logit_lens"
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    start = traitlets.Int(0).tag(sync=True)
    width = traitlets.Int(16).tag(sync=True)
    k = traitlets.Int(TOP_K).tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    position = traitlets.Int(0).tag(sync=True)
    values = traitlets.Bytes(b"").tag(sync=True)
    """float32 ``[L, width]``: probability of the target at each layer and shown position."""
    top_probs = traitlets.Bytes(b"").tag(sync=True)
    """float32 ``[L, width, k]``."""
    top_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    """The k token labels of each cell, flattened as ``[L, width, k]``."""

    def __init__(
        self,
        model_or_cache: Any,
        tokens: Any = None,
        *,
        width: int = 16,
        start: int | None = None,
        target: str = "",
    ) -> None:
        model, self.cache, self.ids, self.token_strings = cached_run(
            model_or_cache, tokens, _keeps_resid_post, needs="resid_post of every layer"
        )
        self.model = model
        n, n_layers = len(self.ids), model.cfg.num_hidden_layers
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise ValueError(
                f"width must be an int in 1..{MAX_WIDTH} (positions unembedded at once); got {width!r}."
            )
        width = min(width, n)
        first = n - width if start is None else start
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= n - width:
            raise ValueError(
                f"start must be an int in 0..{n - width} for {n} positions shown {width} at a time; "
                f"got {start!r}."
            )
        self.top: TopTokens | None = None
        self.cell_values: np.ndarray | None = None
        super().__init__(
            labels=[display_token(t, max_chars=24) for t in self.token_strings],
            n_layers=n_layers,
            start=first,
            width=width,
            target=target,
            layer=n_layers - 1,
            position=n - 1 if start is None else first + width - 1,
        )
        self._compute()
        self._react(self._compute, ("start", "width", "target"))
        self._react(self._update_status, ("layer", "position"))

    def window(self) -> tuple[int, int]:
        """The shown positions ``(start, stop)``."""
        return self.start, self.start + self.width

    def _target_id(self) -> int | None:
        text = self.target
        if not text:
            return None
        if text.strip().isdigit():
            token = int(text)
            if not 0 <= token < self.model.cfg.vocab_size:
                raise ValueError(
                    f"token id {token} is outside the vocabulary (0..{self.model.cfg.vocab_size - 1})."
                )
            return token
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                f"target {text!r} needs a tokenizer to encode it; this model has none: give an id."
            )
        ids = tokenizer.encode(text, allowed_special="all")
        if len(ids) != 1:
            raise ValueError(
                f"target {text!r} encodes to {len(ids)} tokens {tokenizer.token_strings(ids)}; give one "
                "token "
                "(mind the leading space: ' Paris' and 'Paris' are different tokens)."
            )
        return ids[0]

    def _compute(self) -> None:
        start, stop = self.window()
        with torch.no_grad():
            probs = logit_lens(self.model, self.cache, pos=list(range(start, stop)))[:, 0].float().softmax(-1)
        target = self._target_id()
        if target is None:
            chosen = probs[-1].argmax(-1)  # [width]: the final layer's top token at each position
            cell = probs.gather(-1, chosen.expand(probs.shape[0], -1).unsqueeze(-1))[..., 0]
        else:
            cell = probs[..., target]
        top = top_k_of_probs(probs, getattr(self.model, "tokenizer", None), TOP_K)
        del probs
        self.top = top
        self.cell_values = cell.cpu().numpy()
        labels = [display_token(s, max_chars=24) for layer in top.strings for cell_ in layer for s in cell_]
        position = min(max(self.position, start), stop - 1)
        with self.hold_trait_notifications():
            self.top_labels = labels
            self.top_probs = float32_bytes(top.probs)
            self.position = position
            self.values = float32_bytes(self.cell_values)
        self._update_status()

    def _update_status(self) -> None:
        start, stop = self.window()
        what = f"p({self.target})" if self.target else "p(final prediction)"
        j = self.position - start
        best = self.top.strings[self.layer][j][0] if self.top is not None and 0 <= j < self.width else "?"
        self.status = (
            f"positions {start}..{stop - 1} of {len(self.ids)}, coloured by {what} · selected layer "
            f"{self.layer} at {self.position}: top token {display_token(best)} · hover a cell for its "
            f"top {TOP_K}"
        )

    @property
    def payload_bytes(self) -> int:
        return len(self.values) + len(self.top_probs)

    def figure(self) -> Figure:
        start, stop = self.window()
        strings = [[display_token(cell[0]) for cell in layer] for layer in self.top.strings]
        what = f"p({self.target})" if self.target else "p(final prediction)"
        return logit_lens_heatmap(
            self.cell_values, strings, self.token_strings[start:stop], kind="prob",
            title=f"logit lens, positions {start}..{stop - 1}: colour {what}, text the top token",
        )  # fmt: skip
