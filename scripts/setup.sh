#!/usr/bin/env bash
# Create .venv and install what is missing: torch==2.13.0 first (the CPU build on this disk; an unpinned
# torch would pull a multi-GB CUDA build), then Chisel itself in editable mode with its test extras.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.chisel-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && "$VPY" -c "import torch, diffusers, graph, nodes, server" 2>/dev/null; then
  exit 0
fi
"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
"$VPY" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# spandrel (the upscale extra) for its tests, without the torchvision it declares: PyPI's Linux torchvision wheels
# are CUDA builds that fail to import beside this CPU torch (and break transformers' imports with them). The tests
# give spandrel's two torchvision imports (architectures they do not use) a stand-in; see tests/test_upscaling.py.
if ! "$VPY" -m pip show -q spandrel >/dev/null 2>&1; then
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps "spandrel>=0.4" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$VPY" -c "import torch, diffusers, transformers, graph" >/dev/null
touch "$stamp"
