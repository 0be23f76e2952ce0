"""linear: the blocked few-row product is bit-identical to F.linear, and taken only where it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llama3_lab import linear as linear_module
from llama3_lab.kv_cache import KVCache
from llama3_lab.linear import Linear, linear, row_blocks
from llama3_lab.model import matvec_layout


@pytest.fixture
def two_threads():
    """The blocked path needs at least two threads (the suite runs with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


# (out, in) of SmolLM2-135M (q/o, k/v, gate/up, down, unembed) and of Llama 3 8B.
SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576), (1024, 4096), (4096, 14336)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("rows", "column_major"), [(r, False) for r in (1, 2, 3, 4)] + [(r, True) for r in (1, 2, 5, 8, 13, 16)]
)
def test_blocked_product_is_bit_identical(two_threads, monkeypatch, shape, rows, column_major):
    """On this machine the blocked product of every model shape verifies, and then stays identical."""
    monkeypatch.setattr(linear_module, "_VERIFIED", {})
    torch.manual_seed(rows)
    weight = torch.randn(shape)
    weight = matvec_layout(weight) if column_major else weight
    assert row_blocks(shape[0]) > 0  # the blocked path is the one under test
    for _ in range(2):  # the first call verifies the shape; the second returns the bmm's own result
        x = torch.randn(rows, 1, shape[1])  # [B P k]: a decode step of a batch
        got, expected = linear(x, weight), F.linear(x, weight)
        assert got.shape == expected.shape
        assert torch.equal(got, expected)
    key = (shape[0], shape[1], rows, row_blocks(shape[0]), column_major)
    assert list(linear_module._VERIFIED) == [key]  # verified once, by the first call
    if rows == 1:  # a decode step's product: the blocked path must hold here (the speed-up it is for)
        assert linear_module._VERIFIED[key] is True


def test_a_shape_whose_bits_differ_stays_on_f_linear(two_threads, monkeypatch):
    """Should a BLAS give other bits for the blocks, the first product notices and F.linear is kept."""
    monkeypatch.setattr(linear_module, "_VERIFIED", {})
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: real_bmm(*a) * (1 + 2**-20))  # a BLAS with other bits
    weight, x = torch.randn(64, 32), torch.randn(1, 32)
    for _ in range(2):
        assert torch.equal(linear(x, weight), F.linear(x, weight))
    assert linear_module._VERIFIED == {(64, 32, 1, 8, False): False}


def test_blocks_divide_the_rows():
    assert row_blocks(1536, threads=2) == 8
    assert row_blocks(1540, threads=2) == 2  # 1540 = 2 · 770, not a multiple of 8
    assert row_blocks(1537, threads=2) == 0  # odd: F.linear
    assert row_blocks(1536, threads=1) == 0  # one thread: nothing to spread


def test_other_products_are_f_linear(two_threads, monkeypatch):
    """Prefill, bias, gradients, bfloat16, non-contiguous weights: F.linear itself, not the bmm."""
    monkeypatch.setattr(linear_module, "_VERIFIED", {})
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a, **k: calls.append(1) or real_bmm(*a, **k))
    weight = torch.randn(1536, 576)
    linear(torch.randn(1, 576), weight)
    assert linear_module._VERIFIED == {(1536, 576, 1, 8, False): True}
    assert calls == [1]  # the blocked path calls bmm
    calls.clear()
    linear(torch.randn(17, 576), weight)  # more rows than MAX_ROWS
    linear(torch.randn(1, 576), weight, torch.randn(1536))  # bias
    linear(torch.randn(1, 576, requires_grad=True), weight)  # a gradient to record
    linear(torch.randn(1, 576).bfloat16(), weight.bfloat16())
    linear(torch.randn(1, 288), weight[:, ::2])  # a strided weight: neither row- nor column-major
    assert calls == []
    x = torch.randn(1, 576, requires_grad=True)
    with torch.no_grad():
        linear(x, weight)  # no gradient recorded: blocked again
    assert calls == [1]


def test_gradients_flow_through_linear():
    layer = Linear(32, 64, bias=False)
    x = torch.randn(1, 32, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, layer.weight.sum(0))


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_steps_are_bit_identical_to_plain_f_linear(smollm2, two_threads, monkeypatch, batch):
    """The embedded model's decode steps give the same bits with and without the blocked products."""
    prompt = torch.tensor([smollm2.tokenizer.encode("The capital of France is")] * batch)

    def decode_logits() -> list[torch.Tensor]:
        cache = KVCache.allocate(smollm2, batch_size=batch, max_length=prompt.shape[1] + 4)
        with torch.inference_mode():
            logits = smollm2(prompt, cache=cache)[:, -1]
            steps = [logits]
            for _ in range(3):
                logits = smollm2(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]
                steps.append(logits)
        return steps

    monkeypatch.setattr(linear_module, "_VERIFIED", {})
    blocked = decode_logits()
    # the model's (column-major) weights took the blocked path: the decode steps' shapes verified here
    # (a shape of the prefill's rows may not: it then stayed on F.linear, as the logits below check)
    assert all(column_major for *_, column_major in linear_module._VERIFIED)
    assert all(ok for (_n, _k, rows, *_), ok in linear_module._VERIFIED.items() if rows == batch)
    monkeypatch.setattr(linear_module, "MAX_ROWS", 0)  # every product through F.linear
    plain = decode_logits()
    for a, b in zip(blocked, plain):
        assert torch.equal(a, b)
