"""The llama3 RoPE scaling rule (llama3_lab.rope) against transformers' own llama3 RoPE init."""

from __future__ import annotations

import torch
from config_reference import LLAMA31_8B_PARAMS, LLAMA32_1B_HF

from llama3_lab.config import LlamaConfig


def test_llama3_scaling_rule_matches_transformers() -> None:
    """The llama3 divisors GGUF stores (and rope_pair_regimes) follow transformers' own llama3 RoPE init."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llama3_lab.rope import llama3_divisors

    for c in (LlamaConfig.from_params(LLAMA31_8B_PARAMS), LlamaConfig.from_dict(LLAMA32_1B_HF)):
        hf = HFLlamaConfig.from_dict(c.to_dict())
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
        unscaled = torch.tensor(c.rope_inv_freq_unscaled(), dtype=torch.float64)
        divisors = torch.tensor(
            llama3_divisors(c.rope_scaling, c.head_dim, c.rope_theta), dtype=torch.float64
        )
        torch.testing.assert_close(scaled.double(), unscaled / divisors, rtol=1e-5, atol=0)
