#!/usr/bin/env bash
# Re-execute notebooks in place and strip what would differ between runs, so the stored outputs are the
# reference nbval compares against (REFERENCE section 6).
#   bash scripts/refresh_notebooks.sh notebooks/03_rope.ipynb [more.ipynb ...]
# Steps per notebook: execute (no timing metadata), nbstripout --keep-output --keep-count (nbval needs the
# execution counts), then drop stored widget state and volatile metadata and set the kernelspec python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [[ $# -eq 0 ]]; then
    echo "usage: bash scripts/refresh_notebooks.sh NOTEBOOK.ipynb [...]" >&2
    exit 2
fi
if [[ ! -x "$PY" ]]; then
    echo "error: $PY not found; run 'make setup' first (or set VENV to your virtual environment)" >&2
    exit 2
fi

for nb in "$@"; do
    if [[ ! -f "$nb" ]]; then
        echo "error: $nb does not exist" >&2
        exit 2
    fi
    echo "refreshing $nb"
    start=$SECONDS
    "$PY" -m jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.record_timing=False \
        --ExecutePreprocessor.timeout=600 \
        --ExecutePreprocessor.kernel_name=python3 \
        "$nb"
    "$VENV/bin/nbstripout" --keep-output --keep-count "$nb"
    "$PY" - "$nb" <<'PYEOF'
import json
import sys
from pathlib import Path

path = Path(sys.argv[1])
nb = json.loads(path.read_text(encoding="utf-8"))
meta = nb.setdefault("metadata", {})
for volatile in ("widgets", "papermill", "execution", "signature", "toc", "varInspector"):
    meta.pop(volatile, None)
meta["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
meta["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
for cell in nb["cells"]:
    cell_meta = cell.get("metadata", {})
    for volatile in ("execution", "collapsed", "scrolled", "ExecuteTime"):
        cell_meta.pop(volatile, None)
    for output in cell.get("outputs", []):
        output.get("metadata", {}).pop("execution", None)
        data = output.get("data", {})
        # Widget views refer to widget state that is not stored: keep only their text fallback.
        if "application/vnd.jupyter.widget-view+json" in data:
            data.pop("application/vnd.jupyter.widget-view+json")
path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
PYEOF
    size=$(stat -c %s "$nb")
    echo "  done in $((SECONDS - start)) s, $((size / 1024)) KiB"
done
