"""The model's math against transformers' LlamaForCausalLM on the same weights, hooks included."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LLAMA3_SCALING, tiny_config, tiny_model, transformers_twin

from llama3_lab.config import LlamaConfig
from llama3_lab.kv_cache import KVCache
from llama3_lab.loading.layouts import meta_to_hf_qk
from llama3_lab.model import LlamaModel, apply_rotary, apply_rotary_complex, rope_inv_freq

HEADS = {"MHA": (8, 8), "GQA": (8, 2), "MQA": (8, 1)}


def tokens_for(cfg: LlamaConfig, batch: int = 2, length: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """max |Δ| ≤ rel · max |expected|: the float32 agreement of two implementations of the same math."""
    scale = expected.abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item()
    assert error <= rel * scale, f"max |Δ| = {error:.3g} > {rel} × scale {scale:.3g}"


def capture(model: LlamaModel, names: list[str], tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Run ``model`` with plain torch forward hooks on the given hook points; return logits and values."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.hook_dict[name].register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
        for name in names
    ]
    try:
        with torch.no_grad():
            logits = model(tokens)
    finally:
        for h in handles:
            h.remove()
    return logits, seen


# --------------------------------------------------------------------------------- parity with HF


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("scaling", [None, LLAMA3_SCALING], ids=["plain-rope", "llama3-rope"])
@pytest.mark.parametrize("heads", list(HEADS), ids=list(HEADS))
def test_logits_and_hooks_match_transformers(heads, scaling, tied):
    H, K = HEADS[heads]
    model = tiny_model(
        seed=3, num_attention_heads=H, num_key_value_heads=K, rope_scaling=scaling, tie_word_embeddings=tied
    )
    cfg = model.cfg
    hf = transformers_twin(model, attn="eager")
    tokens = tokens_for(cfg)  # 40 positions: past original_max_position_embeddings=32 of the scaled RoPE
    B, P = tokens.shape

    hf_seen: dict[str, torch.Tensor] = {}
    handles = []
    for l, layer in enumerate(hf.model.layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            module = getattr(layer.self_attn, proj)
            handles.append(
                module.register_forward_hook(lambda m, i, o, key=f"{l}.{proj}": hf_seen.__setitem__(key, o))
            )
        handles.append(
            layer.mlp.down_proj.register_forward_hook(
                lambda m, i, o, key=f"{l}.mlp_post": hf_seen.__setitem__(key, i[0])
            )
        )
    with torch.no_grad():
        out = hf(tokens, output_attentions=True, output_hidden_states=True)
    for h in handles:
        h.remove()

    model.attn_impl = "eager"
    names = [
        n
        for n in model.hook_names()
        if n.split(".")[-1]
        in {
            "hook_q",
            "hook_k",
            "hook_v",
            "hook_pattern",
            "hook_resid_pre",
            "hook_attn_out",
            "hook_post",
            "hook_resid_post",
        }
    ]
    logits, seen = capture(model, names, tokens)
    assert_close_to_scale(logits, out.logits)

    for l in range(cfg.num_hidden_layers):
        d = cfg.head_dim
        assert_close_to_scale(seen[f"blocks.{l}.attn.hook_q"], hf_seen[f"{l}.q_proj"].view(B, P, H, d))
        assert_close_to_scale(seen[f"blocks.{l}.attn.hook_k"], hf_seen[f"{l}.k_proj"].view(B, P, K, d))
        assert_close_to_scale(seen[f"blocks.{l}.attn.hook_v"], hf_seen[f"{l}.v_proj"].view(B, P, K, d))
        assert_close_to_scale(seen[f"blocks.{l}.attn.hook_pattern"], out.attentions[l])
        assert_close_to_scale(seen[f"blocks.{l}.hook_attn_out"], hf_seen[f"{l}.o_proj"])
        assert_close_to_scale(seen[f"blocks.{l}.mlp.hook_post"], hf_seen[f"{l}.mlp_post"])
        assert_close_to_scale(seen[f"blocks.{l}.hook_resid_pre"], out.hidden_states[l])
    # The pattern is causal and sums to one.
    pattern = seen["blocks.0.attn.hook_pattern"]
    assert torch.all(pattern.triu(1) == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(B, H, P))

    model.attn_impl = "sdpa"
    with torch.no_grad():
        assert_close_to_scale(model(tokens), logits)


def transformers_intermediates(hf, tokens: torch.Tensor, monkeypatch) -> dict[str, torch.Tensor]:
    """Every intermediate of transformers' forward that one of our hook points holds, under our names,
    taken from transformers' own modules: forward hooks on its projections, norms, MLP parts and layers,
    and its ``eager_attention_forward`` (rotated q/k, the scaled scores before the mask, the pattern,
    the per-head output). Norm scales are sqrt(mean(x²) + eps) of transformers' norm inputs, and the
    normalized vectors its norm outputs divided by the norm weight."""
    from transformers.models.llama import modeling_llama

    cfg, seen, handles = hf.config, {}, []
    B, P = tokens.shape
    H, K, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def keep(module, key, what="out", view=None):
        def hook(_module, args, out):
            tensor = args[0] if what == "in" else out
            seen[key] = tensor if view is None else tensor.reshape(view)

        handles.append(module.register_forward_hook(hook))

    def keep_norm(norm, prefix):
        def hook(module, args, out):
            x = args[0].float()
            seen[f"{prefix}.hook_scale"] = torch.sqrt(
                x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon
            )
            seen[f"{prefix}.hook_normalized"] = out / module.weight
            seen[f"{prefix}.hook_out"] = out

        handles.append(norm.register_forward_hook(hook))

    keep(hf.model.embed_tokens, "hook_embed")
    rope_handle = hf.model.rotary_emb.register_forward_hook(
        lambda m, args, out: seen.update({"rope.hook_cos": out[0][0], "rope.hook_sin": out[1][0]})
    )
    handles.append(rope_handle)
    for l, layer in enumerate(hf.model.layers):
        block = f"blocks.{l}"
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, args, key=f"{block}.hook_resid_pre": seen.__setitem__(key, args[0])
            )
        )
        keep(layer, f"{block}.hook_resid_post")
        keep_norm(layer.input_layernorm, f"{block}.ln1")
        keep_norm(layer.post_attention_layernorm, f"{block}.ln2")
        keep(layer.post_attention_layernorm, f"{block}.hook_resid_mid", what="in")
        keep(layer.self_attn.q_proj, f"{block}.attn.hook_q", view=(B, P, H, d))
        keep(layer.self_attn.k_proj, f"{block}.attn.hook_k", view=(B, P, K, d))
        keep(layer.self_attn.v_proj, f"{block}.attn.hook_v", view=(B, P, K, d))
        keep(layer.self_attn.o_proj, f"{block}.attn.hook_z", what="in", view=(B, P, H, d))
        keep(layer.self_attn.o_proj, f"{block}.hook_attn_out")
        keep(layer.mlp.gate_proj, f"{block}.mlp.hook_pre")
        keep(layer.mlp.up_proj, f"{block}.mlp.hook_pre_linear")
        keep(layer.mlp.act_fn, f"{block}.mlp.silu_gate")  # not a hook of ours: checks post = silu(gate)·up
        keep(layer.mlp.down_proj, f"{block}.mlp.hook_post", what="in")
        keep(layer.mlp, f"{block}.hook_mlp_out")
    keep_norm(hf.model.norm, "ln_final")

    original = modeling_llama.eager_attention_forward

    def eager_attention(module, query, key, value, attention_mask, scaling, **kwargs):
        block = f"blocks.{module.layer_idx}.attn"
        keys = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        seen[f"{block}.hook_rot_q"] = query.transpose(1, 2)  # b h p d -> b p h d
        seen[f"{block}.hook_rot_k"] = key.transpose(1, 2)
        seen[f"{block}.hook_attn_scores"] = torch.matmul(query, keys.transpose(2, 3)) * scaling
        out, weights = original(module, query, key, value, attention_mask, scaling, **kwargs)
        seen[f"{block}.hook_pattern"], seen[f"{block}.attn.z_eager"] = weights, out
        return out, weights

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", eager_attention)
    try:
        with torch.no_grad():
            seen["unembed.hook_out"] = hf(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
        monkeypatch.undo()
    return seen


def hook_mismatches(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], rel: float = 1e-5
) -> dict:
    """``{name: max |Δ| / scale}`` for every hook of ours that differs from transformers' beyond float32
    round-off (scores: where the causal mask lets a key through; above it ours must be −inf)."""
    bad = {}
    for name, tensor in ours.items():
        expected = theirs[name]
        if name.endswith("hook_attn_scores"):
            visible = torch.ones(tensor.shape[-2:], dtype=torch.bool).tril()
            if not torch.all(tensor[..., ~visible] == float("-inf")):
                bad[name] = float("inf")
            tensor, expected = tensor[..., visible], expected[..., visible]
        if tensor.shape != expected.shape:
            bad[name] = float("nan")
            continue
        error = (tensor.double() - expected.double()).abs().max().item() / expected.abs().max().item()
        if not error <= rel:
            bad[name] = error
    return bad


def _with_random_norm_weights(model: LlamaModel) -> LlamaModel:
    """Norm weights away from 1, so that ``normalized`` (before the weight) and ``out`` differ."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                weight.copy_(1 + 0.5 * torch.randn(weight.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def every_hook_and_transformers():
    """Our cache of every hook point and transformers' intermediates, on the same weights and tokens."""
    model = _with_random_norm_weights(tiny_model(seed=8, num_hidden_layers=3, rope_scaling=LLAMA3_SCALING))
    hf = transformers_twin(model, attn="eager")
    tokens = tokens_for(model.cfg, length=36)
    with pytest.MonkeyPatch.context() as monkeypatch:
        theirs = transformers_intermediates(hf, tokens, monkeypatch)
    _, cache = model.run_with_cache(tokens)
    return model, dict(cache.items()), theirs


