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
    "13_circuits_at_scale.ipynb",
    "14_sparse_autoencoders.ipynb",
]
"""The fifteen notebooks of the curriculum, in order."""


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


def _comment_markers(cell: dict) -> list[str]:
    """The nbval markers of a cell, read as nbval 0.11 reads them: any line that is a comment whose text
    (after the `#`s) is exactly the marker, wherever it stands in the cell."""
    lines = (line.strip() for line in _source(cell).splitlines())
    return [line.lstrip("#").strip() for line in lines if line.startswith("#")]


def _is_checked(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" in _comment_markers(cell)


_NUMBER = (
    r"(?:\d[\d,]*(?:\.\d+)?(?:e-?\d+)?"
    r"|(?:an?\s+)?(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty"
    r"|hundred|thousand|million|billion)s?)"
)
_MAGNITUDE = r"(?:\d+\.\d+|\d+(?:\.\d+)?e-?\d+|\d[\d,]*(?:\.\d+)?\s*(?:%|×|times\b|percent\b))"
COMPARATIVE_CLAIM = re.compile(
    rf"(?<![\w.]){_NUMBER}\s*×(?!\s*\d)"  # "8×", "100 ×" (not a shape such as 8×8)
    # "4 times", "a hundred times", "several times"
    rf"|(?<![\w.])(?:{_NUMBER}|several|a\s+few)(?:\s+of)?\s+times\b"
    rf"|\b(?:more|less|fewer|larger|smaller|greater|bigger|higher|lower|longer|shorter)\s+than\s+{_NUMBER}(?!\w)"
    rf"|\b(?:under|below|above|over|at\s+least|at\s+most)\s+{_MAGNITUDE}",  # "under 1e-4", "over 90%"
    re.IGNORECASE,
)
"""A number-bearing comparison in prose: "N×", "N times" (digits or number words, or "several"), "more /
larger / ... than N", and "under / below / above / over / at least / at most" a decimal, a power of ten,
a percentage or a multiple (not "over 8 KV heads"). Such a sentence must be backed by an `assert` in the
code cell just before it (docs/NOTEBOOKS.md, "Narration")."""

TIMING = re.compile(
    r"\b(?:took|takes|uncached|cached|elapsed|seconds?|times?|timing|wall|duration|latency|in)\b"
    r"[^\n\d]{0,30}\d+(?:\.\d+)?\s?(?:s|ms|µs|us|sec|secs|seconds|milliseconds)\b"
    r"|\b\d+(?:\.\d+)?\s?(?:ms|µs|seconds|milliseconds)\b",
    re.IGNORECASE,
)
"""A wall-clock time in stored output: a number with s / ms / µs / seconds within a few words after
"took", "uncached", "cached", "elapsed", "time", "in", ..., or any number of ms or µs. Stored timings are
the refreshing host's noise; print a ratio measured in the same cell instead."""


def _claims_without_assert(nb: dict) -> list[tuple[int, str]]:
    """(cell index, claim) for every comparative claim in a markdown cell whose nearest code cell before it
    has no `assert` statement."""
    found, previous_code = [], None
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            previous_code = _source(cell)
            continue
        if cell["cell_type"] != "markdown":
            continue
        backed = previous_code is not None and re.search(r"^\s*assert\b", previous_code, re.MULTILINE)
        if not backed:
            found += [(index, match.group(0)) for match in COMPARATIVE_CLAIM.finditer(_source(cell))]
    return found


def _output_text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        plain = output.get("data", {}).get("text/plain", "")
        parts += [
            "".join(text) if isinstance(text, list) else text,
            "".join(plain) if isinstance(plain, list) else plain,
        ]
    return "\n".join(parts)


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
    checked = [c for c in cells if _is_checked(c)]
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


@params
def test_comparative_claims_are_backed_by_an_assert(path: Path):
    unbacked = _claims_without_assert(_load(path))
    assert not unbacked, (
        f"{path.name}: markdown cells make number-bearing comparisons that no `assert` in the code cell "
        f"before them checks (cell index, claim): {unbacked}; assert the claim, or print it from the "
        "measured value (docs/NOTEBOOKS.md, Narration)"
    )


@params
def test_stores_no_wall_clock_times(path: Path):
    timings = [
        (index, match.group(0))
        for index, cell in enumerate(_load(path)["cells"])
        for match in TIMING.finditer(_output_text(cell))
    ]
    assert not timings, (
        f"{path.name}: stored outputs contain wall-clock times (cell index, text): {timings}; print a ratio "
        "measured in the same cell instead (a stored time is the refreshing host's noise)"
    )


@params
def test_collapsed_solutions_open_with_a_readable_line(path: Path):
    unreadable = [
        index
        for index, cell in enumerate(_load(path)["cells"])
        if _is_hidden_solution(cell) and _source(cell).lstrip().startswith("# NBVAL_")
    ]
    assert not unreadable, (
        f"{path.name}: collapsed solution cells {unreadable} show only their first line, an NBVAL marker; "
        "open them with a comment saying what they solve, the marker on the next line"
    )


def test_the_claim_and_timing_patterns():
    claims = [
        m.group(0)
        for m in COMPARATIVE_CLAIM.finditer(
            "more than a\nhundred times larger; several times the others; 4× as much; under 100×; "
            "below 1e-4; 8.7 times; larger than 1e-5; four times as much"
        )
    ]
    assert len(claims) == 8, claims
    for prose in (
        "an 8×8 grid",
        "32 query heads split over 8 KV heads",
        "at most 3 digits",
        "over 10 positions",
        "below 1 sharper",
        "layer 12 on",
        "2 × 218M weights",
    ):
        assert not COMPARATIVE_CLAIM.search(prose), prose
    for stored in (
        "16 tokens: uncached 93.20 s, cached 14.26 s",
        "took 3.1 s",
        "forward in 12 ms",
        "0.8 seconds",
    ):
        assert TIMING.search(stored), stored
    for fine in ("cached decode 1.8× faster", "28 tok/s", "131,072 B per token", "layers 0-2", "in 3 steps"):
        assert not TIMING.search(fine), fine


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
