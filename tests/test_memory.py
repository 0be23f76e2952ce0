"""The cache memory estimate (exact, from the shape letters) and the one budget check."""

from __future__ import annotations

import psutil
import pytest
import torch
from hooked_tiny import no_hooks_left

from llama3_lab import allocator, memory
from llama3_lab.config import LlamaConfig
from llama3_lab.kv_cache import KVCache
from llama3_lab.memory import MemoryBudgetError
from llama3_lab.model import LlamaModel

pytest_plugins = ["hooked_tiny"]  # the fixtures tiny and tokens


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
    assert estimate == cache.nbytes
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
    assert model.estimate_cache_bytes(11) == cache.nbytes


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_estimate_is_exact_for_every_hook_point_in_every_dtype(model_dtype):
    """Per hook point, not only in total: float32 RoPE tables, norm scales at least float32 (float64 in
    a float64 model), everything else in the model's dtype; with a KV cache behind the new tokens."""
    from conftest import tiny_model

    model = tiny_model(seed=4, dtype=model_dtype)
    kv = KVCache.allocate(model, batch_size=2, max_length=16)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    model(ids[:, :3], cache=kv)
    estimate = memory.estimate_cache(model, model.hook_names(), n_positions=4, batch=2, past_length=3)
    _, cache = model.run_with_cache(ids[:, 3:], cache=kv)
    held = {name: tensor.nbytes for name, tensor in cache.items()}
    assert estimate.per_name == held
    kinds = {cache[name].dtype: name for name in cache.keys()}
    scale = cache["scale", 0, "ln1"].dtype
    assert scale == (torch.float64 if model_dtype == torch.float64 else torch.float32), kinds
    assert cache["rope.hook_cos"].dtype == torch.float32 and cache["resid_post", 1].dtype == model_dtype


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
    available = psutil.virtual_memory().available + allocator.kept_bytes()  # malloc's freed pages too
    assert 0.7 * available < memory.cache_budget(tiny, None, "cpu") <= 0.8 * available
    estimate = tiny.estimate_cache_bytes(tokens)
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: estimate)  # 80% of it is the budget
    with pytest.raises(MemoryBudgetError, match="over the budget"):
        tiny.run_with_cache(tokens)
    _, cache = tiny.run_with_cache(tokens, device="cpu", pos_slice=-1)
    assert cache.nbytes < 0.8 * estimate


@pytest.mark.slow
def test_smollm2_text_cache_and_estimate(smollm2):
    ids = smollm2.to_tokens("<|im_start|>The capital of France is", prepend_bos=True)  # chosen: BOS once
    assert ids[0, 0] == smollm2.tokenizer.bos_id and (ids[0, 1:] != smollm2.tokenizer.bos_id).all()
    names = lambda n: "resid" in n or "pattern" in n or "scale" in n  # noqa: E731
    estimate = smollm2.estimate_cache_bytes("The capital of France is", names)
    logits, cache = smollm2.run_with_cache("The capital of France is", names_filter=names)
    assert estimate == cache.nbytes
    assert cache.stack("resid_post").shape == (30, 1, ids.shape[1] - 1, 576)  # SmolLM2 adds no BOS itself
    assert cache.tokens.tolist() == smollm2.to_tokens("The capital of France is").tolist()


def test_the_offloaded_cache_checks_the_same_budget(tiny, tokens):
    from llama3_lab.fast import run_with_cache_offloaded

    estimate = tiny.estimate_cache_bytes(tokens)
    with pytest.raises(MemoryBudgetError, match="over the budget") as info:
        run_with_cache_offloaded(tiny, tokens, budget_bytes=estimate - 1)
    assert (info.value.estimate_bytes, info.value.budget_bytes) == (estimate, estimate - 1)
