"""Ragged batches: padding, masks and per-row positions through the forward, the hooks, the caches.

References: transformers ``LlamaForCausalLM`` on the same weights with ``attention_mask`` (left and right
padding), and every row run alone (batched = unbatched at every real position, for every hook point).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_model, transformers_twin

from llama3_lab.kv_cache import KVCache
from llama3_lab.tokens import TokenBatch, to_token_batch

LENGTHS = (5, 1, 9, 3, 12)


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rel: float = 5e-5, msg: str = "") -> None:
    """|got − want| ≤ rel · max|want| (+ a float32 floor): SmolLM2's residual stream reaches ~2e4 in a few
    dimensions, so round-off is judged against each tensor's own scale."""
    assert got.shape == want.shape, (msg, got.shape, want.shape)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), msg
    error = float((got[finite] - want[finite]).abs().max()) if finite.any() else 0.0
    scale = float(want[finite].abs().max()) if finite.any() else 0.0
    assert error <= rel * scale + 1e-5, f"{msg}: max |Δ| {error:.3g} at scale {scale:.3g}"


def random_rows(model, lengths=LENGTHS, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.cfg.vocab_size, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module")
def gqa_model():
    return tiny_model(seed=3)  # 8 query heads sharing 2 K/V heads


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_padded_logits_match_transformers_attention_mask(gqa_model, padding_side, attn_impl):
    model = gqa_model
    hf = transformers_twin(model)
    batch = to_token_batch(model, random_rows(model), padding_side=padding_side)
    model.attn_impl = attn_impl
    try:
        with torch.no_grad():
            ours = model(batch.ids, attention_mask=batch.mask.long())  # positions derived from the mask
            # position ids as transformers' generate derives them from the mask
            position_ids = (batch.mask.long().cumsum(-1) - 1).masked_fill(~batch.mask, 1)
            theirs = hf(input_ids=batch.ids, attention_mask=batch.mask.long(), position_ids=position_ids)
    finally:
        model.attn_impl = "sdpa"
    assert torch.isfinite(ours).all()
    real = batch.mask
    torch.testing.assert_close(ours[real], theirs.logits[real], rtol=1e-5, atol=1e-5)


def test_every_row_equals_its_prompt_alone_at_every_hook_point(gqa_model):
    model = gqa_model
    rows = random_rows(model)
    for padding_side in ("right", "left"):
        batch = to_token_batch(model, rows, padding_side=padding_side)
        _, cache = model.run_with_cache(batch)
        assert cache.is_padded and len(cache) == len(model.hook_dict)
        for name, tensor in cache.items():
            assert torch.isfinite(tensor).all() or "attn_scores" in name, f"{name} holds NaN or inf"
        for b, row in enumerate(rows):
            _, alone = model.run_with_cache(torch.tensor([row]))
            for name in model.hook_dict:
                got, want = cache.real(name)[b], alone[name][0] if "rope" not in name else alone[name]
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name}, row {b}")
            assert torch.equal(cache.last(("resid_post", 1)), cache.at(("resid_post", 1), "last")[:, 0])
            torch.testing.assert_close(cache.last(("resid_post", 1))[b], alone["resid_post", 1][0, -1])


def test_pad_keys_are_never_attended_and_pad_rows_are_finite(gqa_model):
    model = gqa_model
    batch = to_token_batch(model, random_rows(model), padding_side="left")
    _, cache = model.run_with_cache(batch, names_filter=lambda n: "pattern" in n or "rot_" in n)
    for layer in range(model.cfg.num_hidden_layers):
        pattern = cache["pattern", layer]  # b h q k
        real_query_on_pad_key = pattern * (batch.mask[:, None, :, None] & ~batch.mask[:, None, None, :])
        assert float(real_query_on_pad_key.abs().max()) == 0.0
        assert torch.isfinite(pattern).all()
        torch.testing.assert_close(cache.pattern(layer), pattern)  # recomputed with the same mask


def test_positions_come_from_the_mask_when_not_given(gqa_model):
    # RoPE is relative, so logits cannot see a row's positions all shifted by one offset: the rotated
    # keys can. A left-padded row's first real token is position 0, as it would be alone.
    model = gqa_model
    batch = to_token_batch(model, random_rows(model, (2, 5)), padding_side="left")
    assert batch.positions[0].tolist() == [0, 0, 0, 0, 1]
    names = ["blocks.0.attn.hook_rot_k"]
    _, from_mask = model.run_with_cache(batch.ids, names_filter=names, attention_mask=batch.mask)
    _, from_batch = model.run_with_cache(batch, names_filter=names)
    assert torch.equal(from_mask[names[0]], from_batch[names[0]])


