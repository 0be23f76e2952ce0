"""How good an SAE is: reconstruction, sparsity, dead features, and what splicing it costs the model.

    explained variance   1 − Σ|x − x̂|² / Σ|x − x̄|²          (x̄: the mean activation over the tokens seen)
    L0                   mean number of non-zero features per token
    dead fraction        features that never fired on the tokens seen
    CE loss recovered    (CE_zero − CE_spliced) / (CE_zero − CE_clean): 1 when splicing the SAE (no error
                         term) costs nothing, 0 when it is as bad as zeroing the activation

Everything streams: ``ReconstructionStats`` keeps sums, never the activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..hooks import HookedRootModule
from .sae import SAE
from .splice import model_with_sae


@dataclass
class ReconstructionStats:
    """Running sums over batches of ``(x [N, d], x̂ [N, d], features [N, d_sae])``."""

    n_tokens: int = 0
    squared_error: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_squares: float = 0.0
    active: float = 0.0
    fired: torch.Tensor | None = None  # [d_sae] bool: fired at least once
    extra: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, features: torch.Tensor) -> None:
        x, x_hat, features = x.flatten(0, -2).double(), x_hat.flatten(0, -2).double(), features.flatten(0, -2)
        self.n_tokens += x.shape[0]
        self.squared_error += (x - x_hat).pow(2).sum().item()
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_squares += x.pow(2).sum().item()
        nonzero = features != 0
        self.active += nonzero.sum().item()
        fired = nonzero.any(0)
        self.fired = fired if self.fired is None else self.fired | fired

    @property
    def explained_variance(self) -> float:
        """``1 − Σ|x − x̂|² / Σ|x − x̄|²`` over every token seen."""
        total = self.sum_squares - (self.sum_x.pow(2).sum().item() / self.n_tokens)
        return 1.0 - self.squared_error / total

    @property
    def l0(self) -> float:
        return self.active / self.n_tokens

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.fired.float().mean().item()

    @property
    def mse(self) -> float:
        """Mean squared error per token (summed over the d numbers)."""
        return self.squared_error / self.n_tokens


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


@dataclass(frozen=True)
class SpliceLoss:
    """Next-token cross-entropy with the activation clean, replaced by the SAE, and zeroed."""

    clean: float
    spliced: float
    zero_ablated: float

    @property
    def recovered(self) -> float:
        """``(zero − spliced) / (zero − clean)``: the fraction of the loss the SAE's reconstruction keeps."""
        return (self.zero_ablated - self.spliced) / (self.zero_ablated - self.clean)


@torch.no_grad()
def splice_loss(model: HookedRootModule, sae: SAE, tokens: torch.Tensor) -> SpliceLoss:
    """CE clean vs spliced (no error term) vs zero-ablated at the SAE's hook (``hook_name_out`` for a
    transcoder) on ``tokens`` [B P]."""
    tokens = model.to_tokens(tokens)
    clean = next_token_loss(model(tokens), tokens).item()
    with model_with_sae(model, sae, use_error_term=False):
        spliced = next_token_loss(model(tokens), tokens).item()
    zeroed = model.run_with_hooks(
        tokens, fwd_hooks=[(sae.cfg.replaced_hook, lambda x, hook: torch.zeros_like(x))]
    )
    return SpliceLoss(clean, spliced, next_token_loss(zeroed, tokens).item())
