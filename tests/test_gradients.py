"""Gradients at hook points: finite differences, transformers' autograd, frozen weights, hooks cleaned up."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, transformers_twin

from llama3_lab.gradients import backward_hooks, run_with_cache_and_grads

TOKENS = torch.tensor([[3, 17, 42, 8, 91, 5, 23]])


def last_logit(token: int = 11):
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, token].mean()

    return metric


def registered_hooks(model) -> int:
    return len(model.hooked_names())  # module hooks and this thread's context hooks


@pytest.mark.parametrize(
    "name",
    [
        "hook_embed",
        "blocks.0.attn.hook_v",
        "blocks.0.mlp.hook_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.attn.hook_z",
        "blocks.1.attn.hook_pattern",
        "blocks.1.ln2.hook_scale",
    ],
)
def test_gradients_equal_central_differences_on_a_float64_model(name: str) -> None:
    model = tiny_model(seed=7, dtype=torch.float64)
    metric = last_logit()
    _, acts, grads = run_with_cache_and_grads(model, TOKENS, metric, names_filter=[name])
    direction = torch.randn(acts[name].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def shifted(eps: float) -> float:
        def add(tensor: torch.Tensor, hook) -> torch.Tensor:
            return tensor + eps * direction

        with torch.no_grad():
            return float(metric(model.run_with_hooks(TOKENS, fwd_hooks=[(name, add)])))

    eps = 1e-6
    numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
    analytic = float((grads[name] * direction).sum())
    assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_gradients_equal_transformers_autograd_on_the_residual_stream() -> None:
    model = tiny_model(seed=8)
    metric = last_logit(5)
    value, _, grads = run_with_cache_and_grads(
        model, TOKENS, metric, names_filter=lambda n: "resid_pre" in n or n == "hook_embed"
    )
    hf = transformers_twin(model)
    embeds = hf.model.embed_tokens(TOKENS).detach().requires_grad_(True)
    out = hf(inputs_embeds=embeds, output_hidden_states=True)
    for hidden in out.hidden_states:
        hidden.retain_grad()
    metric(out.logits).backward()
    torch.testing.assert_close(value, metric(out.logits).detach())
    torch.testing.assert_close(grads["hook_embed"], embeds.grad, rtol=1e-5, atol=1e-6)
    for layer in range(model.cfg.num_hidden_layers):  # hidden_states[l] is the residual into layer l
        torch.testing.assert_close(
            grads[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer].grad, rtol=1e-5, atol=1e-6
        )


def test_weights_stay_frozen_and_no_parameter_grad_is_allocated() -> None:
    model = tiny_model(seed=9)
    run_with_cache_and_grads(model, TOKENS, last_logit(), names_filter="blocks.0.hook_resid_post")
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_a_backward_hook_sees_and_can_replace_the_gradient() -> None:
    model = tiny_model(seed=10)
    seen = []

    def zero(grad: torch.Tensor, hook) -> torch.Tensor:
        seen.append((hook.name, tuple(grad.shape)))
        return torch.zeros_like(grad)

    with backward_hooks(model, [("blocks.1.hook_resid_pre", zero)]):
        embeds = {}

        def keep(tensor: torch.Tensor, hook) -> None:
            embeds["x"] = tensor

        with model.hooks([("hook_embed", keep)]):
            last_logit()(model(TOKENS)).backward()
    assert seen == [("blocks.1.hook_resid_pre", (1, 7, model.cfg.hidden_size))]
    # every path from the embeddings to the logits crosses the residual into block 1
    assert torch.count_nonzero(embeds["x"].grad) == 0
    assert registered_hooks(model) == 0


def test_a_hook_returning_the_wrong_shape_is_named() -> None:
    model = tiny_model(seed=10)
    with pytest.raises(ValueError, match=r"backward hook on blocks\.0\.hook_mlp_out returned .* \(1, 1\)"):
        with backward_hooks(model, [("blocks.0.hook_mlp_out", lambda g, h: torch.zeros(1, 1))]):
            last_logit()(model(TOKENS)).backward()
    assert registered_hooks(model) == 0


@pytest.mark.parametrize("where", ["metric", "hook"])
def test_no_hook_stays_registered_when_a_metric_or_a_hook_raises(where: str) -> None:
    model = tiny_model(seed=12)

    def bad_metric(logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("metric failed")

    def bad_hook(grad: torch.Tensor, hook) -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="failed"):
        if where == "metric":
            run_with_cache_and_grads(model, TOKENS, bad_metric, names_filter="blocks.0.hook_resid_post")
        else:
            with backward_hooks(model, [("blocks.0.hook_resid_post", bad_hook)]):
                last_logit()(model(TOKENS)).backward()
    assert registered_hooks(model) == 0
    assert model(TOKENS).requires_grad is False, "outside, forwards build no graph again"


def test_a_metric_that_is_not_one_differentiable_number_is_refused() -> None:
    model = tiny_model(seed=13)
    with pytest.raises(ValueError, match="must be one number"):
        run_with_cache_and_grads(model, TOKENS, lambda logits: logits[:, -1, :3], names_filter="hook_embed")
    with pytest.raises(ValueError, match="does not depend on the model's output"):
        run_with_cache_and_grads(model, TOKENS, lambda logits: torch.tensor(1.0), names_filter="hook_embed")
    assert registered_hooks(model) == 0


def test_bf16_gradients_are_bf16_and_close_to_the_float32_twin() -> None:
    model = tiny_model(seed=14)
    _, _, grads32 = run_with_cache_and_grads(
        model, TOKENS, last_logit(), names_filter="blocks.0.hook_resid_post"
    )
    model.to(torch.bfloat16)
    _, _, grads16 = run_with_cache_and_grads(
        model, TOKENS, last_logit(), names_filter="blocks.0.hook_resid_post"
    )
    g16, g32 = grads16["blocks.0.hook_resid_post"], grads32["blocks.0.hook_resid_post"]
    assert g16.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(g16.double().flatten(), g32.double().flatten(), dim=0)
    assert cosine > 0.99


def test_the_memory_budget_counts_activations_and_gradients() -> None:
    from llama3_lab.memory import MemoryBudgetError

    model = tiny_model(seed=15)
    names = "blocks.0.hook_resid_post"
    one = model.estimate_cache_bytes(TOKENS, names_filter=names)
    with pytest.raises(MemoryBudgetError, match="gradient"):
        run_with_cache_and_grads(model, TOKENS, last_logit(), names_filter=names, budget_bytes=2 * one - 1)
    run_with_cache_and_grads(model, TOKENS, last_logit(), names_filter=names, budget_bytes=2 * one)


def test_transformerlens_spellings_bwd_hooks_and_incl_bwd() -> None:
    model = tiny_model(seed=16)
    metric = last_logit()
    seen = []
    logits = model.run_with_hooks(
        TOKENS, bwd_hooks=[("blocks.1.hook_resid_post", lambda g, h: seen.append(g.clone()))], metric=metric
    )
    value, _, grads = run_with_cache_and_grads(model, TOKENS, metric, names_filter="blocks.1.hook_resid_post")
    torch.testing.assert_close(seen[0], grads["blocks.1.hook_resid_post"])
    torch.testing.assert_close(logits, model(TOKENS))
    logits, cache = model.run_with_cache(
        TOKENS, names_filter="blocks.0.hook_mlp_out", incl_bwd=True, metric=metric
    )
    assert sorted(cache.keys()) == ["blocks.0.hook_mlp_out", "blocks.0.hook_mlp_out_grad"]
    _, _, expected = run_with_cache_and_grads(model, TOKENS, metric, names_filter="blocks.0.hook_mlp_out")
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out_grad"], expected["blocks.0.hook_mlp_out"])
    with pytest.raises(ValueError, match="pass metric="):
        model.run_with_hooks(TOKENS, bwd_hooks=[("hook_embed", lambda g, h: None)])
    assert registered_hooks(model) == 0 and not model.hooked_names()


def test_incl_bwd_refuses_forward_options_it_would_ignore_and_takes_ragged_prompts() -> None:
    from llama3_lab.kv_cache import KVCache

    model = tiny_model(seed=17)
    cache = KVCache.allocate(model, max_length=16)
    with pytest.raises(ValueError, match=r"\['cache'\] cannot be passed"):
        model.run_with_cache(TOKENS, incl_bwd=True, metric=last_logit(), cache=cache)
    ragged = [[3, 17, 42], [8, 91, 5, 23, 60]]
    _, cache = model.run_with_cache(
        ragged,
        names_filter="blocks.0.hook_resid_post",
        incl_bwd=True,
        metric=last_logit(),
        padding_side="left",
    )
    assert cache["blocks.0.hook_resid_post_grad"].shape == (2, 5, model.cfg.hidden_size)
    assert cache.mask.tolist()[0] == [False, False, True, True, True]
