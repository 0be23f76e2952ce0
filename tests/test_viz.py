"""Figures in llama3_lab.viz: right data drawn, labelled axes, masked future, shared scales, small and fast.

Synthetic attention patterns are real softmaxes of random scores under a causal mask; RoPE figures use
the real Llama 3 / 3.1 numbers (REFERENCE §2-3) and are checked against an independent NumPy formula.
"""

# ruff: noqa: E402  (the Agg backend is chosen before pyplot is imported)
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import LogNorm, to_rgba
from matplotlib.figure import Figure

from llama3_lab import viz
from llama3_lab.config import LLAMA31_ROPE_SCALING, LlamaConfig
from llama3_lab.model import Rotary
from llama3_lab.viz._common import MASKED_COLOR
from llama3_lab.viz.rope import rope_config

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ["<|begin_of_text|>", "The", " cat", " sat", "\n", " on", " the", " $5", " mat", "."]


def causal_patterns(heads: int, positions: int, seed: int = 0) -> torch.Tensor:
    """[H, P, P] softmax of random scores with the causal mask: what ``hook_pattern`` holds for one prompt."""
    scores = 2.0 * torch.randn(heads, positions, positions, generator=torch.Generator().manual_seed(seed))
    future = torch.ones(positions, positions, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def png_bytes(fig: Figure) -> tuple[int, float]:
    buffer = io.BytesIO()
    start = time.perf_counter()
    fig.savefig(buffer, format="png")
    return len(buffer.getvalue()), time.perf_counter() - start


def tick_texts(ax, axis: str = "x") -> list[str]:
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [label.get_text() for label in labels]


@pytest.fixture(autouse=True)
def no_pyplot_figures_left():
    """Every figure function must leave pyplot's registry empty (else notebooks show figures twice)."""
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a viz function left a figure open in pyplot"


# ------------------------------------------------------------------------------------------ labels


def test_display_token_makes_whitespace_visible_and_escapes_mathtext():
    assert viz.display_token(" the") == "␣the"
    assert viz.display_token("\n\n") == "⏎⏎"
    assert viz.display_token("\t") == "⇥"
    assert viz.display_token("") == "∅"
    assert viz.display_token("$x$") == r"\$x\$"  # matplotlib would otherwise render mathtext
    assert viz.display_token("\x04") == "\\x04"
    assert viz.display_token(b"\xe2\x80") == "\\xe2\\x80"  # a partial UTF-8 byte token
    assert viz.display_token("<|begin_of_text|>", max_chars=8) == "<|begin…"


def test_token_labels_demand_one_token_per_position():
    with pytest.raises(ValueError, match="one token string per position"):
        viz.token_labels(["a", "b"], 3)


# --------------------------------------------------------------------------------------- attention


def test_attention_pattern_labels_tokens_and_greys_out_the_future():
    pattern = causal_patterns(1, len(TOKENS))[0]
    fig = viz.attention_pattern(pattern, TOKENS, title="L0 H0")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "key position" and ax.get_ylabel() == "query position"
    assert tick_texts(ax, "x") == [viz.display_token(t) for t in TOKENS]
    assert "␣cat" in tick_texts(ax, "y") and "⏎" in tick_texts(ax, "y")
    image = ax.images[0]
    data = image.get_array()
    future = np.triu(np.ones((len(TOKENS), len(TOKENS)), dtype=bool), 1)
    np.testing.assert_array_equal(np.ma.getmaskarray(data), future)
    assert not np.isnan(data.compressed()).any()
    np.testing.assert_allclose(data.filled(0).sum(-1), 1.0, atol=1e-6)
    assert image.cmap.get_bad() == pytest.approx(to_rgba(MASKED_COLOR))  # grey, not a colour of the scale
    assert image.norm.vmin == 0.0 and image.norm.vmax == pytest.approx(float(pattern.max()))
    assert len(fig.axes) == 2  # the pattern and its colourbar


def test_attention_pattern_after_a_kv_cache_offsets_the_queries():
    # 3 new queries at positions 7, 8, 9 over 10 keys: the causal mask is shifted by the cache length.
    pattern = causal_patterns(1, 10)[0][7:]
    ax = viz.attention_pattern(pattern, TOKENS).axes[0]
    mask = np.ma.getmaskarray(ax.images[0].get_array())
    np.testing.assert_array_equal(mask.sum(-1), [2, 1, 0])
    assert tick_texts(ax, "y") == [viz.display_token(t) for t in TOKENS[7:]]


def test_attention_pattern_accepts_bf16_and_batch_axes_and_draws_into_an_axes():
    pattern = causal_patterns(1, 6).to(torch.bfloat16)[None]  # [1, 1, P, P]
    fig, ax = plt.subplots()
    try:
        assert viz.attention_pattern(pattern, TOKENS[:6], ax, colorbar=False) is fig
        assert len(ax.images) == 1
    finally:
        plt.close(fig)


def test_attention_pattern_rejects_a_whole_layer():
    with pytest.raises(ValueError, match=r"\[Pq, Pk\]"):
        viz.attention_pattern(causal_patterns(4, 5), None)


def test_heads_grid_shares_one_colour_scale_and_one_colourbar():
    patterns = causal_patterns(9, len(TOKENS))
    fig = viz.attention_heads_grid(patterns, TOKENS, title="layer 0")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 9
    norms = {id(ax.images[0].norm) for ax in panels}
    assert len(norms) == 1, "every head must use the same Normalize"
    assert panels[0].images[0].norm.vmax == pytest.approx(float(patterns.max()))
    colorbars = [ax for ax in fig.axes if not ax.images and ax.get_ylabel() == "attention probability"]
    assert len(colorbars) == 1
    # Labels only on the edges: the left column has y tokens, the others none; the bottom row has x tokens.
    assert tick_texts(panels[0], "y") and not tick_texts(panels[1], "y")
    assert tick_texts(panels[6], "x") and not tick_texts(panels[0], "x")
    for h, ax in enumerate(panels):
        assert ax.get_title() == f"head {h}"
        assert not np.isnan(ax.images[0].get_array().compressed()).any()


def test_heads_grid_png_of_9_heads_by_32_tokens_stays_small():
    tokens = [f" tok{i}" for i in range(32)]
    size, _ = png_bytes(viz.attention_heads_grid(causal_patterns(9, 32), tokens))
    assert size < 150_000, f"{size} bytes"


def test_long_prompt_is_pooled_and_thinned():
    """How long the figure takes is measured in ``benchmarks/viz.py`` (goal < 3 s), not asserted here."""
    positions = 2048
    pattern = causal_patterns(1, positions)[0]
    tokens = [f" w{i}" for i in range(positions)]
    fig = viz.attention_pattern(pattern, tokens)
    size, _ = png_bytes(fig)
    ax = fig.axes[0]
    assert max(ax.images[0].get_array().shape) <= 256
    assert 2 <= len(tick_texts(ax, "x")) <= 80 and 2 <= len(tick_texts(ax, "y")) <= 80
    assert "blocks of 8" in ax.get_xlabel()
    # Axes stay in absolute positions whatever the pooling: the last tick is inside 0..2047.
    assert 0 <= ax.get_xticks()[-1] <= positions - 1
    assert size < 250_000


def test_query_window_shows_a_slice_with_absolute_positions():
    tokens = [f" w{i}" for i in range(2048)]
    ax = viz.attention_pattern(causal_patterns(1, 2048)[0], tokens, query_window=(100, 140)).axes[0]
    data = ax.images[0].get_array()
    assert data.shape == (40, 140)  # keys up to what the last query can see
    labels = tick_texts(ax, "y")
    assert labels[0].endswith("␣w100")  # thinned labels carry their position: "100 ␣w100"
    assert ax.get_yticks()[0] == 100 and all(
        label.split(" ")[0] == f"{int(t)}" for label, t in zip(labels, ax.get_yticks())
    )
    assert ax.get_ylim() == (139.5, 99.5)


def test_downsample_pattern_reductions_and_masking():
    pattern = causal_patterns(1, 10)[0].numpy()
    pooled, block = viz.downsample_pattern(pattern, max_size=5, reduce="max")
    assert block == 2 and pooled.shape == (5, 5)
    masked = viz.mask_future(pattern)
    assert pooled[3, 1] == pytest.approx(masked[6:8, 2:4].max())
    assert np.ma.getmaskarray(pooled)[0, 1]  # a block entirely in the future stays masked
    assert not np.ma.getmaskarray(pooled)[1, 1]  # the diagonal block has some visible keys
    summed, _ = viz.downsample_pattern(pattern, max_size=5, reduce="sum")
    np.testing.assert_allclose(summed.filled(0).sum(-1), 1.0, atol=1e-6)  # rows stay distributions
    same, block = viz.downsample_pattern(pattern, max_size=64)
    assert block == 1 and same.shape == (10, 10)
    with pytest.raises(ValueError, match="reduce"):
        viz.downsample_pattern(pattern, 3, reduce="median")


def test_heads_grid_draws_the_model_s_own_patterns(make_model):
    model = make_model()
    tokens = torch.arange(3, 15)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    patterns = cache["blocks.1.attn.hook_pattern"][0]
    fig = viz.attention_heads_grid(patterns)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == model.cfg.num_attention_heads
    np.testing.assert_allclose(panels[5].images[0].get_array().filled(0), patterns[5].numpy(), atol=1e-7)


def test_head_score_heatmap_annotates_and_centres_signed_scores():
    scores = np.arange(12, dtype=float).reshape(4, 3) / 10
    scores[2, 1] = np.nan
    fig = viz.head_score_heatmap(scores, "entropy")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" and ax.get_title() == "entropy"
    assert np.ma.getmaskarray(ax.images[0].get_array())[2, 1]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in scores.ravel() if v == v)
    signed = viz.head_score_heatmap(scores - 0.3, center=0).axes[0].images[0].norm
    assert signed.vmin == pytest.approx(-signed.vmax) and signed.vmax == pytest.approx(0.8)