def test_every_hook_matches_transformers_intermediates(every_hook_and_transformers):
    model, ours, theirs = every_hook_and_transformers
    assert sorted(ours) == sorted(model.hook_names()) and set(ours) <= set(theirs)  # every hook compared
    assert hook_mismatches(ours, theirs) == {}
    for l in range(model.cfg.num_hidden_layers):  # transformers' own pieces agree with each other too
        mlp, attn = f"blocks.{l}.mlp", f"blocks.{l}.attn"
        torch.testing.assert_close(
            theirs[f"{mlp}.hook_post"], theirs[f"{mlp}.silu_gate"] * theirs[f"{mlp}.hook_pre_linear"]
        )
        torch.testing.assert_close(theirs[f"{attn}.hook_z"], theirs[f"{attn}.attn.z_eager"])


def test_the_comparison_catches_swapped_gate_and_up_and_a_missing_scale(every_hook_and_transformers):
    """The mistakes a mutation run slipped past the older, partial comparison."""
    model, ours, theirs = every_hook_and_transformers
    swapped = dict(ours)
    swapped["blocks.0.mlp.hook_pre"], swapped["blocks.0.mlp.hook_pre_linear"] = (
        ours["blocks.0.mlp.hook_pre_linear"],
        ours["blocks.0.mlp.hook_pre"],
    )
    swapped["blocks.1.attn.hook_attn_scores"] = ours["blocks.1.attn.hook_attn_scores"] * math.sqrt(
        model.cfg.head_dim
    )
    swapped["blocks.2.ln2.hook_normalized"] = ours["blocks.2.ln2.hook_out"]  # after the weight, not before
    assert set(hook_mismatches(swapped, theirs)) == {
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_pre_linear",
        "blocks.1.attn.hook_attn_scores",
        "blocks.2.ln2.hook_normalized",
    }


