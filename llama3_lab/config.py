"""LlamaConfig: the numbers that define a Llama 3 model, where they come from and what they cost.

Field names are Hugging Face's (``hidden_size``, ``num_key_value_heads``...) so that a ``config.json`` maps
one to one. The same dataclass is read from Meta's ``params.json`` and from GGUF metadata, checked in
``__post_init__`` (a bad value raises :class:`ConfigError` naming the field and the fix), and explains itself
field by field with :meth:`LlamaConfig.explain`.

Shapes use TransformerLens letters: V vocab, D d_model, M d_mlp, L layers, H query heads, K key/value heads,
d head dim, G = H/K query heads per KV head, T positions.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import textwrap
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from .units import format_bytes

__all__ = [
    "ConfigError",
    "ConfigNotFoundError",
    "ConfigExplanation",
    "ExplanationRow",
    "LlamaConfig",
    "dtype_bytes",
    "explain_path",
    "meta_ffn_hidden_dim",
]

GiB = 1 << 30
MiB = 1 << 20

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


# ----------------------------------------------------------------------------------------------------
# dtypes


_DTYPE_BYTES = {
    "float64": 8,
    "fp64": 8,
    "f64": 8,
    "double": 8,
    "float32": 4,
    "fp32": 4,
    "f32": 4,
    "float": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "f16": 2,
    "half": 2,
    "int8": 1,
    "uint8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
}


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
# LlamaConfig


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        for name in _POSITIVE_INT_FIELDS:
            self._check_positive_int(name, getattr(self, name))

        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}, so head_dim cannot be derived; give head_dim explicitly or "
                    "fix one of the two."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        else:
            self._check_positive_int("head_dim", self.head_dim)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by num_key_value_heads="
                f"{self.num_key_value_heads}: grouped-query attention shares each key/value head with a "
                "whole group of query heads. Use a num_key_value_heads that divides num_attention_heads."
            )

        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
            setattr(self, name, float(value))
        low, high = RMS_NORM_EPS_RANGE
        if not low <= self.rms_norm_eps <= high:
            raise ConfigError(
                f"rms_norm_eps={self.rms_norm_eps!r} is outside the sane range [{low:g}, {high:g}]; Llama 3 "
                "uses 1e-5 (a value like 1e-5 written as 1e5 or 0.1 is a typo)."
            )
        if not self.rope_theta > 0 or not math.isfinite(self.rope_theta):
            raise ConfigError(
                f"rope_theta must be a positive number (Llama 3: 500000.0), got {self.rope_theta!r}."
            )
        if not self.initializer_range >= 0:
            raise ConfigError(
                f"initializer_range must be >= 0 (a standard deviation), got {self.initializer_range!r}."
            )

        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r} ({type(value).__name__}).")

        self._check_token_id("bos_token_id", self.bos_token_id, allow_list=False)
        self._check_token_id("eos_token_id", self.eos_token_id, allow_list=True)

        if self.hidden_act != "silu":
            raise ConfigError(
                f"hidden_act={self.hidden_act!r} is not supported: Llama's MLP is SwiGLU, "
                "down(silu(gate(x)) * up(x)), so the only valid value is 'silu'."
            )
        if self.model_type != "llama":
            raise ConfigError(
                f"model_type={self.model_type!r}: llama3-lab implements the 'llama' architecture only "
                "(other families differ in biases, norms or attention windows)."
            )
        if self.torch_dtype is not None and not isinstance(self.torch_dtype, str):
            raise ConfigError(
                f"torch_dtype must be a dtype name like 'bfloat16' or null, got {self.torch_dtype!r}."
            )
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a dict of unmodelled fields, got {type(self.extra).__name__}.")
        self.rope_scaling = self._normalized_rope_scaling(self.rope_scaling)

    @staticmethod
    def _check_positive_int(name: str, value: Any) -> None:
        if isinstance(value, bool) or not _is_int(value):
            hint = ""
            if isinstance(value, str) and value.strip().isdigit():
                hint = f" (write {value.strip()} without quotes)"
            elif isinstance(value, float) and value.is_integer():
                hint = f" (write {int(value)}, not {value})"
            raise ConfigError(
                f"{name} must be a positive integer, got {value!r} ({type(value).__name__}){hint}."
            )
        if value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value}.")

    def _check_token_id(self, name: str, value: Any, *, allow_list: bool) -> None:
        ids = value if allow_list and isinstance(value, list) else [value]
        if value is None:
            return
        for token_id in ids:
            if not _is_int(token_id) or token_id < 0:
                kind = (
                    "a token id (non-negative integer), a list of them, or null"
                    if allow_list
                    else ("a token id (non-negative integer) or null")
                )
                raise ConfigError(f"{name} must be {kind}, got {value!r}.")
            if token_id >= self.vocab_size:
                raise ConfigError(
                    f"{name}={value!r} is outside the vocabulary (vocab_size={self.vocab_size}); "
                    "fix the id or the vocab_size."
                )

    def _normalized_rope_scaling(self, scaling: Any) -> dict[str, Any] | None:
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
            if not _is_number(scaling[key]) or not scaling[key] > 0:
                raise ConfigError(f"rope_scaling[{key!r}] must be a positive number, got {scaling[key]!r}.")
        if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
            raise ConfigError(
                "rope_scaling needs high_freq_factor > low_freq_factor (Llama 3.1: 4 and 1), got "
                f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}."
            )
        if scaling["factor"] < 1:
            raise ConfigError(f"rope_scaling['factor'] must be >= 1 (Llama 3.1: 8), got {scaling['factor']}.")
        return scaling

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

        Absent keys take the Llama 3 8B defaults, except ``num_key_value_heads`` which, as in transformers,
        defaults to ``num_attention_heads`` (plain multi-head attention). The transformers 5 spelling
        ``rope_parameters`` (theta and scaling in one dict) and ``dtype`` are understood too.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"A config must be a dict (a parsed config.json), got {type(d).__name__}.")
        if "hidden_size" not in d and ("dim" in d or "n_layers" in d):
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
        if "num_key_value_heads" not in d or d["num_key_value_heads"] is None:
            d["num_key_value_heads"] = d.get("num_attention_heads", cls.num_attention_heads)
        known = {f.name for f in fields(cls) if f.init} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> LlamaConfig:
        """A config from a Hugging Face ``config.json`` file."""
        return cls.from_dict(_read_json(path))

    @classmethod
    def from_params(
        cls,
        params: dict[str, Any],
        *,
        rope_scaling_factor: float | None = None,
        tie_word_embeddings: bool | None = None,
    ) -> LlamaConfig:
        """A config from Meta's ``params.json`` dictionary (the format of ``consolidated.*.pth`` checkpoints).

        ``intermediate_size`` is derived as Meta's ``FeedForward`` does (:func:`meta_ffn_hidden_dim`).
        ``use_scaled_rope`` means Llama 3.1/3.2 RoPE scaling: factor 8 (3.1), or 32 for Llama 3.2 1B/3B
        (dim ≤ 3072), whose params.json does not record the factor; a ``rope_scaling_factor`` key or argument
        overrides that guess. params.json never says whether the output matrix is tied: Llama 3.2 1B/3B are
        (their HF configs say so), the rest are not; pass ``tie_word_embeddings`` to override.
        Token ids are Llama 3's (bos 128000, eos 128001). ``max_seq_len``, when present, becomes
        ``max_position_embeddings``; otherwise 8192 (Llama 3) or 131072 with scaled RoPE (3.1/3.2).
        """
        required = ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of")
        missing = [k for k in required if k not in params]
        if missing:
            hint = (
                " (this looks like a Hugging Face config: use from_json)" if "hidden_size" in params else ""
            )
            raise ConfigError(f"params.json lacks {missing}; it needs {list(required)}{hint}.")
        for key in ("dim", "multiple_of"):
            cls._check_positive_int(key, params[key])
        if params["vocab_size"] == -1:
            raise ConfigError(
                "params.json has vocab_size -1 (Meta's 'set from the tokenizer' placeholder); "
                "set it to 128256 for Llama 3."
            )
        multiplier = params.get("ffn_dim_multiplier")
        if multiplier is not None and not _is_number(multiplier):
            raise ConfigError(f"ffn_dim_multiplier must be a number or null, got {multiplier!r}.")
        dim = params["dim"]
        use_scaled_rope = bool(params.get("use_scaled_rope", False))
        small_32 = dim <= 3072  # Llama 3.2 1B (2048) and 3B (3072)
        rope_scaling = None
        if use_scaled_rope:
            factor = rope_scaling_factor or params.get("rope_scaling_factor") or (32.0 if small_32 else 8.0)
            rope_scaling = {**LLAMA31_ROPE_SCALING, "factor": float(factor)}
        if tie_word_embeddings is None:
            tie_word_embeddings = use_scaled_rope and small_32
        known = {
            "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
            "norm_eps", "rope_theta", "use_scaled_rope", "rope_scaling_factor", "max_seq_len",
        }  # fmt: skip
        return cls(
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
            extra={k: v for k, v in params.items() if k not in known},
        )

    @classmethod
    def from_params_json(
        cls,
        path: str | Path,
        *,
        rope_scaling_factor: float | None = None,
        tie_word_embeddings: bool | None = None,
    ) -> LlamaConfig:
        """A config from Meta's ``params.json`` file; see :meth:`from_params`."""
        return cls.from_params(
            _read_json(path), rope_scaling_factor=rope_scaling_factor, tie_word_embeddings=tie_word_embeddings
        )

    @classmethod
    def from_gguf(cls, path_or_reader: str | Path | Any) -> LlamaConfig:
        """A config from the metadata of a GGUF file (a path or an open ``gguf.GGUFReader``).

        Reads the ``{arch}.*`` keys llama.cpp writes (embedding_length, feed_forward_length, block_count,
        attention.head_count[_kv], attention.layer_norm_rms_epsilon, rope.freq_base, context_length,
        rope.dimension_count or attention.key_length), the vocabulary size from the token list, bos/eos from
        ``tokenizer.ggml.*``, and ties the output matrix when the file has no ``output.weight`` tensor.
        Llama 3.1/3.2 GGUFs carry their RoPE scaling as a ``rope_freqs.weight`` tensor of per-pair divisors:
        those are matched against the llama3 rule (low 1, high 4, original context 8192) and recorded as
        ``rope_scaling``. Quantised weights have no single dtype: ``torch_dtype`` is None.
        """
        reader = _gguf_reader(path_or_reader)
        meta = _GGUFMetadata(reader)
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
        tensor_names = {t.name for t in reader.tensors}
        theta = float(key("rope.freq_base", 10000.0))
        context = key("context_length")
        rope_scaling = _gguf_rope_scaling(meta, reader, tensor_names, head_dim or hidden // heads, theta)
        extra = {}
        if meta.get("general.name") is not None:
            extra["gguf_general_name"] = meta.get("general.name")
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=key("feed_forward_length"),
            num_hidden_layers=key("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=key("attention.head_count_kv", heads),
            head_dim=head_dim if head_dim and head_dim * heads != hidden else None,
            max_position_embeddings=context,
            rms_norm_eps=_float32_to_decimal(key("attention.layer_norm_rms_epsilon")),
            rope_theta=_float32_to_decimal(theta),
            rope_scaling=rope_scaling,
            tie_word_embeddings="output.weight" not in tensor_names,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
            torch_dtype=None,
            extra=extra,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlamaConfig:
        """A config from whatever ``path`` holds: a directory with ``config.json`` or ``params.json`` (or one
        ``.gguf`` file), a ``.json`` file (HF or Meta format, told apart by its keys) or a ``.gguf`` file."""
        path = Path(path).expanduser()
        looked_for = (
            "a directory containing config.json, params.json or one .gguf file; a .json file; a .gguf file"
        )
        if path.is_dir():
            for name, reader in (("config.json", cls.from_json), ("params.json", cls.from_params_json)):
                if (path / name).is_file():
                    return reader(path / name)
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return cls.from_gguf(ggufs[0])
            found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
            why = f"{len(ggufs)} .gguf files (pass one of them)" if ggufs else f"only: {found}"
            raise ConfigNotFoundError(
                f"No Llama config in directory {path}: it has {why}. Looked for {looked_for}."
            )
        if not path.is_file():
            raise ConfigNotFoundError(f"{path} does not exist. Looked for {looked_for}.")
        with path.open("rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return cls.from_gguf(path)
        if path.suffix.lower() == ".json":
            d = _read_json(path)
            if isinstance(d, dict) and "hidden_size" not in d and "dim" in d:
                return cls.from_params(d)
            return cls.from_dict(d)
        raise ConfigError(
            f"Cannot tell the format of {path} (not JSON, no GGUF magic). Looked for {looked_for}."
        )

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
        if not _is_int(seq_len) or seq_len < 1:
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
        """
        D, M, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        H, Kd, Hd, d = self.num_attention_heads, self.kv_width, self.q_width, self.head_dim
        BT, n, f32 = batch * seq_len, dtype_bytes(dtype), 4
        per_layer = {
            "hook_resid_pre": BT * D * n,
            "ln1.hook_scale": BT * f32,
            "ln1.hook_normalized": BT * D * n,
            "ln1.hook_out": BT * D * n,
            "attn.hook_q": BT * Hd * n,
            "attn.hook_k": BT * Kd * n,
            "attn.hook_v": BT * Kd * n,
            "attn.hook_rot_q": BT * Hd * n,
            "attn.hook_rot_k": BT * Kd * n,
            "attn.hook_attn_scores": BT * H * seq_len * n,
            "attn.hook_pattern": BT * H * seq_len * n,
            "attn.hook_z": BT * Hd * n,
            "hook_attn_out": BT * D * n,
            "hook_resid_mid": BT * D * n,
            "ln2.hook_scale": BT * f32,
            "ln2.hook_normalized": BT * D * n,
            "ln2.hook_out": BT * D * n,
            "mlp.hook_pre": BT * M * n,
            "mlp.hook_pre_linear": BT * M * n,
            "mlp.hook_post": BT * M * n,
            "hook_mlp_out": BT * D * n,
            "hook_resid_post": BT * D * n,
        }
        estimate = {
            "hook_embed": BT * D * n,
            "rope.hook_cos": seq_len * d * f32,
            "rope.hook_sin": seq_len * d * f32,
            **{f"blocks.*.{name}": L * size for name, size in per_layer.items()},
            "ln_final.hook_scale": BT * f32,
            "ln_final.hook_normalized": BT * D * n,
            "ln_final.hook_out": BT * D * n,
            "unembed.hook_out": BT * V * n,
        }
        estimate["total"] = sum(estimate.values())
        return estimate

    def rope_inv_freq_unscaled(self) -> list[float]:
        """inv_freq_i = θ^(−2i/d) for i = 0 .. d/2 − 1, before any llama3 scaling (plain floats)."""
        d = self.head_dim
        return [self.rope_theta ** (-2 * i / d) for i in range(d // 2)]

    def rope_pair_regimes(self) -> dict[str, list[int]]:
        """Which rotary pairs the llama3 scaling leaves ``unchanged``, ``smoothed`` or ``divided`` by factor.

        With wavelength λ = 2π/f: λ < orig/high_freq_factor → unchanged; λ > orig/low_freq_factor → f/factor;
        otherwise interpolated. Without scaling every pair is unchanged.
        """
        pairs = range(self.head_dim // 2)
        if self.rope_scaling is None:
            return {"unchanged": list(pairs), "smoothed": [], "divided": []}
        s = self.rope_scaling
        orig = s["original_max_position_embeddings"]
        short, long = orig / s["high_freq_factor"], orig / s["low_freq_factor"]
        regimes: dict[str, list[int]] = {"unchanged": [], "smoothed": [], "divided": []}
        for i, f in zip(pairs, self.rope_inv_freq_unscaled()):
            wavelength = 2 * math.pi / f
            regime = "unchanged" if wavelength < short else "divided" if wavelength > long else "smoothed"
            regimes[regime].append(i)
        return regimes

    # -- explanation

    def explain(self, title: str | None = None) -> ConfigExplanation:
        """Every field with its value and meaning, then the derived figures and how they are derived.

        Renders as an HTML table in Jupyter, ``to_markdown()`` and ``to_text()`` / ``str()``.
        """
        d = self.to_dict()
        rows = []
        for name in [f.name for f in fields(self) if f.init and f.name != "extra"] + list(self.extra):
            explain_field = _FIELD_EXPLANATIONS.get(name)
            text = explain_field(self) if explain_field else _UNKNOWN_EXTRA
            rows.append(ExplanationRow(name, json.dumps(d[name]), text))
        return ConfigExplanation(
            title=title or f"Llama config: {self.num_parameters() / 1e9:.3g}B parameters",
            rows=rows,
            derived=_derived_rows(self),
        )


# ----------------------------------------------------------------------------------------------------
# file helpers


_MISSING = object()


def _read_json(path: str | Path) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigNotFoundError(f"Config file {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}.") from err


def _float32_to_decimal(value: float) -> float:
    """GGUF stores eps and theta as float32: 1e-5 reads back as 9.99999974738e-06. Recover the short "
    "decimal."""
    import numpy as np

    return float(str(np.float32(value)))


def _gguf_reader(path_or_reader: Any) -> Any:
    if hasattr(path_or_reader, "fields") and hasattr(path_or_reader, "tensors"):
        return path_or_reader
    path = Path(path_or_reader).expanduser()
    if not path.is_file():
        raise ConfigNotFoundError(f"GGUF file {path} does not exist.")
    from gguf import GGUFReader

    return GGUFReader(path)


class _GGUFMetadata:
    """Scalar and array-length access to a GGUFReader's key/value fields."""

    def __init__(self, reader: Any) -> None:
        self.fields = reader.fields

    def get(self, name: str, default: Any = None) -> Any:
        f = self.fields.get(name)
        if f is None:
            return default
        from gguf import GGUFValueType

        if f.types and f.types[0] == GGUFValueType.ARRAY:
            return [self._scalar(f, i) for i in f.data]
        return self._scalar(f, f.data[0])

    @staticmethod
    def _scalar(f: Any, index: int) -> Any:
        from gguf import GGUFValueType

        part = f.parts[index]
        if f.types[-1] == GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        return part.tolist()[0]

    def array_length(self, name: str) -> int | None:
        f = self.fields.get(name)
        return None if f is None else len(f.data)


def _gguf_rope_scaling(
    meta: _GGUFMetadata, reader: Any, tensor_names: set[str], head_dim: int, theta: float
) -> dict[str, Any] | None:
    scaling_type = meta.get("llama.rope.scaling.type")
    if scaling_type not in (None, "none"):
        raise ConfigError(
            f"GGUF llama.rope.scaling.type={scaling_type!r} is not supported (llama3-lab implements Llama "
            "3.1's 'llama3' scaling, which GGUF stores as a rope_freqs.weight tensor)."
        )
    if "rope_freqs.weight" not in tensor_names:
        return None
    import numpy as np

    tensor = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    divisors = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    orig = meta.get("llama.rope.scaling.original_context_length") or 8192
    scaling = {
        **LLAMA31_ROPE_SCALING,
        "factor": float(round(divisors.max(), 4)),
        "original_max_position_embeddings": orig,
    }
    expected = np.array(_llama3_divisors(scaling, head_dim, theta))
    if divisors.shape != expected.shape or not np.allclose(divisors, expected, rtol=1e-3):
        raise ConfigError(
            "GGUF rope_freqs.weight does not match Llama 3.1's scaling rule (low 1, high 4, original context "
            f"{orig}, factor {scaling['factor']}); this RoPE variant is not supported."
        )
    return scaling


def _llama3_divisors(scaling: dict[str, Any], head_dim: int, theta: float) -> list[float]:
    """f / f' for each rotary pair under llama3 scaling (what llama.cpp stores in rope_freqs.weight)."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    orig = scaling["original_max_position_embeddings"]
    divisors = []
    for i in range(head_dim // 2):
        f = theta ** (-2 * i / head_dim)
        wavelength = 2 * math.pi / f
        if wavelength < orig / high:
            divisors.append(1.0)
        elif wavelength > orig / low:
            divisors.append(float(factor))
        else:
            smooth = (orig / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return divisors


# ----------------------------------------------------------------------------------------------------
# explanation


class ExplanationRow(NamedTuple):
    field: str
    value: str
    explanation: str


@dataclass
class ConfigExplanation:
    """What :meth:`LlamaConfig.explain` returns: one row per config field, then the derived figures."""

    title: str
    rows: list[ExplanationRow]
    derived: list[ExplanationRow]

    def __getitem__(self, name: str) -> ExplanationRow:
        for row in self.rows + self.derived:
            if row.field == name:
                return row
        raise KeyError(f"No row named {name!r}; fields: {[r.field for r in self.rows]}.")

    @property
    def fields(self) -> list[str]:
        return [row.field for row in self.rows]

    def to_text(self, width: int = 100) -> str:
        """Plain text: ``field = value`` lines with the explanation wrapped and indented under each."""
        lines = [self.title, "=" * len(self.title)]
        for heading, rows in (("Fields", self.rows), ("Derived figures", self.derived)):
            lines += ["", heading, "-" * len(heading)]
            for row in rows:
                lines.append(f"{row.field} = {row.value}")
                lines += textwrap.wrap(
                    row.explanation, width, initial_indent="    ", subsequent_indent="    "
                )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()

    def to_markdown(self) -> str:
        """Two GitHub-flavoured Markdown tables (fields, derived figures)."""

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        out = [f"### {self.title}", ""]
        for heading, rows, cols in (
            ("Fields", self.rows, ("field", "value", "meaning")),
            ("Derived figures", self.derived, ("figure", "value", "how it is derived")),
        ):
            out += [f"**{heading}**", "", f"| {' | '.join(cols)} |", "|---|---|---|"]
            out += [f"| `{r.field}` | `{cell(r.value)}` | {cell(r.explanation)} |" for r in rows]
            out.append("")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        style = "text-align:left;vertical-align:top;padding:2px 8px"
        parts = [f"<div><h4>{html.escape(self.title)}</h4>"]
        for heading, rows, cols in (
            ("Fields", self.rows, ("field", "value", "meaning")),
            ("Derived figures", self.derived, ("figure", "value", "how it is derived")),
        ):
            parts.append(f"<table><caption style='text-align:left'><b>{heading}</b></caption><thead><tr>")
            parts += [f"<th style='{style}'>{c}</th>" for c in cols]
            parts.append("</tr></thead><tbody>")
            for r in rows:
                parts.append(
                    f"<tr><td style='{style}'><code>{html.escape(r.field)}</code></td>"
                    f"<td style='{style}'><code>{html.escape(r.value)}</code></td>"
                    f"<td style='{style}'>{html.escape(r.explanation)}</td></tr>"
                )
            parts.append("</tbody></table>")
        parts.append("</div>")
        return "".join(parts)


def explain_path(path: str | Path) -> str:
    """The text explanation of the config found at ``path`` (what ``llama3-lab explain PATH`` prints)."""
    return LlamaConfig.from_pretrained(path).explain(title=f"Llama config from {path}").to_text()


_UNKNOWN_EXTRA = "Not used by llama3-lab; kept in `extra` and written back unchanged by to_dict()."


def _explain_vocab(c: LlamaConfig) -> str:
    text = f"V: number of token ids; the embedding is a [V, D] = [{c.vocab_size:,}, {c.hidden_size:,}] table."
    if c.vocab_size == 128256:
        text += " Llama 3: 128,000 byte-level BPE tokens (tiktoken) + 256 special tokens (128000-128255)."
    return text


def _explain_head_dim(c: LlamaConfig) -> str:
    how = (
        "given explicitly in the config"
        if c._head_dim_given and c.head_dim * c.num_attention_heads != c.hidden_size
        else f"hidden_size / num_attention_heads = {c.hidden_size} / {c.num_attention_heads}"
    )
    return (
        f"d = {c.head_dim}: width of each attention head ({how}). Scores are scaled by 1/√d = "
        f"{1 / math.sqrt(c.head_dim):.4f}; RoPE rotates d/2 = {c.head_dim // 2} pairs of each q and k vector."
    )


def _explain_kv_heads(c: LlamaConfig) -> str:
    K, H, G = c.num_key_value_heads, c.num_attention_heads, c.gqa_group
    if K == H:
        return f"K = {K} = H: one key/value head per query head (plain multi-head attention, no sharing)."
    kind = "multi-query attention (one K/V head for all)" if K == 1 else "grouped-query attention (GQA)"
    return (
        f"K = {K} key/value heads: {kind}. Each K/V head is shared by a group of G = H/K = {G} query heads, "
        f"so k_proj and v_proj are {c.kv_width:,} wide instead of {c.q_width:,} and the KV cache is {G}× "
        "smaller than with one K/V head per query head. Implementations either repeat K/V G times or group "
        "the queries."
    )


def _explain_max_position(c: LlamaConfig) -> str:
    return (
        f"{c.max_position_embeddings:,} tokens: the context length the model was trained for (Llama 3: 8192; "
        "3.1/3.2: 131072). Not a hard-coded buffer or a learned position table: RoPE is computed for any "
        "position, so longer inputs run, but quality degrades past it. llama3-lab sizes a default KV cache "
        "with it."
    )


def _explain_eps(c: LlamaConfig) -> str:
    return (
        f"ε = {c.rms_norm_eps:g} inside every RMSNorm: x · rsqrt(mean(x²) + ε) · weight, computed in "
        "float32; ε only guards against division by ~0. Llama 3 uses 1e-5. Trap: transformers' LlamaRMSNorm "
        "and many from-scratch RMSNorm classes default to 1e-6; building a norm without passing this value "
        "gives no error, only slightly wrong activations and logits everywhere."
    )


def _explain_theta(c: LlamaConfig) -> str:
    freqs = c.rope_inv_freq_unscaled()
    longest = 2 * math.pi / freqs[-1]
    return (
        f"θ = {c.rope_theta:,g}: base of the rotary position frequencies. Pair i of each head is rotated by "
        "angle p · inv_freq_i at position p, with inv_freq_i = θ^(−2i/d). Wavelengths 2π/inv_freq_i run "
        f"from 2π ≈ 6.3 tokens (pair 0) to ≈ {longest:,.0f} tokens (pair {len(freqs) - 1}). A larger θ "
        "stretches the slow pairs (Llama 2: 10,000; Llama 3: 500,000)."
    )


def _explain_rope_scaling(c: LlamaConfig) -> str:
    if c.rope_scaling is None:
        return (
            "null: no RoPE scaling, the frequencies are exactly θ^(−2i/d) (Llama 3 8B/70B). Llama 3.1/3.2 "
            "set a dict with rope_type 'llama3' here."
        )
    s, r = c.rope_scaling, c.rope_pair_regimes()
    orig = s["original_max_position_embeddings"]

    def span(ids: list[int]) -> str:
        return f"{len(ids)} pairs ({ids[0]}-{ids[-1]})" if ids else "0 pairs"

    return (
        f"Llama 3.1/3.2 'llama3' frequency scaling (factor {s['factor']:g}, low_freq_factor "
        f"{s['low_freq_factor']:g}, high_freq_factor {s['high_freq_factor']:g}, original context {orig:,}), "
        f"how the {orig:,}-token pretraining context was extended. With wavelength λ = 2π/f: pairs with λ < "
        f"{orig / s['high_freq_factor']:,g} keep f, pairs with λ > {orig / s['low_freq_factor']:,g} use "
        f"f/{s['factor']:g}, those between are interpolated. Here {span(r['unchanged'])} unchanged, "
        f"{span(r['smoothed'])} smoothed, {span(r['divided'])} divided."
    )


def _explain_tie(c: LlamaConfig) -> str:
    VD = c.vocab_size * c.hidden_size
    if c.tie_word_embeddings:
        return (
            "true: the unembedding (lm_head) reuses the token-embedding matrix, logits = ln_final(x) · Eᵀ; "
            f"saves {VD:,} parameters (Llama 3.2 1B/3B, SmolLM2). The loaded model has no separate output "
            "weight."
        )
    return (
        f"false: a separate [V, D] unembedding matrix ({VD:,} parameters) maps the final residual to logits "
        "(Llama 3 8B/70B, 3.1). Llama 3.2 1B/3B tie it to the embedding."
    )


def _explain_eos(c: LlamaConfig) -> str:
    ids = c.eos_token_id if isinstance(c.eos_token_id, list) else [c.eos_token_id]
    names = {128001: "<|end_of_text|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>"}
    named = ", ".join(f"{i} {names[i]}" if i in names else str(i) for i in ids)
    return (
        f"Token(s) that end generation: {named}. Llama 3 base models end documents with 128001 "
        "<|end_of_text|>; chat models end a turn with 128009 <|eot_id|> (3.1 also 128008 <|eom_id|>), so "
        "Instruct configs list several and generation must stop on any of them."
    )


_FIELD_EXPLANATIONS: dict[str, Any] = {
    "vocab_size": _explain_vocab,
    "hidden_size": lambda c: (
        f"D = {c.hidden_size:,}: width of the residual stream. Every token is a D-vector between blocks; "
        "each block reads it through an RMSNorm and adds its attention and MLP outputs back to it."
    ),
    "intermediate_size": lambda c: (
        f"M = {c.intermediate_size:,}: width of the SwiGLU MLP, down(silu(gate(x)) · up(x)) with gate, up: "
        "D→M and down: M→D. Meta's params.json does not store it: 4·dim → ⌊2/3⌋ → × ffn_dim_multiplier → "
        "round up to multiple_of (Llama 3 8B: 16384 → 10922 → 14198 → 14336)."
    ),
    "num_hidden_layers": lambda c: (
        f"L = {c.num_hidden_layers}: transformer blocks, each h = x + attn(ln1(x)); out = h + mlp(ln2(h))."
    ),
    "num_attention_heads": lambda c: (
        f"H = {c.num_attention_heads} query heads per layer, each attending with its own d = {c.head_dim} "
        f"dimensional queries; q_proj is D→H·d = {c.hidden_size:,}→{c.q_width:,}."
    ),
    "num_key_value_heads": _explain_kv_heads,
    "head_dim": _explain_head_dim,
    "max_position_embeddings": _explain_max_position,
    "rms_norm_eps": _explain_eps,
    "rope_theta": _explain_theta,
    "rope_scaling": _explain_rope_scaling,
    "tie_word_embeddings": _explain_tie,
    "attention_bias": lambda c: (
        f"{str(c.attention_bias).lower()}: whether q_proj, k_proj, v_proj and o_proj add bias vectors "
        "(Llama: none). It has nothing to do with attention masks or positional biases such as ALiBi."
    ),
    "mlp_bias": lambda c: (
        f"{str(c.mlp_bias).lower()}: whether gate_proj, up_proj and down_proj add bias vectors (Llama: none)."
    ),
    "initializer_range": lambda c: (
        f"{c.initializer_range:g}: standard deviation of the normal distribution that initialises weights "
        "when a model is created untrained. Irrelevant for a trained checkpoint: loading overwrites every "
        "weight."
    ),
    "bos_token_id": lambda c: (
        f"{c.bos_token_id}: beginning-of-sequence token"
        + (" <|begin_of_text|>, which starts every Llama 3 prompt" if c.bos_token_id == 128000 else "")
        + ". Add it exactly once: a tokenizer that adds it plus a chat template that writes it gives a "
        "double BOS, a silent quality loss."
    ),
    "eos_token_id": _explain_eos,
    "hidden_act": lambda c: (
        "silu: the MLP's gate activation, silu(x) = x · σ(x); with the gate·up product this is SwiGLU."
    ),
    "torch_dtype": lambda c: (
        f"{c.torch_dtype}: the dtype the checkpoint's weights are stored in. A storage fact, not a "
        "requirement: run in float32 for exact comparisons, bf16 for half the memory."
        if c.torch_dtype
        else "null: no single storage dtype (e.g. a quantised GGUF file); weights are dequantised on load."
    ),
    "model_type": lambda c: (
        "llama: the Hugging Face architecture family; selects LlamaForCausalLM in transformers."
    ),
    "architectures": lambda c: (
        "Class names transformers instantiates for this checkpoint (LlamaForCausalLM: the decoder plus the "
        "LM head). Informational here."
    ),
    "attention_dropout": lambda c: (
        "Dropout on attention probabilities during training (0.0 for Llama 3); never applied at inference."
    ),
    "pretraining_tp": lambda c: (
        "Tensor-parallel degree used in pretraining. transformers can split the projections into that many "
        "slices to reproduce pretraining numerics exactly; 1 means there is nothing to emulate. Ignored here."
    ),
    "transformers_version": lambda c: "Version of transformers that wrote this file. Informational.",
    "use_cache": lambda c: (
        "Whether transformers returns past keys/values by default to speed up generation: a runtime default, "
        "not part of the model. llama3-lab always takes an explicit KVCache."
    ),
    "pad_token_id": lambda c: (
        "Padding token id used when batching sequences of different lengths; Llama 3 defines none (null)."
    ),
    "_name_or_path": lambda c: "Where transformers loaded this config from. Informational.",
    "gguf_general_name": lambda c: "The model name stored in the GGUF file's general.name. Informational.",
    "max_seq_len": lambda c: "Meta params.json runtime maximum sequence length. Informational.",
}


def _derived_rows(c: LlamaConfig) -> list[ExplanationRow]:
    p = c.parameter_breakdown()
    D, M, V, L, H, K, d = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    )
    bias_a = " + biases" if c.attention_bias else ""
    bias_m = " + biases" if c.mlp_bias else ""
    kv_token = c.kv_cache_bytes_per_token("bf16")
    T = min(1024, c.max_position_embeddings)
    rows = [
        ("head_dim", f"{d}", "d = hidden_size / num_attention_heads unless given explicitly."),
        ("gqa_group", f"{c.gqa_group}", f"G = H / K = {H} / {K} query heads per key/value head."),
        (
            "q_width / kv_width",
            f"{c.q_width:,} / {c.kv_width:,}",
            "H·d and K·d: widths of q_proj and k_proj/v_proj.",
        ),
        ("params.embedding", f"{p['embedding']:,}", f"V · D = {V:,} · {D:,}."),
        (
            "params.attention_per_layer",
            f"{p['attention_per_layer']:,}",
            f"q and o: 2 · D · H·d, k and v: 2 · D · K·d{bias_a}.",
        ),
        (
            "params.mlp_per_layer",
            f"{p['mlp_per_layer']:,}",
            f"gate, up, down: 3 · D · M = 3 · {D:,} · {M:,}{bias_m}.",
        ),
        ("params.norms_per_layer", f"{p['norms_per_layer']:,}", "ln1 and ln2 weights: 2 · D."),
        ("params.per_layer", f"{p['per_layer']:,}", "attention + MLP + norms."),
        ("params.all_layers", f"{p['all_layers']:,}", f"L · per layer = {L} · {p['per_layer']:,}."),
        ("params.final_norm", f"{p['final_norm']:,}", "ln_final weight: D."),
        (
            "params.unembedding",
            f"{p['unembedding']:,}",
            "0: tied to the embedding." if c.tie_word_embeddings else "V · D, a separate lm_head matrix.",
        ),
        ("num_parameters", f"{p['total']:,}", "embedding + all layers + final norm + unembedding."),
        (
            "weights_bytes(bf16)",
            format_bytes(c.weights_bytes("bf16"), digits=2, exact=True),
            "num_parameters · 2 bytes.",
        ),
        (
            "weights_bytes(float32)",
            format_bytes(c.weights_bytes("float32"), digits=2, exact=True),
            "num_parameters · 4 bytes.",
        ),
        (
            "kv_cache_bytes_per_token(bf16)",
            f"{kv_token:,} B",
            f"2 (K and V) · L · K · d · 2 bytes = 2 · {L} · {K} · {d} · 2"
            + (f"; {c.gqa_group}× less than without GQA." if c.gqa_group > 1 else "."),
        ),
        (
            f"kv_cache_bytes({c.max_position_embeddings}, bf16)",
            format_bytes(c.kv_cache_bytes(c.max_position_embeddings), digits=2, exact=True),
            "per token · max_position_embeddings, batch 1.",
        ),
        (
            f"flops_per_token({T})",
            f"{c.flops_per_token(T):,}",
            f"2 · {c.matmul_parameters():,} matmul weights (projections + unembedding) + attention "
            f"4 · L · T · H·d (q·k and pattern·v) for a token attending to T = {T} positions.",
        ),
        (
            f"attention_pattern_bytes({T}, bf16)",
            format_bytes(c.attention_pattern_bytes(T), digits=2, exact=True),
            f"every layer's [B, H, T, T] pattern: L · H · T² · 2 bytes, T = {T}, batch 1.",
        ),
        (
            f"activation_bytes({T}, bf16)",
            format_bytes(c.activation_bytes(T)["total"], digits=2, exact=True),
            "every hook of one forward (residuals, q/k/v, scores, patterns, MLP, logits), batch 1: "
            "capture selectively.",
        ),
    ]
    return [ExplanationRow(*row) for row in rows]
