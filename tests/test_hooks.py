"""The root module: hook names from the module tree, registration, run_with_hooks and run_with_cache."""

from __future__ import annotations

import gc
import weakref

import psutil
import pytest
import torch
from hooked_tiny import L, no_hooks_left

from llama3_lab.activation_cache import ActivationCache
from llama3_lab.hook_points import HookNameError
from llama3_lab.kv_cache import KVCache

pytest_plugins = ["hooked_tiny"]  # the fixtures tiny and tokens


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


# ---------------------------------------------------------------------------------------- threads


def _thread_plans(L: int) -> dict[str, list]:
    """What each thread hooks: each plan a list of (name, factor); factor scales the activation."""
    return {
        "none": [],
        "resid": [("blocks.1.hook_resid_mid", 1.5)],
        "mlp": [("blocks.0.hook_mlp_out", 0.0), (f"blocks.{L - 1}.attn.hook_z", -1.0)],
        "pattern": [("blocks.2.attn.hook_pattern", 1.0)],  # observe only; the attention goes eager
    }


def _run_plan(model, tokens, plan, calls):
    """One forward with ``plan``'s hooks; every hook call records its thread in ``calls``."""
    import threading

    def scale(factor):
        def hook(tensor, point):
            calls.append((point.name, threading.get_ident()))
            return None if factor == 1.0 else tensor * factor

        return hook

    fwd_hooks = [(name, scale(factor)) for name, factor in plan]
    if plan and plan[0][0].endswith("hook_pattern"):  # this thread caches as well as hooks
        with model.hooks(fwd_hooks):
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_post" in n)
        return logits, cache["resid_post", 1]
    return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks), None


