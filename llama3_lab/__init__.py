"""llama3-lab: a Jupyter workbench for learning and interpreting Llama 3 from the inside."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public API, imported lazily so that `import llama3_lab` stays fast and light.
_EXPORTS = {
    "LlamaConfig": "llama3_lab.config",
    "fetch_assets": "llama3_lab.assets",
    "load_tokenizer": "llama3_lab.tokenizer",
    "LlamaModel": "llama3_lab.model",
    "KVCache": "llama3_lab.kv_cache",
    "load_model": "llama3_lab.loading",
    "ActivationCache": "llama3_lab.activation_cache",
    "HookPoint": "llama3_lab.hook_points",
}

__all__ = [
    "ActivationCache",
    "HookPoint",
    "KVCache",
    "LlamaConfig",
    "LlamaModel",
    "__version__",
    "fetch_assets",
    "load_model",
    "load_tokenizer",
]

if TYPE_CHECKING:  # pragma: no cover
    from .activation_cache import ActivationCache
    from .assets import fetch_assets
    from .config import LlamaConfig
    from .hook_points import HookPoint
    from .kv_cache import KVCache
    from .loading import load_model
    from .model import LlamaModel
    from .tokenizer import load_tokenizer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llama3_lab' has no attribute {name!r}")