# -------------------------------------------------------------------------------------------- RoPE


def test_rope_frequencies_draws_theta_powers_and_marks_the_context():
    fig = viz.rope_frequencies(thetas=(1e4, 5e5), head_dim=128, context_length=8192)
    freq_ax, wave_ax = fig.axes
    pairs = np.arange(64)
    for line, theta in zip(freq_ax.get_lines(), (1e4, 5e5)):
        np.testing.assert_allclose(line.get_ydata(), theta ** (-2 * pairs / 128), rtol=1e-6)
    assert freq_ax.get_yscale() == "log" and wave_ax.get_yscale() == "log"
    assert any(np.allclose(line.get_ydata(), 8192) for line in wave_ax.get_lines())
    slowest = wave_ax.get_lines()[1].get_ydata()[-1]
    assert slowest == pytest.approx(2 * math.pi * 5e5 ** (126 / 128), rel=1e-5)


def test_rope_scaling_bands_match_llama31_reference_numbers():
    fig = viz.rope_scaling_bands()  # Llama 3.1: factor 8, low 1, high 4, orig 8192, d=128, theta 5e5
    ratio_ax = fig.axes[0]
    bars = ratio_ax.patches
    heights = np.array([bar.get_height() for bar in bars])
    assert len(bars) == 64
    np.testing.assert_allclose(heights[:29], 1.0, rtol=1e-6)
    np.testing.assert_allclose(heights[29:35], [0.8282, 0.6437, 0.4935, 0.3711, 0.2714, 0.1902], atol=6e-5)
    np.testing.assert_allclose(heights[35:], 1 / 8, rtol=1e-5)
    colors = [to_rgba(bar.get_facecolor()) for bar in bars]
    assert len({colors[0], colors[29], colors[35]}) == 3 and len(set(colors[:29])) == 1
    legend = [t.get_text() for t in ratio_ax.get_legend().get_texts()]
    assert legend == ["unchanged: pairs 0-28", "smoothed: pairs 29-34", "divided: pairs 35-63"]


