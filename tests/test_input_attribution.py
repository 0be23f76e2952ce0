"""Input attribution: integrated gradients are complete, gradient x input is autograd's, generation rows."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from llama3_lab.analysis.input_attribution import (
    attribute_generation,
    gradient_x_input,
    integrated_gradients,
    logit_difference,
    token_logit,
    token_logprob,
)
from llama3_lab.generation import generate_tokens

TOKENS = torch.tensor([[3, 17, 42, 8, 91, 5, 23, 60]])


@pytest.mark.parametrize(
    "target", [token_logit(11), token_logprob(11), logit_difference(11, 12, position=-2)]
)
def test_integrated_gradients_sum_to_the_change_of_the_target_within_1_percent(target) -> None:
    model = tiny_model(seed=41)
    result = integrated_gradients(model, TOKENS, target)
    gap = result.target - result.baseline_target
    assert abs(float(result.convergence_delta[0])) < 0.01 * abs(float(gap[0]))
    assert result.values.shape == TOKENS.shape


def test_too_few_steps_show_in_the_convergence_delta() -> None:
    model = tiny_model(seed=41, initializer_range=0.2)
    with pytest.warns(UserWarning, match=r"1 steps miss completeness by .*use more steps"):
        coarse = integrated_gradients(model, TOKENS, token_logit(11), steps=1)
    fine = integrated_gradients(model, TOKENS, token_logit(11), steps=64)
    assert abs(float(fine.convergence_delta[0])) < abs(float(coarse.convergence_delta[0]))


def test_gradient_x_input_is_the_embedding_times_its_autograd_gradient() -> None:
    model = tiny_model(seed=42)
    result = gradient_x_input(model, TOKENS, token_logit(7))
    embeds = model.embed(TOKENS).detach().requires_grad_(True)

    def replace(tensor, hook):
        return embeds

    with torch.enable_grad(), model.hooks([("hook_embed", replace)]):
        model(TOKENS)[0, -1, 7].backward()
    torch.testing.assert_close(result.values, (embeds.grad * embeds).sum(-1).detach())
    assert all(p.grad is None for p in model.parameters())


def test_a_token_that_cannot_matter_gets_zero() -> None:
    """Causal attention: the target at position 3 cannot depend on later tokens."""
    model = tiny_model(seed=43)
    result = integrated_gradients(model, TOKENS, token_logit(5, position=3), steps=8)
    assert torch.all(result.values[0, 4:] == 0) and torch.all(result.values[0, 1:4] != 0)
    assert result.values[0, 0] == 0, "the first position (the attention sink) keeps its own embedding"


def test_generation_rows_attribute_each_new_token_to_what_came_before() -> None:
    model = tiny_model(seed=44)
    prompt = [3, 17, 42, 8]
    generated = list(generate_tokens(model, prompt, max_new_tokens=3, temperature=0))
    result = attribute_generation(model, prompt, generated, method="gradient_x_input")
    assert result.values.shape == (3, len(prompt) + 3 - 1) and result.n_prompt == 4
    for i in range(3):
        assert torch.all(result.values[i, len(prompt) + i :] == 0)
    first = gradient_x_input(model, [prompt], token_logprob(generated[0])).values[0]
    torch.testing.assert_close(result.values[0, :4], first)


@pytest.mark.slow
def test_integrated_gradients_on_smollm2_are_complete(smollm2) -> None:
    ids = smollm2.to_tokens("The capital of France is", prepend_bos=True)  # BOS is the attention sink
    paris = smollm2.tokenizer.encode(" Paris")[0]
    result = integrated_gradients(smollm2, ids, token_logprob(paris))  # baseline: <|endoftext|>, 128 steps
    gap = float(result.target[0] - result.baseline_target[0])
    assert abs(float(result.convergence_delta[0])) < 0.01 * abs(gap)
    france = smollm2.to_str_tokens(ids[0]).index(" France")
    assert int(result.values[0].abs().argmax()) in (france, ids.shape[1] - 1)
