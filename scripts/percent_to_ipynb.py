"""Convert a percent-format Python source into a notebook (the way notebooks here are authored).

    python scripts/percent_to_ipynb.py source.py notebooks/NN_name.ipynb

Cell markers (each on its own line):
    # %%                              a code cell
    # %% [markdown]                   a markdown cell; its lines are written with a leading "# "
    # %% solution                     a code cell whose source JupyterLab shows collapsed (exercise solution)
    # %% tags=["raises-exception"]    a code cell with these cell tags (combinable with `solution`)
Lines inside a cell are kept as written. Open a solution cell with a readable comment (JupyterLab shows
only the first line of a collapsed cell) and put `# NBVAL_CHECK_OUTPUT` on the next line: nbval honours a
marker on any comment line of the cell.
The notebook is written without outputs: run scripts/refresh_notebooks.sh on it next.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

MARKER = re.compile(r"^# %%(?P<rest>.*)$")


def _cell(kind: str, lines: list[str], spec: str) -> nbformat.NotebookNode:
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    if kind == "markdown":
        text = "\n".join(line[2:] if line.startswith("# ") else line.removeprefix("#") for line in lines)
        return nbformat.v4.new_markdown_cell(text)
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    tags = []
    if match := re.search(r"tags=(\[.*?\])", spec):
        tags = json.loads(match.group(1))
    if re.search(r"\bsolution\b", spec):
        cell.metadata["jupyter"] = {"source_hidden": True}
        tags = ["solution", *tags]
    if tags:
        cell.metadata["tags"] = tags
    return cell


def convert(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    kind, spec, lines = None, "", []
    for line in source.splitlines():
        if match := MARKER.match(line):
            if kind is not None:
                nb.cells.append(_cell(kind, lines, spec))
            spec = match.group("rest").strip()
            kind = "markdown" if spec.startswith("[markdown]") else "code"
            lines = []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        nb.cells.append(_cell(kind, lines, spec))
    for cell in nb.cells:  # stable ids, so a re-conversion only changes what changed
        cell.pop("id", None)
    nb.nbformat_minor = 4
    return nb


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    nb = convert(source.read_text(encoding="utf-8"))
    nbformat.validate(nb)
    target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {target} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
