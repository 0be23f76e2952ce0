"""The browser views' Python side: what they send to the front end, and what their actions do.

Runs on tiny random models, without a browser (tests/test_browser.py drives the same views in Chromium).
The data checks decode the bytes the script receives exactly as the script does (little-endian float16
or float32, in the documented order) and compare them with the model's own numbers.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

from llama3_lab.analysis.lens import logit_lens
from llama3_lab.analysis.tables import top_k_tokens
from llama3_lab.views import AttentionView, LogitLensView, StepperView, TokenValuesView
from llama3_lab.views._base import WIDGET_VIEW_MIME, view_script

MODEL = tiny_model(seed=3, max_position_embeddings=2048)
PROMPT = [1, 5, 7, 9, 11, 13, 2, 5, 7, 9]


def _half(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


# -- attention ---------------------------------------------------------------------------------------


def test_attention_view_sends_the_head_triangle_as_float16() -> None:
    view = AttentionView(MODEL, PROMPT, layer=1, head=2)
    n = len(PROMPT)
    pattern = view.pattern()
    assert pattern.shape == (MODEL.cfg.num_attention_heads, n, n)
    torch.testing.assert_close(torch.from_numpy(pattern), view.cache.pattern(1)[0].float())
    sent = _half(view.head_pattern)
    assert sent.size == n * (n + 1) // 2
    for q in range(n):  # row q holds keys 0..q at offset q(q+1)/2
        np.testing.assert_allclose(sent[q * (q + 1) // 2 : (q + 1) * (q + 2) // 2], view.row(q), atol=5e-4)
    np.testing.assert_allclose(view.column(3), pattern[2, 3:, 3])
    assert len(view.thumbs) == MODEL.cfg.num_attention_heads * view.thumb_size**2


def test_attention_view_opens_on_the_head_with_least_attention_on_the_first_token() -> None:
    view = AttentionView(MODEL, PROMPT, layer=0)
    sink = view.pattern()[:, 1:, 0].mean(-1)
    assert view.head == int(np.argmin(sink))
    assert view.sink == pytest.approx(sink.tolist(), abs=1e-4)
    assert "least attention on the first token" in view.status
    assert view.query == len(PROMPT) - 1


def test_attention_view_recomputes_only_the_chosen_layer() -> None:
    view = AttentionView(MODEL, PROMPT, layer=0, head=1)
    before = view.head_pattern
    view.layer = 1  # a new layer: its least-sink head, its thumbnails, its pattern
    assert view.head_pattern != before
    torch.testing.assert_close(torch.from_numpy(view.pattern()), view.cache.pattern(1)[0].float())
    assert "blocks.0.attn.hook_pattern" not in view.cache  # nothing but rot_q/rot_k was cached


def test_a_2048_token_attention_view_sends_a_few_megabytes() -> None:
    ids = torch.randint(0, MODEL.cfg.vocab_size, (2048,), generator=torch.Generator().manual_seed(0))
    view = AttentionView(MODEL, ids.tolist())
    assert len(view.head_pattern) == 2048 * 2049  # float16 lower triangle: P(P+1)/2 values of 2 bytes
    assert view.payload_bytes < 4.5e6
    print(f"2,048-token attention view: {view.payload_bytes / 1e6:.2f} MB of binary data")


def test_views_show_a_png_where_no_front_end_runs() -> None:
    view = AttentionView(MODEL, PROMPT, layer=0)
    data, _metadata = view._repr_mimebundle_()
    assert data["image/png"].startswith(b"\x89PNG")
    assert WIDGET_VIEW_MIME not in data  # no kernel with a front end here


def test_saved_page_is_self_contained(tmp_path: Path) -> None:
    view = AttentionView(MODEL, PROMPT, layer=0)
    page = view.save_html(tmp_path / "attention.html").read_text()
    assert not re.search(r"""(src|href)\s*=|https?://|@import""", page), "the page must fetch nothing"
    assert '"standalone": true' in page and "head_pattern" in page
    assert "</script>" not in page.split('<script type="module">', 1)[1].rsplit("</script>", 1)[0]


