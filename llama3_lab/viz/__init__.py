"""Matplotlib figures for looking inside Llama 3: pure functions from tensors and token strings to Figures.

Every function returns a :class:`matplotlib.figure.Figure`, accepts an existing ``ax=`` (or ``axes=``) to
draw into, and leaves nothing in pyplot's registry, so a notebook displays each figure once. Tensors may be
torch tensors (any dtype, any device) or NumPy arrays; leading batch axes of size 1 are dropped.
"""

from ._common import display_token, set_token_ticks, token_labels
from .attention import (
    PooledPattern,
    attention_heads_grid,
    attention_pattern,
    downsample_pattern,
    head_score_heatmap,
    mask_future,
)
from .attribution import attribution_scatter, effect_ci_heatmap, pearson_r, token_attribution
from .config import config_breakdown
from .residual import logit_lens_heatmap, residual_norms
from .rope import (
    rope_frequencies,
    rope_rotation,
    rope_scaling_bands,
    rope_score_vs_distance,
    rope_table,
)
from .sae import (
    feature_contexts,
    feature_dashboard,
    feature_histogram,
    feature_logit_effect,
    intervention_texts,
)
from .tokens import token_strip, topk_bars

__all__ = [
    "PooledPattern",
    "attention_heads_grid",
    "attention_pattern",
    "attribution_scatter",
    "config_breakdown",
    "display_token",
    "downsample_pattern",
    "effect_ci_heatmap",
    "feature_contexts",
    "feature_dashboard",
    "feature_histogram",
    "feature_logit_effect",
    "head_score_heatmap",
    "intervention_texts",
    "logit_lens_heatmap",
    "mask_future",
    "pearson_r",
    "residual_norms",
    "rope_frequencies",
    "rope_rotation",
    "rope_scaling_bands",
    "rope_score_vs_distance",
    "rope_table",
    "set_token_ticks",
    "token_attribution",
    "token_labels",
    "token_strip",
    "topk_bars",
]