def test_rope_tables_are_transformers_bit_for_bit():
    import transformers

    for scaling in (None, LLAMA3_SCALING):
        cfg = tiny_config(rope_scaling=scaling)
        hf = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(
            transformers.LlamaConfig(**cfg.to_dict())
        )
        assert torch.equal(rope_inv_freq(cfg), hf.inv_freq)
        x = torch.zeros(1, 50, 1)
        hf_cos, hf_sin = hf(x, torch.arange(50)[None])
        model = LlamaModel.from_config(cfg, device="cpu")
        cos, sin = model.rope(0, 50)
        assert torch.equal(cos, hf_cos[0]) and torch.equal(sin, hf_sin[0])
        later_cos, _ = model.rope(37, 5)  # a later window is a slice of the same table
        assert torch.equal(later_cos, hf_cos[0, 37:42])


def test_llama31_scaling_figures():
    """REFERENCE §3: 128-dim heads, θ=5e5, factor 8: pairs 0-28 kept, 29-34 smoothed, 35-63 divided by 8."""
    scaling = dict(LLAMA3_SCALING, original_max_position_embeddings=8192)
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, rope_scaling=scaling)
    plain = rope_inv_freq(LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0))
    ratio = rope_inv_freq(cfg) / plain
    assert torch.all(ratio[:29] == 1)
    expected = torch.tensor([0.8282, 0.6437, 0.4935, 0.3711, 0.2714, 0.1902])
    torch.testing.assert_close(ratio[29:35], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(ratio[35:], torch.full((29,), 1 / 8))
    assert rope_inv_freq(cfg).dtype == torch.float32


def test_meta_complex_rotation_equals_rotate_half_on_permuted_weights():
    """The two RoPE conventions give the same scores once q/k rows are permuted (and differ if not)."""
    H, d, D, P = 4, 16, 32, 12
    cfg = tiny_config(num_attention_heads=H, head_dim=d, hidden_size=D)
    inv_freq = rope_inv_freq(cfg)
    g = torch.Generator().manual_seed(0)
    wq_meta, wk_meta = torch.randn(H * d, D, generator=g), torch.randn(H * d, D, generator=g)
    x = torch.randn(1, P, D, generator=g)
    positions = torch.arange(P)

    def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bphd,bthd->bhpt", q, k)

    meta = scores(
        apply_rotary_complex((x @ wq_meta.T).view(1, P, H, d), positions, inv_freq),
        apply_rotary_complex((x @ wk_meta.T).view(1, P, H, d), positions, inv_freq),
    )
    model = LlamaModel.from_config(cfg, device="cpu")
    cos, sin = model.rope(0, P)
    wq_hf, wk_hf = meta_to_hf_qk(wq_meta, H), meta_to_hf_qk(wk_meta, H)
    hf = scores(
        apply_rotary((x @ wq_hf.T).view(1, P, H, d), cos, sin),
        apply_rotary((x @ wk_hf.T).view(1, P, H, d), cos, sin),
    )
    torch.testing.assert_close(hf, meta, atol=1e-4, rtol=1e-5)
    wrong = scores(
        apply_rotary((x @ wq_meta.T).view(1, P, H, d), cos, sin),
        apply_rotary((x @ wk_meta.T).view(1, P, H, d), cos, sin),
    )
    diagonal = torch.arange(P)
    torch.testing.assert_close(
        wrong[..., diagonal, diagonal], meta[..., diagonal, diagonal], atol=1e-4, rtol=1e-5
    )
    assert not torch.allclose(wrong, meta, atol=1e-2)  # the classic bug hides at distance 0 only


def test_bf16_is_as_close_to_float64_as_transformers_bf16():
    """In bf16, judge by the distance to a float64 reference, not by equality with another bf16 run."""
    model = tiny_model(
        seed=5, hidden_size=128, intermediate_size=256, num_hidden_layers=4, initializer_range=0.06
    )
    tokens = tokens_for(model.cfg, length=48)
    with torch.no_grad():
        reference = transformers_twin(model, dtype=torch.float64)(tokens).logits
        hf_bf16 = transformers_twin(model, dtype=torch.bfloat16)(tokens).logits
        ours_bf16 = model.to(torch.bfloat16)(tokens)
        ours_bf16_eager = ours_bf16
        model.attn_impl = "eager"
        ours_bf16_eager = model(tokens)
    hf_error = (hf_bf16.double() - reference).abs()
    for ours in (ours_bf16, ours_bf16_eager):
        error = (ours.double() - reference).abs()
        assert error.max() <= 1.25 * hf_error.max(), (error.max(), hf_error.max())
        assert error.mean() <= 1.25 * hf_error.mean(), (error.mean(), hf_error.mean())
    assert model.rope.inv_freq.dtype == torch.float32  # .to(bf16) must not round the RoPE table


# ---------------------------------------------------------------------------------------- KV cache


def test_logits_to_keep_is_transformers_and_the_last_rows_of_every_position():
    """``logits_to_keep=n`` (what every prefill of generate, Session and the fast decoder uses): the last n
    positions' logits, transformers' with the same argument (to float32 rounding: a product of n rows may sum
    in another order than one of every row, in both), the final norm's hooks seeing n."""
    model = tiny_model(seed=5)
    hf = transformers_twin(model, attn="eager")
    tokens = tokens_for(model.cfg, length=12)
    with torch.no_grad():
        every = model(tokens)
        for n in (1, 3):
            kept = model(tokens, logits_to_keep=n)
            assert kept.shape == (*tokens.shape[:1], n, model.cfg.vocab_size)
            assert_close_to_scale(kept, hf(tokens, logits_to_keep=n).logits)
            assert_close_to_scale(kept, every[:, -n:])
        _, cache = model.run_with_cache(tokens, logits_to_keep=1)
    assert cache["ln_final.hook_normalized"].shape[1] == 1
    assert cache["blocks.0.hook_resid_post"].shape[1] == tokens.shape[1]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(tokens, logits_to_keep=bad)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("heads", ["GQA", "MQA"])
def test_cached_decoding_matches_full_forward(impl, heads):
    H, K = HEADS[heads]
    model = tiny_model(seed=1, num_attention_heads=H, num_key_value_heads=K, rope_scaling=LLAMA3_SCALING)
    model.attn_impl = impl
    tokens = tokens_for(model.cfg, length=20)
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.allocate(model, batch_size=2, max_length=24)
        steps = [model(tokens[:, :7], cache=cache)]  # prefill
        steps.append(model(tokens[:, 7:11], cache=cache))  # a chunk at an offset: needs the shifted mask
        steps += [model(tokens[:, p : p + 1], cache=cache) for p in range(11, 20)]  # one token at a time
    assert cache.length == 20
    assert_close_to_scale(torch.cat(steps, dim=1), full)
    # The cache holds the keys after RoPE, head-major.
    _, seen = capture(model, ["blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_v"], tokens)
    assert_close_to_scale(cache.layer_keys(1), seen["blocks.1.attn.hook_rot_k"].transpose(1, 2))
    assert_close_to_scale(cache.layer_values(1), seen["blocks.1.attn.hook_v"].transpose(1, 2))


def test_cache_rewind_clone_and_repr():
    model = tiny_model()
    tokens = tokens_for(model.cfg, batch=1, length=10)
    cache = KVCache.allocate(model, max_length=16)
    with torch.no_grad():
        model(tokens[:, :8], cache=cache)
        branch = cache.clone()
        first = model(tokens[:, 8:10], cache=cache)
        cache.rewind(2)
        again = model(tokens[:, 8:10], cache=cache)  # overwrites the rewound slots
        from_branch = model(tokens[:, 8:10], cache=branch)
        cache.truncate(3)
        assert cache.layer_keys(0).shape == (1, 2, 3, 16)
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(from_branch, first)
    assert branch.keys[0].data_ptr() != cache.keys[0].data_ptr()
    assert cache.nbytes == 2 * 2 * (1 * 2 * 16 * 16) * 4  # layers × (keys, values) × B K T d × float32
    text = repr(cache)
    assert "length=3/16" in text and "kv_heads=2" in text and "float32" in text
    with pytest.raises(ValueError, match="cannot rewind 4"):
        cache.rewind(4)


def test_cache_errors_say_what_to_do():
    model = tiny_model()
    cache = KVCache.allocate(model, batch_size=1, max_length=8)
    with pytest.raises(ValueError, match="batch 1.*batch 2"):
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="holds 8 positions.*larger cache"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="truncate"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache, start_pos=2)
    wrong_dtype = KVCache.allocate(model.cfg, max_length=8, dtype=torch.float64)
    with pytest.raises(ValueError, match="KVCache.allocate\\(model"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=wrong_dtype)