def test_rope_scaling_bands_refuses_a_config_without_llama3_scaling():
    with pytest.raises(ValueError, match="rope_type"):
        viz.rope_scaling_bands(LlamaConfig())


def test_rope_table_shows_both_conventions_of_the_model_tables():
    cfg = rope_config(5e5, 16)
    cos, sin = Rotary(cfg)(0, 20)  # [P, d] in the Hugging Face layout
    fig = viz.rope_table(cos, sin)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    hf_cos, hf_sin, meta_cos, meta_sin = images
    np.testing.assert_allclose(hf_cos, cos.numpy(), atol=1e-7)
    np.testing.assert_allclose(hf_sin, sin.numpy(), atol=1e-7)
    np.testing.assert_allclose(meta_cos[:, 0::2], meta_cos[:, 1::2])  # adjacent dims share an angle
    np.testing.assert_allclose(meta_cos[:, 0::2], cos.numpy()[:, :8], atol=1e-7)
    np.testing.assert_allclose(meta_sin[:, 1::2], sin.numpy()[:, 8:], atol=1e-7)
    assert all(ax.get_ylabel() == "position" for ax in fig.axes if ax.images)
    one = viz.rope_table(cos[:, :8], sin[:, :8], convention="meta")  # a per-pair table works too
    assert len([ax for ax in one.axes if ax.images]) == 2


