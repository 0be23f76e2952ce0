"""Widget logic without a kernel or a browser: clicks, sliders, and what each view shows.

Tiny random models from conftest for the mechanics; the embedded SmolLM2 once, for a real greedy answer.
Views are PNG bytes on ``widgets.Image``: "the view changed" is "the bytes changed".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llama3_lab.session import Session
from llama3_lab.widgets import (
    KNOWN_CONFIGS,
    AttentionExplorer,
    ConfigExplorer,
    GenerationStepper,
    LogitLensExplorer,
    RoPEExplorer,
)
from llama3_lab.widgets._base import WIDGET_VIEW_MIME
from llama3_lab.widgets.config_explorer import known_config

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [1, 5, 7, 9, 11, 13]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_model

    return tiny_model(num_hidden_layers=3)


# ---------------------------------------------------------------------------------------- GenerationStepper


def test_step_back_reset(tiny) -> None:
    stepper = GenerationStepper(tiny, PROMPT, temperature=0.0)
    assert stepper.tokens == PROMPT and stepper.history == []
    assert stepper.status.value.startswith("step 0 ·")
    assert stepper.back_button.disabled and stepper.attention_view.value == b""

    for n in (1, 2, 3):
        stepper.step_button.click()
        assert len(stepper.tokens) == len(PROMPT) + n
        assert stepper.status.value.startswith(f"step {n} ·") and f"draw {n + 1}" in stepper.status.value
        assert stepper.text_view.value.count("llama3-lab-new-token") == n
        assert bytes(stepper.attention_view.value).startswith(PNG_MAGIC)
    generated = list(stepper.new_tokens)
    reference = Session(tiny, PROMPT, temperature=0.0)
    assert [r.token_id for r in reference.step(3)] == generated  # the stepper is a Session, nothing else

    stepper.back_button.click()
    assert stepper.new_tokens == generated[:2] and len(stepper.history) == 2
    assert stepper.status.value.startswith("step 2 ·")
    stepper.reset_button.click()
    assert stepper.tokens == PROMPT and stepper.history == [] and stepper.back_button.disabled
    stepper.step(3)
    assert stepper.new_tokens == generated  # greedy: the same three tokens again


def test_seed_and_sampling_controls(tiny) -> None:
    stepper = GenerationStepper(tiny, PROMPT, temperature=1.0, top_p=1.0, seed=3)
    stepper.step(6)
    first = list(stepper.new_tokens)
    stepper.reset_button.click()
    stepper.step(6)
    assert stepper.new_tokens == first, "same seed, same draws"
    stepper.seed.value = 4  # takes effect on Reset
    stepper.reset_button.click()
    stepper.step(6)
    assert stepper.new_tokens != first, (
        "a new seed should change six draws at temperature 1 on a 97-token vocab"
    )

    stepper.temperature.value = 0.0
    stepper.top_k.value = 5
    stepper.top_p.value = 0.5
    assert (stepper.session.temperature, stepper.session.top_k, stepper.session.top_p) == (0.0, 5, 0.5)
    stepper.top_k.value = 0
    assert stepper.session.top_k is None  # 0 means off


def test_layer_and_head_change_the_attention_view(tiny) -> None:
    stepper = GenerationStepper(tiny, PROMPT, temperature=0.0, layer=0, head=0)
    stepper.step(2)
    before = stepper.attention_view.value
    strip_before = stepper.strip_view.value
    stepper.head.value = 5
    assert stepper.attention_view.value != before and stepper.strip_view.value != strip_before
    record = stepper.history[-1]
    np.testing.assert_array_equal(stepper.attention_row(), record.attention[0, 5].numpy())
    assert stepper.attention_row().sum() == pytest.approx(1.0, abs=1e-5)
    before = stepper.attention_view.value
    stepper.layer.value = 2
    assert stepper.attention_view.value != before
    np.testing.assert_array_equal(stepper.attention_row(), record.attention[2, 5].numpy())


def test_stop_token_disables_step(tiny) -> None:
    stepper = GenerationStepper(tiny, PROMPT, temperature=0.0)
    stepper.session.force(tiny.cfg.eos_token_id)
    stepper.redraw()
    assert stepper.step_button.disabled and "done" in stepper.status.value
    stepper.back_button.click()
    assert not stepper.step_button.disabled


def test_stepper_on_the_embedded_model(smollm2) -> None:
    """Greedy SmolLM2 answers "The capital of France is Paris." (REFERENCE section 1), one click a token."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    stepper = GenerationStepper(smollm2, question, temperature=0.0, layer=12)
    for _ in range(3):
        stepper.step_button.click()
    assert stepper.text == "The capital of"
    assert [r.token_text for r in stepper.history] == ["The", " capital", " of"]
    assert "step 3 · ␣of" in stepper.status.value


