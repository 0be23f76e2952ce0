"""The data of a feature dashboard: where a feature fires, how strongly, what it writes, what it does.

- ``top_activating_contexts``: the contexts where feature f is largest, with every token's activation
- ``activation_histogram``: counts of its non-zero activations, and how often it fires
- ``logit_effect``: the tokens its decoder direction promotes and suppresses, ``W_dec[f] · W_Uᵀ`` (the direct
  path through the unembedding, before the final norm, as SAE dashboards show it)
- ``feature_interventions``: a greedy generation clean, with the feature ablated and with it clamped to a
  value (the SAE spliced with its error term, so only the feature changes)
- ``feature_dashboard``: all of them for one feature, in one pass over the texts

Figures come later (``viz``); these return plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..hooks import HookedRootModule
from ..tokenizer import token_strings
from .activations import activations_at, token_contexts
from .sae import SAE
from .splice import model_with_sae, sae_hook_name


@dataclass(frozen=True)
class FeatureContext:
    """One context around a token where the feature fired: its tokens and the feature's value at each."""

    tokens: list[str]
    activations: list[float]
    peak: int  # index in ``tokens`` of the token with the largest activation
    value: float  # the largest activation

    def __repr__(self) -> str:
        marked = "".join(f"[{t}]" if i == self.peak else t for i, t in enumerate(self.tokens))
        return f"FeatureContext({self.value:.2f}: {marked!r})"


@dataclass(frozen=True)
class Histogram:
    """Counts of the non-zero activations in ``bins`` (``edges`` has one more entry) and the firing rate."""

    counts: list[int]
    edges: list[float]
    firing_rate: float  # fraction of tokens where the feature is non-zero
    n_tokens: int


@dataclass(frozen=True)
class TokenEffect:
    token: str
    token_id: int
    logit: float


@dataclass
class FeatureDashboard:
    feature: int
    contexts: list[FeatureContext]
    histogram: Histogram
    promoted: list[TokenEffect]
    suppressed: list[TokenEffect]
    interventions: dict[str, str] = field(default_factory=dict)


def _check_feature(sae: SAE, feature: int) -> int:
    if not isinstance(feature, int) or not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(
            f"feature must be an int in 0..{sae.cfg.d_sae - 1} (the SAE's d_sae), got {feature!r}."
        )
    return feature


@torch.no_grad()
def _feature_scan(
    model: HookedRootModule,
    sae: SAE,
    feature: int,
    texts: Sequence[str],
    n_tokens: int,
    context_length: int,
    n_contexts: int,
    window: int,
) -> tuple[list[FeatureContext], torch.Tensor, int]:
    """Top contexts, the non-zero values, and the tokens seen, from one pass (BOS excluded)."""
    best: list[tuple[float, list[int], list[float], int]] = []
    values: list[torch.Tensor] = []
    seen = 0
    for _, ids in token_contexts(model, texts, context_length):
        x = activations_at(model, [sae.cfg.hook_name], ids[None].to(model.device))[sae.cfg.hook_name]
        acts = sae.encode(x.flatten(2) if x.ndim > 3 else x)[0, :, feature].float().cpu()
        acts[0] = 0.0  # the BOS position
        values.append(acts[1:][acts[1:] != 0])
        seen += len(ids) - 1
        peak = int(acts.argmax())
        if acts[peak] > 0:
            lo, hi = max(peak - window, 1), min(peak + window + 1, len(ids))
            best.append((float(acts[peak]), ids[lo:hi].tolist(), acts[lo:hi].tolist(), peak - lo))
            best = sorted(best, key=lambda row: -row[0])[:n_contexts]
        if seen >= n_tokens:
            break
    contexts = [
        FeatureContext(token_strings(model.tokenizer, ids), acts, peak, value)
        for value, ids, acts, peak in best
    ]
    return contexts, torch.cat(values) if values else torch.zeros(0), seen


def top_activating_contexts(
    model: HookedRootModule,
    sae: SAE,
    feature: int,
    texts: Sequence[str],
    n_contexts: int = 10,
    window: int = 8,
    n_tokens: int = 20_000,
    context_length: int = 128,
) -> list[FeatureContext]:
    """The ``n_contexts`` contexts (one per model context, ``window`` tokens either side of the peak) where
    ``feature`` is largest, over the first ``n_tokens`` tokens of ``texts``."""
    args = (n_tokens, context_length, n_contexts, window)
    return _feature_scan(model, sae, _check_feature(sae, feature), texts, *args)[0]


