"""Sparse autoencoders and transcoders: the module, SAELens's files, splicing into a model, training, metrics
and feature dashboards.

- ``SAEConfig``, ``SAE`` (``encode``/``decode``/``forward``; standard, TopK, JumpReLU; transcoders)
- ``load_sae``, ``save_sae``: ``cfg.json`` + ``sae_weights.safetensors`` as SAELens writes them
- ``attach_sae``, ``detach_sae``, ``model_with_sae``, ``spliced_saes``: SAE hook points in the model
"""

from __future__ import annotations

from .config import SAEConfig, SAEConfigError
from .files import SAELoadError, load_sae, save_sae
from .sae import SAE
from .splice import (
    Splice,
    SpliceError,
    attach_sae,
    detach_sae,
    model_with_sae,
    sae_hook_name,
    spliced_saes,
)

__all__ = [
    "SAE",
    "SAEConfig",
    "SAEConfigError",
    "SAELoadError",
    "Splice",
    "SpliceError",
    "attach_sae",
    "detach_sae",
    "load_sae",
    "model_with_sae",
    "sae_hook_name",
    "save_sae",
    "spliced_saes",
]
