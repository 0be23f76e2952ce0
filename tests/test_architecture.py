"""Imports flow one way (``scripts/check_layers.py``): no arrow back up, no module-level circle."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def test_imports_flow_one_way_with_only_the_named_delegates() -> None:
    assert check_layers.check() == []


def test_no_module_level_import_circle() -> None:
    assert check_layers.module_level_circles() == []


def test_the_checker_sees_deferred_and_module_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "llama3_lab" / "units.py"
    source.parent.mkdir()
    source.write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            from .model import LlamaModel
            if TYPE_CHECKING:
                from .session import Session
            def f():
                from .loading import load_model
            """
        )
    )
    found = check_layers.imports(source, "llama3_lab.units")
    assert [(name, deferred) for name, _, deferred in found] == [
        ("llama3_lab.model", False),
        ("llama3_lab.session", True),
        ("llama3_lab.loading", True),
    ]


def test_every_module_has_a_layer() -> None:
    rooms = {
        check_layers.room(".".join(p.relative_to(ROOT).with_suffix("").parts))
        for p in (ROOT / "llama3_lab").rglob("*.py")
    }
    for name in rooms - {"__init__"}:
        check_layers.layer_of(name)  # raises SystemExit naming the module otherwise