# ---------------------------------------------------------------------------------------- hooks


def test_rmsnorm_hooks_are_the_rms_the_normalized_vector_and_the_output():
    model = tiny_model()
    tokens = tokens_for(model.cfg, length=6)
    names = [
        "blocks.0.hook_resid_pre",
        "blocks.0.ln1.hook_scale",
        "blocks.0.ln1.hook_normalized",
        "blocks.0.ln1.hook_out",
    ]
    with torch.no_grad():
        model.blocks[0].ln1.weight.uniform_(0.5, 1.5)
    _, seen = capture(model, names, tokens)
    x = seen["blocks.0.hook_resid_pre"]
    rms = seen["blocks.0.ln1.hook_scale"]
    assert rms.shape == (2, 6, 1) and rms.dtype == torch.float32
    torch.testing.assert_close(rms, (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt())
    torch.testing.assert_close(seen["blocks.0.ln1.hook_normalized"], x / rms)
    torch.testing.assert_close(seen["blocks.0.ln1.hook_out"], x / rms * model.blocks[0].ln1.weight)


def test_hooks_can_edit_and_pattern_hooks_force_the_eager_path(monkeypatch):
    model = tiny_model()
    tokens = tokens_for(model.cfg, length=6)
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real_sdpa(*a, **k)
    )
    with torch.no_grad():
        plain = model(tokens)
        assert len(calls) == model.cfg.num_hidden_layers  # fused kernel when nothing looks at the pattern
        calls.clear()
        uniform = lambda m, i, pattern: torch.tril(torch.ones_like(pattern)) / torch.arange(1, 7)[:, None]
        handle = model.blocks[1].attn.hook_pattern.register_forward_hook(uniform)
        edited = model(tokens)
        handle.remove()
    assert len(calls) == 1  # layer 0 stays fused, layer 1 runs eager so its pattern can be edited
    assert not torch.allclose(edited, plain, atol=1e-4)
    with torch.no_grad():
        handle = model.blocks[1].ln2.hook_scale.register_forward_hook(lambda m, i, rms: rms * 2)
        halved = model(tokens)
        handle.remove()
    assert not torch.allclose(halved, plain, atol=1e-4)


