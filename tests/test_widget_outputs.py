"""What the widgets put in a real kernel's outputs and widget state, run by nbclient.

nbval has no front end, so it cannot see inside ``Output`` widgets or read widget state; nbclient routes
output captured by an ``Output`` widget into that widget's state and stores every model's state in the
notebook metadata (``store_widget_state=True``). This checks what a front end would receive: the display
bundle (live view plus PNG fallback), the status marker after slider changes, a static figure and printed
text inside an ``Output``, and the config table.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from llama3_lab.widgets._base import WIDGET_VIEW_MIME

TESTS = Path(__file__).parent

CELLS = [
    "import ipywidgets\nfrom llama3_lab.widgets import ConfigExplorer, RoPEExplorer",
    "rope = RoPEExplorer()\nrope",
    "rope.pair.value = 3\nrope.position.value = 40\nprint(rope.status.value)",
    "out = ipywidgets.Output()\ndisplay(out)\nwith out:\n    rope.show(static=True)\n"
    "    print('pair', rope.pair.value)",
    "config = ConfigExplorer(model='SmolLM2-135M', seq_len=1024)\nconfig.batch.value = 2\nconfig",
]


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(source) for source in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(TESTS)}},
    )
    client.execute()
    return nb


def _models(nb: nbformat.NotebookNode) -> dict[str, dict]:
    return nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]


def test_display_bundle_has_the_live_view_and_a_png(executed) -> None:
    (display,) = executed.cells[1].outputs
    assert WIDGET_VIEW_MIME in display["data"], "with a kernel, the live widget must be offered"
    assert display["data"]["image/png"], "and a PNG for front ends without widgets (nbconvert, GitHub)"
    model_id = display["data"][WIDGET_VIEW_MIME]["model_id"]
    assert _models(executed)[model_id]["model_name"] == "VBoxModel"


def test_slider_changes_reach_the_status_marker(executed) -> None:
    (stream,) = executed.cells[2].outputs
    assert stream["text"].startswith("pair 3, position 40") and "draw 3" in stream["text"]
    statuses = [m["state"]["value"] for m in _models(executed).values() if m["model_name"] == "HTMLModel"]
    assert any(value.startswith("pair 3, position 40") for value in statuses), statuses


def test_output_widget_captures_figure_and_text(executed) -> None:
    outputs = [m["state"]["outputs"] for m in _models(executed).values() if m["model_name"] == "OutputModel"]
    (cell_output,) = executed.cells[3].outputs  # only the Output widget itself: nothing leaked past it
    assert len(outputs) == 1 and WIDGET_VIEW_MIME in cell_output["data"]
    figure, printed = outputs[0]
    assert figure["output_type"] == "display_data" and figure["data"]["image/png"]
    assert printed == {"output_type": "stream", "name": "stdout", "text": "pair 3\n"}


def test_config_explorer_state(executed) -> None:
    tables = [
        m["state"]["value"]
        for m in _models(executed).values()
        if m["model_name"] == "HTMLModel" and "llama3-lab-config" in m["state"].get("value", "")
    ]
    assert len(tables) == 1
    assert "134,515,008" in tables[0] and "batch 2" in tables[0]
    # KV cache: 2 · 30 layers · 3 KV heads · 64 dims · 2 bytes = 23,040 B per token; × 1024 × 2 = 45 MiB.
    assert "22.50 KiB per token" in tables[0] and "45.00 MiB" in tables[0]
