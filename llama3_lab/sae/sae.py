"""The sparse autoencoder: features from an activation and the activation back from its features.

    encode   f = act((norm(x) − b_dec · apply_b_dec_to_input) @ W_enc + b_enc)      [.., d_sae]
    decode   x̂ = denorm(f @ W_dec + b_dec)                                          [.., d_in]
    act      standard: ReLU(pre)
             topk:     the k largest pre-activations of each token, ReLU'd; the rest 0
             jumprelu: ReLU(pre) where pre > threshold (one threshold per feature), else 0

W_enc is [d_in, d_sae], W_dec [d_sae, d_in] (SAELens's layout). A transcoder is the same module with a decoder
to ``d_out`` at another hook (an MLP's input to its output): it never subtracts b_dec (which lives in the
output space) and normalises only its input, as SAELens's transcoders do.

``norm``/``denorm`` (``normalize_activations``): ``none``; ``expected_average_only_in``: x · c and x̂ / c for
a dataset constant ``c = sqrt(d_in) / E|x|`` (``norm_scaling_factor``); ``constant_norm_rescale``: each
token to norm sqrt(d_in) and back; ``layer_norm``: each token centred and divided by its (unbiased) std
+ 1e-5, and back. The per-token modes need the input to undo: ``decode(f, input=x)``.

The hook points (``hook_sae_acts_pre`` ...) are SAELens's names. Inside a model they get full names from
where the SAE is spliced (``blocks.5.hook_resid_post.sae.hook_sae_acts_post``, ``splice.py``); an unhooked
point costs one dictionary check, as in the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..hook_points import HookPoint, _hook
from .config import SAEConfig

_LAYER_NORM_EPS = 1e-5  # SAELens's


class SAE(nn.Module):
    """An SAE or transcoder with ``encode``, ``decode`` and ``forward = decode ∘ encode``.

    ``SAE(cfg)`` is randomly initialised (decoder rows of norm 0.1 in random directions, encoder = decoder
    transposed, biases 0: the usual start for training); ``load_sae(directory)`` reads trained weights.
    """

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.output_size
        kwargs = {"device": device, "dtype": cfg.torch_dtype}
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(d_sae, d_out, generator=generator)
        W_dec = 0.1 * directions / directions.norm(dim=-1, keepdim=True)
        W_enc = W_dec.T if d_out == d_in else 0.1 * torch.randn(d_in, d_sae, generator=generator) / d_in**0.5
        self.W_enc = nn.Parameter(W_enc.contiguous().to(**kwargs))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kwargs))
        self.W_dec = nn.Parameter(W_dec.to(**kwargs))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kwargs))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, **kwargs))
        features = f"B P {d_sae}"
        self.hook_sae_input = HookPoint(f"B P {d_in}", "the SAE's input (heads flattened for hook_z)")
        self.hook_sae_acts_pre = HookPoint(features, "feature pre-activations, x @ W_enc + b_enc")
        self.hook_sae_acts_post = HookPoint(features, "feature activations (sparse)")
        self.hook_sae_recons = HookPoint(f"B P {d_out}", "reconstruction, f @ W_dec + b_dec")
        self.hook_sae_error = HookPoint(f"B P {d_out}", "error term, input − clean reconstruction")
        self.hook_sae_output = HookPoint(f"B P {d_out}", "what the model reads: recons (+ error)")
        for name, point in self.hook_points().items():
            point.name = name  # standalone names; splicing gives the full ones

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_children() if isinstance(m, HookPoint)}

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    # -- the equations ------------------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(norm(x) − b_dec · apply_b_dec_to_input) @ W_enc + b_enc`` [.., d_sae], without hooks."""
        x = self._normalize(x.to(self.dtype))[0]
        if self.cfg.apply_b_dec_to_input and not self.cfg.is_transcoder:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparse feature activations from the pre-activations, without hooks."""
        kind = self.cfg.activation
        if kind == "relu":
            return torch.relu(pre)
        if kind == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [.., d_sae] of ``x`` [.., d_in] (through ``hook_sae_acts_pre``/``_post``)."""
        pre = _hook(self.hook_sae_acts_pre, self.pre_activations(x))
        return _hook(self.hook_sae_acts_post, self.activation(pre))

    def decode(self, features: torch.Tensor, input: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction [.., d_in] (``d_out`` for a transcoder) of ``features`` (through
        ``hook_sae_recons``). ``input``: the activation the features came from, needed to undo a per-token
        normalisation (``constant_norm_rescale``, ``layer_norm``)."""
        return _hook(self.hook_sae_recons, self.decode_unhooked(features, input))

    def decode_unhooked(self, features: torch.Tensor, input: torch.Tensor | None = None) -> torch.Tensor:
        """``denorm(f @ W_dec + b_dec)`` without hooks."""
        out = features @ self.W_dec + self.b_dec
        if self.cfg.is_transcoder or self.cfg.normalize_activations == "none":
            return out
        if self.cfg.normalize_activations == "expected_average_only_in":
            return out / self.cfg.norm_scaling_factor
        if input is None:
            raise ValueError(
                f"normalize_activations={self.cfg.normalize_activations!r} normalises each token by its own "
                "statistics, so decoding needs the input the features came from: decode(features, input=x) "
                "(or forward(x))."
            )
        return self._normalize(input.to(self.dtype))[1](out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the reconstruction of ``x``."""
        return self.decode(self.encode(x), input=x)

    def reconstruct_unhooked(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` without hooks: the clean reconstruction the error term is measured from."""
        return self.decode_unhooked(self.activation(self.pre_activations(x)), input=x)

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """``(norm(x), denorm)`` for this SAE's ``normalize_activations``."""
        mode = self.cfg.normalize_activations
        if mode == "none":
            return x, lambda out: out
        if mode == "expected_average_only_in":
            factor = self.cfg.norm_scaling_factor
            return x * factor, lambda out: out / factor
        if mode == "constant_norm_rescale":
            coefficient = self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * coefficient, lambda out: out / coefficient
        mean = x.mean(dim=-1, keepdim=True)
        std = (x - mean).std(dim=-1, keepdim=True)
        return (x - mean) / (std + _LAYER_NORM_EPS), lambda out: out * std + mean

    def extra_repr(self) -> str:
        cfg = self.cfg
        k = f", k={cfg.k}" if cfg.activation == "topk" else ""
        out = f" -> {cfg.hook_name_out}" if cfg.is_transcoder else ""
        return f"{cfg.architecture}{k}, d_in={cfg.d_in}, d_sae={cfg.d_sae}, hook={cfg.hook_name!r}{out}"