def test_the_unpadded_path_is_untouched(gqa_model):
    model = gqa_model
    ids = torch.tensor(random_rows(model, (6, 6)))
    plain = model(ids)
    unpadded = to_token_batch(model, ids.tolist())
    assert not unpadded.is_padded
    assert torch.equal(model(unpadded), plain)  # no mask: the same code, the same bits
    _, cache = model.run_with_cache(ids.tolist())
    assert cache.mask is None
    # an all-real mask takes the padded path, and agrees to round-off
    torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_kv_cache_keeps_the_pads_across_decode_steps(gqa_model, padding_side):
    model = gqa_model
    rows = random_rows(model, (4, 1, 7))
    batch = to_token_batch(model, rows, padding_side=padding_side)
    cache = KVCache.allocate(model, len(rows), 16)
    with torch.no_grad():
        prefill = model(batch, cache=cache)
        assert cache.key_mask is not None and cache.real_lengths().tolist() == [4, 1, 7]
        new = torch.tensor([[11], [12], [13]])
        step = model(new, cache=cache)[:, -1]
        clone = cache.clone()
        assert torch.equal(clone.key_mask, cache.key_mask)
        for b, row in enumerate(rows):
            alone = model(torch.tensor([row + [11 + b]]))[0]
            torch.testing.assert_close(step[b], alone[-1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(prefill[b][batch.mask[b]], alone[:-1], rtol=1e-5, atol=1e-5)
        cache.select_rows([2, 0])
        again = model(torch.tensor([[5], [6]]), cache=cache)[:, -1]
        torch.testing.assert_close(
            again[0], model(torch.tensor([rows[2] + [13, 5]]))[0, -1], rtol=1e-5, atol=1e-5
        )


def test_positions_in_a_right_padded_batch_refuse_pads(gqa_model):
    model = gqa_model
    _, cache = model.run_with_cache(random_rows(model, (3, 5)), names_filter="blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"position -1 is padding in rows \[0\].*pos='last'"):
        cache.at("blocks.0.hook_resid_post", -1)
    assert cache.at("blocks.0.hook_resid_post", 2).shape == (2, 1, model.cfg.hidden_size)
    assert cache.last_index().tolist() == [2, 4]


def test_a_token_batch_from_texts_chats_and_ids(smollm2):
    texts = ["The cat sat on the mat", "Paris is the capital of"]
    batch = smollm2.to_token_batch(texts)
    assert batch.rows() == [smollm2.to_tokens(t)[0].tolist() for t in texts]
    left = smollm2.to_token_batch(texts, padding_side="left")
    assert left.rows() == batch.rows() and bool(left.mask[:, -1].all())
    assert int(batch.ids[~batch.mask].unique()) == smollm2.tokenizer.pad_id == 2  # the GGUF's padding id
    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What is 2 + 2?"}]]
    assert smollm2.to_token_batch(chats).rows() == [smollm2.tokenizer.encode_chat(c) for c in chats]
    assert isinstance(smollm2.to_token_batch([[1, 2], [3]]), TokenBatch)
    logits, cache = smollm2.run_with_cache(texts, names_filter="ln_final.hook_normalized")
    assert logits.shape[:2] == batch.ids.shape and cache.is_padded


# -- BOS follows each tokenizer's own configuration -------------------------------------------------------


def test_smollm2_adds_no_bos_as_its_gguf_says(smollm2):
    from llama3_lab.assets import asset_path
    from llama3_lab.gguf_metadata import GGUFMetadata

    metadata = GGUFMetadata(asset_path("smollm2-135m-instruct.gguf"))
    assert metadata.get("tokenizer.ggml.add_bos_token") is False
    assert smollm2.tokenizer.add_bos is False
    ids = smollm2.to_tokens("Paris is the capital of")[0].tolist()
    assert ids == smollm2.tokenizer.encode("Paris is the capital of") and ids[0] != smollm2.tokenizer.bos_id
    assert smollm2.to_str_tokens("Hi")[0] == "Hi"
    assert smollm2.to_str_tokens("Hi", prepend_bos=True) == ["<|im_start|>", "Hi"]  # an explicit choice


def test_llama3_adds_bos_as_its_tokenizer_files_say():
    tokenizers = pytest.importorskip("tokenizers")
    from llama3_lab import load_tokenizer
    from llama3_lab.assets import asset_path

    config = json.loads(asset_path("llama3/tokenizer_config.json").read_text())
    assert config.get("add_bos_token", True) is True  # absent: the post-processor decides
    reference = tokenizers.Tokenizer.from_file(str(asset_path("llama3/tokenizer.json")))
    first = reference.encode("Hello, world!").ids[0]
    tok = load_tokenizer("llama3")
    assert tok.add_bos is True and first == tok.bos_id == 128000
    assert config["pad_token"] == "<|finetune_right_pad_id|>"
    assert tok.pad_id == reference.token_to_id("<|finetune_right_pad_id|>") == 128004


# -- SmolLM2: every hook point, prompts from 1 to a few hundred tokens --------------------------------------


@pytest.mark.slow
def test_smollm2_batched_equals_unbatched_at_every_hook_point(smollm2):
    generator = torch.Generator().manual_seed(0)
    lengths = (1, 6, 33, 150)
    rows = [torch.randint(20, 40000, (n,), generator=generator).tolist() for n in lengths]
    batch = to_token_batch(smollm2, rows, padding_side="left")
    _, cache = smollm2.run_with_cache(batch)
    assert len(cache) == len(smollm2.hook_dict) == 667
    for b, row in enumerate(rows):
        _, alone = smollm2.run_with_cache(torch.tensor([row]))
        for name in smollm2.hook_dict:
            want = alone[name] if name.startswith("rope.") else alone[name][0]
            assert_close_to_scale(cache.real(name)[b], want, msg=name)
        del alone


@pytest.mark.slow
def test_smollm2_long_ragged_batch_in_fp32_and_bf16(smollm2):
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(20, 40000, (n,), generator=generator).tolist() for n in (300, 17)]
    batch = to_token_batch(smollm2, rows, padding_side="right")
    with torch.no_grad():
        fp32 = smollm2(batch)
        bf16_model = copy.deepcopy(smollm2).to(torch.bfloat16)
        bf16 = bf16_model(batch).float()
        bf16_alone = [bf16_model(torch.tensor([row]))[0].float() for row in rows]
        del bf16_model
        for b, row in enumerate(rows):
            alone = smollm2(torch.tensor([row]))[0]
            real = batch.mask[b]
            assert_close_to_scale(fp32[b][real], alone)
            # bf16 is judged by its distance to the fp32 twin, not by equality to another bf16 run
            batched_error = (bf16[b][real] - alone).abs().max()
            alone_error = (bf16_alone[b] - alone).abs().max()
            assert batched_error <= 2 * alone_error + 0.05, (float(batched_error), float(alone_error))
