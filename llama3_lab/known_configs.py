"""The published configs of the Llama 3 family (and the embedded SmolLM2), by display name.

Each entry holds the fields of the model's Hugging Face ``config.json`` that ``LlamaConfig`` models, so a
config can be explained, costed and planned over devices without downloading anything. The config
explorer offers these; ``llama3-lab plan llama3.1-70b`` reads them by short name.
"""

from __future__ import annotations

import re
from typing import Any

from .config import LLAMA31_ROPE_SCALING, LlamaConfig

__all__ = ["KNOWN_CONFIGS", "known_config", "short_name"]

_LLAMA3_COMMON: dict[str, Any] = {
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
_LLAMA3_CONTEXT = {"max_position_embeddings": 8192}
_LLAMA31_CONTEXT = {"max_position_embeddings": 131072, "rope_scaling": dict(LLAMA31_ROPE_SCALING)}
_LLAMA32_CONTEXT = {
    "max_position_embeddings": 131072,
    "rope_scaling": {**LLAMA31_ROPE_SCALING, "factor": 32.0},
}
_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
_70B = {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
}

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Llama 3 8B": {**_LLAMA3_COMMON, **_LLAMA3_CONTEXT, **_8B},
    "Llama 3 70B": {**_LLAMA3_COMMON, **_LLAMA3_CONTEXT, **_70B},
    "Llama 3.1 8B": {**_LLAMA3_COMMON, **_LLAMA31_CONTEXT, **_8B},
    "Llama 3.1 70B": {**_LLAMA3_COMMON, **_LLAMA31_CONTEXT, **_70B},
    "Llama 3.1 405B": {
        **_LLAMA3_COMMON,
        **_LLAMA31_CONTEXT,
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
    },
    "Llama 3.2 1B": {
        **_LLAMA3_COMMON,
        **_LLAMA32_CONTEXT,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
    },
    "Llama 3.2 3B": {
        **_LLAMA3_COMMON,
        **_LLAMA32_CONTEXT,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": True,
    },
    "SmolLM2-135M": {
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}
"""The published Hugging Face ``config.json`` fields of each model (base models), by display name."""


def short_name(display_name: str) -> str:
    """The command-line name of a display name: ``"Llama 3.1 70B"`` → ``"llama3.1-70b"``."""
    return re.sub(r"^llama ", "llama", display_name.lower()).replace(" ", "-")


def known_config(name: str) -> LlamaConfig:
    """The ``LlamaConfig`` of a model in ``KNOWN_CONFIGS``, by display name or short name
    (``"Llama 3.1 70B"`` or ``"llama3.1-70b"``)."""
    by_short = {short_name(display): display for display in KNOWN_CONFIGS}
    display = name if name in KNOWN_CONFIGS else by_short.get(name.lower())
    if display is None:
        raise KeyError(
            f"unknown model {name!r}; choose one of {sorted(KNOWN_CONFIGS)} or their short names "
            f"{sorted(by_short)}."
        )
    return LlamaConfig.from_dict(KNOWN_CONFIGS[display])
