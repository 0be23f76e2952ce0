#!/usr/bin/env bash
# Create the project's virtual environment and install everything into it. Idempotent: the Makefile
# runs it only when pyproject.toml changed or the venv is missing.
#
# torch is chosen here, not pinned in pyproject.toml: a machine with an NVIDIA GPU gets the CUDA build
# from the configured index; a machine without one gets a CPU build that pip's find-links already holds,
# else whatever the configured index offers. No package index is named here: pip's own configuration
# decides. To get PyTorch's CPU-only wheels on a machine without a GPU, point pip at PyTorch's CPU wheel
# index with pip's environment variable, e.g. `PIP_EXTRA_INDEX_URL=<that index> make setup`.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "llama3-lab needs Python >= 3.10; set PYTHON=python3.11")'
  echo "==> creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# A CPU build of torch that pip's find-links already holds (some machines ship one), for this Python.
local_cpu_torch() {
  local tag links dir
  tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  links=$("${pip[@]}" config get global.find-links 2>/dev/null || true)
  for dir in $links; do
    dir=${dir#file://}
    ls "$dir"/torch-*+cpu-"$tag"-"$tag"-*.whl 2>/dev/null || true
  done | sort -V | tail -n 1
}

if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "==> torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "==> NVIDIA GPU found: installing the CUDA build of torch"
  "${pip[@]}" install "torch>=2.5"
elif wheel=$(local_cpu_torch) && [ -n "$wheel" ]; then
  echo "==> no GPU: installing the local CPU build $wheel"
  "${pip[@]}" install "$wheel"
else
  echo "==> no GPU and no local CPU wheel: installing torch from pip's configured index"
  echo "    (set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index for a CPU-only build)"
  "${pip[@]}" install "torch>=2.5"
fi

echo "==> installing llama3-lab with its test extras"
"${pip[@]}" install -e ".[test]"
