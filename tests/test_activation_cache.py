"""The activation cache: lookups, views, recomputed patterns, device/dtype and position selection."""

from __future__ import annotations

import pytest
import torch
from hooked_tiny import L, no_hooks_left

pytest_plugins = ["hooked_tiny"]  # the fixtures tiny and tokens


def test_cache_shapes_follow_the_catalogue(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    cfg = tiny.cfg
    sizes = {"B": 2, "P": 9, "Pq": 9, "Pk": 9, "H": 6, "K": 2, "d": cfg.head_dim, "D": 48, "M": 80, "V": 211}
    for name, tensor in cache.items():
        expected = tuple(sizes.get(a, 1) for a in tiny.hook_dict[name].shape.split())
        assert tuple(tensor.shape) == expected, name
    assert cache["scale", 0, "ln1"].dtype == torch.float32


def test_cache_lookup_forms_and_views(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["scale", 2, "ln2"] is cache["blocks.2.ln2.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    resid = cache.stack("resid_post")
    assert torch.equal(resid[1], cache["resid_post", 1])
    single = cache.to(dtype=torch.bfloat16)
    assert single["resid_post", 0].dtype == torch.bfloat16 and cache["resid_post", 0].dtype == torch.float32
    text = repr(cache)
    assert "ActivationCache(" in text and "layers 0-2" in text and "tokens (2, 9)" in text
    _, one = tiny.run_with_cache(tokens[:1])
    unbatched = one.remove_batch_dim()
    assert unbatched["pattern", 0].shape == (6, 9, 9) and unbatched["resid_post", 2].shape == (9, 48)
    assert unbatched["rope.hook_cos"].shape == one["rope.hook_cos"].shape  # no batch axis there
    with pytest.raises(ValueError, match="batch 1"):
        cache.remove_batch_dim()


def test_pattern_is_recomputed_with_the_models_own_math(tiny, tokens):
    _, full = tiny.run_with_cache(tokens)
    _, small = tiny.run_with_cache(tokens, names_filter=lambda n: "rot_" in n)
    assert not any("pattern" in n for n in small)
    # layer 0 sees the same rot_q/rot_k either way; later layers' inputs differ by the fused kernel's rounding
    torch.testing.assert_close(small.pattern(0), full["pattern", 0], rtol=0, atol=0)
    for layer in range(L):
        pattern = full.pattern(layer)
        torch.testing.assert_close(pattern, full["pattern", layer], rtol=0, atol=0)
        torch.testing.assert_close(small.pattern(layer), pattern, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 6, 9))
        assert pattern.triu(1).abs().max() == 0  # causal
    assert no_hooks_left(tiny)


def test_device_dtype_and_pos_slice(tiny, tokens):
    logits, cache = tiny.run_with_cache(tokens, dtype=torch.bfloat16)
    torch.testing.assert_close(logits, tiny(tokens), rtol=1e-5, atol=1e-5)  # the forward is untouched
    assert {t.dtype for t in cache.values()} == {torch.bfloat16}
    _, last = tiny.run_with_cache(tokens, pos_slice=-1)
    _, full = tiny.run_with_cache(tokens)
    assert last["resid_post", 1].shape == (2, 1, 48)
    assert last["pattern", 1].shape == (2, 6, 1, 9)  # every key position stays
    torch.testing.assert_close(last["pattern", 1], full["pattern", 1][:, :, -1:], rtol=0, atol=0)
    torch.testing.assert_close(last["q", 0], full["q", 0][:, -1:], rtol=0, atol=0)
    _, some = tiny.run_with_cache(tokens, pos_slice=[0, 4], names_filter=lambda n: "resid" in n)
    _, resid = tiny.run_with_cache(tokens, names_filter=lambda n: "resid" in n)  # same (fused) attention path
    torch.testing.assert_close(some["resid_mid", 2], resid["resid_mid", 2][:, [0, 4]], rtol=0, atol=0)
    # a kept slice is a copy, not a view that keeps every position alive
    assert last["resid_post", 1].untyped_storage().nbytes() == 2 * 48 * 4
