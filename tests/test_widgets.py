"""Widget logic without a kernel or a browser: clicks, sliders, and what each view shows.

Views are PNG bytes on ``widgets.Image``: "the view changed" is "the bytes changed".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from llama3_lab.widgets import KNOWN_CONFIGS, ConfigExplorer, RoPEExplorer
from llama3_lab.widgets._base import WIDGET_VIEW_MIME
from llama3_lab.widgets.config_explorer import known_config

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [1, 5, 7, 9, 11, 13]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_model

    return tiny_model(num_hidden_layers=3)


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
    for widget in (RoPEExplorer(), ConfigExplorer()):
        bundle = widget._repr_mimebundle_()
        assert WIDGET_VIEW_MIME not in bundle, "no kernel here: a widget view would show nothing"
        assert bytes(bundle["image/png"]).startswith(PNG_MAGIC)


def test_redraw_errors_are_shown_and_raised(monkeypatch) -> None:
    explorer = RoPEExplorer()

    def broken() -> None:
        raise KeyError("no such table")

    monkeypatch.setattr(explorer, "_draw", broken)
    with pytest.raises(KeyError):
        explorer.pair.value = 3
    assert "error" in explorer.status.value


@pytest.mark.parametrize(
    ("name", "view"),
    [
        ("AttentionExplorer", "AttentionView"),
        ("LogitLensExplorer", "LogitLensView"),
        ("GenerationStepper", "StepperView"),
    ],
)
def test_retired_explorers_name_the_view_that_replaced_them(name: str, view: str) -> None:
    import llama3_lab.widgets

    with pytest.raises(AttributeError, match=rf"{name} was retired: use llama3_lab\.views\.{view}"):
        getattr(llama3_lab.widgets, name)


def test_config_explorer_plot_follows_the_batch_slider() -> None:
    explorer = ConfigExplorer(model="SmolLM2-135M", seq_len=1024)
    one = explorer.figure()
    explorer.batch.value = 8
    eight = explorer.figure()
    kv = [line for line in one.axes[1].get_lines() if "GQA (" in line.get_label()][0]
    kv8 = [line for line in eight.axes[1].get_lines() if "GQA (" in line.get_label()][0]
    np.testing.assert_allclose(kv8.get_ydata(), 8 * kv.get_ydata())
    assert "batch 8" in eight.axes[1].get_xlabel()
