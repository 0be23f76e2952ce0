"""The generation stepper in a real JupyterLab, driven by a real headless Chromium.

Opens tests/browser/stepper.ipynb (a GenerationStepper on the embedded SmolLM2-135M-Instruct, greedy, on
"What is the capital of France?"), runs all cells, clicks Step three times and checks that the page shows
three new tokens, which are the kernel's tokens, and a new attention image after each click. Screenshots go
to tests/artifacts/ (git-ignored). Needs Debian's chromium at /usr/bin/chromium (``.ci/run`` installs it).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).parent / "browser"
ARTIFACTS = Path(__file__).parent / "artifacts"
sys.path.insert(0, str(BROWSER_DIR))

from lab_driver import CHROMIUM, CHROMIUM_ARGS, LabPage, running_lab  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does) to run this test",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="playwright is not installed (pip install playwright)",
    ),
]

STEP_TIMEOUT_MS = 60_000
"""One Step is one forward of the 135M model plus three small PNGs: ~0.3 s on a quiet 2-core machine."""


def _attention_src(page) -> str:
    return page.locator(".llama3-lab-attention").get_attribute("src") or ""


def test_stepper_steps_in_jupyterlab(smollm2) -> None:
    """Run all, click Step three times; each click adds one token and a new attention image."""
    del smollm2  # only to make sure the embedded model is fetched and cached before the kernel loads it
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    notebook = BROWSER_DIR / "stepper.ipynb"
    started = time.monotonic()
    marks: dict[str, float] = {}
    with running_lab(notebook) as lab, sync_playwright() as playwright:
        marks["lab started"] = time.monotonic()
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # Tall viewport: JupyterLab scrolls inside its own panel, so the whole widget must fit.
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            lab_page = LabPage(page, lab)
            lab_page.open(notebook.name)
            marks["kernel idle"] = time.monotonic()
            lab_page.run_all()
            status = page.locator(".llama3-lab-status")
            status.filter(has_text="step 0 ·").wait_for(timeout=STEP_TIMEOUT_MS)
            assert page.locator(".llama3-lab-new-token").count() == 0
            assert not lab_page.cell_errors(), lab_page.cell_errors()

            marks["cells run"] = time.monotonic()
            sources = []
            for n in (1, 2, 3):
                page.locator(".llama3-lab-step").click()
                # ipywidgets throttle updates: wait for the marker the kernel writes after each redraw.
                status.filter(has_text=f"step {n} ·").wait_for(timeout=STEP_TIMEOUT_MS)
                assert page.locator(".llama3-lab-new-token").count() == n
                page.wait_for_function(
                    "() => { const img = document.querySelector('.llama3-lab-attention');"
                    " return img && img.complete && img.naturalWidth > 0; }",
                    timeout=STEP_TIMEOUT_MS,
                )
                sources.append(_attention_src(page))
            assert len(set(sources)) == 3, "the attention image did not change after each step"

            marks["three steps"] = time.monotonic()
            shown = page.locator(".llama3-lab-new-token").all_inner_texts()
            kernel = lab_page.execute("print(repr([r.token_text for r in stepper.history]))")
            assert repr(shown) == kernel.strip(), (shown, kernel)
            assert "".join(shown) == "The capital of", shown  # greedy, as REFERENCE section 1 says

            widget = page.locator(".llama3-lab-explorer").first
            widget.screenshot(path=str(ARTIFACTS / "stepper.png"))
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))
        finally:
            browser.close()
        assert lab.process.poll() is None, "JupyterLab died during the test:\n" + lab.log_tail()
    assert lab.process.poll() is not None, "JupyterLab is still running after the test"
    marks["server stopped"] = time.monotonic()
    print(", ".join(f"{name} {at - started:.1f} s" for name, at in marks.items()))
