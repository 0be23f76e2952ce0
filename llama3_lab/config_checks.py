"""The checks every LlamaConfig runs on construction: each error names the field, what was found, and the fix.

Kept apart from ``config.py`` (which re-exports the errors and constants) so that the dataclass reads at a
glance; nothing here imports config.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ConfigError",
    "ConfigNotFoundError",
    "LLAMA31_ROPE_SCALING",
    "check_fields",
    "check_positive_int",
    "is_int",
    "is_number",
]

SUPPORTED_ROPE_TYPES = ("default", "llama3")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# Llama 3.1 (8B/70B/405B); Llama 3.2 1B/3B use the same with factor 32.
LLAMA31_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
RMS_NORM_EPS_RANGE = (1e-12, 1e-2)


class ConfigError(ValueError):
    """A config value is missing, mistyped or inconsistent; the message names the field and the fix."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """No configuration could be found at the given path."""


_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fields(cfg: Any) -> None:
    """Check every field of a LlamaConfig ``cfg``; see :meth:`LlamaConfig.validate`."""
    for name in _POSITIVE_INT_FIELDS:
        check_positive_int(name, getattr(cfg, name))

    if cfg.head_dim is None:
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(
                f"hidden_size={cfg.hidden_size} is not divisible by num_attention_heads="
                f"{cfg.num_attention_heads}, so head_dim cannot be derived; give head_dim explicitly or "
                "fix one of the two."
            )
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    else:
        check_positive_int("head_dim", cfg.head_dim)
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ConfigError(
            f"num_attention_heads={cfg.num_attention_heads} is not divisible by num_key_value_heads="
            f"{cfg.num_key_value_heads}: grouped-query attention shares each key/value head with a "
            "whole group of query heads. Use a num_key_value_heads that divides num_attention_heads."
        )

    for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
        value = getattr(cfg, name)
        if not is_number(value):
            raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
        setattr(cfg, name, float(value))
    low, high = RMS_NORM_EPS_RANGE
    if not low <= cfg.rms_norm_eps <= high:
        raise ConfigError(
            f"rms_norm_eps={cfg.rms_norm_eps!r} is outside the sane range [{low:g}, {high:g}]; Llama 3 "
            "uses 1e-5 (a value like 1e-5 written as 1e5 or 0.1 is a typo)."
        )
    if not cfg.rope_theta > 0 or not math.isfinite(cfg.rope_theta):
        raise ConfigError(
            f"rope_theta must be a positive number (Llama 3: 500000.0), got {cfg.rope_theta!r}."
        )
    if not cfg.initializer_range >= 0:
        raise ConfigError(
            f"initializer_range must be >= 0 (a standard deviation), got {cfg.initializer_range!r}."
        )

    for name in _BOOL_FIELDS:
        value = getattr(cfg, name)
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r} ({type(value).__name__}).")

    _check_token_id(cfg, "bos_token_id", cfg.bos_token_id, allow_list=False)
    _check_token_id(cfg, "eos_token_id", cfg.eos_token_id, allow_list=True)

    if cfg.hidden_act != "silu":
        raise ConfigError(
            f"hidden_act={cfg.hidden_act!r} is not supported: Llama's MLP is SwiGLU, "
            "down(silu(gate(x)) * up(x)), so the only valid value is 'silu'."
        )
    if cfg.model_type != "llama":
        raise ConfigError(
            f"model_type={cfg.model_type!r}: llama3-lab implements the 'llama' architecture only "
            "(other families differ in biases, norms or attention windows)."
        )
    if cfg.torch_dtype is not None and not isinstance(cfg.torch_dtype, str):
        raise ConfigError(
            f"torch_dtype must be a dtype name like 'bfloat16' or null, got {cfg.torch_dtype!r}."
        )
    if not isinstance(cfg.extra, dict):
        raise ConfigError(f"extra must be a dict of unmodelled fields, got {type(cfg.extra).__name__}.")
    cfg.rope_scaling = normalized_rope_scaling(cfg.rope_scaling)


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not is_int(value):
        hint = ""
        if isinstance(value, str) and value.strip().isdigit():
            hint = f" (write {value.strip()} without quotes)"
        elif isinstance(value, float) and value.is_integer():
            hint = f" (write {int(value)}, not {value})"
        raise ConfigError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__}){hint}.")
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value}.")


def _check_token_id(cfg: Any, name: str, value: Any, *, allow_list: bool) -> None:
    ids = value if allow_list and isinstance(value, list) else [value]
    if value is None:
        return
    for token_id in ids:
        if not is_int(token_id) or token_id < 0:
            kind = (
                "a token id (non-negative integer), a list of them, or null"
                if allow_list
                else ("a token id (non-negative integer) or null")
            )
            raise ConfigError(f"{name} must be {kind}, got {value!r}.")
        if token_id >= cfg.vocab_size:
            raise ConfigError(
                f"{name}={value!r} is outside the vocabulary (vocab_size={cfg.vocab_size}); "
                "fix the id or the vocab_size."
            )


def normalized_rope_scaling(scaling: Any) -> dict[str, Any] | None:
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ConfigError(
            f"rope_scaling must be null or a dict like {LLAMA31_ROPE_SCALING}, got {scaling!r}."
        )
    scaling = dict(scaling)
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type is None:
        raise ConfigError(
            f"rope_scaling={scaling} has no 'rope_type' (or legacy 'type') key; "
            f"set it to one of {list(SUPPORTED_ROPE_TYPES)}."
        )
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"rope_scaling rope_type={rope_type!r} is not supported; supported types are "
            f"{list(SUPPORTED_ROPE_TYPES)} ('llama3' is Llama 3.1/3.2's scaling, 'default' or null means "
            "none)."
        )
    if rope_type == "default":
        return None
    scaling["rope_type"] = rope_type
    missing = [key for key in LLAMA3_ROPE_KEYS if key not in scaling]
    if missing:
        raise ConfigError(
            f"rope_scaling of type 'llama3' lacks {missing}; it needs all of {list(LLAMA3_ROPE_KEYS)} "
            f"(Llama 3.1: {dict((k, LLAMA31_ROPE_SCALING[k]) for k in LLAMA3_ROPE_KEYS)})."
        )
    for key in LLAMA3_ROPE_KEYS:
        if not is_number(scaling[key]) or not scaling[key] > 0:
            raise ConfigError(f"rope_scaling[{key!r}] must be a positive number, got {scaling[key]!r}.")
    if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError(
            "rope_scaling needs high_freq_factor > low_freq_factor (Llama 3.1: 4 and 1), got "
            f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}."
        )
    if scaling["factor"] < 1:
        raise ConfigError(f"rope_scaling['factor'] must be >= 1 (Llama 3.1: 8), got {scaling['factor']}.")
    return scaling
