"""Hooks, the activation cache and its memory budget, on a tiny random Llama (and on SmolLM2 for text)."""

from __future__ import annotations

import gc
import re
import weakref

import psutil
import pytest
import torch

from llama3_lab import hooks
from llama3_lab.config import LlamaConfig
from llama3_lab.hooks import (
    ActivationCache,
    HookNameError,
    MemoryBudgetError,
    get_act_name,
)
from llama3_lab.kv_cache import KVCache
from llama3_lab.model import LlamaModel

L = 3


@pytest.fixture(scope="module")
def tiny() -> LlamaModel:
    cfg = LlamaConfig(
        vocab_size=211,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=L,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaModel.from_config(cfg, seed=1, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 211, (2, 9), generator=torch.Generator().manual_seed(0))


def no_hooks_left(model: LlamaModel) -> bool:
    return all(
        not point._forward_hooks and not point._forward_pre_hooks for point in model.hook_dict.values()
    )


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


@pytest.mark.parametrize(
    "args, full",
    [
        (("pattern", 3), "blocks.3.attn.hook_pattern"),
        (("resid_post", 0), "blocks.0.hook_resid_post"),
        (("resid_pre", 2), "blocks.2.hook_resid_pre"),
        (("rot_k", 1), "blocks.1.attn.hook_rot_k"),
        (("pre_linear", 1), "blocks.1.mlp.hook_pre_linear"),
        (("post", 4), "blocks.4.mlp.hook_post"),
        (("mlp_out", 4), "blocks.4.hook_mlp_out"),
        (("scale", 3, "ln1"), "blocks.3.ln1.hook_scale"),
        (("normalized", 3, "ln2"), "blocks.3.ln2.hook_normalized"),
        (("scale",), "ln_final.hook_scale"),
        (("embed",), "hook_embed"),
        (("logits",), "unembed.hook_out"),
        (("blocks.0.hook_resid_post",), "blocks.0.hook_resid_post"),
    ],
)
def test_get_act_name(args, full):
    assert get_act_name(*args) == full


def test_get_act_name_asks_what_is_missing():
    with pytest.raises(ValueError, match=r"\('scale', 3, 'ln1'\)"):
        get_act_name("scale", 3)
    with pytest.raises(ValueError, match="give the layer"):
        get_act_name("pattern")
    with pytest.raises(HookNameError, match="'pattern'"):
        get_act_name("patern", 2)


def test_unknown_names_suggest_the_closest(tiny, tokens):
    with pytest.raises(HookNameError) as info:
        tiny.run_with_cache(tokens, names_filter=["blocks.2.hook_pattern"])
    assert info.value.suggestions[0] == "blocks.2.attn.hook_pattern"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "blocks.2.attn.hook_pattern" in str(info.value) and not str(info.value).startswith('"')

    with pytest.raises(HookNameError) as info:
        tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_rotq", lambda t, hook: None)])
    assert "blocks.1.attn.hook_rot_q" in info.value.suggestions

    with pytest.raises(HookNameError, match=re.escape("cache['pattern', layer]")):
        tiny.run_with_cache(tokens, names_filter="pattern")
    assert no_hooks_left(tiny)


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


def test_cache_shapes_follow_the_catalogue(tiny, tokens):
    _, cache = tiny.run_with_cache(tokens)
    cfg = tiny.cfg
    sizes = {"B": 2, "P": 9, "Pq": 9, "Pk": 9, "H": 6, "K": 2, "d": cfg.head_dim, "D": 48, "M": 80, "V": 211}
    for name, tensor in cache.items():
        expected = tuple(sizes.get(a, 1) for a in tiny.hook_dict[name].shape.split())
        assert tuple(tensor.shape) == expected, name
    assert cache["scale", 0, "ln1"].dtype == torch.float32


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


# ---------------------------------------------------------------------------------------- hooks


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


# ---------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "names_filter, pos_slice",
    [
        (None, None),
        (lambda n: "pattern" in n or "scale" in n, None),
        (["blocks.0.attn.hook_rot_q", "rope.hook_cos", "unembed.hook_out"], None),
        (None, -1),
        (lambda n: "resid" in n, slice(2, 7)),
    ],
)
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_estimate_matches_what_the_cache_holds(tiny, tokens, names_filter, pos_slice, dtype):
    estimate = tiny.estimate_cache_bytes(tokens, names_filter, dtype=dtype, pos_slice=pos_slice)
    _, cache = tiny.run_with_cache(tokens, names_filter, dtype=dtype, pos_slice=pos_slice)
    assert abs(estimate - cache.nbytes) <= 0.05 * cache.nbytes
    assert estimate == tiny.estimate_cache_bytes(9, names_filter, batch=2, dtype=dtype, pos_slice=pos_slice)