def test_hooks_stay_in_the_thread_that_added_them(tiny, tokens):
    """4 threads x 20 runs on one model, each with its own hooks (one with none): every run equals its
    single-threaded reference and every hook call happens in the thread that added the hook."""
    import threading

    plans = _thread_plans(L)
    references = {name: _run_plan(tiny, tokens, plan, []) for name, plan in plans.items()}
    assert not torch.equal(references["resid"][0], references["none"][0])  # the hooks do change logits
    start = threading.Barrier(len(plans))
    wrong: list[str] = []
    calls: dict[str, list] = {name: [] for name in plans}
    idents: dict[str, int] = {}

    def work(name: str) -> None:
        idents[name] = threading.get_ident()
        start.wait()
        for run in range(20):
            logits, resid = _run_plan(tiny, tokens, plans[name], calls[name])
            expected_logits, expected_resid = references[name]
            if not torch.equal(logits, expected_logits):
                wrong.append(f"{name} run {run}: logits")
            if resid is not None and not torch.equal(resid, expected_resid):
                wrong.append(f"{name} run {run}: cache")

    threads = [threading.Thread(target=work, args=(name,)) for name in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    for name, plan in plans.items():
        assert len(calls[name]) == 20 * len(plan), name  # each hook once per run, none from elsewhere
        assert {ident for _, ident in calls[name]} <= {idents[name]}, f"{name}'s hooks ran in another thread"
    assert no_hooks_left(tiny)


def test_a_permanent_hook_is_seen_by_every_thread(tiny, tokens):
    import threading

    seen: list[int] = []
    handles = tiny.add_hook("blocks.0.hook_resid_post", lambda t, hook: seen.append(threading.get_ident()))
    try:
        thread = threading.Thread(target=tiny, args=(tokens,))
        thread.start()
        thread.join()
        tiny(tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [thread.ident, threading.get_ident()]
    assert no_hooks_left(tiny)


def test_context_hooks_run_after_module_hooks_and_reset_hooks_clears_both(tiny, tokens):
    order: list[str] = []
    handles = tiny.add_hook("hook_embed", lambda t, hook: order.append("permanent") or t * 2)
    try:
        with tiny.hooks([("hook_embed", lambda t, hook: order.append("context"))]):
            _, cache = tiny.run_with_cache(tokens, names_filter="hook_embed")
            assert tiny.hooked_names() == ["hook_embed"]
            tiny.reset_hooks()
            assert tiny.hooked_names() == []
        assert order == ["permanent", "context"]
        torch.testing.assert_close(cache["embed"], 2 * tiny.embed(tokens))  # the cache sees the change
    finally:
        for handle in handles:
            handle.remove()
    assert no_hooks_left(tiny)


def test_nested_hook_blocks_may_end_in_any_order(tiny, tokens):
    from contextlib import ExitStack

    outer = tiny.hooks([("hook_embed", lambda t, hook: None)])
    inner = tiny.hooks([("blocks.0.hook_resid_post", lambda t, hook: None)])
    with ExitStack() as stack:
        stack.enter_context(outer)
        stack.enter_context(inner)
        outer.__exit__(None, None, None)  # the outer block ends first: the inner one's hook stays
        assert tiny.hooked_names() == ["blocks.0.hook_resid_post"]
        stack.pop_all()
        inner.__exit__(None, None, None)
    assert no_hooks_left(tiny)


# ------------------------------------------------------------------------------- hook return values


def test_a_replacement_of_another_shape_names_the_hook_and_both_shapes(tiny, tokens):
    from llama3_lab.hook_points import HookReturnError

    def last_position_only(resid, hook):
        return resid[:, -1:]  # [B, 1, D]: would broadcast silently in resid_mid + mlp_out

    with pytest.raises(HookReturnError) as info:
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", last_position_only)])
    message = str(info.value)
    assert "<locals>.last_position_only' on blocks.1.hook_resid_mid" in message  # the function and the point
    assert "returned shape [2, 1, 48]" in message and "has shape [2, 9, 48] (B P D)" in message
    assert no_hooks_left(tiny)

    with pytest.raises(HookReturnError, match=r"returned shape \[2, 9, 80\].*\[2, 9, 48\]"):
        tiny.run_with_hooks(tokens, [("blocks.0.hook_mlp_out", lambda t, h: torch.zeros(2, 9, 80))])


def test_a_replacement_is_never_cast_nor_moved(tiny, tokens):
    from llama3_lab.hook_points import HookReturnError

    with pytest.raises(HookReturnError, match=r"dtype torch\.float64.*torch\.float32.*\.to\(tensor\.dtype\)"):
        tiny.run_with_hooks(tokens, [("blocks.0.attn.hook_z", lambda z, hook: z.double())])
    with pytest.raises(HookReturnError, match=r"returned a float, not a tensor.*or None"):
        tiny.run_with_hooks(tokens, [("blocks.0.attn.hook_z", lambda z, hook: 1.0)])
    with pytest.raises(HookReturnError, match=r"on meta.*on cpu.*\.to\(tensor\.device\)"):
        tiny.run_with_hooks(tokens, [("hook_embed", lambda t, hook: torch.empty_like(t, device="meta"))])
    assert no_hooks_left(tiny)


def test_permanent_and_plain_torch_hooks_are_checked_too(tiny, tokens):
    from llama3_lab.hook_points import HookReturnError

    handles = tiny.add_hook("blocks.0.hook_resid_post", lambda t, hook: t[:, :1])
    try:
        with pytest.raises(HookReturnError, match=r"<lambda>' on blocks\.0\.hook_resid_post.*\[2, 1, 48\]"):
            tiny(tokens)
    finally:
        for handle in handles:
            handle.remove()
    point = tiny.hook_dict["blocks.0.hook_resid_post"]
    handle = point.register_forward_hook(lambda module, args, out: out.half())
    try:
        with pytest.raises(HookReturnError, match=r"registered with register_forward_hook.*torch\.float16"):
            tiny(tokens)
    finally:
        handle.remove()
    assert no_hooks_left(tiny)


# -------------------------------------------------------------------------- filters selecting nothing


def test_a_filter_that_selects_nothing_raises_with_the_closest_names(tiny, tokens):
    with pytest.raises(HookNameError) as info:
        tiny.run_with_cache(tokens, names_filter=lambda name: "resid_psot" in name)
    assert "'resid_psot'" in str(info.value) and "false for every hook point" in str(info.value)
    assert info.value.suggestions[0] == "blocks.0.hook_resid_post"
    with pytest.raises(HookNameError, match=r"selects no hook point"):
        tiny.run_with_cache(tokens, names_filter=[])
    with pytest.raises(HookNameError, match=r"false for every hook point.*hook_pattern"):
        tiny.run_with_hooks(tokens, [(lambda n: n.endswith("hook_patern"), lambda t, h: None)])
    with pytest.raises(HookNameError, match=r"selects no hook point"):
        tiny.add_hook([], lambda t, h: None)
    assert no_hooks_left(tiny)
    assert tiny.run_with_hooks(tokens, fwd_hooks=[]).shape == (2, 9, 211)  # no hooks at all is fine


# ------------------------------------------------------------------- cleanup when a step is cut short


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_a_session_step_cut_short_leaves_no_hook(tiny, error):
    session = tiny.session([1, 5, 9], temperature=0)
    session.step(1)

    def explode(tensor, hook):
        raise error("stop")

    with pytest.raises(error), tiny.hooks([("blocks.1.mlp.hook_post", explode)]):
        session.step(1)
    assert no_hooks_left(tiny)
    assert len(session.step(1)) == 1  # and the session steps on


def test_the_fast_decoder_cut_short_leaves_no_hook(tiny):
    from llama3_lab.fast import FastDecoder, FastPathError, run_with_cache_offloaded

    decoder = FastDecoder(tiny, max_length=8, compile=None)
    with pytest.raises(FastPathError, match="hooks are registered"):
        with tiny.hooks([("hook_embed", lambda t, hook: None)]):
            decoder.generate_greedy([1, 2, 3], 4)
    assert no_hooks_left(tiny)
    with pytest.raises(FastPathError, match="cache is full"):
        decoder.prefill([1, 2, 3])
        for _ in range(8):
            decoder.step(4)
    assert no_hooks_left(tiny)
    with pytest.raises(Boom):
        with tiny.hooks([("blocks.0.hook_resid_post", lambda t, h: (_ for _ in ()).throw(Boom()))]):
            run_with_cache_offloaded(tiny, [1, 2, 3], names_filter="hook_embed")
    assert no_hooks_left(tiny)
