"""Token input: text (one BOS), ids and tensors to [B, P], token strings, and the one check of ids."""

from __future__ import annotations

import pytest
import torch
from hooked_tiny import hooked_tiny_model

from llama3_lab.model import LlamaModel
from llama3_lab.tokens import check_token_ids, to_tokens


@pytest.fixture(scope="module")
def tiny() -> LlamaModel:
    return hooked_tiny_model()


@pytest.fixture(scope="module")
def llama3_tokenizer():
    from llama3_lab import load_tokenizer

    return load_tokenizer("llama3")


def test_text_gets_exactly_one_bos(tiny, llama3_tokenizer):
    # to_tokens never runs the model, but checks the ids against its vocabulary: give it Llama 3's
    cfg = tiny.cfg.replace(vocab_size=llama3_tokenizer.n_vocab, bos_token_id=128000, eos_token_id=128001)
    model = LlamaModel(cfg, tokenizer=llama3_tokenizer, device="cpu")
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


def test_one_check_of_ids_for_the_forward_and_to_tokens(tiny):
    assert check_token_ids([5, 6], vocab_size=211).tolist() == [[5, 6]]
    assert check_token_ids(torch.tensor([[300]]), vocab_size=None).tolist() == [[300]]
    for check in (lambda ids: check_token_ids(ids, 211), lambda ids: to_tokens(tiny, ids), tiny):
        with pytest.raises(ValueError, match="token id 211 is outside this model's vocabulary 0..210"):
            check(torch.tensor([[1, 211]]))
        with pytest.raises(ValueError, match="token id -1"):
            check([-1, 3])
        with pytest.raises(TypeError, match="integer tensor"):
            check(torch.zeros(1, 3))
        with pytest.raises(ValueError, match=r"\[batch, positions\] or \[positions\]"):
            check(torch.zeros(1, 1, 3, dtype=torch.long))
        with pytest.raises(ValueError, match="empty"):
            check(torch.zeros(1, 0, dtype=torch.long))
    assert to_tokens(tiny, torch.tensor([3, 4], dtype=torch.int16)).dtype == torch.long
