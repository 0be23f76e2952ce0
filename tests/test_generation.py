"""Sampling, generate, Session and the generate/chat CLI."""

from __future__ import annotations

import pytest
import torch

from llama3_lab.generation import (
    GenerationError,
    check_sampling,
    make_generator,
    sample_next,
    sampling_probs,
    top_k_mask,
    top_p_mask,
)

# ---------------------------------------------------------------------------------------------
# Sampling on hand-made distributions (no model)
# ---------------------------------------------------------------------------------------------

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
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": 0}, "top_k must be None or an int >= 1"),
        ({"top_k": 2.5}, "top_k must be None or an int >= 1"),
    ],
)
def test_bad_sampling_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace("]", r"\]")):
        check_sampling(**kwargs)
    with pytest.raises(GenerationError):
        sample_next(torch.zeros(5), **kwargs)