def test_rope_rotation_points_lie_on_the_unit_circle_at_the_right_angle():
    inv_freq = 5e5 ** (-2 * np.arange(64) / 128)
    fig = viz.rope_rotation([0, 20], positions=16)
    circle_ax, angle_ax = fig.axes[:2]
    for collection, pair in zip(circle_ax.collections, (0, 20)):
        points = collection.get_offsets()
        np.testing.assert_allclose(np.hypot(points[:, 0], points[:, 1]), 1.0, atol=1e-5)
        angles = np.mod(np.arctan2(points[:, 1], points[:, 0]), 2 * math.pi)
        expected = np.mod(np.arange(16) * inv_freq[pair], 2 * math.pi)
        np.testing.assert_allclose(np.cos(angles - expected), 1.0, atol=1e-5)
    assert angle_ax.get_xlabel() == "position"
    with pytest.raises(ValueError, match="out of range"):
        viz.rope_rotation(64)


def test_rope_angle_curves_never_alias():
    """Every drawn angle curve has >= MIN_SAMPLES_PER_TURN samples per wavelength, and its values are the
    exact angles, even when the scatter samples only 256 of 4,096 positions (the explorer's case)."""
    from llama3_lab.viz.rope import MIN_SAMPLES_PER_TURN

    inv_freq = 5e5 ** (-2 * np.arange(64) / 128)
    pairs = [0, 10, 20, 40]  # pair 10 turns every ~48.8 tokens
    sampled = np.unique(np.linspace(0, 4096, 256).round().astype(int))
    fig = viz.rope_rotation(pairs, positions=sampled)
    angle_ax = fig.axes[1]
    for line, pair in zip(angle_ax.get_lines(), pairs):
        x, y = (np.asarray(a, dtype=float) for a in line.get_data())
        finite = np.isfinite(x)
        steps = np.diff(x[finite])
        wavelength = 2 * math.pi / inv_freq[pair]
        assert wavelength / steps.max() >= MIN_SAMPLES_PER_TURN, (pair, steps.max(), wavelength)
        assert x[finite][0] == 0 and x[finite][-1] == 4096
        expected = np.mod(x[finite] * inv_freq[pair], 2 * math.pi)
        assert np.allclose(np.cos(y[finite] - expected), 1.0, atol=1e-3)


def test_long_rope_tables_are_averaged_not_strided():
    from llama3_lab.viz.rope import MAX_TABLE_ROWS

    cfg = rope_config(5e5, 16)
    cos, sin = Rotary(cfg)(0, 4096)
    fig = viz.rope_table(cos, sin, convention="hf")
    image = fig.axes[0].images[0].get_array()
    block = -(-4096 // MAX_TABLE_ROWS)
    assert image.shape[0] <= MAX_TABLE_ROWS
    np.testing.assert_allclose(image[3], cos.numpy()[3 * block : 4 * block].mean(0), atol=1e-6)
    assert f"mean over {block} positions" in fig.texts[0].get_text()


def test_rope_score_vs_distance_matches_the_complex_form():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=128), rng.normal(size=128)
    cfg = rope_config(1e4)
    ax = viz.rope_score_vs_distance(cfg, q, k, log_x=False, max_distance=300).axes[0]
    line = ax.get_lines()[0]
    distance = line.get_xdata()
    # Meta's form: dims (2i, 2i+1) as complex numbers; score(Δ) = Re Σ q_i conj(k_i) e^{iΔ f_i}.
    inv_freq = 1e4 ** (-np.arange(0, 128, 2) / 128)
    q_c, k_c = q[0::2] + 1j * q[1::2], k[0::2] + 1j * k[1::2]
    expected = (q_c * np.conj(k_c) * np.exp(1j * np.outer(distance, inv_freq))).real.sum(-1) / 128
    np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-4)
    default = viz.rope_score_vs_distance().axes[0]
    theta_1e4 = default.get_lines()[0].get_ydata()
    assert theta_1e4[0] == pytest.approx(1.0)  # q = k = ones: |q|²/d at Δ = 0
    assert np.abs(theta_1e4[-100:]).max() < 0.5  # and it decays with distance


# ----------------------------------------------------------------------------------- residual stream


def test_residual_norms_heatmap_uses_a_log_scale_and_labels_layers_and_tokens():
    norms = np.exp(np.random.default_rng(0).normal(size=(5, len(TOKENS))))
    norms[:, 0] *= 50  # the first-token norm spike of real Llama prompts
    layers = ["embed", "0", "1", "2", "3"]
    ax = viz.residual_norms(norms, TOKENS, layer_labels=layers).axes[0]
    assert isinstance(ax.images[0].norm, LogNorm)
    assert tick_texts(ax, "y") == layers and tick_texts(ax, "x")[2] == "␣cat"
    np.testing.assert_allclose(ax.images[0].get_array(), norms)
    lines = viz.residual_norms(torch.tensor(norms), TOKENS, kind="lines", log=False).axes[0]
    assert len(lines.get_lines()) == len(TOKENS) and lines.get_xlabel() == "layer"


