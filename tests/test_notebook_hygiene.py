"""Static checks on every guided notebook (no execution): stored state, size, and the conventions of
docs/NOTEBOOKS.md (opening cell, checked outputs, derivations, figures, exercises with hidden solutions).

Whether each import is declared is checked in tests/test_environment.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"

CURRICULUM = [
    "00_config.ipynb",
    "01_tokenizer.ipynb",
    "02_embeddings_rmsnorm.ipynb",
    "03_rope.ipynb",
    "04_attention.ipynb",
    "05_swiglu_mlp.ipynb",
    "06_forward_pass.ipynb",
    "07_residual_stream_logit_lens.ipynb",
    "08_generation.ipynb",
    "09_kv_cache.ipynb",
    "10_chat_template.ipynb",
    "11_weights_verification.ipynb",
    "12_interpretability_lab.ipynb",
]
"""The thirteen notebooks of the curriculum (issue 7), in order."""


MAX_BYTES = 1_500_000
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
VIZ_CALL = re.compile(r"\bviz\.\w+\(")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _viz_calls(nb: dict) -> int:
    """Calls of llama3_lab.viz figure functions: `viz.name(...)`, or names imported from llama3_lab.viz."""
    code = "\n".join(_source(cell) for cell in _code_cells(nb))
    imported: set[str] = set()
    for match in re.finditer(r"from llama3_lab\.viz(?:\.\w+)? import \(?([\w\s,]+)\)?", code):
        imported |= {name.split(" as ")[-1].strip() for name in match.group(1).split(",") if name.strip()}
    calls = len(VIZ_CALL.findall(code))
    for name in imported:
        calls += len(re.findall(rf"(?<![\w.]){re.escape(name)}\(", code))
    return calls


def _skipped(cell: dict) -> bool:
    """Cells tagged ``skip-execution`` (docs/NOTEBOOKS.md) are never run by nbconvert, so have no count."""
    return "skip-execution" in cell.get("metadata", {}).get("tags", [])


def _is_hidden_solution(cell: dict) -> bool:
    return (
        cell["cell_type"] == "code"
        and cell.get("metadata", {}).get("jupyter", {}).get("source_hidden") is True
    )


params = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])


def test_the_curriculum_notebooks_exist():
    missing = [name for name in CURRICULUM if not (NOTEBOOK_DIR / name).exists()]
    assert not missing, f"curriculum notebooks missing from notebooks/: {missing}"
    unexpected = [p.name for p in NOTEBOOKS if p.name not in CURRICULUM]
    assert not unexpected, f"notebooks not in the curriculum (issue 7): {unexpected}; rename or add them"


@params
def test_is_executed_with_counts(path: Path):
    nb = _load(path)
    executed = [cell for cell in _code_cells(nb) if not _skipped(cell)]
    unrun = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and not _skipped(cell) and cell.get("execution_count") is None
    ]
    assert not unrun, (
        f"{path.name}: code cells {unrun} have no execution count; run "
        f"`bash scripts/refresh_notebooks.sh notebooks/{path.name}`"
    )
    counts = [cell["execution_count"] for cell in executed]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: not executed top to bottom once: {counts}"
    )


@params
def test_has_no_widget_state_and_python3_kernel(path: Path):
    nb = _load(path)
    assert "widgets" not in nb["metadata"], f"{path.name} stores widget state; refresh it to strip it"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec is not python3"
    )


@params
def test_is_small(path: Path):
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path.name} is {size:,} bytes (limit {MAX_BYTES:,}); store smaller figures"


@params
def test_opens_with_what_you_will_learn_and_the_model(path: Path):
    first = _load(path)["cells"][0]
    text = _source(first)
    assert first["cell_type"] == "markdown", f"{path.name} must open with a markdown cell"
    assert "You will learn" in text, f"{path.name}: the first cell must say what you will learn"
    assert "**Runs on:**" in text, (
        f"{path.name}: the first cell must say which model it runs on (**Runs on:**)"
    )


@params
def test_checks_outputs_and_rederives_against_the_package(path: Path):
    cells = _code_cells(_load(path))
    checked = [c for c in cells if _source(c).lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked, f"{path.name} has no cell marked # NBVAL_CHECK_OUTPUT"
    for cell in checked:
        assert cell.get("outputs"), (
            f"{path.name}: a # NBVAL_CHECK_OUTPUT cell has no stored output to compare"
        )
    assert any("assert_close(" in _source(c) for c in cells), f"{path.name}: no assert_close derivation check"


@params
def test_has_two_viz_figures(path: Path):
    assert _viz_calls(_load(path)) >= 2, f"{path.name}: fewer than two llama3_lab.viz figure calls"


@params
def test_has_an_exercise_with_a_hidden_solution(path: Path):
    cells = _load(path)["cells"]
    pairs = 0
    for exercise, solution in zip(cells, cells[1:]):
        if (
            exercise["cell_type"] == "code"
            and "NotImplementedError" in _source(exercise)
            and "check_exercise(" in _source(exercise)
            and _is_hidden_solution(solution)
            and "check_exercise(" in _source(solution)
        ):
            pairs += 1
            outputs = "".join("".join(o.get("text", "")) for o in solution.get("outputs", []))
            assert "✓ correct" in outputs, f"{path.name}: a stored solution cell does not print ✓ correct"
    assert pairs, (
        f"{path.name}: no exercise (stub raising NotImplementedError + check_exercise) followed by a "
        "solution cell with metadata jupyter.source_hidden = true (docs/NOTEBOOKS.md)"
    )


# -- the helpers the notebooks rely on (llama3_lab.notebook) ------------------------------------------------


def test_check_exercise_reports_correct_not_attempted_and_wrong(capsys):
    import torch

    from llama3_lab.notebook import CORRECT, NOT_ATTEMPTED, check_exercise

    x = torch.randn(3, 4)

    def stub(t):
        raise NotImplementedError

    check_exercise(lambda t: t.softmax(-1), lambda t: t.exp() / t.exp().sum(-1, keepdim=True), x)
    check_exercise(stub, torch.sin, x)
    assert capsys.readouterr().out.splitlines() == [CORRECT, NOT_ATTEMPTED]
    with pytest.raises(AssertionError, match="does not match the reference"):
        check_exercise(torch.cos, torch.sin, x)
    with pytest.raises(AssertionError, match="expected 'ab'"):
        check_exercise(lambda: "ba", lambda: "ab")

    def in_place(t):  # a student's function that modifies its input must not change the reference's input
        return t.mul_(2)

    check_exercise(in_place, lambda t: 2 * t, x)


def test_fmt_is_stable_across_types():
    import numpy as np
    import torch

    from llama3_lab.notebook import fmt

    assert fmt(torch.tensor([1.234567, -0.00001])) == "[1.2346, 0.0]"
    assert fmt(np.float64(0.123456)) == "0.1235"
    assert fmt({"a": (torch.tensor(2), 3.0)}) == "{'a': (2, 3.0)}"
    assert fmt(torch.tensor(float("nan"))) == "'nan'"


def test_needs_llama3_weights_prints_one_line_without_weights(monkeypatch, capsys):
    from llama3_lab.notebook import WEIGHTS_ENV, llama3_weights_path, needs_llama3_weights

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert llama3_weights_path() is None
    assert needs_llama3_weights("the 8B heads") is False
    assert capsys.readouterr().out == (
        "Skipped: the 8B heads needs Llama 3 weights (set LLAMA3_LAB_WEIGHTS to a Meta or Hugging Face "
        "checkpoint and use a CUDA GPU).\n"
    )
    monkeypatch.setenv(WEIGHTS_ENV, "/nonexistent/llama3")
    with pytest.raises(FileNotFoundError, match="LLAMA3_LAB_WEIGHTS"):
        llama3_weights_path()


def test_llama3_weights_are_used_only_with_cuda(monkeypatch, tmp_path):
    import torch

    from llama3_lab.notebook import WEIGHTS_ENV, llama3_weights_path

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert llama3_weights_path() is None  # 16 GB of bf16 weights on a CPU: stay on the embedded model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert llama3_weights_path() == tmp_path
