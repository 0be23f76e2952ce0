"""A :class:`LlamaConfig` from Meta's ``params.json`` (what ``LlamaConfig.from_params`` delegates to).

Meta's checkpoints (``params.json`` + ``consolidated.*.pth``, read by ``meta.py``) name the fields after
``ModelArgs`` (``dim``, ``n_layers``...), do not store the MLP width (it is derived, see
:func:`~llama3_lab.config.meta_ffn_hidden_dim`) and say ``use_scaled_rope`` instead of the scaling numbers.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..config import LLAMA31_ROPE_SCALING, ConfigError, LlamaConfig, meta_ffn_hidden_dim, read_json
from ..config_checks import check_positive_int, is_number

#: (dim, n_layers) → the Llama 3.2 model of that shape: tied embeddings and RoPE scaling factor 32.
LLAMA32_SHAPES = {(2048, 16): "Llama 3.2 1B", (3072, 28): "Llama 3.2 3B"}
_REQUIRED = ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of")
_KNOWN = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
    "norm_eps", "rope_theta", "use_scaled_rope", "rope_scaling_factor", "max_seq_len",
}  # fmt: skip


def config_from_params(
    params: dict[str, Any],
    *,
    rope_scaling_factor: float | None = None,
    tie_word_embeddings: bool | None = None,
) -> LlamaConfig:
    """A config from Meta's ``params.json`` dictionary (the format of ``consolidated.*.pth`` checkpoints).

    ``intermediate_size`` is derived as Meta's ``FeedForward`` does (:func:`meta_ffn_hidden_dim`); absent
    fields take Meta's ``ModelArgs`` defaults (norm_eps 1e-5, rope_theta 500000). params.json says
    ``use_scaled_rope`` but not the factor: 32 for the exact Llama 3.2 1B / 3B shapes (dim 2048 with 16
    layers, dim 3072 with 28), Llama 3.1's 8 otherwise, with a warning saying which; a
    ``rope_scaling_factor`` key or argument overrides it. params.json never says whether the output
    matrix is tied either: ``load_model`` and ``load_config`` decide from the shards (tied when they hold
    no ``output.weight``) and pass ``tie_word_embeddings``; without it the exact Llama 3.2 shapes are
    assumed tied and everything else untied, with a warning.
    Token ids are Llama 3's (bos 128000, eos 128001). ``max_seq_len``, when present, becomes
    ``max_position_embeddings``; otherwise 8192 (Llama 3) or 131072 with scaled RoPE (3.1/3.2).
    """
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        hint = " (this looks like a Hugging Face config: use from_json)" if "hidden_size" in params else ""
        raise ConfigError(f"params.json lacks {missing}; it needs {list(_REQUIRED)}{hint}.")
    for key in ("dim", "multiple_of", "n_layers"):
        check_positive_int(key, params[key])
    if params["vocab_size"] == -1:
        raise ConfigError(
            "params.json has vocab_size -1 (Meta's 'set from the tokenizer' placeholder); "
            "set it to 128256 for Llama 3."
        )
    multiplier = params.get("ffn_dim_multiplier")
    if multiplier is not None and not is_number(multiplier):
        raise ConfigError(f"ffn_dim_multiplier must be a number or null, got {multiplier!r}.")
    dim = params["dim"]
    use_scaled_rope = bool(params.get("use_scaled_rope", False))
    llama32 = LLAMA32_SHAPES.get((dim, params["n_layers"]))  # "Llama 3.2 1B", "Llama 3.2 3B" or None
    shape = f"dim {dim}, {params['n_layers']} layers"
    rope_scaling = None
    if use_scaled_rope:
        factor = rope_scaling_factor or params.get("rope_scaling_factor")
        if factor is None:
            factor = 32.0 if llama32 else 8.0
            why = f"the {llama32} shape" if llama32 else "Llama 3.1's; only Llama 3.2 1B/3B shapes use 32"
            warnings.warn(
                f"params.json says use_scaled_rope but not the factor: assuming {factor:g} ({shape}: "
                f"{why}). Pass rope_scaling_factor= (or add a rope_scaling_factor key) if this checkpoint "
                "uses another.",
                stacklevel=2,
            )
        rope_scaling = {**LLAMA31_ROPE_SCALING, "factor": float(factor)}
    if tie_word_embeddings is None:
        tie_word_embeddings = bool(use_scaled_rope and llama32)
        warnings.warn(
            f"params.json does not say whether the output matrix is tied: assuming "
            f"{'tied' if tie_word_embeddings else 'untied'} ({shape}"
            f"{', the ' + llama32 + ' shape' if tie_word_embeddings else ''}). load_model decides from the "
            "shards (tied when they hold no output.weight); pass tie_word_embeddings= to say it here.",
            stacklevel=2,
        )
    return LlamaConfig(
        vocab_size=params["vocab_size"],
        hidden_size=dim,
        intermediate_size=meta_ffn_hidden_dim(dim, params["multiple_of"], multiplier),
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        max_position_embeddings=params.get("max_seq_len") or (131072 if use_scaled_rope else 8192),
        rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=params.get("rope_theta", 500000.0),
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
        extra={k: v for k, v in params.items() if k not in _KNOWN},
    )


def config_from_params_json(
    path: str | os.PathLike,
    *,
    rope_scaling_factor: float | None = None,
    tie_word_embeddings: bool | None = None,
) -> LlamaConfig:
    """A config from Meta's ``params.json`` file; see :func:`config_from_params`."""
    return config_from_params(
        read_json(path), rope_scaling_factor=rope_scaling_factor, tie_word_embeddings=tie_word_embeddings
    )