def activation_histogram(
    model: HookedRootModule,
    sae: SAE,
    feature: int,
    texts: Sequence[str],
    bins: int = 30,
    n_tokens: int = 20_000,
    context_length: int = 128,
) -> Histogram:
    """Counts of ``feature``'s non-zero activations over the first ``n_tokens`` tokens of ``texts``."""
    _, values, seen = _feature_scan(
        model, sae, _check_feature(sae, feature), texts, n_tokens, context_length, 0, 0
    )
    return _histogram(values, seen, bins)


def _histogram(values: torch.Tensor, seen: int, bins: int) -> Histogram:
    if len(values) == 0:
        return Histogram([0] * bins, torch.linspace(0, 1, bins + 1).tolist(), 0.0, seen)
    counts, edges = torch.histogram(values.double(), bins=bins)
    return Histogram(counts.long().tolist(), edges.tolist(), len(values) / max(seen, 1), seen)


@torch.no_grad()
def logit_effect(model: HookedRootModule, sae: SAE, feature: int, k: int = 10) -> tuple[list, list]:
    """``(promoted, suppressed)``: the ``k`` tokens with the largest and smallest ``W_dec[f] · W_Uᵀ``."""
    feature = _check_feature(sae, feature)
    if sae.cfg.output_size != model.cfg.hidden_size:
        raise ValueError(
            f"the logit effect needs a decoder into the residual stream (d_model = "
            f"{model.cfg.hidden_size}); this SAE writes {sae.cfg.output_size} numbers "
            f"({sae.cfg.hook_name_out or sae.cfg.hook_name})."
        )
    logits = sae.W_dec[feature].to(model.dtype) @ model.unembed.weight.T  # [V]
    top, bottom = logits.topk(k), logits.topk(k, largest=False)

    def effects(result) -> list[TokenEffect]:
        ids = result.indices.tolist()
        texts = token_strings(model.tokenizer, ids)
        return [TokenEffect(t, i, v) for t, i, v in zip(texts, ids, result.values.tolist())]

    return effects(top), effects(bottom)


def feature_interventions(
    model: HookedRootModule,
    sae: SAE,
    feature: int,
    prompt: str,
    value: float,
    max_new_tokens: int = 20,
) -> dict[str, str]:
    """Greedy continuations of ``prompt``: ``clean``, ``ablated`` (the feature set to 0 at every position) and
    ``steered`` (set to ``value``, e.g. a few times its largest activation), the SAE spliced with its error
    term so that nothing else changes."""
    feature = _check_feature(sae, feature)
    point = sae_hook_name(sae, "hook_sae_acts_post")

    def clamp(to: float):
        def hook(acts: torch.Tensor, _hook) -> torch.Tensor:
            acts = acts.clone()
            acts[..., feature] = to
            return acts

        return hook

    out = {"clean": str(model.generate(prompt, max_new_tokens, temperature=0.0))}
    with model_with_sae(model, sae, use_error_term=True):
        for label, to in (("ablated", 0.0), ("steered", value)):
            with model.hooks([(point, clamp(to))]):
                out[label] = str(model.generate(prompt, max_new_tokens, temperature=0.0))
    return out


def feature_dashboard(
    model: HookedRootModule,
    sae: SAE,
    feature: int,
    texts: Sequence[str],
    *,
    n_contexts: int = 10,
    window: int = 8,
    n_tokens: int = 20_000,
    bins: int = 30,
    k: int = 10,
    prompt: str | None = None,
    steer_value: float | None = None,
    max_new_tokens: int = 20,
    context_length: int = 128,
) -> FeatureDashboard:
    """Everything above for ``feature``, with one pass over ``texts``; interventions when ``prompt`` is given
    (``steer_value`` defaults to 4 × the largest activation seen)."""
    feature = _check_feature(sae, feature)
    contexts, values, seen = _feature_scan(
        model, sae, feature, texts, n_tokens, context_length, n_contexts, window
    )
    promoted, suppressed = logit_effect(model, sae, feature, k)
    interventions = {}
    if prompt is not None:
        value = steer_value if steer_value is not None else 4 * (contexts[0].value if contexts else 1.0)
        interventions = feature_interventions(model, sae, feature, prompt, value, max_new_tokens)
    return FeatureDashboard(
        feature, contexts, _histogram(values, seen, bins), promoted, suppressed, interventions
    )
