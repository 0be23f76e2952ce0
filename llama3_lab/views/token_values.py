"""TokenValuesView: the text coloured by one of several per-token channels, every channel on hover.

A channel is any named float array with one value per token: the loss, the logit-lens probability of a
target, an attribution, an SAE feature's activation. They travel as one float32 ``[channels, positions]``
buffer; NaN marks a position without a value (e.g. the loss at the last token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import traitlets
from matplotlib.figure import Figure

from ..viz import display_token, token_strip
from ._base import View, float32_bytes


class TokenValuesView(View):
    """``TokenValuesView(tokens, {"loss": loss, "attribution": attr}, channel=None)``.

    ``tokens`` are the token strings (e.g. ``model.tokenizer.token_strings(ids)``); each channel is an
    array ``[P]`` (torch or NumPy). The text is coloured by :attr:`channel` (default: the first): signed
    channels on a diverging map centred at 0, the others from their minimum to their maximum.
    """

    _view = "token_values"
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    channels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    channel = traitlets.Unicode("").tag(sync=True)
    values = traitlets.Bytes(b"").tag(sync=True)
    """float32 ``[channels, positions]``, little-endian."""

    def __init__(
        self, tokens: Sequence[str], channels: Mapping[str, Any], *, channel: str | None = None
    ) -> None:
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise TypeError(
                "tokens must be a list of token strings (one per position), e.g. "
                "model.tokenizer.token_strings(ids); got "
                f"{type(tokens).__name__ if isinstance(tokens, str) else 'a list with non-strings'}."
            )
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(
                "channels must be a non-empty mapping name -> values [P], e.g. {'loss': loss}; "
                f"got {type(channels).__name__}."
            )
        arrays = {}
        for name, values in channels.items():
            if hasattr(values, "detach"):
                values = values.detach().float().cpu().numpy()
            array = np.asarray(values, dtype=np.float32).reshape(-1) if np.ndim(values) else None
            if array is None or array.size != len(tokens):
                size = "a scalar" if array is None else f"{array.size} values"
                raise ValueError(
                    f"channel {name!r} has {size} but there are {len(tokens)} tokens; pass one value per "
                    "token (NaN where a token has none)."
                )
            arrays[str(name)] = array
        names = list(arrays)
        chosen = names[0] if channel is None else channel
        if chosen not in arrays:
            raise ValueError(f"channel {chosen!r} is not one of the channels passed: {names}.")
        self.arrays = arrays
        super().__init__(
            tokens=list(tokens),
            labels=[display_token(t, max_chars=24) for t in tokens],
            channels=names,
            channel=chosen,
            values=float32_bytes(np.stack(list(arrays.values()))),
        )
        self._react(self._update_status, "channel")
        self._update_status()

    def _update_status(self) -> None:
        self.status = (
            f"{len(self.tokens)} tokens coloured by {self.channel!r} · hover a token for every channel"
        )

    def figure(self) -> Figure:
        values = self.arrays[self.channel]
        signed = np.nanmin(values) < 0 < np.nanmax(values)
        return token_strip(self.tokens, values, center=0.0 if signed else None, label=self.channel)
