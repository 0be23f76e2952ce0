"""A float64 model is float64 all the way: the precision-critical steps promote, never demote.

Norm statistics, RoPE and the softmax compute in at least float32; a float64 model keeps float64 there,
so it is a reference for finite differences and for judging bf16 (as transformers' float64 model is).
"""

from __future__ import annotations

import pytest
import torch
from conftest import LLAMA3_SCALING, tiny_model, transformers_twin


@pytest.fixture
def float64_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' Llama with its two float32 casts (RMSNorm statistics, eager softmax) promoted instead.

    transformers itself computes those in float32 even in a float64 model (measured: its float64 logits are
    ~7e-7 from a true float64 forward), so as a float64 reference it needs these two lines changed.
    """
    from transformers.models.llama import modeling_llama as llama

    def rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(hidden_states.dtype)

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        keys, values = (
            llama.repeat_kv(key, module.num_key_value_groups),
            llama.repeat_kv(value, module.num_key_value_groups),
        )
        scores = torch.matmul(query, keys.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = scores.softmax(dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(
            query.dtype
        )
        return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(llama, "eager_attention_forward", eager)


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("scaling", [None, LLAMA3_SCALING])
def test_float64_model_matches_a_float64_transformers_to_1e_12(
    attn_impl, scaling, float64_transformers
) -> None:
    model = tiny_model(seed=3, dtype=torch.float64, rope_scaling=scaling)
    model.attn_impl = attn_impl
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    ours = model(tokens)
    assert ours.dtype == torch.float64
    theirs = transformers_twin(model, attn="eager", dtype=torch.float64)(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_float64_intermediates_stay_float64() -> None:
    model = tiny_model(seed=4, dtype=torch.float64)
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3, 4, 5]]))
    for name in ("blocks.0.ln1.hook_scale", "blocks.0.attn.hook_rot_q", "blocks.1.attn.hook_pattern"):
        assert cache[name].dtype == torch.float64, name


def test_central_differences_of_a_float64_model_are_not_noise() -> None:
    """d logit / d embedding by central differences at eps = 1e-6 agrees with autograd to 1e-6."""
    model = tiny_model(seed=5, dtype=torch.float64)
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    embed = model.embed(tokens).detach()
    direction = torch.randn(embed.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def logit(x: torch.Tensor) -> torch.Tensor:
        def replace(tensor: torch.Tensor, hook) -> torch.Tensor:
            return x

        return model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", replace)])[0, -1, 7]

    x = embed.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(logit(x), x)
    eps = 1e-6
    numeric = (logit(embed + eps * direction) - logit(embed - eps * direction)) / (2 * eps)
    torch.testing.assert_close(numeric, (grad * direction).sum(), rtol=1e-6, atol=1e-8)