def test_unused_hook_points_are_never_called(monkeypatch):
    from llama3_lab.hook_points import HookPoint

    calls = []
    monkeypatch.setattr(HookPoint, "forward", lambda self, x: calls.append(self.name) or x)
    model = tiny_model()
    with torch.no_grad():
        model(torch.zeros(1, 3, dtype=torch.long))
        assert calls == []
        handle = model.blocks[0].hook_resid_mid.register_forward_hook(lambda m, i, o: None)
        model(torch.zeros(1, 3, dtype=torch.long))
        handle.remove()
    assert calls == ["blocks.0.hook_resid_mid"]


def test_hook_catalogue_lists_every_hook_with_shape_and_meaning():
    model = tiny_model()
    catalogue = model.hook_catalogue()
    assert [row.name for row in catalogue] == model.hook_names()
    assert (
        len(catalogue) == 3 + 22 * model.cfg.num_hidden_layers + 4
    )  # embed+rope, per block, ln_final+unembed
    row = next(r for r in catalogue if r.name == "blocks.1.attn.hook_pattern")
    assert row.shape == "B H Pq Pk" and "softmax" in row.meaning
    name, shape, meaning = catalogue[0]
    assert (name, shape) == ("hook_embed", "B P D")
    assert "| `blocks.0.attn.hook_rot_q` | B P H d |" in catalogue.to_markdown()
    assert "<code>ln_final.hook_scale</code>" in catalogue._repr_html_()
    assert "unembed.hook_out" in repr(catalogue)


