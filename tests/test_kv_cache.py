"""KVCache: growing in place keeps the filled positions; a grown cache decodes like a large one."""

from __future__ import annotations

import pytest
import torch

from llama3_lab.kv_cache import KVCache


def test_grow_keeps_the_filled_positions_and_the_object(make_model) -> None:
    model = make_model(seed=1)
    tokens = torch.tensor([[1, 5, 17, 42, 8, 33]])
    cache = KVCache.allocate(model, 1, max_length=8)
    with torch.no_grad():
        model(tokens[:, :5], cache=cache)
    before = [t[:, :, :5].clone() for t in cache.keys + cache.values]
    assert cache.grow(20) is cache
    assert cache.max_length == 20 and cache.length == 5
    assert all(torch.equal(a, t[:, :, :5]) for a, t in zip(before, cache.keys + cache.values))
    assert (cache.device, cache.dtype) == (model.device, model.dtype)
    # the grown cache continues exactly like one allocated large from the start
    large = KVCache.allocate(model, 1, max_length=20)
    with torch.no_grad():
        model(tokens[:, :5], cache=large)
        torch.testing.assert_close(model(tokens[:, 5:], cache=cache), model(tokens[:, 5:], cache=large))
    assert cache.grow(20) is cache and cache.max_length == 20  # already that large: nothing to do
    with pytest.raises(ValueError, match="cannot grow a cache of 20 positions to 10"):
        cache.grow(10)


def test_clone_is_independent(make_model) -> None:
    model = make_model(seed=2)
    cache = KVCache.allocate(model, 1, max_length=8)
    with torch.no_grad():
        model(torch.tensor([[3, 4, 5]]), cache=cache)
    twin = cache.clone()
    assert (twin.length, twin.max_length) == (3, 8)
    assert torch.equal(twin.layer_keys(0), cache.layer_keys(0))
    twin.keys[0].zero_()
    assert not torch.equal(twin.layer_keys(0), cache.layer_keys(0))
