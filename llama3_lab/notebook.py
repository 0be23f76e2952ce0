"""Helpers every guided notebook uses: which model to run, exercises that check themselves, stable printing.

The notebooks are tested by nbval, which compares the printed output of marked cells with the stored one.
So everything here prints short, deterministic lines: a model line, a skip line, ``✓ correct``, numbers
rounded by :func:`fmt`. docs/NOTEBOOKS.md describes how notebooks use them.
"""

from __future__ import annotations

import copy
import math
import os
import random
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_ENV = "LLAMA3_LAB_WEIGHTS"
"""Environment variable naming a Llama 3 checkpoint folder (Meta or Hugging Face layout)."""

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The embedded model every notebook runs on by default: a trained Llama-architecture model, CPU-sized."""

NOT_ATTEMPTED = "not attempted yet: the solution is in the collapsed cell below"
CORRECT = "✓ correct"


# ------------------------------------------------------------------------------------------------ setup


def setup_notebook(seed: int = 0) -> None:
    """Make a notebook reproducible and its printing stable; prints nothing.

    Seeds Python, NumPy and torch, keeps float32 as the default dtype, prints tensors with 4 decimals
    and no scientific notation, and silences deprecation warnings from dependencies (they carry
    versions and paths, so stored outputs would differ between machines).
    """
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    _show_figures_inline()
    torch.set_default_dtype(torch.float32)
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=110)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _show_figures_inline() -> None:
    """Let IPython display a returned matplotlib Figure as a PNG.

    ``llama3_lab.viz`` builds figures without pyplot (nothing left in pyplot's registry, each figure
    shown once), so the inline backend's formatter, which pyplot's import would register, is not there.
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:  # plain Python: nothing to display into
        return
    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"})


# ------------------------------------------------------------------------------------------ which model


@dataclass
class NotebookModel:
    """The model a notebook runs on, with its tokenizer and where it lives."""

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype
    is_llama3: bool

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"Model: {self.name} on {self.device.type}, {dtype}"


def llama3_weights_path() -> Path | None:
    """The Llama 3 checkpoint named by ``LLAMA3_LAB_WEIGHTS`` when it exists and CUDA is available, else None.

    Llama 3 8B needs 16 GB in bf16: on CPU it would not fit the notebooks' time budget, so without a
    GPU the notebooks stay on the embedded model even when the variable is set.
    """
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{WEIGHTS_ENV}={value!r} does not exist. Point it at a Llama 3 checkpoint folder "
            "(Meta: params.json + consolidated.*.pth; Hugging Face: config.json + *.safetensors), "
            f"or unset it to use the embedded {DEFAULT_MODEL}."
        )
    if not torch.cuda.is_available():
        return None
    return path


def needs_llama3_weights(what: str) -> bool:
    """True when Llama 3 weights are usable, so the cell can go on; else print one skip line, return False.

    Use as ``if needs_llama3_weights("the 8B attention heads"):`` followed by the cell's body. The skip
    line is deterministic, so a cell using it can be checked by nbval on a machine without weights.
    """
    if llama3_weights_path() is not None:
        return True
    print(
        f"Skipped: {what} needs Llama 3 weights (set {WEIGHTS_ENV} to a Meta or Hugging Face "
        "checkpoint and use a CUDA GPU)."
    )
    return False


def load_notebook_model() -> NotebookModel:
    """The model this notebook runs on, decided in one place; prints one line saying which.

    Default: the embedded SmolLM2-135M-Instruct on CPU in float32 (fetched and cached on first use).
    With ``LLAMA3_LAB_WEIGHTS`` pointing at a Llama 3 checkpoint (Meta or Hugging Face layout) and a
    CUDA GPU: that checkpoint on CUDA in bfloat16, with the Llama 3 tokenizer.
    """
    from .loading import load_model
    from .tokenizer import load_tokenizer

    path = llama3_weights_path()
    if path is None:
        device, dtype, name = torch.device("cpu"), torch.float32, DEFAULT_MODEL
        model = load_model(DEFAULT_MODEL, device=device, dtype=dtype, progress=False)
    else:
        device, dtype, name = torch.device("cuda"), torch.bfloat16, f"Llama 3 from {path}"
        model = load_model(path, device=device, dtype=dtype, progress=False)
    try:
        tokenizer = model.tokenizer
    except Exception:  # a checkpoint without its own tokenizer: every Llama 3 shares Meta's
        tokenizer = load_tokenizer(DEFAULT_MODEL if path is None else "llama3")
    nb = NotebookModel(model, tokenizer, name, device, dtype, is_llama3=path is not None)
    model.eval()
    print(nb.describe())
    return nb


