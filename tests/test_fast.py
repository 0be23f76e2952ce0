"""The opt-in fast decoder (``llama3_lab.fast``) against the eager path, and smoke runs of the benchmarks.

The fixed-shape step attends over the whole static cache with a position mask; these tests pin that
it gives the eager path's greedy tokens and (to float32 rounding) its logits, on tiny models of every
attention shape, with no compile, with Dynamo (``backend="eager"``) and with AOT autograd
(``"aot_eager"``). The real Inductor compile takes minutes on CPU and is exercised by
``benchmarks/run.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import LLAMA3_SCALING

from llama3_lab.fast import DecodeStep, FastDecoder, FastPathError, run_with_cache_offloaded
from llama3_lab.generation import generate_tokens, make_generator
from llama3_lab.kv_cache import KVCache

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [1, 5, 7, 9, 11, 13, 4]


SHAPES = {
    "gqa": {},
    "mha": {"num_key_value_heads": 8},
    "mqa_tied_scaled": {
        "num_key_value_heads": 1,
        "tie_word_embeddings": True,
        "rope_scaling": LLAMA3_SCALING,
    },
}


@pytest.mark.parametrize(
    ("shape", "compile_backend"),
    [("gqa", None), ("mha", None), ("mqa_tied_scaled", None), ("mqa_tied_scaled", "eager")],
)
def test_greedy_tokens_equal_eager_path(make_model, shape, compile_backend):
    model = make_model(seed=3, **SHAPES[shape])
    n = 24
    eager = list(generate_tokens(model, PROMPT, n, temperature=0))
    decoder = FastDecoder(model, max_length=len(PROMPT) + n, compile=compile_backend)
    assert decoder.generate_greedy(PROMPT, n) == eager
    # reusable: a second generation from another prompt matches too
    other = [2, 3, 4]
    assert decoder.generate_greedy(other, 20) == list(generate_tokens(model, other, 20, temperature=0))


def test_greedy_from_after_a_prefill_is_generate_greedy_and_refuses_a_full_cache(make_model):
    model = make_model(seed=3)
    eager = list(generate_tokens(model, PROMPT, 12, temperature=0))
    decoder = FastDecoder(model, max_length=len(PROMPT) + 12, compile=None)
    first = decoder.prefill(PROMPT).argmax(dim=-1)
    assert decoder.greedy_from(first, 12) == eager
    assert decoder.position == len(PROMPT) + 11  # the last id is chosen, not fed
    decoder.prefill(PROMPT)
    with pytest.raises(FastPathError, match="max_length"):
        decoder.greedy_from(first, 14)


def test_aot_eager_backend_gives_the_same_tokens(make_model):
    model = make_model(seed=1)
    eager = list(generate_tokens(model, PROMPT, 16, temperature=0))
    assert FastDecoder(model, 32, compile="aot_eager").generate_greedy(PROMPT, 16) == eager


def test_step_logits_match_the_cached_eager_forward(make_model):
    model = make_model(seed=2, num_key_value_heads=4)
    decoder = FastDecoder(model, max_length=24, compile=None)
    cache = KVCache.allocate(model, max_length=24)
    with torch.no_grad():
        expected = model(torch.tensor([PROMPT]), cache=cache, logits_to_keep=1)[:, -1]  # what prefill runs
        torch.testing.assert_close(decoder.prefill(PROMPT), expected, rtol=0, atol=0)
        for token in [3, 8, 8, 50, 96, 0]:
            expected = model(torch.tensor([[token]]), cache=cache)[:, -1]
            got = decoder.step(token)
            scale = expected.abs().max()
            assert (got - expected).abs().max() <= 1e-5 * scale
    assert decoder.position == cache.length == decoder.cache.length == len(PROMPT) + 6
    # the decoder's cache holds the same keys (after RoPE) and values as the eager cache
    for layer in range(model.cfg.num_hidden_layers):
        torch.testing.assert_close(decoder.cache.layer_keys(layer), cache.layer_keys(layer))
        torch.testing.assert_close(decoder.cache.layer_values(layer), cache.layer_values(layer))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_step_with_reductions_equals_the_step_with_matrix_products(make_model, shape):
    """``DecodeStep(reductions=True)`` (what the packages compile) sums the same dot products in another
    order: every output agrees with the matrix-product step to float32 rounding, at every position."""
    model = make_model(seed=5, **SHAPES[shape])
    steps = [DecodeStep(model, 64, reductions=flag) for flag in (False, True)]
    caches = [KVCache.allocate(model, batch_size=2, max_length=64) for _ in steps]
    for cache in caches:
        for tensor in cache.keys + cache.values:
            tensor.zero_()
    tokens = torch.tensor([[1, 7], [5, 3], [9, 9], [2, 0], [4, 11]])
    with torch.no_grad():
        for position, token in enumerate(tokens):
            outs = [
                step(token.view(2, 1), torch.tensor(position), cache.keys, cache.values)
                for step, cache in zip(steps, caches)
            ]
            for matrix, reduced in zip(*outs):
                torch.testing.assert_close(reduced, matrix, rtol=1e-5, atol=1e-5)
            pattern = outs[1][3]  # [L B H T]: the row sums to one over the filled positions only
            torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
            assert (pattern[..., position + 1 :] == 0).all()
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # the same K/V at the same slots


def test_batched_steps_match_per_sequence_eager(make_model):
    model = make_model(seed=4)
    prompts = torch.tensor([[1, 2, 3, 4], [9, 8, 7, 6]])
    decoder = FastDecoder(model, max_length=8, batch_size=2, compile=None)
    decoder.prefill(prompts)
    got = decoder.step(torch.tensor([5, 6]))
    with torch.no_grad():
        expected = model(torch.cat([prompts, torch.tensor([[5], [6]])], dim=1))[:, -1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_stop_ids_end_generation_like_the_eager_loop(make_model):
    model = make_model(seed=3)
    eager = list(generate_tokens(model, PROMPT, 30, temperature=0))
    stop = eager[5]
    first = eager.index(stop)
    decoder = FastDecoder(model, 64, compile=None)
    assert decoder.generate_greedy(PROMPT, 30, stop_ids={stop}) == eager[: first + 1]
    assert list(generate_tokens(model, PROMPT, 30, temperature=0, stop_ids={stop})) == eager[: first + 1]


def test_sampling_with_a_seed_matches_generate_tokens(make_model):
    model = make_model(seed=5)
    kwargs = dict(temperature=0.8, top_p=0.9, top_k=None)
    eager = list(generate_tokens(model, PROMPT, 25, generator=make_generator(7), **kwargs))
    fast = list(
        generate_tokens(model, PROMPT, 25, generator=make_generator(7), fast={"compile": None}, **kwargs)
    )
    assert fast == eager
    greedy = list(generate_tokens(model, PROMPT, 25, temperature=0, fast={"compile": None}))
    assert greedy == list(generate_tokens(model, PROMPT, 25, temperature=0))


def test_refuses_hooks_cuda_graph_on_cpu_and_a_full_cache(make_model):
    model = make_model()
    decoder = FastDecoder(model, 10, compile=None)
    with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: None)]):
        with pytest.raises(FastPathError, match="hook"):
            decoder.prefill(PROMPT)
    with pytest.raises(FastPathError, match="CUDA"):
        FastDecoder(model, 10, cuda_graph=True)
    with pytest.raises(FastPathError, match="max_length"):
        decoder.generate_greedy(PROMPT, 8)
    decoder.prefill(PROMPT)
    with model.hooks([("blocks.1.mlp.hook_post", lambda x, hook: x * 0)]):
        with pytest.raises(FastPathError, match="hook"):
            decoder.step(1)
    for token in range(3):
        decoder.step(token)
    with pytest.raises(FastPathError, match="full"):
        decoder.step(1)


def test_offloaded_cache_on_cpu_equals_run_with_cache(make_model):
    model = make_model(seed=6)
    tokens = torch.tensor([PROMPT])
    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    logits, cache = run_with_cache_offloaded(model, tokens, names_filter=names)
    expected_logits, expected = model.run_with_cache(tokens, names_filter=names)
    torch.testing.assert_close(logits, expected_logits)
    assert sorted(cache.keys()) == sorted(names)
    for name in names:
        torch.testing.assert_close(cache[name], expected[name])


# ------------------------------------------------------------------------------------- benchmark smoke


@pytest.fixture
def benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def test_run_py_quick_smoke_on_a_tiny_model(benchmarks_importable, tmp_path):
    from benchmarks import run

    opts = run.Options(model="tiny", quick=True, in_process=True, fast_compile="none")
    results = run.run_all(opts, echo=lambda _line: None)
    assert [r.name for r in results] == list(run.PHASES)
    by_phase = {r.name: r.data for r in results}
    assert by_phase["decode"]["ours_same_tokens"] and by_phase["decode"]["fast_same_tokens"]
    assert by_phase["forward"]["max_abs_dlogit_16"] < 1e-4
    assert by_phase["decode"]["bandwidth_gb_s"] > 0
    # the fast decoder's steps are timed apart from its prefill, once per repetition
    assert len(by_phase["decode"]["fast_steps_s"]) == len(by_phase["decode"]["fast_prefill_s"]) == 2
    assert all(t > 0 for t in by_phase["decode"]["fast_steps_s"])
    text = run.render(results, run.machine_info("cpu"), opts)
    for phrase in (
        "forward 16 tokens",
        "run_with_cache, all",
        "fast decoder",
        "decode steps alone",
        "session step",
        "load from cache",
    ):
        assert phrase in text
    # writing a section keeps other sections intact
    out = tmp_path / "RESULTS.md"
    run.write_section("gpu-check", "GPU figures", out)
    run.write_section("run-cpu", text, out)
    run.write_section("run-cpu", text, out)
    written = out.read_text()
    assert written.count("<!-- run-cpu:begin -->") == 1 and "GPU figures" in written


def test_alternate_rotates_the_order_of_its_variants(benchmarks_importable):
    from benchmarks.common import alternate

    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = alternate(variants, reps=4, warmup=0, rotate=True)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    calls.clear()
    alternate(variants, reps=2, warmup=0)
    assert "".join(calls) == "abcabc"  # without rotate: the same order every round


def test_run_py_refuses_cuda_without_a_gpu(benchmarks_importable):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from benchmarks import run

    with pytest.raises(SystemExit):
        run.parse_args(["--device", "cuda"])
    del sys.modules["benchmarks.run"]


def test_gpu_check_dry_run_on_cpu(benchmarks_importable, tmp_path, capsys):
    from benchmarks import gpu_check

    out = tmp_path / "RESULTS.md"
    gpu_check.main(["--tiny", "--output", str(out)])
    text = out.read_text()
    assert "<!-- gpu-check:begin -->" in text and "CPU dry run" in text
    for phrase in ("prefill 48 tokens", "ours fast (CUDA graph)", "pinned async", "mean-error ratio"):
        assert phrase in text
    printed = capsys.readouterr().out
    assert "greedy tokens equal" in text and "decode 8 after 48: fast" in printed


def test_gpu_check_without_cuda_says_so(benchmarks_importable):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from benchmarks import gpu_check

    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main([])