# ---------------------------------------------------------------------------------------- AttentionExplorer


def test_attention_explorer_shows_the_models_pattern(tiny) -> None:
    ids = list(range(3, 30))
    explorer = AttentionExplorer(tiny, ids, layer=1, head=2)
    _, full = tiny.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))
    expected = full["pattern", 1][0].numpy()
    np.testing.assert_allclose(explorer.pattern(), expected, atol=1e-6)  # recomputed from rot_q/rot_k
    np.testing.assert_allclose(explorer.query_row(), expected[2, len(ids) - 1], atol=1e-6)

    views = {explorer.pattern_view.value}
    for control, value in (
        (explorer.head, 3),
        (explorer.layer, 0),
        (explorer.query, 10),
        (explorer.mode, "grid"),
    ):
        control.value = value
        views.add(explorer.pattern_view.value)
    assert len(views) == 5, "every control should change the pattern view"
    assert explorer.query_row().shape == (11,)
    np.testing.assert_allclose(explorer.pattern(), full["pattern", 0][0].numpy(), atol=1e-6)


def test_attention_explorer_from_a_cache(tiny) -> None:
    ids = list(range(3, 20))
    _, cache = tiny.run_with_cache(ids)
    explorer = AttentionExplorer(cache, layer=1)
    np.testing.assert_array_equal(explorer.pattern(), cache["pattern", 1][0].numpy())
    assert explorer.token_strings == [f"[{i}]" for i in ids]
    with pytest.raises(TypeError, match="LlamaModel or an ActivationCache"):
        AttentionExplorer(object(), ids)
    _, batch = tiny.run_with_cache(torch.tensor([ids, ids]))
    with pytest.raises(ValueError, match="batch of 2"):
        AttentionExplorer(batch)


# ---------------------------------------------------------------------------------------- LogitLensExplorer


def test_logit_lens_explorer(tiny) -> None:
    ids = list(range(3, 40))
    explorer = LogitLensExplorer(tiny, ids, width=8)
    logits = tiny(torch.tensor([ids]))[0]
    # The last layer's lens is the model's own prediction.
    assert explorer.top.ids[-1, :, 0].tolist() == logits[-8:].argmax(-1).tolist()
    assert explorer.top.probs.shape == (3, 8, 10)
    heatmap, bars = explorer.heatmap_view.value, explorer.bars_view.value
    explorer.layer.value = 0
    assert explorer.heatmap_view.value == heatmap and explorer.bars_view.value != bars
    explorer.position.value = 12
    assert explorer.window() == (5, 13) and explorer.heatmap_view.value != heatmap
    assert explorer.top.ids[-1, -1, 0].item() == logits[12].argmax().item()


# ---------------------------------------------------------------------------------------- RoPEExplorer


def test_rope_explorer_sliders() -> None:
    explorer = RoPEExplorer(position=40, pair=3)
    assert explorer.readings["frequency"] == pytest.approx(5e5 ** (-2 * 3 / 128), rel=1e-6)
    assert explorer.readings["angle"] == pytest.approx(
        math.fmod(40 * 5e5 ** (-6 / 128), 2 * math.pi), rel=1e-5
    )
    rotation, table = explorer.rotation_view.value, explorer.table_view.value
    explorer.pair.value = 10
    assert explorer.rotation_view.value != rotation and explorer.table_view.value == table
    rotation = explorer.rotation_view.value
    explorer.position.value = 100
    assert explorer.rotation_view.value != rotation and explorer.table_view.value != table
    table = explorer.table_view.value
    explorer.convention.value = "meta"
    assert explorer.table_view.value != table
    explorer.theta.value = 1e4
    assert explorer.readings["frequency"] == pytest.approx(1e4 ** (-20 / 128), rel=1e-3)
    explorer.head_dim.value = 64
    assert explorer.pair.max == 31 and explorer.inv_freq.shape == (32,)


