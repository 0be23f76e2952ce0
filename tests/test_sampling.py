"""Sampling: the masks, the distribution, the draw, and the ``Sampling`` settings (no model)."""

from __future__ import annotations

import pytest
import torch

from llama3_lab.generation import generate_tokens
from llama3_lab.sampling import (
    GenerationError,
    NonFiniteLogitsError,
    Sampling,
    check_finite_logits,
    make_generator,
    resolve_sampling,
    sample_next,
    sampling_probs,
    top_k_mask,
    top_p_mask,
)

# Powers of two: every cumulative sum is exact in float32, so the boundary cases are real boundaries.
PROBS = torch.tensor([0.125, 0.5, 0.0625, 0.25, 0.0625])  # sorted order: 1, 3, 0, 2|4


def kept(mask: torch.Tensor) -> set[int]:
    return set(mask.nonzero().flatten().tolist())


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.4, {1}),  # preceding mass of token 3 is 0.5 > 0.4: dropped
        (0.5, {1, 3}),  # preceding mass of token 3 equals p exactly: kept (Meta's `> p`)
        (0.6, {1, 3}),  # token 0's preceding mass 0.75 > 0.6
        (0.75, {1, 3, 0}),  # boundary again: preceding 0.75 == p keeps token 0
        (0.874, {1, 3, 0}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_exactly_the_nucleus(p: float, expected: set[int]) -> None:
    assert kept(top_p_mask(PROBS, p)) == expected


def test_top_p_always_keeps_the_argmax() -> None:
    assert kept(top_p_mask(PROBS, 1e-9)) == {1}


@pytest.mark.parametrize(("k", "expected"), [(1, {1}), (2, {1, 3}), (3, {1, 3, 0}), (99, {0, 1, 2, 3, 4})])
def test_top_k_keeps_the_k_most_probable(k: int, expected: set[int]) -> None:
    assert kept(top_k_mask(PROBS, k)) == expected


def test_sampling_probs_truncates_and_renormalises() -> None:
    logits = PROBS.log()
    probs = sampling_probs(logits, temperature=1.0, top_p=0.6)
    assert kept(probs > 0) == {1, 3}
    torch.testing.assert_close(probs[[1, 3]], torch.tensor([2 / 3, 1 / 3]))
    # top-k first, then top-p inside the top-k renormalised distribution: top-2 gives {1: 2/3, 3: 1/3};
    # with p=0.6 the preceding mass of token 3 is 2/3 > 0.6, so only token 1 survives.
    probs = sampling_probs(logits, temperature=1.0, top_k=2, top_p=0.6)
    assert kept(probs > 0) == {1}
    # temperature 2 flattens: softmax(log p / 2) is proportional to sqrt(p)
    flat = sampling_probs(logits, temperature=2.0, top_p=1.0)
    torch.testing.assert_close(flat, PROBS.sqrt() / PROBS.sqrt().sum())


def test_temperature_zero_is_argmax_and_tiny_temperature_agrees() -> None:
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    greedy = sample_next(logits, temperature=0)
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=1e-6, generator=make_generator(1)), greedy)
    onehot = sampling_probs(logits, temperature=0)
    assert torch.equal(onehot.argmax(-1), greedy) and torch.equal(onehot.sum(-1), torch.ones(4))


def test_same_seed_same_draws_and_draws_follow_the_distribution() -> None:
    logits = PROBS.log().expand(20000, -1)
    a = sample_next(logits, temperature=1.0, top_p=1.0, generator=make_generator(7))
    b = sample_next(logits, temperature=1.0, top_p=1.0, generator=make_generator(7))
    assert torch.equal(a, b)
    frequencies = torch.bincount(a, minlength=5).float() / len(a)
    torch.testing.assert_close(frequencies, PROBS, atol=0.015, rtol=0)
    nucleus = sample_next(logits, temperature=1.0, top_p=0.5, generator=make_generator(7))
    assert set(nucleus.unique().tolist()) == {1, 3}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a number >= 0 and finite"),
        ({"temperature": float("inf")}, "temperature must be a number >= 0 and finite"),
        ({"top_p": float("nan")}, "top_p must be in (0, 1]"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": 0}, "top_k must be None or an int >= 1"),
        ({"top_k": 2.5}, "top_k must be None or an int >= 1"),
    ],
)
def test_bad_sampling_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Sampling(**kwargs)
    with pytest.raises(GenerationError):
        sample_next(torch.zeros(5), **kwargs)


def test_sampling_is_validated_once_and_keywords_build_it() -> None:
    assert resolve_sampling(None, {}, caller="f") == Sampling()
    assert resolve_sampling(None, {"temperature": 0, "top_k": 5}, caller="f") == Sampling(0, 0.9, 5)
    greedy = Sampling(temperature=0.0)
    assert resolve_sampling(None, {"top_k": 3}, greedy, caller="f") == Sampling(0.0, 0.9, 3)
    given = Sampling(1.0, 1.0, None)
    assert resolve_sampling(given, {}, caller="f") is given
    with pytest.raises(GenerationError, match="give one of them"):
        resolve_sampling(given, {"temperature": 0}, caller="f")
    with pytest.raises(TypeError, match=r"f\(\) got unexpected keyword argument\(s\) \['temprature'\]"):
        resolve_sampling(None, {"temprature": 0}, caller="f")
    with pytest.raises(GenerationError, match="sampling must be a llama3_lab.sampling.Sampling"):
        resolve_sampling({"temperature": 0}, {}, caller="f")
    with pytest.raises(GenerationError, match="top_k must be None or an int >= 1"):
        resolve_sampling(None, {"top_k": 0}, caller="f")
    with pytest.raises(AttributeError):
        given.temperature = 0.5  # frozen: a new setting is a new (validated) Sampling