def test_thinned_layer_numbers_are_not_prefixed_with_their_position():
    fig = Figure(figsize=(3, 1))
    ax = fig.add_subplot()
    ax.imshow(np.zeros((30, 30)))
    viz.set_token_ticks(ax, "y", [str(i) for i in range(30)])
    viz.set_token_ticks(ax, "x", [f"tok{i}" for i in range(30)])
    y_labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(y_labels) < 30 and all(label.isdigit() for label in y_labels)  # "4", not "4 4"
    x_labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(x_labels) < 30 and x_labels[1] == f"{x_labels[1].split()[0]} tok{x_labels[1].split()[0]}"


def test_logit_lens_writes_top_tokens_only_when_cells_are_readable():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 6))
    top = [[f" t{layer}{p}" for p in range(6)] for layer in range(4)]
    ax = viz.logit_lens_heatmap(probs, top, TOKENS[:6]).axes[0]
    assert len(ax.texts) == 24 and {t.get_text() for t in ax.texts} >= {"␣t00", "␣t35"}
    assert ax.images[0].norm.vmin == 0.0 and ax.images[0].norm.vmax == 1.0
    assert ax.get_ylabel() == "layer" and tick_texts(ax, "x")[0] == viz.display_token(TOKENS[0])
    logprobs = viz.logit_lens_heatmap(np.log(probs), top).axes[0]
    assert logprobs.images[0].norm.vmax == 0.0 and "log-probability" in logprobs.figure.axes[1].get_ylabel()
    long = rng.random((4, 600))
    crowded = viz.logit_lens_heatmap(long, [["x"] * 600] * 4).axes[0]
    assert len(crowded.texts) == 0 and len(tick_texts(crowded, "x")) < 120
    with pytest.raises(ValueError, match="top_tokens"):
        viz.logit_lens_heatmap(probs, top[:3])


# ----------------------------------------------------------------------------------------- tokens


def test_topk_bars_rank_top_first_and_highlight():
    tokens, probs = [" Paris", " the", "\n", " Lyon"], [0.61, 0.2, 0.1, 0.05]
    ax = viz.topk_bars(tokens, probs, highlight=" Paris").axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx(probs)
    assert tick_texts(ax, "y") == ["␣Paris", "␣the", "⏎", "␣Lyon"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # rank 0 drawn on top
    colors = [bar.get_facecolor() for bar in ax.patches]
    assert colors[0] != colors[1] and colors[1] == colors[2]
    assert [t.get_text() for t in ax.texts] == ["0.610", "0.200", "0.100", "0.050"]


def test_token_strip_colours_each_token_and_wraps():
    tokens = TOKENS * 12
    values = np.linspace(-1, 1, len(tokens))
    values[3] = np.nan
    fig = viz.token_strip(tokens, values, center=0, chars_per_row=40)
    ax = fig.axes[0]
    collection = ax.collections[0]
    assert len(collection.get_paths()) == len(tokens)
    assert np.ma.getmaskarray(collection.get_array())[3]
    assert collection.norm.vmin == pytest.approx(-1) and collection.norm.vmax == pytest.approx(1)
    rows = {round(path.vertices[:, 1].mean()) for path in collection.get_paths()}
    assert len(rows) > 5  # wrapped onto several rows
    assert [t.get_text() for t in ax.texts[:3]] == ["<|begin_of_text|>", "The", "␣cat"]
    assert fig.axes[1].get_ylabel() == "value"


def test_token_strip_caps_long_sequences_and_says_so():
    tokens = [f" w{i}" for i in range(2048)]
    fig = viz.token_strip(tokens, np.random.default_rng(0).random(2048), max_tokens=256)
    ax = fig.axes[0]
    assert len(ax.collections[0].get_paths()) == 256
    assert "tokens 0-255 of 0-2047" in ax.get_title()
    windowed = viz.token_strip(tokens, np.arange(2048.0), window=(1000, 1010)).axes[0]
    assert windowed.texts[0].get_text() == "␣w1000" and len(windowed.texts) == 10


# ------------------------------------------------------------------------------------ attribution


def test_attribution_scatter_draws_every_component_the_identity_line_and_the_correlation():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=(6, 4))
    estimate = 0.8 * actual + 0.1 * rng.normal(size=(6, 4))
    fig = viz.attribution_scatter(estimate, actual, title="heads")
    ax = fig.axes[0]
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], actual.ravel())
    np.testing.assert_allclose(offsets[:, 1], estimate.ravel())
    np.testing.assert_allclose(ax.collections[0].get_array(), np.repeat(np.arange(6), 4))  # coloured by layer
    identity = ax.get_lines()[0]
    np.testing.assert_allclose(identity.get_xdata(), identity.get_ydata())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    r = np.corrcoef(actual.ravel(), estimate.ravel())[0, 1]
    assert legend == ["y = x", f"Pearson r = {r:.3f}"] and viz.pearson_r(estimate, actual) == pytest.approx(r)
    largest = np.argsort(-np.abs(actual.ravel()))[:5]
    assert [t.get_text() for t in ax.texts] == [f"{i // 4}.{i % 4}" for i in largest]
    assert ax.get_xlim() == ax.get_ylim() and fig.axes[1].get_ylabel() == "layer"
    with pytest.raises(ValueError, match="same order"):
        viz.attribution_scatter(estimate, actual[:3])