def test_rope_explorer_llama31_scaling() -> None:
    explorer = RoPEExplorer(pair=40)
    unscaled = explorer.readings["frequency"]
    explorer.scaling.value = "llama3 ×8 (3.1)"
    assert explorer.readings["frequency"] == pytest.approx(unscaled / 8, rel=1e-6)  # pairs 35-63 are divided
    explorer.pair.value = 10
    assert explorer.readings["frequency"] == pytest.approx(5e5 ** (-20 / 128), rel=1e-6)  # pairs 0-28 kept


# ---------------------------------------------------------------------------------------- ConfigExplorer


def test_config_explorer_numbers() -> None:
    explorer = ConfigExplorer(model="Llama 3 8B", seq_len=8192, batch=1, dtype="bf16")
    numbers = explorer.numbers
    assert numbers["parameters"] == 8_030_261_248
    assert numbers["weights_bytes"] == 2 * 8_030_261_248
    assert numbers["kv_cache_bytes_per_token"] == 131_072
    assert numbers["kv_cache_bytes"] == 1 << 30  # 1 GiB at 8192 tokens
    assert "8,030,261,248" in explorer.table.value
    figure = explorer.breakdown.value

    explorer.seq_len.value = 1024
    assert explorer.numbers["kv_cache_bytes"] == 1024 * 131_072
    assert explorer.numbers["attention_pattern_bytes"] == 32 * 32 * 1024**2 * 2  # 2 GiB (REFERENCE section 2)
    assert explorer.breakdown.value != figure
    explorer.batch.value = 4
    assert explorer.numbers["kv_cache_bytes"] == 4 * 1024 * 131_072
    explorer.dtype.value = "fp32"
    assert explorer.numbers["kv_cache_bytes_per_token"] == 2 * 131_072

    explorer.model.value = "SmolLM2-135M"
    assert explorer.numbers["parameters"] == 134_515_008
    assert explorer.seq_len.options[-1] == 8192 and explorer.seq_len.value == 1024
    explorer.model.value = "Llama 3.1 70B"
    assert explorer.seq_len.options[-1] == 131_072
    assert explorer.numbers["parameters"] == 70_553_706_496


def test_known_configs() -> None:
    top_level = json.loads((ROOT / "config.json").read_text())
    llama3 = known_config("Llama 3 8B")
    for name, value in KNOWN_CONFIGS["Llama 3 8B"].items():
        assert top_level[name] == value, name
    assert llama3.rope_scaling is None
    expected = {"Llama 3.2 1B": 1_235_814_400, "Llama 3.2 3B": 3_212_749_824, "Llama 3.1 8B": 8_030_261_248}
    for name, count in expected.items():
        assert known_config(name).num_parameters() == count, name
    assert known_config("Llama 3.2 1B").rope_scaling["factor"] == 32
    with pytest.raises(KeyError, match="unknown model"):
        known_config("Llama 4")


# ---------------------------------------------------------------------------------------- display


def test_static_fallback_without_a_front_end(tiny) -> None:
    for widget in (RoPEExplorer(), ConfigExplorer(), AttentionExplorer(tiny, list(range(3, 12)))):
        bundle = widget._repr_mimebundle_()
        assert WIDGET_VIEW_MIME not in bundle, "no kernel here: a widget view would show nothing"
        assert bytes(bundle["image/png"]).startswith(PNG_MAGIC)


def test_redraw_errors_are_shown_and_raised(tiny) -> None:
    explorer = AttentionExplorer(tiny, list(range(3, 12)))
    explorer.cache.cache_dict.clear()  # the next layer can no longer be recomputed
    with pytest.raises(KeyError):
        explorer.layer.value = 1
    assert "error" in explorer.status.value
