"""The image runs Python 3.10: every project source must at least compile there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support import REPO

# pyenv's shim for python3.10 fails unless 3.10 is selected: prefer the real binary.
_CANDIDATES = sorted(Path("/root/.pyenv/versions").glob("3.10.*/bin/python3.10"))
PY310 = str(_CANDIDATES[-1]) if _CANDIDATES else shutil.which("python3.10")


@pytest.mark.skipif(PY310 is None, reason="no Python 3.10 on this machine")
def test_sources_compile_under_python_310(tmp_path):
    sources = [
        str(p)
        for folder in ("server", "client", "scripts", "bench", "docker")
        for p in (REPO / folder).rglob("*.py")
    ]
    script = (
        "import sys\n"
        "bad = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
        "    except SyntaxError as exc:\n"
        "        bad.append(f'{path}: {exc}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([PY310, "-c", script, *sources], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
