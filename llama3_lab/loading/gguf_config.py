"""A :class:`LlamaConfig` from a GGUF file's metadata (what ``LlamaConfig.from_gguf`` delegates to).

llama.cpp writes the hyper-parameters as ``llama.*`` keys, the vocabulary as ``tokenizer.ggml.*``, and Llama
3.1/3.2's RoPE scaling not as numbers but as a ``rope_freqs.weight`` tensor of per-pair divisors.
"""

from __future__ import annotations

import os
from typing import Any

from ..config import LLAMA31_ROPE_SCALING, ConfigError, ConfigNotFoundError, LlamaConfig
from ..gguf_metadata import GGUFMetadata

_MISSING = object()


def config_from_gguf(path_or_reader: str | os.PathLike | Any) -> LlamaConfig:
    """A config from the metadata of a GGUF file (a path or an open ``gguf.GGUFReader``).

    Reads the ``{arch}.*`` keys llama.cpp writes (embedding_length, feed_forward_length, block_count,
    attention.head_count[_kv], attention.layer_norm_rms_epsilon, rope.freq_base, context_length,
    rope.dimension_count or attention.key_length), the vocabulary size from the token list, bos/eos from
    ``tokenizer.ggml.*``, and ties the output matrix when the file has no ``output.weight`` tensor.
    Llama 3.1/3.2 GGUFs carry their RoPE scaling as a ``rope_freqs.weight`` tensor of per-pair divisors:
    those are matched against the llama3 rule (low 1, high 4, original context 8192) and recorded as
    ``rope_scaling``. Quantised weights have no single dtype: ``torch_dtype`` is None.
    """
    try:
        meta = GGUFMetadata(path_or_reader)
    except FileNotFoundError as e:
        raise ConfigNotFoundError(str(e)) from e
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConfigError(
            f"GGUF general.architecture is {arch!r}; llama3-lab reads 'llama' models only "
            "(SmolLM2 and Llama 3.x GGUFs say 'llama')."
        )

    def key(name: str, default: Any = _MISSING) -> Any:
        value = meta.get(f"llama.{name}", default)
        if value is _MISSING:
            raise ConfigError(
                f"GGUF metadata lacks 'llama.{name}', needed for the config; is the file complete?"
            )
        return value

    hidden = key("embedding_length")
    heads = key("attention.head_count")
    head_dim = key("rope.dimension_count", None) or key("attention.key_length", None)
    vocab = meta.get("llama.vocab_size") or meta.array_length("tokenizer.ggml.tokens")
    if not vocab:
        raise ConfigError("GGUF has neither 'llama.vocab_size' nor a 'tokenizer.ggml.tokens' list.")
    theta = float(key("rope.freq_base", 10000.0))
    extra = {}
    if meta.get("general.name") is not None:
        extra["gguf_general_name"] = meta.get("general.name")
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=key("feed_forward_length"),
        num_hidden_layers=key("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=key("attention.head_count_kv", heads),
        head_dim=head_dim if head_dim and head_dim * heads != hidden else None,
        max_position_embeddings=key("context_length"),
        rms_norm_eps=_float32_to_decimal(key("attention.layer_norm_rms_epsilon")),
        rope_theta=_float32_to_decimal(theta),
        rope_scaling=_gguf_rope_scaling(meta, head_dim or hidden // heads, theta),
        tie_word_embeddings="output.weight" not in meta.tensor_names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        torch_dtype=None,
        extra=extra,
    )


def _float32_to_decimal(value: float) -> float:
    """GGUF stores eps and theta as float32: 1e-5 reads back as 9.99999974738e-06. Recover the short
    decimal."""
    import numpy as np

    return float(str(np.float32(value)))


def _gguf_rope_scaling(meta: GGUFMetadata, head_dim: int, theta: float) -> dict[str, Any] | None:
    scaling_type = meta.get("llama.rope.scaling.type")
    if scaling_type not in (None, "none"):
        raise ConfigError(
            f"GGUF llama.rope.scaling.type={scaling_type!r} is not supported (llama3-lab implements Llama "
            "3.1's 'llama3' scaling, which GGUF stores as a rope_freqs.weight tensor)."
        )
    if "rope_freqs.weight" not in meta.tensor_names:
        return None
    import numpy as np

    from ..rope import llama3_divisors

    divisors = np.asarray(meta.tensor("rope_freqs.weight"), dtype=np.float64).reshape(-1)
    orig = meta.get("llama.rope.scaling.original_context_length") or 8192
    scaling = {
        **LLAMA31_ROPE_SCALING,
        "factor": float(round(divisors.max(), 4)),
        "original_max_position_embeddings": orig,
    }
    expected = np.array(llama3_divisors(scaling, head_dim, theta))
    if divisors.shape != expected.shape or not np.allclose(divisors, expected, rtol=1e-3):
        raise ConfigError(
            "GGUF rope_freqs.weight does not match Llama 3.1's scaling rule (low 1, high 4, original context "
            f"{orig}, factor {scaling['factor']}); this RoPE variant is not supported."
        )
    return scaling