def test_estimate_in_a_bf16_model_counts_float32_scales():
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaModel.from_config(cfg, device="cpu", dtype=torch.bfloat16)
    ids = torch.arange(11)[None]
    _, cache = model.run_with_cache(ids)
    assert cache["scale", 0, "ln1"].dtype == torch.float32 and cache["resid_post", 0].dtype == torch.bfloat16
    assert abs(model.estimate_cache_bytes(11) - cache.nbytes) <= 0.05 * cache.nbytes


def test_budget_refuses_and_explains(tiny, tokens):
    estimate = tiny.estimate_cache_bytes(tokens)
    with pytest.raises(MemoryBudgetError) as info:
        tiny.run_with_cache(tokens, budget_bytes=estimate - 1)
    message = str(info.value)
    assert info.value.estimate_bytes == estimate and info.value.budget_bytes == estimate - 1
    for way_out in ("names_filter", "device='cpu'", "pos_slice", "shorter prompt", "budget_bytes"):
        assert way_out in message
    assert "blocks.*.mlp.hook_pre" in message  # the biggest contributors are named (M is the widest axis)
    assert isinstance(info.value, MemoryError)
    assert no_hooks_left(tiny)
    _, cache = tiny.run_with_cache(tokens, budget_bytes=estimate)  # exactly at the budget is fine
    assert cache.nbytes == estimate

    tiny.cache_budget_bytes = 4000
    try:
        with pytest.raises(MemoryBudgetError):
            tiny.run_with_cache(tokens)
        tiny.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")  # 2·9·48·4 = 3456 bytes fit
    finally:
        tiny.cache_budget_bytes = None


def test_default_budget_is_free_memory_on_the_target_device(tiny, tokens, monkeypatch):
    available = psutil.virtual_memory().available
    assert 0.7 * available < tiny._budget(None, torch.device("cpu")) <= 0.8 * available
    estimate = tiny.estimate_cache_bytes(tokens)
    monkeypatch.setattr(hooks, "free_memory_bytes", lambda device: estimate)  # 80% of it is the budget
    with pytest.raises(MemoryBudgetError, match="over the budget"):
        tiny.run_with_cache(tokens)
    _, cache = tiny.run_with_cache(tokens, device="cpu", pos_slice=-1)
    assert cache.nbytes < 0.8 * estimate


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


# ------------------------------------------------------------------------------------ text tokens


@pytest.fixture(scope="module")
def llama3_tokenizer():
    from llama3_lab import load_tokenizer

    return load_tokenizer("llama3")


def test_text_gets_exactly_one_bos(tiny, llama3_tokenizer):
    model = LlamaModel(tiny.cfg, tokenizer=llama3_tokenizer)  # to_tokens never runs the model
    expected = [128000, 2028, 374, 264, 1296, 11914, 13]
    assert model.to_tokens("This is a test sentence.").tolist() == [expected]
    assert model.to_tokens("<|begin_of_text|>This is a test sentence.").tolist() == [expected]
    assert model.to_tokens("This is a test sentence.", prepend_bos=False).tolist() == [expected[1:]]
    # other special-token text stays plain text, as the tokenizer does
    assert model.to_tokens("<|eot_id|>").tolist() == [[128000, 27, 91, 68, 354, 851, 91, 29]]
    # ids are used as given, whatever they start with
    assert model.to_tokens([9906, 11]).tolist() == [[9906, 11]]
    assert model.to_tokens(torch.tensor([128000, 9906])).tolist() == [[128000, 9906]]
    assert model.to_tokens(["Hello, world!", "This is a test"]).shape == (2, 5)
    with pytest.raises(ValueError, match="different lengths"):
        model.to_tokens(["Hello", "This is a test"])
    assert model.to_str_tokens("Hello, world!") == ["<|begin_of_text|>", "Hello", ",", " world", "!"]
    assert model.to_str_tokens(torch.tensor([[9906, 11], [1917, 0]])) == [["Hello", ","], [" world", "!"]]
    assert model.to_str_tokens([9906, 11]) == ["Hello", ","]
    assert model.to_str_tokens(["Hello, world!"]) == [["<|begin_of_text|>", "Hello", ",", " world", "!"]]


def test_text_without_a_tokenizer_says_how_to_fix_it(tiny):
    with pytest.raises(ValueError, match="model.tokenizer"):
        tiny.run_with_cache("Hello")


@pytest.mark.slow
def test_smollm2_text_cache_and_estimate(smollm2):
    ids = smollm2.to_tokens("<|im_start|>The capital of France is")
    assert ids[0, 0] == smollm2.tokenizer.bos_id and (ids[0, 1:] != smollm2.tokenizer.bos_id).all()
    names = lambda n: "resid" in n or "pattern" in n or "scale" in n  # noqa: E731
    estimate = smollm2.estimate_cache_bytes("The capital of France is", names)
    logits, cache = smollm2.run_with_cache("The capital of France is", names_filter=names)
    assert abs(estimate - cache.nbytes) <= 0.05 * cache.nbytes
    assert cache.stack("resid_post").shape == (30, 1, ids.shape[1], 576)
    assert cache.tokens.tolist() == smollm2.to_tokens("The capital of France is").tolist()
