"""Interpretability toolkit on top of ``run_with_cache`` and hooks; every function returns tensors
(figures come from ``llama3_lab.viz``).

- lens: ``logit_lens``, ``accumulated_resid``, ``decompose_resid``, ``apply_final_norm``, ``unembed``
- attribution: ``direct_logit_attribution``, ``head_logit_attribution``, ``head_outputs``, ``logit_direction``
- patching: ``patch_resid``, ``patch_head_z``, ``logit_diff``, ``logit_diff_metric``
- ablation: ``ablate_heads``, ``ablate_mlps``, ``head_ablation_hooks``, ``mlp_ablation_hooks``,
  ``mean_activations``
- steering: ``steering``, ``steering_hook``, ``steering_vector``
- heads: ``previous_token_scores``, ``induction_scores``, ``induction_head_scores``,
  ``attention_sink_scores``, ``attention_entropy``, ``repeated_random_tokens``
- tables: ``top_k_tokens``
- attribution_patching: ``attribution_patching`` (every component from one backward pass)
- input_attribution: ``integrated_gradients``, ``gradient_x_input``, ``attribute_generation``, targets
  ``token_logit``, ``token_logprob``, ``logit_difference``
- statistics: ``bootstrap_ci``, ``normalized_effect``, ``patching_over_dataset``

Gradients at hook points (backward hooks, gradient caches) live one layer down, in ``llama3_lab.gradients``.
"""

from __future__ import annotations

from .ablation import (
    ablate_heads,
    ablate_mlps,
    head_ablation_hooks,
    mean_activations,
    mlp_ablation_hooks,
)
from .attribution import direct_logit_attribution, head_logit_attribution, head_outputs, logit_direction
from .attribution_patching import AttributionPatching, attribution_patching
from .heads import (
    attention_entropy,
    attention_sink_scores,
    induction_head_scores,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from .input_attribution import (
    attribute_generation,
    gradient_x_input,
    integrated_gradients,
    logit_difference,
    token_logit,
    token_logprob,
)
from .lens import accumulated_resid, apply_final_norm, decompose_resid, logit_lens, unembed
from .patching import logit_diff, logit_diff_metric, patch_head_z, patch_resid
from .statistics import bootstrap_ci, normalized_effect, patching_over_dataset
from .steering import steering, steering_hook, steering_vector
from .tables import TopTokens, top_k_tokens

__all__ = [
    "AttributionPatching",
    "TopTokens",
    "attribute_generation",
    "attribution_patching",
    "bootstrap_ci",
    "gradient_x_input",
    "integrated_gradients",
    "logit_difference",
    "normalized_effect",
    "patching_over_dataset",
    "token_logit",
    "token_logprob",
    "ablate_heads",
    "ablate_mlps",
    "accumulated_resid",
    "apply_final_norm",
    "attention_entropy",
    "attention_sink_scores",
    "decompose_resid",
    "direct_logit_attribution",
    "head_ablation_hooks",
    "head_logit_attribution",
    "head_outputs",
    "induction_head_scores",
    "induction_scores",
    "logit_diff",
    "logit_diff_metric",
    "logit_direction",
    "logit_lens",
    "mean_activations",
    "mlp_ablation_hooks",
    "patch_head_z",
    "patch_resid",
    "previous_token_scores",
    "repeated_random_tokens",
    "steering",
    "steering_hook",
    "steering_vector",
    "top_k_tokens",
    "unembed",
]