# --------------------------------------------------------------------------------- inputs, errors


def test_tokens_as_one_sequence_or_a_list_and_clear_errors():
    model = tiny_model()
    with torch.no_grad():
        one = model(torch.tensor([5, 6, 7]))
        assert one.shape == (1, 3, model.cfg.vocab_size)
        torch.testing.assert_close(model([5, 6, 7]), one)
    with pytest.raises(ValueError, match="token id 97 is outside this model's vocabulary 0..96"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(
        ValueError, match=r"prompt too long for the context.*65 tokens.*max_position_embeddings = 64"
    ):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_impl"):
        model.attn_impl = "flash"


def test_no_context_sized_buffers_and_the_whole_context_is_usable():
    cfg = tiny_config(max_position_embeddings=1_000_000, num_hidden_layers=1)
    model = LlamaModel.from_config(cfg, device="cpu")
    assert sum(b.numel() for b in model.buffers()) < 1000
    with torch.no_grad():
        logits = model(torch.zeros(1, 4, dtype=torch.long), start_pos=999_990)  # far positions are fine
    assert logits.shape == (1, 4, cfg.vocab_size) and torch.isfinite(logits).all()


def test_from_config_is_deterministic_tied_and_initialised_as_documented():
    a, b = tiny_model(seed=7, tie_word_embeddings=True), tiny_model(seed=7, tie_word_embeddings=True)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    assert a.unembed.weight is a.embed.weight
    assert "unembed.weight" not in dict(a.named_parameters())
    assert torch.all(a.blocks[0].ln1.weight == 1)
    std = a.blocks[0].mlp.up_proj.weight.std().item()
    assert math.isclose(std, a.cfg.initializer_range, rel_tol=0.05)
    assert not torch.equal(tiny_model(seed=8).embed.weight, a.embed.weight)
    assert a.device == torch.device("cpu") and a.dtype == torch.float32 and a.tokenizer is None


def test_cpu_weights_are_column_major_and_the_fused_norm_is_exact():
    model = tiny_model()
    weight = model.blocks[0].mlp.up_proj.weight
    assert weight.shape == (112, 64) and weight.stride() == (1, 112)  # column-major storage, same shape
    tokens = tokens_for(model.cfg, length=9)
    with torch.no_grad():
        fused = model(tokens)
        norms = [name for name in model.hook_names() if name.endswith("hook_scale")]  # forces the manual path
        handles = [model.hook_dict[name].register_forward_hook(lambda m, i, o: None) for name in norms]
        manual = model(tokens)
        for h in handles:
            h.remove()
    assert torch.equal(fused, manual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("queries_at", "keys"), [(1, 9), (7, 7), (5, 12)], ids=["step", "prompt", "chunk"])
@pytest.mark.parametrize("heads", [(8, 2), (8, 8), (8, 1)], ids=["gqa", "mha", "mqa"])
def test_the_eager_attention_is_the_einsum_of_its_equations_to_the_bit(heads, queries_at, keys, dtype):
    """``Attention._eager`` (what every pattern hook sees) is written with views and matmul for speed;
    it must be the plain einsum of the equations, scores = q·kᵀ/√d masked, pattern = softmax (float32),
    z = pattern·v, bit for bit, with the causal mask and with a padding mask."""
    H, K = heads
    model = tiny_model(seed=1, num_attention_heads=H, num_key_value_heads=K, dtype=dtype)
    attn, d = model.blocks[0].attn, model.cfg.head_dim
    P, T, start = queries_at, keys, keys - queries_at
    generator = torch.Generator().manual_seed(P * T)
    queries = torch.randn(2, P, H, d, generator=generator).to(dtype).transpose(1, 2)  # b p h d -> b h p d
    k = torch.randn(2, K, T, d, generator=generator).to(dtype)
    v = torch.randn(2, K, T, d, generator=generator).to(dtype)
    causal = torch.arange(T)[None, :] <= torch.arange(start, T)[:, None]  # [P T]
    padding = causal & (torch.rand(2, 1, T, generator=generator) > 0.3)  # [B P T]
    padding[..., 0] = True
    for mask in (None, padding):
        seen = {}
        with model.hooks(
            [(attn.hook_pattern.name, lambda x, hook, seen=seen: seen.setdefault("pattern", x))]
        ):
            z = attn._eager(queries, k, v, start, mask)
        grouped = queries.reshape(2, K, H // K, P, d)  # b (k g) p d -> b k g p d
        scores = torch.einsum("bkgpd,bktd->bkgpt", grouped, k) * attn.scale
        visible = causal if mask is None else mask[:, None, None]
        scores = scores.masked_fill(~visible, float("-inf")).reshape(2, H, P, T)
        pattern = scores.softmax(dim=-1, dtype=torch.float32).to(dtype)
        expected = torch.einsum("bkgpt,bktd->bpkgd", pattern.reshape(2, K, H // K, P, T), v)
        assert torch.equal(seen["pattern"], pattern)
        assert torch.equal(z, expected.reshape(2, P, H, d))
