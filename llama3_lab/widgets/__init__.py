"""Interactive explorers for JupyterLab (ipywidgets 8, no CDN): attention, generation, RoPE, logit lens,
config.

Each explorer is an ``ipywidgets.VBox`` whose views are PNG images drawn by :mod:`llama3_lab.viz`; it keeps
its state in plain attributes (``stepper.tokens``, ``explorer.numbers``...) so it can be tested without a
browser, and shows a static figure where no front end can render widgets.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AttentionExplorer": "attention_explorer",
    "GenerationStepper": "stepper",
    "RoPEExplorer": "rope_explorer",
    "LogitLensExplorer": "logit_lens_explorer",
    "ConfigExplorer": "config_explorer",
    "KNOWN_CONFIGS": "config_explorer",
    "Explorer": "_base",
}

__all__ = [
    "KNOWN_CONFIGS",
    "AttentionExplorer",
    "ConfigExplorer",
    "Explorer",
    "GenerationStepper",
    "LogitLensExplorer",
    "RoPEExplorer",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Explorer
    from .attention_explorer import AttentionExplorer
    from .config_explorer import KNOWN_CONFIGS, ConfigExplorer
    from .logit_lens_explorer import LogitLensExplorer
    from .rope_explorer import RoPEExplorer
    from .stepper import GenerationStepper


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