# ---------------------------------------------------------------------------------------------
# The draw follows the distribution: a chi-square goodness-of-fit test
# ---------------------------------------------------------------------------------------------

#: A fixed small logits vector: unequal gaps, so temperature, top-k and top-p each change the shape.
LOGITS = torch.tensor([2.0, 1.4, 1.1, 0.3, 0.0, -0.6, -1.5, -2.5])
DRAWS = 400_000
#: Rejection level. The seed is fixed, so the test never flakes; with this many draws a sampler that
#: draws at 1.03 times the temperature is rejected on every setting below (checked in the test itself).
ALPHA = 1e-4


def goodness_of_fit(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of the draws' frequencies against ``probs [V]`` (0 if a token of probability
    0 was drawn); degrees of freedom: the tokens of nonzero probability, minus one."""
    counts = torch.bincount(draws, minlength=probs.numel()).double()
    support = probs > 0
    if counts[~support].sum() > 0:
        return 0.0
    expected = probs.double()[support] * draws.numel()
    statistic = ((counts[support] - expected) ** 2 / expected).sum()
    dof = torch.tensor((int(support.sum()) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, statistic / 2))  # the chi-square survival function


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, None, 1.0), (0.7, None, 0.95), (1.5, 5, 1.0), (1.0, 6, 0.9), (2.0, None, 0.8)],
)
def test_sampled_frequencies_follow_sampling_probs(
    temperature: float, top_k: int | None, top_p: float
) -> None:
    probs = sampling_probs(LOGITS, temperature, top_p, top_k)
    batch = LOGITS.expand(DRAWS, -1)
    draws = sample_next(batch, temperature, top_p, top_k, make_generator(0))
    assert goodness_of_fit(draws, probs) > ALPHA
    # The test has the power to see a small error: drawing at 1.03 x the temperature fails it.
    too_hot = sample_next(batch, 1.03 * temperature, top_p, top_k, make_generator(0))
    assert goodness_of_fit(too_hot, probs) < ALPHA


# ---------------------------------------------------------------------------------------------
# Logits that cannot be sampled from, temperatures at the edge
# ---------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "sampling", [Sampling(temperature=0), Sampling(1.0, 0.9, 5)], ids=["greedy", "sampled"]
)
@pytest.mark.parametrize(
    ("bad", "found"),
    [
        ([1.0, NAN, 0.5], "1 NaN and 0 \\+inf"),
        ([1.0, INF, 0.5], "0 NaN and 1 \\+inf"),
        ([-INF] * 3, "only -inf"),
    ],
)
def test_non_finite_logits_raise_instead_of_emitting_a_token(
    sampling: Sampling, bad: list, found: str
) -> None:
    logits = torch.tensor(bad)
    with pytest.raises(
        NonFiniteLogitsError, match=f"logits for position 17 are not finite: {found}"
    ) as raised:
        sampling.sample(logits, make_generator(0), position=17)
    assert "hook that wrote NaN" in str(raised.value) and isinstance(raised.value, GenerationError)
    with pytest.raises(NonFiniteLogitsError, match="logits of this step"):
        sampling.probs(logits)
    # a batch names its bad rows
    batch = torch.stack([torch.zeros(3), logits, torch.zeros(3)])
    with pytest.raises(NonFiniteLogitsError, match=r"batch rows \[1\]"):
        sampling.sample(batch, make_generator(0))


def test_minus_inf_logits_ban_tokens_and_are_allowed() -> None:
    logits = torch.tensor([-INF, 0.0, -INF, 1.0])
    check_finite_logits(logits)  # no error: -inf is how a hook bans a token
    draws = Sampling(1.0, 1.0).sample(logits.expand(2000, -1), make_generator(0))
    assert set(draws.unique().tolist()) == {1, 3}
    assert int(Sampling(temperature=0).sample(logits)) == 3


def test_a_nan_weight_is_an_error_not_an_empty_generation(make_model) -> None:
    model = make_model(seed=4)
    with torch.no_grad():
        model.blocks[1].mlp.down_proj.weight[3, 5] = NAN
    with pytest.raises(NonFiniteLogitsError, match="non-finite|NaN or inf"):
        list(generate_tokens(model, [1, 5, 17], 4, temperature=0))
    with pytest.raises(NonFiniteLogitsError):
        list(generate_tokens(model, [1, 5, 17], 4, temperature=0.8, generator=make_generator(0)))


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-6])
def test_a_tiny_temperature_is_computed_stably_and_is_the_argmax(temperature: float) -> None:
    logits = 50 * torch.randn(4, 1000, generator=torch.Generator().manual_seed(1))
    probs = sampling_probs(logits, temperature=temperature, top_p=1.0)
    assert probs.isfinite().all()  # logits / 1e-45 alone would be inf, and softmax of it NaN
    assert torch.equal(probs.argmax(-1), logits.argmax(-1)) and torch.equal(probs.amax(-1), torch.ones(4))
    draws = sample_next(logits, temperature=temperature, generator=make_generator(0))
    assert torch.equal(draws, logits.argmax(-1))
