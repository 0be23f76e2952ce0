"""``SAEConfig``: what an SAE (or transcoder) is, in the fields SAELens writes to ``cfg.json``.

An SAE reads ``d_in``-dimensional activations at ``hook_name`` and writes ``d_sae`` features; a transcoder
reads at ``hook_name`` and writes ``d_out`` at ``hook_name_out`` (an MLP's input to its output). The field
names and values are SAELens's, so its ``cfg.json`` loads as it is and ours loads in SAELens:

    architecture           standard (ReLU) | topk (k largest, ReLU) | jumprelu (per-feature threshold),
                           and transcoder | topk_transcoder | jumprelu_transcoder
    apply_b_dec_to_input   subtract b_dec from the input before encoding
    normalize_activations  none | expected_average_only_in (x · norm_scaling_factor, a dataset constant)
                           | constant_norm_rescale (each token to norm sqrt(d_in)) | layer_norm
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: Activation function of each architecture, SAE and transcoder names alike.
ACTIVATIONS = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "transcoder": "relu",
    "topk_transcoder": "topk",
    "jumprelu_transcoder": "jumprelu",
}
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class SAEConfigError(ValueError):
    """An SAE configuration that cannot describe a working SAE; the message says which field and why."""


@dataclass
class SAEConfig:
    """The shape and behaviour of one SAE or transcoder (SAELens ``cfg.json`` names)."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None  # TopK: features kept per token
    hook_name: str = ""
    d_out: int | None = None  # transcoders: size of the output (None: an SAE, d_out = d_in)
    hook_name_out: str = ""  # transcoders: where the output goes
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None  # expected_average_only_in: sqrt(d_in) / E[|x|]
    dtype: str = "float32"
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other cfg.json keys, written back unchanged

    def __post_init__(self) -> None:
        self.dtype = str(self.dtype).removeprefix("torch.")
        if self.architecture not in ACTIVATIONS:
            raise SAEConfigError(
                f"unknown SAE architecture {self.architecture!r}: expected one of {sorted(ACTIVATIONS)}. "
                "Gated and batch-TopK SAEs are not supported yet; a batch-TopK SAE is used at inference "
                "as a JumpReLU one (SAELens converts it so: save it from SAELens as jumprelu)."
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SAEConfigError(f"{name} must be a positive int, got {value!r}.")
        if self.activation == "topk" and not (isinstance(self.k, int) and 1 <= self.k <= self.d_sae):
            raise SAEConfigError(
                f"a TopK SAE needs k, the number of features kept per token, in 1..d_sae={self.d_sae}; "
                f'got k={self.k!r}. Set "k" in cfg.json (e.g. 32).'
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEConfigError(
                f"normalize_activations={self.normalize_activations!r} is not one of {list(NORMALIZATIONS)}."
            )
        if self.normalize_activations == "expected_average_only_in" and self.norm_scaling_factor is None:
            raise SAEConfigError(
                "normalize_activations='expected_average_only_in' scales inputs by a dataset constant, but "
                "no norm_scaling_factor was given (SAELens keeps it in activation_scaler.json or folds it "
                "into the weights). Pass norm_scaling_factor=... (1.0 if it was folded into the weights)."
            )
        if self.dtype not in _DTYPES:
            raise SAEConfigError(f"dtype {self.dtype!r} is not one of {sorted(_DTYPES)}.")
        if self.is_transcoder and self.d_out is None:
            self.d_out = self.d_in

    @property
    def activation(self) -> str:
        """``relu``, ``topk`` or ``jumprelu``."""
        return ACTIVATIONS[self.architecture]

    @property
    def is_transcoder(self) -> bool:
        return self.architecture.endswith("transcoder")

    @property
    def output_size(self) -> int:
        """What the decoder writes: ``d_out`` for a transcoder, ``d_in`` for an SAE."""
        return self.d_out if self.is_transcoder and self.d_out is not None else self.d_in

    @property
    def replaced_hook(self) -> str:
        """The hook point whose activation a spliced SAE replaces: ``hook_name_out`` for a transcoder."""
        return self.hook_name_out if self.is_transcoder else self.hook_name

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    # -- cfg.json ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``cfg.json`` dict, SAELens's layout (``metadata.hook_name``)."""
        fields = asdict(self)
        extra = fields.pop("extra")
        metadata = {**extra.pop("metadata", {}), "hook_name": fields.pop("hook_name")}
        if fields["model_name"]:
            metadata["model_name"] = fields["model_name"]
        fields.pop("model_name")
        if self.is_transcoder:
            metadata["hook_name_out"] = fields["hook_name_out"]
        else:
            fields.pop("d_out"), fields.pop("hook_name_out")
        if fields["k"] is None:
            fields.pop("k")
        if fields["norm_scaling_factor"] is None:
            fields.pop("norm_scaling_factor")
        return {**extra, **fields, "metadata": metadata}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> SAEConfig:
        """From a ``cfg.json`` dict (SAELens 6 keeps hook names in ``metadata``, older ones at the top)."""
        data = dict(data)
        metadata = dict(data.get("metadata") or data.get("meta") or {})
        known = {
            "d_in", "d_sae", "architecture", "k", "d_out", "apply_b_dec_to_input", "normalize_activations",
            "norm_scaling_factor", "dtype",
        }  # fmt: skip
        missing = [name for name in ("d_in", "d_sae") if name not in data]
        if missing:
            raise SAEConfigError(f"cfg.json has no {' or '.join(missing)}: it is not an SAE config.")
        values = {name: data.pop(name) for name in list(data) if name in known}
        values.setdefault("architecture", "standard")  # SAELens's default
        values["hook_name"] = metadata.get("hook_name", data.pop("hook_name", ""))
        values["hook_name_out"] = metadata.get("hook_name_out", data.pop("hook_name_out", ""))
        values["model_name"] = metadata.get("model_name", data.pop("model_name", "")) or ""
        if isinstance(values.get("k"), float) and values["k"].is_integer():
            values["k"] = int(values["k"])
        data.pop("meta", None)
        rest = {
            key: value
            for key, value in metadata.items()
            if key not in ("hook_name", "hook_name_out", "model_name")
        }
        data.pop("metadata", None)
        if rest:
            data["metadata"] = rest  # other metadata (prepend_bos, context_size...), written back unchanged
        return cls(**{**values, **overrides}, extra=data)