def test_effect_ci_heatmap_hatches_intervals_that_contain_zero_and_writes_the_others():
    mean = np.array([[0.5, 0.02, -0.4], [0.0, 0.3, -0.01]])
    half = np.array([[0.1, 0.05, 0.1], [0.2, 0.4, 0.005]])
    fig = viz.effect_ci_heatmap(mean, mean - half, mean + half, "patching", label="fraction restored")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), mean)
    norm = ax.images[0].norm
    assert norm.vmin == pytest.approx(-0.5) and norm.vmax == pytest.approx(0.5)  # centred at 0
    hatched = ax.collections[0]
    corners = sorted(tuple(path.vertices[0] + 0.5) for path in hatched.get_paths())
    assert corners == [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]  # (column, row) of the cells whose interval has 0
    assert hatched.get_hatch() == "///"
    assert sorted(t.get_text() for t in ax.texts) == ["-0.01\n±0.005", "-0.40\n±0.1", "0.50\n±0.1"]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" and ax.get_title() == "patching"
    assert ax.get_legend().get_texts()[0].get_text() == "95% interval contains 0"
    assert fig.axes[1].get_ylabel() == "fraction restored"
    by_position = viz.effect_ci_heatmap(
        mean, mean - half, mean + half, x_labels=[" a", "\n", " c"], annotate_min=0.1
    )
    assert tick_texts(by_position.axes[0]) == ["␣a", "⏎", "␣c"]
    assert sorted(t.get_text() for t in by_position.axes[0].texts) == ["-0.40\n±0.1", "0.50\n±0.1"]
    with pytest.raises(ValueError, match="low must not exceed high"):
        viz.effect_ci_heatmap(mean, mean + half, mean - half)


def test_token_attribution_puts_one_signed_bar_under_each_token_and_checks_completeness():
    tokens = ["<|im_start|>", "When", " Mary", " and", " John", " to"]
    values = np.array([0.0, 0.1, 2.0, -1.0, -0.3, 0.9])
    fig = viz.token_attribution(tokens, values, title="integrated gradients", target_change=1.7)
    ax = fig.axes[0]
    assert [bar.get_height() for bar in ax.patches] == pytest.approx(values)
    assert tick_texts(ax) == ["<|im_start|>", "When", "␣Mary", "␣and", "␣John", "␣to"]
    colors = [to_rgba(bar.get_facecolor()) for bar in ax.patches]
    assert colors[2][0] > colors[2][2] and colors[3][2] > colors[3][0]  # positive red, negative blue
    assert ax.get_title() == "integrated gradients\nsum 1.700 vs f(x) − f(x′) = 1.700"
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in values]
    size, _ = png_bytes(fig)
    assert size < 60_000
    with pytest.raises(ValueError, match="one value per token"):
        viz.token_attribution(tokens, values[:3])


# ----------------------------------------------------------------------------------------- config


def test_config_breakdown_of_llama3_8b_matches_the_reference_counts():
    fig = viz.config_breakdown(LlamaConfig.from_json(ROOT / "config.json"))  # the committed Llama 3 8B config
    param_ax, memory_ax = fig.axes[:2]
    widths = {
        label.get_text(): bar.get_width() for label, bar in zip(param_ax.get_yticklabels(), param_ax.patches)
    }
    assert widths["embedding"] == 525_336_576 and widths["unembedding"] == 525_336_576
    assert widths["attention"] == 32 * 41_943_040 and widths["MLP"] == 32 * 176_160_768
    assert sum(widths.values()) == 8_030_261_248
    lines = {
        line.get_label().split(" (")[0]: line for line in memory_ax.get_lines() if line.get_label()[0] != "_"
    }
    gqa, full = lines["KV cache, GQA"], lines["KV cache without GQA"]
    assert gqa.get_xdata()[-1] == 8192
    assert gqa.get_ydata()[-1] == pytest.approx(1.0) and full.get_ydata()[-1] == pytest.approx(4.0)  # GiB
    assert lines["weights"].get_ydata()[0] == pytest.approx(8_030_261_248 * 2 / 1024**3)