# ------------------------------------------------------------------------------------------- exercises


def _copied(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Deep copies, so a function that modifies its inputs in place cannot change what the other sees."""
    return tuple(x.clone() if isinstance(x, torch.Tensor) else copy.deepcopy(x) for x in inputs)


def _compare(actual: Any, expected: Any, *, atol: float | None, rtol: float | None) -> None:
    if isinstance(expected, (str, bytes)) or isinstance(actual, (str, bytes)):
        if actual != expected:
            raise AssertionError(f"expected {expected!r}, got {actual!r}")
        return
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, check_dtype=False)
    except TypeError:  # types assert_close does not know: compare by equality
        if actual != expected:
            raise AssertionError(f"expected {expected!r}, got {actual!r}") from None


def check_exercise(
    student_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    *inputs: Any,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Check an exercise: ``student_fn(*inputs)`` must match ``reference_fn(*inputs)``.

    Prints ``✓ correct`` when it matches (``torch.testing.assert_close``; pass ``atol``
    and ``rtol`` together to loosen it, plain equality for strings). A stub still raising
    ``NotImplementedError`` prints the stable "not attempted yet" line (and returns), so a notebook
    whose exercises are untouched still runs top to bottom. A wrong answer raises ``AssertionError``
    saying how it differs.
    """
    if (atol is None) != (rtol is None):
        raise ValueError("check_exercise: pass atol and rtol together (or neither, for the dtype defaults).")
    name = getattr(student_fn, "__name__", "your function")
    try:
        actual = student_fn(*_copied(inputs))
    except NotImplementedError:
        print(NOT_ATTEMPTED)
        return
    expected = reference_fn(*_copied(inputs))
    try:
        _compare(actual, expected, atol=atol, rtol=rtol)
    except AssertionError as err:
        raise AssertionError(f"{name} does not match the reference yet:\n{err}") from None
    print(CORRECT)


# ------------------------------------------------------------------------------------- stable printing


def _round(value: float, digits: int) -> float | str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    rounded = round(value, digits)
    return 0.0 if rounded == 0 else rounded  # no "-0.0"


def _plain(x: Any, digits: int) -> Any:
    """Python numbers, lists, tuples and dicts with every float rounded."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        return _plain(x.tolist(), digits)
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy arrays and numpy scalars
        return _plain(x.tolist(), digits)
    if isinstance(x, bool) or x is None or isinstance(x, (int, str, bytes)):
        return x
    if isinstance(x, float):
        return _round(x, digits)
    if isinstance(x, Mapping):
        return {k: _plain(v, digits) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_plain(v, digits) for v in x)
    if isinstance(x, (list, range)):
        return [_plain(v, digits) for v in x]
    return x


def fmt(x: Any, digits: int = 4) -> str:
    """A stable string for numbers, tensors, arrays and containers of them, floats rounded to ``digits``.

    No dtype, device or ``np.float64(...)`` noise, and ``-0.0`` printed as ``0.0``: what a cell marked
    ``# NBVAL_CHECK_OUTPUT`` should print.
    """
    return repr(_plain(x, digits))


def show_shapes(**tensors: Any) -> None:
    """Print one aligned line per tensor: name, shape and dtype (the shapes at each step of a derivation)."""
    width = max((len(name) for name in tensors), default=0)
    for name, t in tensors.items():
        shape = list(t.shape)
        dtype = str(getattr(t, "dtype", type(t).__name__)).removeprefix("torch.")
        print(f"{name:<{width}}  {shape}  {dtype}")
