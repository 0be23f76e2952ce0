"""Views in the browser: hover, click, long prompts, offline, exportable (``anywidget``, no CDN).

- :class:`AttentionView`: the prompt as text, hover a token for its attention row or column, every head.
- :class:`TokenValuesView`: the text coloured by any named per-token values (loss, lens probability...).
- :class:`LogitLensView`: layers × positions; hover a cell for its top-5 tokens.
- :class:`StepperView`: generation one token at a time; click a token to rewind there, force or sample.

Each shows a PNG where no front end runs and writes a self-contained page with ``save_html(path)``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AttentionView": "attention",
    "TokenValuesView": "token_values",
    "LogitLensView": "logit_lens",
    "StepperView": "stepper",
    "View": "_base",
}

__all__ = ["AttentionView", "LogitLensView", "StepperView", "TokenValuesView", "View"]

if TYPE_CHECKING:  # pragma: no cover
    from ._base import View
    from .attention import AttentionView
    from .logit_lens import LogitLensView
    from .stepper import StepperView
    from .token_values import TokenValuesView


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