def test_tied_embeddings_show_no_unembedding_parameters():
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_theta=1e5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )  # SmolLM2-135M
    param_ax = viz.config_breakdown(cfg).axes[0]
    assert "tied to embedding" in [t.get_text() for t in param_ax.texts]
    assert sum(bar.get_width() for bar in param_ax.patches) == 134_515_008


def test_rope_figures_accept_the_llama31_config():
    cfg = rope_config(5e5, 128, dict(LLAMA31_ROPE_SCALING))
    fig = viz.rope_frequencies(sources={"3.0": rope_config(5e5), "3.1": cfg})
    scaled = fig.axes[0].get_lines()[1].get_ydata()
    assert scaled[-1] == pytest.approx(5e5 ** (-126 / 128) / 8, rel=1e-5)


def test_figures_render_themselves_in_notebooks_without_pyplot():
    fig = viz.topk_bars([" a", " b"], [0.7, 0.3])
    png = fig._repr_png_()  # what IPython shows when the inline backend has not registered Figure yet
    assert png.startswith(b"\x89PNG") and 2_000 < len(png) < 60_000


# ----------------------------------------------------------------------------------------- SAE features


def sae_dashboard(interventions: dict[str, str] | None = None):
    """Data shaped as ``llama3_lab.sae.dashboard`` returns it: 3 contexts, a histogram, 4 + 4 tokens."""
    from llama3_lab.sae.dashboard import FeatureContext, FeatureDashboard, Histogram, TokenEffect

    tokens = [" the", " value", " is", " 4", "2", ".", "\n", "def"]
    contexts = [
        FeatureContext(tokens, [0.0, 0.0, 0.2, 0.6 * peak, peak, 0.0, 0.0, 0.0], 4, peak)
        for peak in (5.0, 3.0, 1.0)
    ]
    histogram = Histogram([400, 12, 0, 3], [0.0, 1.5, 3.0, 4.5, 6.0], 0.0123, 4064)
    promoted = [TokenEffect(f" p{i}", i, 1.0 - 0.2 * i) for i in range(4)]
    suppressed = [TokenEffect(f" s{i}", 10 + i, -0.5 - 0.2 * i) for i in range(4)]
    return FeatureDashboard(7, contexts, histogram, promoted, suppressed, interventions or {})


def test_feature_contexts_share_one_scale_leave_zeros_white_and_outline_the_peak():
    contexts = sae_dashboard().contexts
    fig = viz.feature_contexts(contexts)
    ax = fig.axes[0]
    boxes, peaks = ax.collections[:2]
    assert len(boxes.get_paths()) == 3 * 8  # every token of every context
    values = boxes.get_array()
    assert np.ma.getmaskarray(values).reshape(3, 8)[:, [0, 1, 5, 6, 7]].all()  # 0: not coloured
    assert boxes.norm.vmin == 0 and boxes.norm.vmax == pytest.approx(5.0)  # one scale for all rows
    assert len(peaks.get_paths()) == 3  # one outlined peak per row
    peak_x = [(path.get_extents().x0 + path.get_extents().x1) / 2 for path in peaks.get_paths()]
    token_x = {t.get_text(): t.get_position()[0] for t in ax.texts if t.get_text() == "2"}
    assert peak_x[0] == pytest.approx(token_x["2"])  # the outline sits on the peak token
    texts = [t.get_text() for t in ax.texts]
    assert texts[:3] == ["5.00", "3.00", "1.00"]  # peak values, largest first
    assert "␣value" in texts and "⏎" in texts  # token-labelled, whitespace visible
    assert fig.axes[1].get_ylabel() == "activation"


