"""The root module: hook names from the module tree, registration, run_with_hooks and run_with_cache."""

from __future__ import annotations

import gc
import weakref

import psutil
import pytest
import torch
from hooked_tiny import L, hooked_tiny_model, no_hooks_left, random_tokens

from llama3_lab.activation_cache import ActivationCache
from llama3_lab.hook_points import HookNameError
from llama3_lab.kv_cache import KVCache
from llama3_lab.model import LlamaModel


@pytest.fixture(scope="module")
def tiny() -> LlamaModel:
    return hooked_tiny_model()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return random_tokens()


# ------------------------------------------------------------------------------------------ names


REFERENCE_NAMES = [
    "hook_embed",
    "rope.hook_cos",
    "rope.hook_sin",
    "blocks.{l}.hook_resid_pre",
    "blocks.{l}.ln1.hook_scale",
    "blocks.{l}.ln1.hook_normalized",
    "blocks.{l}.ln1.hook_out",
    "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k",
    "blocks.{l}.attn.hook_v",
    "blocks.{l}.attn.hook_rot_q",
    "blocks.{l}.attn.hook_rot_k",
    "blocks.{l}.attn.hook_attn_scores",
    "blocks.{l}.attn.hook_pattern",
    "blocks.{l}.attn.hook_z",
    "blocks.{l}.hook_attn_out",
    "blocks.{l}.hook_resid_mid",
    "blocks.{l}.ln2.hook_scale",
    "blocks.{l}.ln2.hook_normalized",
    "blocks.{l}.mlp.hook_pre",
    "blocks.{l}.mlp.hook_pre_linear",
    "blocks.{l}.mlp.hook_post",
    "blocks.{l}.hook_mlp_out",
    "blocks.{l}.hook_resid_post",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
    "unembed.hook_out",
]


def test_every_reference_hook_name_exists(tiny):
    names = set(tiny.hook_names())
    for pattern in REFERENCE_NAMES:
        for layer in range(L):
            assert pattern.format(l=layer) in names


# --------------------------------------------------------------------------------- run_with_cache


def test_cache_everything_matches_plain_forward_and_copies_taken_at_hook_time(tiny, tokens):
    """A detached reference is all the cache keeps: the model must never change a hooked tensor in place."""
    snapshots = {}

    def snapshot(tensor, hook):
        snapshots[hook.name] = tensor.clone()

    with tiny.hooks([(lambda name: True, snapshot)]):
        reference_logits = tiny(tokens)
    logits, cache = tiny.run_with_cache(tokens)
    assert sorted(cache.keys()) == sorted(tiny.hook_names())  # nothing missing
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=0)
    torch.testing.assert_close(logits, tiny(tokens), rtol=1e-4, atol=1e-5)  # eager vs sdpa
    for name, tensor in cache.items():
        assert torch.equal(tensor, snapshots[name]), name
        assert not tensor.requires_grad
    assert no_hooks_left(tiny)


def test_names_filter_forms(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert list(cache.keys()) == ["blocks.1.hook_resid_post"]
    _, cache = tiny.run_with_cache(tokens, names_filter=["blocks.2.attn.hook_z", ("resid_pre", 0)])
    assert list(cache.keys()) == ["blocks.0.hook_resid_pre", "blocks.2.attn.hook_z"]
    _, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert cache.stack("resid_post").shape == (L, 2, 9, 48)
    with pytest.raises(HookNameError, match="was not cached"):
        cache["pattern", 0]
    assert ("resid_post", 1) in cache and ("pattern", 1) not in cache and "nonsense" not in cache


def test_kv_cache_run(tiny, tokens):
    kv = KVCache.allocate(tiny.cfg, batch_size=2, max_length=32, device="cpu", dtype=torch.float32)
    tiny(tokens[:, :5], cache=kv)
    estimate = tiny.estimate_cache_bytes(4, batch=2, past_length=5)
    logits, cache = tiny.run_with_cache(tokens[:, 5:], cache=kv)
    assert cache["pattern", 0].shape == (2, 6, 4, 9)
    assert cache.nbytes == estimate
    torch.testing.assert_close(logits, tiny(tokens)[:, 5:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be recomputed"):
        cache.pattern(0)


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def test_memory_is_flat_over_200_runs(tiny, tokens):
    def run() -> ActivationCache:
        _, cache = tiny.run_with_cache(tokens)
        return cache

    for _ in range(5):
        run()
    process = psutil.Process()
    tensors_before, rss_before = live_tensors(), process.memory_info().rss
    for _ in range(200):
        cache = run()
        assert cache.nbytes > 0
    del cache
    assert live_tensors() <= tensors_before
    assert process.memory_info().rss - rss_before < 20 * 2**20  # 200 leaked caches would be ~46 MiB
    assert no_hooks_left(tiny)

    # No reference cycle keeps a cache alive: it dies as soon as the last reference goes, without gc.
    gc.disable()
    try:
        cache = run()
        ref = weakref.ref(cache)
        del cache
        assert ref() is None
    finally:
        gc.enable()


# ------------------------------------------------------------------------------------------ hooks


def test_returning_a_tensor_replaces_the_activation(tiny, tokens):
    clean = tiny(tokens)
    shifted = tiny.run_with_hooks(tokens, fwd_hooks=[("unembed.hook_out", lambda logits, hook: logits + 1.0)])
    torch.testing.assert_close(shifted, clean + 1.0)
    seen = []
    observed = tiny.run_with_hooks(
        tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: seen.append(hook.name))]
    )
    torch.testing.assert_close(observed, clean)
    assert seen == ["blocks.0.hook_resid_post"]


def test_hooked_mlp_zero_changes_resid_as_expected(tiny, tokens):
    """Zeroing layer 1's MLP output makes its resid_post equal its resid_mid (hooks then cache see it)."""
    with tiny.hooks([(("mlp_out", 1), lambda t, hook: torch.zeros_like(t))]):
        _, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.1.hook_resid"))
    torch.testing.assert_close(cache["resid_post", 1], cache["resid_mid", 1], rtol=0, atol=0)


def test_a_filter_function_registers_on_every_match(tiny, tokens):
    calls = []
    tiny.run_with_hooks(
        tokens, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, h: calls.append(h.name))]
    )
    assert calls == [f"blocks.{l}.attn.hook_pattern" for l in range(L)]


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_hooks_are_removed_when_a_hook_raises(tiny, tokens, error):
    def explode(tensor, hook):
        raise error("stop")

    with pytest.raises(error):
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", explode)])
    assert no_hooks_left(tiny)
    with pytest.raises(error):
        with tiny.hooks([("blocks.2.attn.hook_pattern", explode)]):
            tiny(tokens)
    assert no_hooks_left(tiny)
    with pytest.raises(error), tiny.hooks([("hook_embed", explode)]):
        tiny.run_with_cache(tokens)
    assert no_hooks_left(tiny)
    _, cache = tiny.run_with_cache(tokens, names_filter="hook_embed")  # the next run is clean
    assert len(cache) == 1


def test_a_bad_name_registers_nothing(tiny, tokens):
    with pytest.raises(HookNameError):
        with tiny.hooks([("hook_embed", lambda t, h: None), ("blocks.0.hook_nothing", lambda t, h: None)]):
            pass
    assert no_hooks_left(tiny)