def test_view_scripts_ship_as_package_data() -> None:
    """Every file under views/js is declared as package data, so an installed wheel has it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["llama3_lab"]
    folder = files("llama3_lab.views") / "js"
    shipped = sorted(p.name for p in Path(str(folder)).iterdir())
    assert shipped == sorted(
        ["common.js", "attention.js", "token_values.js", "logit_lens.js", "stepper.js", "views.css"]
    )
    for name in shipped:
        assert any(Path(f"views/js/{name}").match(glob) for glob in globs), f"{name} is not package data"
    script = view_script("attention")
    assert script.startswith("const COLORMAPS") and "export default" in script and "import " not in script


# -- token values ------------------------------------------------------------------------------------


def test_token_values_view_sends_every_channel_as_float32() -> None:
    loss = torch.tensor([float("nan"), 1.5, 2.25, 0.125])
    view = TokenValuesView(
        ["Hello", ",", " world", "!"], {"loss": loss, "attribution": [-1.0, 0.5, 2.0, 0.0]}
    )
    values = np.frombuffer(view.values, dtype="<f4").reshape(2, 4)
    np.testing.assert_array_equal(values[0], loss.numpy())
    np.testing.assert_array_equal(values[1], [-1.0, 0.5, 2.0, 0.0])
    assert view.channels == ["loss", "attribution"] and view.channel == "loss"
    assert view.labels[2] == "␣world"
    view.channel = "attribution"
    assert "'attribution'" in view.status
    assert view._repr_mimebundle_()[0]["image/png"].startswith(b"\x89PNG")


# -- logit lens --------------------------------------------------------------------------------------


def test_logit_lens_view_cells_are_the_lens_probabilities() -> None:
    view = LogitLensView(MODEL, PROMPT, width=4)
    start, stop = view.window()
    assert (start, stop) == (len(PROMPT) - 4, len(PROMPT))
    probs = logit_lens(MODEL, view.cache, pos=list(range(start, stop)))[:, 0].float().softmax(-1)
    final = probs[-1].argmax(-1)
    expected = probs.gather(-1, final.expand(probs.shape[0], -1)[..., None])[..., 0]
    L = MODEL.cfg.num_hidden_layers
    np.testing.assert_allclose(
        np.frombuffer(view.values, dtype="<f4").reshape(L, 4), expected.numpy(), rtol=1e-6
    )
    top = top_k_tokens(logit_lens(MODEL, view.cache, pos=list(range(start, stop)))[:, 0], None, k=5)
    np.testing.assert_allclose(
        np.frombuffer(view.top_probs, dtype="<f4").reshape(L, 4, 5), top.probs.numpy(), rtol=1e-6
    )
    assert len(view.top_labels) == L * 4 * 5
    view.target = "7"  # a token id as text: every cell is that token's probability
    np.testing.assert_allclose(view.cell_values, probs[..., 7].numpy(), rtol=1e-6)
    view.start = 0
    assert view.window() == (0, 4) and view.position == 3


# -- stepper -----------------------------------------------------------------------------------------


def test_stepper_view_steps_rewinds_and_forces() -> None:
    view = StepperView(MODEL, PROMPT[:4])
    assert view.status.startswith("step 0")
    view.step(3)
    assert len(view.steps) == 3 and [s["position"] for s in view.steps] == [4, 5, 6]
    assert _half(view.attention).size == 4 + 5 + 6  # step s attends over keys 0..position-1
    np.testing.assert_allclose(_half(view.attention)[4:9], view.attention_row(view.history[1]), atol=5e-4)
    record = view.history[1]
    assert view.steps[1]["entropy"] == pytest.approx(record.entropy, abs=1e-6)
    assert [p for _, p in view.steps[1]["top"]] == pytest.approx(record.top_k.probs, abs=1e-6)

    view._handle_message(None, {"kind": "rewind", "step": 1}, [])  # what a click on token 2 sends
    assert len(view.history) == 1 and view.session.tokens == PROMPT[:4] + [view.history[0].token_id]
    assert [a["id"] for a in view.alternatives] == record.top_k.ids
    view._handle_message(None, {"kind": "force", "token": record.top_k.ids[3]}, [])
    assert view.history[-1].forced and view.steps[-1]["forced"] and view.alternatives == []
    view.sample(temperature=1.0)
    assert len(view.history) == 3
    view.back()
    view.reset()
    assert view.tokens == PROMPT[:4] and view.steps == [] and view.attention == b""


def test_stepper_view_reports_an_unknown_action_in_its_status() -> None:
    view = StepperView(MODEL, PROMPT[:4])
    view._handle_message(None, {"kind": "teleport"}, [])
    assert view.status.startswith("error") and "teleport" in view.status


def test_stepper_view_picks_the_least_sink_head_until_one_is_chosen() -> None:
    view = StepperView(MODEL, PROMPT[:4], layer=1)
    view.step(2)
    first = np.array([r.attention[1, :, 0].numpy() for r in view.history]).mean(0)
    assert view.head == int(np.argmin(first)) and "least attention on the first token" in view.status
    view.head = (view.head + 1) % MODEL.cfg.num_attention_heads
    view.step()
    assert "least attention" not in view.status