def test_feature_contexts_cut_long_rows_around_the_peak_and_refuse_bad_input():
    from llama3_lab.sae.dashboard import FeatureContext

    tokens = [f" w{i:02d}" for i in range(60)]
    long = FeatureContext(tokens, [0.0] * 30 + [2.0] + [0.0] * 29, 30, 2.0)
    ax = viz.feature_contexts([long], max_chars=40).axes[0]
    shown = [t.get_text() for t in ax.texts[1:]]
    assert "␣w30" in shown and len(shown) < 60
    assert abs(shown.index("␣w30") - len(shown) // 2) <= 1  # the window is centred on the peak
    with pytest.raises(ValueError, match="never fired"):
        viz.feature_contexts([])
    with pytest.raises(ValueError, match="one activation per token"):
        viz.feature_contexts([FeatureContext(["a", "b"], [1.0], 0, 1.0)])


def test_feature_histogram_draws_the_counts_and_states_the_firing_rate():
    from llama3_lab.sae.dashboard import Histogram

    histogram = sae_dashboard().histogram
    ax = viz.feature_histogram(histogram).axes[0]
    assert [bar.get_height() for bar in ax.patches] == [400, 12, 0, 3]
    assert [bar.get_x() for bar in ax.patches] == pytest.approx([0.0, 1.5, 3.0, 4.5])
    assert ax.get_yscale() == "log"  # counts 3..400 span more than LOG_COUNTS_FROM
    assert "fires on 1.23% of 4,064 tokens" in ax.get_title()
    assert "10" in tick_texts(ax, "y")  # plain numbers, not 10^1
    few = viz.feature_histogram(Histogram([4, 2, 1], [0.0, 1.0, 2.0, 3.0], 0.01, 700)).axes[0]
    assert (
        few.get_yscale() == "linear"
        and viz.feature_histogram(histogram, log=False).axes[0].get_yscale() == "linear"
    )

    silent = viz.feature_histogram(Histogram([0, 0], [0.0, 0.5, 1.0], 0.0, 100)).axes[0]
    assert silent.get_yscale() == "linear" and "never fired" in silent.texts[0].get_text()
    with pytest.raises(ValueError, match="needs 3 edges"):
        viz.feature_histogram(Histogram([1, 2], [0.0, 1.0], 0.1, 10))


def test_feature_logit_effect_puts_promoted_above_suppressed_on_a_diverging_map():
    dashboard = sae_dashboard()
    ax = viz.feature_logit_effect(dashboard.promoted, dashboard.suppressed).axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx([1.0, 0.8, 0.6, 0.4, -0.5, -0.7, -0.9, -1.1])
    assert tick_texts(ax, "y")[:2] == ["␣p0", "␣p1"] and tick_texts(ax, "y")[-1] == "␣s3"
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the strongest promoted token on top
    red, blue = to_rgba(ax.patches[0].get_facecolor()), to_rgba(ax.patches[-1].get_facecolor())
    assert red[0] > red[2] and blue[2] > blue[0]  # positive red, negative blue (RdBu_r)
    assert [t.get_text() for t in ax.texts][:2] == ["+1.00", "+0.80"]
    with pytest.raises(ValueError, match="no tokens"):
        viz.feature_logit_effect([], [])


def test_intervention_texts_highlight_where_each_continuation_leaves_the_clean_one():
    runs = {"clean": " 1000 elements.\n\nThe list", "ablated": " 1000 items.", "steered": "2222"}
    ax = viz.intervention_texts(runs, prompt="The list has").axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts[:2] == ["prompt", "The list has"]
    assert "␣" not in "".join(texts) and " 1000 elements.⏎⏎The list" in texts  # newlines made visible
    changed = [t.get_text() for t in ax.texts if t.get_gid() == "changed"]
    assert changed == ["items.", "2222"]  # the clean run is the reference: nothing of it is highlighted
    assert " 1000 " in texts  # the unchanged prefix of the ablated run, drawn plain
    assert len(ax.patches) == 2  # one highlight behind each changed part
    assert viz.sae.divergence("abcd", "abxd") == 2 and viz.sae.divergence("ab", "abc") == 2
    wrapped = viz.intervention_texts({"clean": "x" * 50}, chars_per_row=20).axes[0]
    assert [len(t.get_text()) for t in wrapped.texts[1:]] == [20, 20, 10]
    with pytest.raises(ValueError, match="reference 'clean'"):
        viz.intervention_texts({"before": "a", "after": "b"})


def test_feature_dashboard_puts_every_panel_in_one_small_figure():
    runs = {"clean": " 42.", "ablated": " 42.", "steered": " 4444"}
    fig = viz.feature_dashboard(sae_dashboard(runs), prompt="x =")
    titles = [ax.get_title() for ax in fig.axes]
    assert any("activating contexts" in t for t in titles)
    assert any("fires on 1.23%" in t for t in titles)
    assert any("logit effect" in t for t in titles)
    assert fig.get_suptitle() == "feature 7"
    assert any(t.get_gid() == "changed" and t.get_text() == "444" for ax in fig.axes for t in ax.texts)
    size, _ = png_bytes(fig)
    assert size < 150_000
    without = viz.feature_dashboard(sae_dashboard())
    assert len(without.axes) == len(fig.axes) - 1  # no interventions panel when there are none
