"""Static checks that keep environment.yml, pyproject.toml and the notebooks consistent.

conda cannot be installed on the CI machine, so environment.yml is checked by reading it.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])


def _declared_distributions() -> set[str]:
    project = _pyproject()["project"]
    names = {_requirement_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_requirement_name(r) for r in extra}
    return names


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_yml_parses_and_pins_a_supported_python():
    env = _environment()
    python_pins = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(python_pins) == 1, "environment.yml must pin python exactly once"
    version = tuple(int(x) for x in python_pins[0].split("=")[-1].split(".")[:2])
    requires = _pyproject()["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split(".")[:2])
    assert version >= minimum, f"environment.yml pins python {version}, pyproject requires {requires}"
    assert "pip" in env["dependencies"]


def test_environment_yml_installs_this_project_with_existing_extras():
    env = _environment()
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    project_lines = [line for line in pip_section if line.startswith("-e .")]
    assert project_lines, "environment.yml must install the project itself with `-e .[...]`"
    extras = re.findall(r"\[(.*)\]", project_lines[0])
    available = set(_pyproject()["project"]["optional-dependencies"])
    for extra in extras[0].split(",") if extras else []:
        assert extra.strip() in available, f"extra {extra!r} is not defined in pyproject.toml"


def _notebook_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_import_is_declared(notebook: Path):
    declared = _declared_distributions()
    providers = packages_distributions()
    for module in _notebook_imports(notebook):
        if module in sys.stdlib_module_names or module == "llama3_lab":
            continue
        dists = {_normalise(d) for d in providers.get(module, [])}
        assert dists & declared, (
            f"{notebook.name} imports {module!r} (from {sorted(dists) or 'no installed distribution'}), "
            "which pyproject.toml does not declare"
        )
