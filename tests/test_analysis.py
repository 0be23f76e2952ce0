"""The interpretability toolkit against hand computations on a tiny random Llama, and on SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from llama3_lab.activation_cache import ActivationCache
from llama3_lab.analysis import (
    ablate_heads,
    ablate_mlps,
    accumulated_resid,
    attention_entropy,
    attention_sink_scores,
    decompose_resid,
    direct_logit_attribution,
    head_logit_attribution,
    head_outputs,
    induction_head_scores,
    induction_scores,
    logit_diff_metric,
    logit_lens,
    mean_activations,
    patch_head_z,
    patch_resid,
    previous_token_scores,
    repeated_random_tokens,
    steering,
    steering_vector,
    top_k_tokens,
)
from llama3_lab.generation import generate_tokens

L = 3


@pytest.fixture(scope="module")
def model():
    from conftest import tiny_model

    return tiny_model(seed=3, num_hidden_layers=L, initializer_range=0.3)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def run(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)


def rms_norm_by_hand(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


# ----------------------------------------------------------------------------------- residual stream


def test_logit_lens_recomputes_the_norm_per_layer(model, run):
    logits, cache = run
    lens = logit_lens(model, cache)
    assert lens.shape == (L, 2, 8, 97)
    torch.testing.assert_close(lens[-1], logits, rtol=1e-5, atol=1e-5)
    w_u, w = model.unembed.weight, model.ln_final.weight
    for layer in range(L):
        by_hand = rms_norm_by_hand(cache["resid_post", layer], w, model.cfg.rms_norm_eps) @ w_u.T
        torch.testing.assert_close(lens[layer], by_hand, rtol=1e-5, atol=1e-5)
    # the classic bug, reusing the final layer's cached scale, would give something else
    wrong = (cache["resid_post", 0] / cache["ln_final.hook_scale"] * w) @ w_u.T
    assert (wrong - lens[0]).abs().max() > 1e-2
    torch.testing.assert_close(logit_lens(model, cache, pos=-1), lens[:, :, -1:])


def test_accumulated_and_decomposed_resid(run):
    _, cache = run
    acc, labels = accumulated_resid(cache)
    assert acc.shape == (L + 1, 2, 8, 64) and labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    assert torch.equal(acc[0], cache["embed"]) and torch.equal(acc[-1], cache["resid_post", L - 1])
    mid, mid_labels = accumulated_resid(cache, incl_mid=True, pos=-1)
    assert mid.shape == (2 * L + 1, 2, 1, 64) and mid_labels[1] == "0_mid"
    assert torch.equal(mid[1], cache["resid_mid", 0][:, -1:])

    parts, part_labels = decompose_resid(cache)
    assert parts.shape == (1 + 2 * L, 2, 8, 64)
    assert part_labels[:3] == ["embed", "0_attn_out", "0_mlp_out"]
    torch.testing.assert_close(parts.sum(0), cache["resid_post", L - 1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ logit attribution


def test_direct_logit_attribution_sums_to_the_logit(model, run, tokens):
    logits, cache = run
    token, against = 11, 40
    parts, labels = direct_logit_attribution(model, cache, token, pos=-1)
    assert parts.shape == (1 + 2 * L, 2) and labels[-1] == f"{L - 1}_mlp_out"
    torch.testing.assert_close(parts.sum(0), logits[:, -1, token], rtol=1e-5, atol=1e-5)

    # one row by hand: the embedding's direct effect
    direction = model.unembed.weight[token] * model.ln_final.weight
    embed_by_hand = cache["embed"][:, -1] @ direction / cache["ln_final.hook_scale"][:, -1, 0]
    torch.testing.assert_close(parts[0], embed_by_hand)

    diff, _ = direct_logit_attribution(model, cache, token, against=against, pos=3)
    torch.testing.assert_close(diff.sum(0), logits[:, 3, token] - logits[:, 3, against], rtol=1e-5, atol=1e-5)

    per_row = torch.tensor([5, 60])  # one answer per batch row
    answers, _ = direct_logit_attribution(model, cache, per_row)
    torch.testing.assert_close(
        answers.sum(0), logits[:, -1].gather(1, per_row[:, None])[:, 0], atol=1e-5, rtol=1e-5
    )


def test_head_attribution_splits_the_attention_rows(model, run):
    _, cache = run
    for layer in range(L):
        heads = head_outputs(model, cache, layer)
        assert heads.shape == (2, 8, 8, 64)
        torch.testing.assert_close(heads.sum(2), cache["attn_out", layer], rtol=1e-5, atol=1e-5)
    per_head = head_logit_attribution(model, cache, 11, against=12)
    layers, _ = direct_logit_attribution(model, cache, 11, against=12)
    assert per_head.shape == (L, 8, 2)
    torch.testing.assert_close(per_head.sum(1), layers[1::2], rtol=1e-5, atol=1e-5)  # rows 1, 3, 5: attention


# ------------------------------------------------------------------------------------- patching


def test_patching_a_run_with_itself_changes_nothing(model, tokens):
    metric = logit_diff_metric(11, 12)
    baseline = float(metric(model(tokens)))
    grid = patch_resid(model, tokens, tokens, metric)
    assert grid.shape == (L, 8)
    torch.testing.assert_close(grid, torch.full_like(grid, baseline), rtol=1e-5, atol=1e-5)
    heads = patch_head_z(model, tokens, tokens, metric)
    assert heads.shape == (L, 8)
    torch.testing.assert_close(heads, torch.full_like(heads, baseline), rtol=1e-5, atol=1e-5)


def test_resid_patching_restores_exactly_where_the_prompts_differ(model, tokens):
    clean = tokens[:1]
    corrupted = clean.clone()
    corrupted[0, 5] = (clean[0, 5] + 1) % 97  # one token differs, at position 5
    metric = logit_diff_metric(11, 12)
    clean_value, corrupted_value = float(metric(model(clean))), float(metric(model(corrupted)))
    grid = patch_resid(model, clean, corrupted, metric, layers=[0, 2])
    # resid_pre of layer 0 at position 5 is everything that differs: pasting it restores the clean run
    assert grid[0, 5] == pytest.approx(clean_value, abs=1e-4)
    for position in [0, 1, 2, 3, 4, 6, 7]:
        assert grid[0, position] == pytest.approx(corrupted_value, abs=1e-4)
    # before position 5 nothing differs at any layer (causal), so nothing changes there either
    assert torch.allclose(grid[1, :5], torch.tensor(corrupted_value), atol=1e-4)
    assert abs(clean_value - corrupted_value) > 1e-3


def test_head_patching_matches_a_hand_made_hook(model, tokens):
    clean, corrupted = tokens[:1], tokens[1:]
    metric = logit_diff_metric(11, 12)
    grid = patch_head_z(model, clean, corrupted, metric, layers=[1])
    _, cache = model.run_with_cache(clean, names_filter="blocks.1.attn.hook_z")

    def paste_head_3(z, hook):
        z = z.clone()
        z[:, :, 3] = cache["z", 1][:, :, 3]
        return z

    by_hand = float(metric(model.run_with_hooks(corrupted, [("blocks.1.attn.hook_z", paste_head_3)])))
    assert grid.shape == (1, 8) and grid[0, 3] == pytest.approx(by_hand, abs=1e-5)


# ------------------------------------------------------------------------------------- ablation


def test_zero_and_mean_head_ablation(model, run, tokens):
    _, cache = run
    names = lambda n: n.startswith("blocks.1.") and ("attn_out" in n or "hook_z" in n)  # noqa: E731
    with ablate_heads(model, [(1, 2), (1, 5)]):
        _, ablated = model.run_with_cache(tokens, names_filter=names)
    heads = head_outputs(model, cache, 1)
    torch.testing.assert_close(
        ablated["attn_out", 1], cache["attn_out", 1] - heads[:, :, 2] - heads[:, :, 5], rtol=1e-4, atol=1e-4
    )
    assert ablated["z", 1][:, :, [2, 5]].abs().max() == 0

    means = mean_activations(model, tokens, ["blocks.1.attn.hook_z"])
    assert means["blocks.1.attn.hook_z"].shape == (8, 16)  # [H, d]
    with ablate_heads(model, [(1, 2)], kind="mean", means=means):
        _, mean_ablated = model.run_with_cache(tokens, names_filter=names)
    w_o = rearrange(model.blocks[1].attn.o_proj.weight, "D (h d) -> h d D", h=8)
    mean_head_out = means["blocks.1.attn.hook_z"][2] @ w_o[2]
    torch.testing.assert_close(
        mean_ablated["attn_out", 1],
        cache["attn_out", 1] - heads[:, :, 2] + mean_head_out,
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="mean_activations"):
        ablate_heads(model, [(0, 1)], kind="mean").__enter__()
    assert model.hooked_names() == []


def test_mlp_ablation(model, tokens):
    with ablate_mlps(model, [0]):
        _, zero = model.run_with_cache(tokens, names_filter=lambda n: "blocks.0.hook_resid" in n)
    assert torch.equal(zero["resid_post", 0], zero["resid_mid", 0])
    means = mean_activations(model, tokens, ["blocks.2.hook_mlp_out"])
    with ablate_mlps(model, [2], kind="mean", means=means):
        _, mean = model.run_with_cache(tokens, names_filter="blocks.2.hook_mlp_out")
    torch.testing.assert_close(mean["mlp_out", 2], means["blocks.2.hook_mlp_out"].expand(2, 8, 64))


# ------------------------------------------------------------------------------------- steering


def test_steering_adds_the_vector_in_any_forward(model, run, tokens):
    _, cache = run
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    with steering(model, f"blocks.{L - 1}.hook_resid_post", vector, scale=3.0):
        steered = model(tokens)
    by_hand = model.unembed(model.ln_final(cache["resid_post", L - 1] + 3.0 * vector))
    torch.testing.assert_close(steered, by_hand, rtol=1e-5, atol=1e-5)
    assert model.hooked_names() == []


def test_steering_acts_during_generation(model):
    prompt = [1, 17, 33, 50, 8]
    vector = steering_vector(model, [1, 20, 21], [1, 70, 71], "blocks.1.hook_resid_post")
    assert vector.shape == (64,)
    vector = 4.0 * vector

    def greedy_without_cache(n: int) -> list[int]:
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt) :]

    plain = list(generate_tokens(model, prompt, max_new_tokens=6, temperature=0))
    with steering(model, "blocks.1.hook_resid_post", vector):
        steered = list(generate_tokens(model, prompt, max_new_tokens=6, temperature=0))
        full_forwards = greedy_without_cache(6)
    assert steered == full_forwards  # each KV-cache step was steered like a full forward
    assert steered != plain


# ---------------------------------------------------------------------------------- head scores


def one_layer_cache(model_1_layer, patterns: torch.Tensor) -> ActivationCache:
    return ActivationCache({"blocks.0.attn.hook_pattern": patterns}, model_1_layer)


def test_head_scores_on_hand_made_patterns():
    from conftest import tiny_model

    one = tiny_model(num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    T = 5
    P = 2 * T + 1
    previous = torch.eye(P).roll(-1, dims=1).tril()  # row i -> i - 1
    previous[0, 0] = 1.0
    sink = torch.zeros(P, P)
    sink[:, 0] = 1.0
    uniform = torch.ones(P, P).tril() / torch.arange(1, P + 1)[:, None]
    induction = torch.zeros(P, P)
    induction[:, 0] = 1.0
    for q in range(T + 1, 2 * T + 1):
        induction[q] = 0.0
        induction[q, q - T + 1] = 1.0
    patterns = torch.stack([previous, sink, uniform, induction])[None]  # [1 H P P]
    cache = one_layer_cache(one, patterns)

    prev = previous_token_scores(cache)[0]
    assert prev.tolist() == pytest.approx(
        [1.0, 1 / (P - 1), sum(1 / (i + 1) for i in range(1, P)) / (P - 1), 0.1]
    )
    assert attention_sink_scores(cache)[0].tolist() == pytest.approx([0.1, 1.0, prev[2].item(), 0.5])
    entropy = attention_entropy(cache)[0]
    assert entropy.tolist() == pytest.approx(
        [0.0, 0.0, sum(math.log(i) for i in range(1, P + 1)) / P, 0.0], abs=1e-6
    )
    assert induction_scores(cache, T)[0].tolist() == pytest.approx(
        [0.0, 0.0, induction_by_hand(uniform, T), 1.0]
    )
    with pytest.raises(ValueError, match="repeat_len"):
        induction_scores(cache, T + 1)


def induction_by_hand(pattern: torch.Tensor, T: int) -> float:
    return sum(pattern[T + j, j + 1].item() for j in range(1, T + 1)) / T


def test_repeated_tokens_and_recomputed_patterns(model):
    tokens = repeated_random_tokens(model, 6, batch=3, seed=2)
    assert tokens.shape == (3, 13) and (tokens[:, 0] == model.cfg.bos_token_id).all()
    assert torch.equal(tokens[:, 1:7], tokens[:, 7:])
    assert not (tokens[:, 1:] == model.cfg.bos_token_id).any()
    _, full = model.run_with_cache(tokens)
    from_patterns = induction_scores(full, 6)
    scores = induction_head_scores(model, 6, batch=3, seed=2)  # from rot_q/rot_k only
    torch.testing.assert_close(scores, from_patterns, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- tables


def test_top_k_tokens(run):
    logits, _ = run
    top = top_k_tokens(logits[0, -1], k=4)
    probs = logits[0, -1].softmax(-1)
    assert top.ids.tolist() == probs.topk(4).indices.tolist()
    torch.testing.assert_close(top.probs, probs.topk(4).values)
    assert top.strings == [f"[{i}]" for i in top.ids.tolist()]
    batch = top_k_tokens(logits[:, -1], k=3)
    assert batch.ids.shape == (2, 3) and len(batch.strings) == 2 and len(batch.strings[1]) == 3
    assert top.table().splitlines()[0].split()[1] == str(top.ids[0].item())


# ------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_smollm2_has_induction_and_previous_token_heads(smollm2):
    induction = induction_head_scores(smollm2, repeat_len=30, batch=1, seed=0)
    assert induction.shape == (30, 9)
    assert induction.max() > 0.5
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat by the door."
    _, cache = smollm2.run_with_cache(text, names_filter=lambda n: n.endswith("hook_pattern"))
    previous = previous_token_scores(cache)
    assert previous.max() > 0.5
    # on random repeated tokens the induction heads are not simply previous-token heads
    layer, head = divmod(int(induction.argmax()), 9)
    assert previous[layer, head] < 0.5


@pytest.mark.slow
def test_smollm2_logit_lens_and_top_tokens(smollm2):
    logits, cache = smollm2.run_with_cache(
        "The capital of France is", names_filter=lambda n: "resid_post" in n
    )
    lens = logit_lens(smollm2, cache, pos=-1)
    torch.testing.assert_close(lens[-1], logits[:, -1:], rtol=1e-4, atol=1e-4)
    top = top_k_tokens(logits[0, -1], smollm2.tokenizer, k=5)
    assert "Paris" in "".join(top.strings)


# ---------------------------------------------------------------------------------------------
# Batches of prompts of different lengths: every analysis equals its rows run alone
# ---------------------------------------------------------------------------------------------


def _ragged(model, lengths=(4, 7, 2), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.cfg.vocab_size, (n,), generator=generator).tolist() for n in lengths]


def test_lens_attribution_and_head_scores_of_a_ragged_batch_equal_each_row_alone(make_model):
    from llama3_lab.analysis import direct_logit_attribution, logit_lens, previous_token_scores

    model = make_model(seed=21)
    rows = _ragged(model)
    _, cache = model.run_with_cache(rows)  # right-padded
    lens = logit_lens(model, cache, pos="last")  # L B 1 V
    tokens = torch.tensor([row[-1] for row in rows])
    dla, _ = direct_logit_attribution(model, cache, tokens)  # C B
    with pytest.raises(ValueError, match="position -1 is padding in rows"):
        logit_lens(model, cache, pos=-1)
    per_row_scores = []
    for b, row in enumerate(rows):
        _, alone = model.run_with_cache(torch.tensor([row]))
        torch.testing.assert_close(lens[:, b], logit_lens(model, alone, pos=-1)[:, 0], rtol=1e-5, atol=1e-5)
        alone_dla, _ = direct_logit_attribution(model, alone, row[-1], pos=-1)
        torch.testing.assert_close(dla[:, b], alone_dla[:, 0], rtol=1e-5, atol=1e-5)
        per_row_scores.append(previous_token_scores(alone))
    torch.testing.assert_close(previous_token_scores(cache), torch.stack(per_row_scores).mean(0))


def test_means_and_steering_vectors_count_real_tokens_only(make_model):
    from llama3_lab.analysis import mean_activations, steering_vector

    model = make_model(seed=22)
    rows = _ragged(model)
    name = "blocks.0.hook_mlp_out"
    means = mean_activations(model, rows, [name])[name]
    every_token = torch.cat(
        [model.run_with_cache(torch.tensor([r]), names_filter=name)[1][name][0] for r in rows]
    )
    torch.testing.assert_close(means, every_token.mean(0))
    vector = steering_vector(model, rows[:2], [rows[2]], name)

    def last(row):
        return model.run_with_cache(torch.tensor([row]), names_filter=name)[1][name][0, -1]

    torch.testing.assert_close(vector, (last(rows[0]) + last(rows[1])) / 2 - last(rows[2]))


def test_patching_ragged_pairs_equals_each_pair_alone(make_model):
    from llama3_lab.analysis import logit_diff, logit_diff_metric, patch_resid

    model = make_model(seed=23)
    clean, corrupted = _ragged(model, (4, 6), seed=1), _ragged(model, (4, 6), seed=2)
    batch = model.to_token_batch(corrupted)
    per_row = logit_diff(model(batch), 3, 5, pos=batch.last_index)
    assert per_row.shape == (2,)
    batched = patch_resid(
        model, clean, corrupted, logit_diff_metric(3, 5, pos=batch.last_index), layers=[0, 1]
    )
    alone = [
        patch_resid(model, [c], [k], logit_diff_metric(3, 5), layers=[0, 1], positions=range(4))
        for c, k in zip(clean, corrupted)
    ]
    torch.testing.assert_close(batched[:, :4], (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="differ in length.*position_map"):
        patch_resid(model, clean, [corrupted[1], corrupted[0]], logit_diff_metric(3, 5), layers=[0])
    with pytest.raises(
        ValueError,
        match="position_map sends corrupted position 5 to clean position 5, which is padding in rows \\[1\\]",
    ):
        patch_resid(
            model, [clean[1], clean[0]], corrupted, logit_diff_metric(3, 5), layers=[0], position_map={5: 5}
        )
    mapped = patch_resid(
        model,
        [clean[0]],
        [corrupted[1]],
        logit_diff_metric(3, 5),
        layers=[0],
        positions=[5],
        position_map={5: 3},
    )
    assert mapped.shape == (1, 1) and torch.isfinite(mapped).all()
