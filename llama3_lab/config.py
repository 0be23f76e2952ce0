"""LlamaConfig: the numbers that define a Llama 3 model, and what they cost.

Field names are Hugging Face's (``hidden_size``, ``num_key_value_heads``...) so that a ``config.json`` maps
one to one: ``from_dict`` / ``from_json`` read it, ``to_dict`` / ``save_json`` write it. Every field is
checked in ``__post_init__`` (a bad value raises :class:`ConfigError` naming the field and the fix).
Derived sizes: parameters, weight and KV-cache bytes, FLOPs per token.

Elsewhere, each in its own file: the readers of Meta's ``params.json`` and of GGUF metadata (``loading/``),
the RoPE scaling rule (``rope.py``), the teaching text of :meth:`LlamaConfig.explain` (``config_explain.py``).

Shapes use TransformerLens letters: V vocab, D d_model, M d_mlp, L layers, H query heads, K key/value heads,
d head dim, G = H/K query heads per KV head, T positions.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config_checks import (
    LLAMA3_ROPE_KEYS,
    LLAMA31_ROPE_SCALING,
    SUPPORTED_ROPE_TYPES,
    ConfigError,
    ConfigNotFoundError,
    check_fields,
    is_int,
)

if TYPE_CHECKING:
    from .config_explain import ConfigExplanation

__all__ = [
    "LLAMA3_ROPE_KEYS",
    "LLAMA31_ROPE_SCALING",
    "SUPPORTED_ROPE_TYPES",
    "ConfigError",
    "ConfigNotFoundError",
    "HF_CONFIG_DEFAULTS",
    "LlamaConfig",
    "dtype_bytes",
    "meta_ffn_hidden_dim",
]

# ----------------------------------------------------------------------------------------------------
# dtypes


_DTYPE_BYTES = {
    **dict.fromkeys(("float64", "fp64", "f64", "double"), 8),
    **dict.fromkeys(("float32", "fp32", "f32", "float"), 4),
    **dict.fromkeys(("bfloat16", "bf16", "float16", "fp16", "f16", "half"), 2),
    **dict.fromkeys(("int8", "uint8", "float8_e4m3fn", "float8_e5m2", "fp8"), 1),
}
#: A floating torch dtype of each element size (the activation estimate builds a meta model in it).
_FLOAT_OF_SIZE = {8: "float64", 4: "float32", 2: "bfloat16", 1: "float8_e4m3fn"}


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of ``dtype``: a ``torch.dtype``, a numpy dtype or a name like ``"bf16"``."""
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
        if name in _DTYPE_BYTES:
            return _DTYPE_BYTES[name]
        raise ConfigError(
            f"Unknown dtype name {dtype!r}; use a torch dtype or one of {sorted(_DTYPE_BYTES)}."
        )
    itemsize = getattr(dtype, "itemsize", None)
    if isinstance(itemsize, int) and not isinstance(itemsize, bool) and itemsize > 0:
        return itemsize
    raise ConfigError(
        f"Cannot tell the element size of dtype {dtype!r}; pass a torch.dtype or a name like 'bf16'."
    )


# ----------------------------------------------------------------------------------------------------
# Meta's FFN width


