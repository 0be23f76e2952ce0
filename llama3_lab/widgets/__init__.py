"""Interactive explorers for JupyterLab (ipywidgets 8, no CDN): RoPE and config.

Attention, the logit lens and generation are browser views now (``llama3_lab.views``: ``AttentionView``,
``LogitLensView``, ``StepperView``), which hover and click without a kernel round-trip; the PNG explorers
they replaced (``AttentionExplorer``, ``LogitLensExplorer``, ``GenerationStepper``) are retired, and asking
for one says which view to use.

Each explorer is an ``ipywidgets.VBox`` whose views are PNG images drawn by :mod:`llama3_lab.viz`; it keeps
its state in plain attributes (``stepper.tokens``, ``explorer.numbers``...) so it can be tested without a
browser, and shows a static figure where no front end can render widgets.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "RoPEExplorer": "rope_explorer",
    "ConfigExplorer": "config_explorer",
    "KNOWN_CONFIGS": "config_explorer",
    "Explorer": "_base",
}

__all__ = [
    "KNOWN_CONFIGS",
    "ConfigExplorer",
    "Explorer",
    "RoPEExplorer",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Explorer
    from .config_explorer import KNOWN_CONFIGS, ConfigExplorer
    from .rope_explorer import RoPEExplorer


#: Retired explorers and the views that do their work (hover and click in the browser, no kernel round-trip).
RETIRED = {
    "AttentionExplorer": "llama3_lab.views.AttentionView(cache, labels, layer=, head=): .query, .layer",
    "LogitLensExplorer": "llama3_lab.views.LogitLensView(cache, labels): .layer, .position, .top",
    "GenerationStepper": "llama3_lab.views.StepperView(model, prompt, temperature=): .step(), .back()",
}


def __getattr__(name: str) -> Any:
    if name in RETIRED:
        raise AttributeError(
            f"llama3_lab.widgets.{name} was retired: use {RETIRED[name]}, which hovers and clicks in the "
            "browser and saves an offline page (save_html)."
        )
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