def meta_ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """The SwiGLU width M exactly as Meta's ``FeedForward.__init__`` derives it from ``params.json``.

    4·dim, then ⌊2/3 of it⌋ (SwiGLU has three matrices instead of two), then ⌊× ffn_dim_multiplier⌋, then
    rounded up to a multiple of ``multiple_of``. Llama 3 8B: 16384 → 10922 → 14198 → 14336.
    """
    hidden = 4 * dim
    hidden = int(2 * hidden / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# ----------------------------------------------------------------------------------------------------
# What a Hugging Face config.json means when it leaves a field out

#: transformers' ``LlamaConfig.__init__`` defaults for the fields LlamaConfig models (Llama 1's, not Llama
#: 3's: rope_theta 10000, rms_norm_eps 1e-6): what transformers loads when a ``config.json`` leaves one
#: out, so what :meth:`LlamaConfig.from_dict` fills in. ``num_key_value_heads`` defaults to
#: ``num_attention_heads`` and ``head_dim`` to hidden_size / heads. tests/test_config.py compares this
#: table with the installed transformers.
HF_CONFIG_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "head_dim": None,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "torch_dtype": None,
    "model_type": "llama",
}
#: Fields whose default means "absent" or "derived" (no bias, no scaling, heads = query heads...): left
#: out by many real configs, so filling them in is not worth a warning. Every other default is named.
_QUIET_DEFAULTS = frozenset(
    {
        "num_key_value_heads", "head_dim", "rope_scaling", "tie_word_embeddings", "attention_bias",
        "mlp_bias", "initializer_range", "hidden_act", "torch_dtype", "model_type",
    }
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# LlamaConfig


@dataclass
class LlamaConfig:
    """Hyper-parameters of a Llama 3 / 3.1 / 3.2 model, with Hugging Face field names.

    The defaults are Llama 3 8B. ``head_dim`` left as ``None`` is derived: hidden_size / num_attention_heads.
    Fields this class does not model (``architectures``, ``use_cache``...) are kept in ``extra`` and written
    back by :meth:`to_dict`. Every field is checked on construction; call :meth:`validate` again after
    mutating a config by hand, or use :meth:`replace`.
    """

    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 128000
    eos_token_id: int | list[int] | None = 128001
    hidden_act: str = "silu"
    torch_dtype: str | None = "bfloat16"
    model_type: str = "llama"
    extra: dict[str, Any] = field(default_factory=dict)
    _head_dim_given: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        self._head_dim_given = self.head_dim is not None
        self.validate()

    # -- validation

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the field, what was found and the fix.

        Also normalises a few spellings: int ``rope_theta``/``rms_norm_eps`` become floats, ``rope_scaling``
        with ``type`` gains ``rope_type``, and ``rope_type: "default"`` (no scaling) becomes ``None``.
        """
        check_fields(self)

    def replace(self, **changes: Any) -> LlamaConfig:
        """A validated copy with some fields changed; a derived head_dim is derived again."""
        if "head_dim" not in changes and not self._head_dim_given:
            changes["head_dim"] = None
        return dataclasses.replace(self, **changes)

    # -- readers

    @classmethod
    def tiny(cls, **overrides: Any) -> LlamaConfig:
        """A tiny Llama-3-shaped config for tests, smoke runs and teaching with random weights.

        2 layers, d_model 64, 8 query heads sharing 2 KV heads (GQA group 4, like Llama 3 8B), head_dim 16,
        SwiGLU width 112, vocabulary 97; any field can be overridden.
        """
        fields_ = dict(
            vocab_size=97,
            hidden_size=64,
            intermediate_size=112,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=2048,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            initializer_range=0.1,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
        return cls(**{**fields_, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """A config from a Hugging Face ``config.json`` dictionary; unknown keys go to ``extra``.

        Absent keys mean what they mean to transformers, whose format this is: its ``LlamaConfig``
        defaults (:data:`HF_CONFIG_DEFAULTS`: rope_theta 10000 and rms_norm_eps 1e-6, not Llama 3's
        500000 and 1e-5), with ``num_key_value_heads`` defaulting to ``num_attention_heads`` (plain
        multi-head attention). A warning names every default that changes the numbers. The transformers
        5 spelling ``rope_parameters`` (theta and scaling in one dict) and ``dtype`` are understood too.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"A config must be a dict (a parsed config.json), got {type(d).__name__}.")
        if is_meta_params(d):
            raise ConfigError(
                "This looks like Meta's params.json (dim, n_layers...), not a Hugging Face config; "
                "use LlamaConfig.from_params_json(path) or LlamaConfig.from_params(d)."
            )
        d = dict(d)
        rope_parameters = d.pop("rope_parameters", None)
        if isinstance(rope_parameters, dict):
            rope_parameters = dict(rope_parameters)
            if "rope_theta" in rope_parameters:
                d.setdefault("rope_theta", rope_parameters.pop("rope_theta"))
            if rope_parameters.get("rope_type", rope_parameters.get("type", "default")) != "default":
                d.setdefault("rope_scaling", rope_parameters)
        elif rope_parameters is not None:
            d["rope_parameters"] = rope_parameters  # not understood: keep it visible in extra
        if "dtype" in d and "torch_dtype" not in d:
            d["torch_dtype"] = d.pop("dtype")
        applied = {k: v for k, v in HF_CONFIG_DEFAULTS.items() if k not in d}
        d = {**applied, **d}
        if d["num_key_value_heads"] is None:
            d["num_key_value_heads"] = d["num_attention_heads"]
        loud = {k: v for k, v in applied.items() if k not in _QUIET_DEFAULTS}
        if loud:
            warnings.warn(
                f"This config.json leaves out {', '.join(loud)}: using transformers' LlamaConfig defaults "
                f"({', '.join(f'{k}={v!r}' for k, v in loud.items())}), as transformers would. If the model "
                "was trained with other values (Llama 3: rope_theta=500000.0, rms_norm_eps=1e-05), write "
                "them into its config.json.",
                stacklevel=2,
            )
        known = {f.name for f in fields(cls) if f.init} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> LlamaConfig:
        """A config from a Hugging Face ``config.json`` file."""
        return cls.from_dict(read_json(path))

    # Readers of the other formats live beside their loaders (``loading/meta_params.py``,
    # ``loading/gguf_config.py``, ``loading.load_config``); these classmethods delegate to them.

    @classmethod
    def from_params(
        cls,
        params: dict[str, Any],
        *,
        rope_scaling_factor: float | None = None,
        tie_word_embeddings: bool | None = None,
    ) -> LlamaConfig:
        """A config from Meta's ``params.json`` dictionary: :func:`loading.meta_params.config_from_params`."""
        from .loading.meta_params import config_from_params

        return config_from_params(
            params, rope_scaling_factor=rope_scaling_factor, tie_word_embeddings=tie_word_embeddings
        )

    @classmethod
    def from_params_json(
        cls,
        path: str | Path,
        *,
        rope_scaling_factor: float | None = None,
        tie_word_embeddings: bool | None = None,
    ) -> LlamaConfig:
        """A config from Meta's ``params.json`` file: :func:`loading.meta_params.config_from_params_json`."""
        from .loading.meta_params import config_from_params_json

        return config_from_params_json(
            path, rope_scaling_factor=rope_scaling_factor, tie_word_embeddings=tie_word_embeddings
        )

    @classmethod
    def from_gguf(cls, path_or_reader: str | Path | Any) -> LlamaConfig:
        """A config from a GGUF file's metadata (a path or an open ``gguf.GGUFReader``):
        :func:`loading.gguf_config.config_from_gguf`."""
        from .loading.gguf_config import config_from_gguf

        return config_from_gguf(path_or_reader)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlamaConfig:
        """A config from whatever ``path`` holds (a Hugging Face or Meta directory, a ``.json`` file, a
        ``.gguf`` file or a named model): :func:`loading.load_config`, sharing ``load_model``'s dispatch."""
        from .loading import load_config

        return load_config(path)

    # -- writers

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dictionary (extras included, ``head_dim`` always written)."""
        d = asdict(self)
        extra = d.pop("extra")
        d.pop("_head_dim_given", None)
        return {**extra, **d}

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as ``config.json`` (sorted keys, like transformers); returns the path."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    # -- derived figures

    @property
    def gqa_group(self) -> int:
        """G: query heads sharing one key/value head (H / K)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_width(self) -> int:
        """H·d: output width of q_proj (and input width of o_proj)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """K·d: output width of k_proj and of v_proj."""
        return self.num_key_value_heads * self.head_dim

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameter counts by part: embedding, per layer (attention, mlp, norms), all layers, final norm,
        unembedding (0 when tied) and total. Biases only when ``attention_bias`` / ``mlp_bias``."""
        D, M, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        attention = D * self.q_width + 2 * D * self.kv_width + self.q_width * D  # q, k, v, o
        if self.attention_bias:
            attention += self.q_width + 2 * self.kv_width + D
        mlp = 3 * D * M  # gate, up, down
        if self.mlp_bias:
            mlp += 2 * M + D
        norms = 2 * D  # ln1, ln2
        per_layer = attention + mlp + norms
        parts = {
            "embedding": V * D,
            "attention_per_layer": attention,
            "mlp_per_layer": mlp,
            "norms_per_layer": norms,
            "per_layer": per_layer,
            "all_layers": L * per_layer,
            "final_norm": D,
            "unembedding": 0 if self.tie_word_embeddings else V * D,
        }
        parts["total"] = parts["embedding"] + parts["all_layers"] + parts["final_norm"] + parts["unembedding"]
        return parts

    def num_parameters(self) -> int:
        """Distinct parameters (a tied unembedding counted once): what ``sum(p.numel())`` gives."""
        return self.parameter_breakdown()["total"]

    def weights_bytes(self, dtype: Any = "bf16") -> int:
        """Bytes of all weights stored in ``dtype`` (torch dtype or name like 'bf16', 'float32', 'fp16')."""
        return self.num_parameters() * dtype_bytes(dtype)

    def kv_cache_bytes_per_token(self, dtype: Any = "bf16") -> int:
        """Bytes the KV cache grows by per token per sequence: 2 (K and V) · L · K · d · bytes."""
        return 2 * self.num_hidden_layers * self.kv_width * dtype_bytes(dtype)

    def kv_cache_bytes(self, seq_len: int | None = None, batch: int = 1, dtype: Any = "bf16") -> int:
        """Bytes of a KV cache for ``batch`` sequences of ``seq_len`` tokens (default: the full context)."""
        seq_len = self.max_position_embeddings if seq_len is None else seq_len
        return batch * seq_len * self.kv_cache_bytes_per_token(dtype)

    def matmul_parameters(self) -> int:
        """Weights that take part in a matrix multiply per token: every projection of every layer plus the
        unembedding (the embedding is a lookup; a tied matrix is still multiplied once, as unembedding)."""
        parts = self.parameter_breakdown()
        D, L = self.hidden_size, self.num_hidden_layers
        per_layer_matmul = parts["attention_per_layer"] + parts["mlp_per_layer"]
        if self.attention_bias:
            per_layer_matmul -= self.q_width + 2 * self.kv_width + D
        if self.mlp_bias:
            per_layer_matmul -= 2 * self.intermediate_size + D
        return L * per_layer_matmul + self.vocab_size * D

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs for one token that attends to ``seq_len`` positions (itself included).

        ``2 · N_matmul + 4 · L · seq_len · (H · d)``: each matmul weight costs one multiply and one add
        (:meth:`matmul_parameters`: all projections plus the unembedding); attention adds the q·k scores and
        the pattern·v product, each ``2 · seq_len · H · d`` per layer. Norms, RoPE, softmax and SiLU are
        elementwise and left out (< 0.1%). The average token of a causal prompt of length T attends to about
        T/2 positions, so a whole prompt costs ≈ T · flops_per_token(T/2).
        """
        if not is_int(seq_len) or seq_len < 1:
            raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}.")
        attention = 4 * self.num_hidden_layers * seq_len * self.q_width
        return 2 * self.matmul_parameters() + attention

    def attention_pattern_bytes(self, seq_len: int, batch: int = 1, dtype: Any = "bf16") -> int:
        """Bytes to keep every attention pattern [B, H, T, T] of every layer (one hook: ``hook_pattern``)."""
        return (
            self.num_hidden_layers * batch * self.num_attention_heads * seq_len * seq_len * dtype_bytes(dtype)
        )

    def activation_bytes(self, seq_len: int, batch: int = 1, dtype: Any = "bf16") -> dict[str, int]:
        """Estimated bytes of caching every hook of a forward over ``batch × seq_len`` tokens, by hook name.

        The hook names are LlamaModel's; per-layer hooks are summed over layers under ``blocks.*.<name>``;
        ``total`` is the sum. Norm scales and RoPE tables are float32, everything else ``dtype`` (a model
        cast to ``dtype``). The two [B, H, T, T] hooks (attention scores and pattern) grow with T² and
        dominate past a few hundred tokens: estimate before capturing.

        A delegate to the model on purpose: the sizes come from the shape letters of LlamaModel's own
        ``HookPoint`` declarations (``estimate_cache_table`` of a model built on the meta device, which
        allocates nothing), so this estimate cannot drift from the hooks.
        """
        import torch

        from .model import LlamaModel

        element = dtype_bytes(dtype)
        torch_dtype = _FLOAT_OF_SIZE.get(element)
        if torch_dtype is None:
            raise ConfigError(
                f"No floating dtype of {element} bytes to estimate activations in; use bf16 or fp32."
            )
        model = LlamaModel(self, device="meta").to(getattr(torch, torch_dtype))
        by_kind = dict(model.estimate_cache_table(seq_len, batch=batch))
        in_model_order = dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.*.", n) for n in model.hook_dict)
        estimate = {kind: by_kind[kind] for kind in in_model_order}
        estimate["total"] = sum(estimate.values())
        return estimate

    def rope_inv_freq_unscaled(self) -> list[float]:
        """inv_freq_i = θ^(−2i/d) for i = 0 .. d/2 − 1, before any llama3 scaling (:mod:`llama3_lab.rope`)."""
        from .rope import rope_inv_freq_unscaled

        return rope_inv_freq_unscaled(self.head_dim, self.rope_theta).tolist()

    def rope_pair_regimes(self) -> dict[str, list[int]]:
        """Which rotary pairs the llama3 scaling leaves ``unchanged``, ``smoothed`` or ``divided`` by factor
        (:func:`llama3_lab.rope.rope_pair_regimes`, where the rule lives)."""
        from .rope import rope_pair_regimes

        return rope_pair_regimes(self)

    def explain(self, title: str | None = None) -> ConfigExplanation:
        """Every field with its value and meaning, then the derived figures and how they are derived.

        Renders as an HTML table in Jupyter, ``to_markdown()`` and ``to_text()`` / ``str()``; the teaching
        text lives in :mod:`llama3_lab.config_explain`.
        """
        from .config_explain import explain_config

        return explain_config(self, title)


# ----------------------------------------------------------------------------------------------------
# file helpers


def read_json(path: str | Path) -> Any:
    """The parsed JSON file at ``path``; a missing or broken file raises a :class:`ConfigError` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigNotFoundError(f"Config file {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}.") from err


def is_meta_params(d: Any) -> bool:
    """Whether parsed JSON is Meta's params.json (``dim``, ``n_layers``...), not a Hugging Face config."""
    return isinstance(d, dict) and "hidden_size" not in d and ("dim" in d or "n_layers" in d)
